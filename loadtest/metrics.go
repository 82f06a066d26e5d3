package loadtest

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
)

// Metrics is one scrape of a Prometheus endpoint, by sample name (a
// histogram's _sum and _count are names of their own), each over all its
// label sets. The load test needs aggregates only, and reading the text
// format by hand keeps it free of the client library's parser and its
// versions.
type Metrics map[string]Aggregate

// Aggregate sums up the samples of one name.
type Aggregate struct {
	Sum, Min, Max float64
	N             int // samples (label sets)
}

func (a *Aggregate) add(v float64) {
	if a.N == 0 || v < a.Min {
		a.Min = v
	}
	if a.N == 0 || v > a.Max {
		a.Max = v
	}
	a.Sum += v
	a.N++
}

// Sum is the total of name's samples (0 when it has none).
func (m Metrics) Sum(name string) float64 { return m[name].Sum }

// Names of the engine's metrics the load test reads.
const (
	metricIngested       = "lookback_ingest_records_total"
	metricLastCheckpoint = "lookback_checkpoint_last_success_timestamp_seconds"
	metricBuffered       = "lookback_buffered_records"
	metricWatermarkLag   = "lookback_watermark_lag_seconds"
	metricApplied        = "lookback_events_applied_total"
	metricDuplicates     = "lookback_events_duplicate_total"
	metricLate           = "lookback_events_late_total"
	metricEvicted        = "lookback_touches_evicted_total"
	metricDeadLetters    = "lookback_deadletter_records_total"
	metricApplyPanics    = "lookback_apply_panics_total"
	metricCheckpoints    = "lookback_checkpoint_duration_seconds_count"
	metricFactsWritten   = "lookback_facts_written_total"
)

// Scrape reads url (an engine's /metrics).
func Scrape(ctx context.Context, client *http.Client, url string) (Metrics, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, fmt.Errorf("scraping metrics: %w", err)
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("scraping metrics: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("scraping metrics: %s answered %s", url, resp.Status)
	}
	return ParseMetrics(resp.Body)
}

// ParseMetrics reads the Prometheus text exposition format.
func ParseMetrics(r io.Reader) (Metrics, error) {
	m := Metrics{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		name, rest, err := splitSample(line)
		if err != nil {
			return nil, fmt.Errorf("metrics line %d: %w", n, err)
		}
		value, _, _ := strings.Cut(strings.TrimSpace(rest), " ") // a timestamp may follow
		v, err := strconv.ParseFloat(value, 64)
		if err != nil {
			return nil, fmt.Errorf("metrics line %d: value %q: %w", n, value, err)
		}
		a := m[name]
		a.add(v)
		m[name] = a
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading metrics: %w", err)
	}
	return m, nil
}

// splitSample splits a sample line after its name and labels (label
// values are quoted and may hold braces and escaped quotes).
func splitSample(line string) (name, rest string, err error) {
	i := strings.IndexAny(line, "{ \t")
	if i < 0 {
		return "", "", fmt.Errorf("no value in %q", line)
	}
	name = line[:i]
	if line[i] != '{' {
		return name, line[i:], nil
	}
	inQuote := false
	for j := i + 1; j < len(line); j++ {
		switch c := line[j]; {
		case inQuote && c == '\\':
			j++
		case c == '"':
			inQuote = !inQuote
		case !inQuote && c == '}':
			return name, line[j+1:], nil
		}
	}
	return "", "", fmt.Errorf("unterminated labels in %q", line)
}
