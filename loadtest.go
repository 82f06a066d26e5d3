package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/lookback-dev/lookback/attribution"
	"github.com/lookback-dev/lookback/ingest"
	"github.com/lookback-dev/lookback/loadtest"
)

// loadtestCmd generates traffic whose correct answer is known, produces it
// to a running engine, and checks and measures what the engine makes of it.
type loadtestCmd struct {
	kafkaFlags
	rulesFlags

	API          string `name:"api" help:"Base URL of the engine's HTTP API (lookups and /metrics)." default:"http://127.0.0.1:8080"`
	WarehouseDSN string `name:"warehouse-dsn" help:"The engine's warehouse, postgres://... or redshift://... Empty: its facts directory, --facts-dir."`
	FactsDir     string `help:"The facts directory of an engine on embedded defaults (serve's <data-dir>/facts); read, never written." default:"./lookback-data/facts" type:"path"`

	Events          int           `help:"Distinct events to generate (duplicates come on top)." default:"100000"`
	Users           int           `help:"Users (0: events/20)." default:"0"`
	Seed            uint64        `help:"Seed of the traffic (0: from the clock). Printed, with --end, to reproduce a run."`
	End             string        `help:"Event time of the newest event, RFC 3339 or Unix ms (default: a minute ago). Traffic is a function of --seed and --end."`
	Span            time.Duration `help:"Event time a backlog covers, ending at --end." default:"48h"`
	Time            string        `help:"Where event times lie. backlog: --span ending a minute ago, for an engine with no watermark yet (started after producing, or just now); live: the few seconds between an idle engine's watermark and now (older events would arrive late); auto: live if the engine has a watermark, else backlog." enum:"auto,backlog,live" default:"auto"`
	AllowedLateness time.Duration `help:"The engine's --allowed-lateness: live traffic must fit in it." default:"10s"`
	Duplicates      float64       `help:"Fraction of events re-sent as duplicates." default:"0.02"`
	Jitter          time.Duration `help:"Out-of-orderness within each topic; keep it below the engine's --allowed-lateness." default:"2s"`
	Rate            float64       `help:"Target records per second when producing (0: as fast as possible)."`

	Phase             string        `help:"produce: send the traffic; verify: compare the warehouse with the oracle (needs the --seed and --end of the produce run); all: produce, wait for the engine to drain, verify, measure lookups." enum:"produce,verify,all" default:"all"`
	Timeout           time.Duration `help:"Bound on the whole run." default:"10m"`
	Lookups           int           `help:"User lookups to time (phase all; 0: none)." default:"1000"`
	LookupConcurrency int           `help:"Lookups in flight at once." default:"8"`
}

// errFactsDiffer makes the command exit non-zero when the warehouse is not
// what the oracle says.
var errFactsDiffer = errors.New("the warehouse's facts differ from the oracle's")

func (c *loadtestCmd) Run(root *cli) error {
	log := root.logger()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, c.Timeout)
	defer cancel()

	rules, err := c.rules()
	if err != nil {
		return err
	}
	client := loadtest.HTTPClient(max(c.LookupConcurrency, 2), 10*time.Second)
	metricsURL := strings.TrimRight(c.API, "/") + "/metrics"
	place, err := c.placement(ctx, client, metricsURL)
	if err != nil {
		return err
	}
	gcfg, err := c.genConfig(place)
	if err != nil {
		return err
	}
	if c.Jitter >= c.AllowedLateness {
		log.Warn("jitter at or above the engine's allowed lateness: records may arrive late and the facts differ", "jitter", c.Jitter, "allowed_lateness", c.AllowedLateness)
	}
	wcfg := loadtest.WarehouseConfig{DSN: c.WarehouseDSN}
	if wcfg.DSN == "" {
		wcfg.FactsDir = c.FactsDir
	}
	if c.Phase != "produce" {
		if err := wcfg.Validate(); err != nil {
			return err
		}
	}
	out := os.Stdout
	reproduce := fmt.Sprintf("--seed %d --end %s --span %v", gcfg.Seed, gcfg.End.UTC().Format(time.RFC3339Nano), gcfg.Span)
	fmt.Fprintf(out, "lookback loadtest: phase %s, %s; rules: models %s, windows click %v view %v\n",
		c.Phase, reproduce, c.Models, c.ClickWindow, c.ViewWindow)
	if place.Reason != "" {
		fmt.Fprintf(out, "event time: %s\n", place.Reason)
	}

	start := time.Now()
	stream := loadtest.Generate(gcfg)
	printStream(out, stream, time.Since(start))
	if err := place.CheckLive(time.Now()); err != nil {
		return err
	}

	s := &summary{stream: stream}
	var watcher *loadtest.DrainWatcher
	if c.Phase != "verify" {
		if c.Phase == "all" {
			// The baseline of the engine's counters, before any record.
			watcher, err = loadtest.WatchDrain(ctx, client, loadtest.DrainConfig{
				MetricsURL: metricsURL, Records: stream.Records(), Poll: 100 * time.Millisecond})
			if err != nil {
				return fmt.Errorf("watching the engine (is it running at --api %s?): %w", c.API, err)
			}
		}
		res, err := c.produce(ctx, stream, log)
		s.produced = &res
		if err != nil {
			s.print(out)
			return err
		}
		fmt.Fprintf(out, "produced %d records in %v: %.0f records/s\n", res.Records, res.Elapsed.Round(time.Millisecond), res.Rate())
		if c.Phase == "produce" {
			s.print(out)
			fmt.Fprintf(out, "verify with the same traffic and rules flags and: --phase verify %s\n", reproduce)
			return nil
		}
	}

	start = time.Now()
	want := loadtest.Expect(rules.Config(), stream.Events)
	s.expected = want
	fmt.Fprintf(out, "oracle: %d impressions, %d clicks, %d attribution rows for %d conversions (%d organic); %d duplicates, %d evictions, %d bid joins, in %v\n",
		len(want.Impressions), len(want.Clicks), len(want.Attributions), want.Conversions, want.Organic,
		want.Duplicates, want.Evictions, want.BidJoins, time.Since(start).Round(time.Millisecond))

	if watcher != nil {
		fmt.Fprintln(out, "waiting for the engine to drain...")
		d, err := watcher.Wait(ctx)
		s.drain, s.drainErr = &d, err
		if err != nil {
			s.print(out)
			return err
		}
		fmt.Fprintf(out, "drained: consumed in %v, durable after %v\n", d.Consumed.Sub(d.Started).Round(time.Millisecond), d.Elapsed().Round(time.Millisecond))
	}

	wh, err := loadtest.OpenWarehouse(ctx, wcfg)
	if err != nil {
		return err
	}
	defer wh.Close()
	s.warehouse = wh.Name()
	wait := loadtest.DefaultWaitConfig()
	if dl, ok := ctx.Deadline(); ok {
		wait.Timeout = max(time.Until(dl), time.Millisecond)
	}
	lastReport := time.Now()
	wait.Progress = func(v *loadtest.Verification) {
		if time.Since(lastReport) >= 5*time.Second {
			lastReport = time.Now()
			got, exp := v.Diff.Rows()
			fmt.Fprintf(out, "  warehouse: %d of %d rows...\n", got, exp)
		}
	}
	v, err := loadtest.Wait(ctx, wh, want.Want(), stream.UserSet(), wait)
	s.verification = v
	if err != nil && v == nil {
		s.print(out)
		return err
	}
	if err != nil {
		log.Warn("the warehouse did not settle", "err", err)
	}

	if c.Phase == "all" && c.Lookups > 0 {
		lcfg := loadtest.DefaultLookupConfig()
		lcfg.BaseURL, lcfg.Users, lcfg.Requests, lcfg.Concurrency, lcfg.Seed = c.API, stream.SeenUsers(), c.Lookups, c.LookupConcurrency, gcfg.Seed
		res, err := loadtest.Lookups(ctx, client, lcfg)
		s.lookups = &res
		if err != nil {
			log.Warn("lookups interrupted", "err", err)
		}
	}
	s.print(out)
	if !v.Equal() {
		return errFactsDiffer
	}
	return err
}

// placement decides where event times lie (see loadtest.Placement):
// --end and --span when --end is given (verify must regenerate the
// produced stream), else by --time, auto asking the engine.
func (c *loadtestCmd) placement(ctx context.Context, client *http.Client, metricsURL string) (loadtest.Placement, error) {
	now := time.Now()
	if c.End != "" {
		ms, err := attribution.ParseTime(c.End)
		if err != nil {
			return loadtest.Placement{}, fmt.Errorf("--end: %w", err)
		}
		return loadtest.Placement{End: time.UnixMilli(ms).UTC(), Span: c.Span}, nil
	}
	if c.Phase == "verify" {
		return loadtest.Placement{}, errors.New("--phase verify needs the --seed, --end and --span of the produce run (it printed them)")
	}
	if c.Time == "backlog" {
		p := loadtest.BacklogPlacement(now, c.Span)
		p.Reason = "a backlog (--time backlog): right only if the engine has no watermark yet"
		return p, nil
	}
	lag, ok, err := loadtest.EngineWatermarkLag(ctx, client, metricsURL)
	switch {
	case err != nil && c.Time == "live":
		return loadtest.Placement{}, fmt.Errorf("live traffic needs the engine's watermark: %w", err)
	case err != nil:
		p := loadtest.BacklogPlacement(now, c.Span)
		p.Reason = "a backlog: the engine is not reachable, so it will read the records when it starts"
		return p, nil
	case !ok && c.Time == "auto":
		p := loadtest.BacklogPlacement(now, c.Span)
		p.Reason = "a backlog: the engine has no watermark yet"
		return p, nil
	}
	p, err := loadtest.LivePlacement(now, c.AllowedLateness, lag)
	if err != nil {
		return p, err
	}
	p.Reason = fmt.Sprintf("live: the engine's watermark trails the clock by %v, so a backlog would arrive late; %v of event time just ahead of it (for a backlog, start the engine after producing)",
		lag.Round(time.Millisecond), p.Span)
	return p, nil
}

// genConfig is the traffic of the flags; a zero seed becomes the clock's.
func (c *loadtestCmd) genConfig(p loadtest.Placement) (loadtest.GenConfig, error) {
	cfg := loadtest.DefaultGenConfig()
	if c.Phase == "verify" && c.Seed == 0 {
		return cfg, errors.New("--phase verify needs the --seed, --end and --span of the produce run (it printed them)")
	}
	cfg.Seed = c.Seed
	if cfg.Seed == 0 {
		cfg.Seed = uint64(time.Now().UnixNano())
	}
	cfg.End, cfg.Span = p.End, p.Span
	cfg.Events, cfg.Users, cfg.Duplicates, cfg.Jitter = c.Events, c.Users, c.Duplicates, c.Jitter
	return cfg, cfg.Validate()
}

func (c *loadtestCmd) produce(ctx context.Context, stream *loadtest.Stream, log *slog.Logger) (loadtest.ProduceResult, error) {
	brokers, topics := c.brokers(), c.topics()
	if _, err := ensureTopics(ctx, brokers, topics, c.Partitions, log); err != nil {
		return loadtest.ProduceResult{}, err
	}
	pcfg := ingest.DefaultProducerConfig()
	pcfg.Brokers, pcfg.Topics, pcfg.ClientID = brokers, topics, "lookback-loadtest"
	producer, err := ingest.NewProducer(pcfg, log)
	if err != nil {
		return loadtest.ProduceResult{}, err
	}
	defer producer.Close()
	return loadtest.Produce(ctx, producer, stream, loadtest.ProduceConfig{
		Rate: c.Rate,
		Progress: func(sent int, elapsed time.Duration) {
			fmt.Fprintf(os.Stderr, "  %d of %d records sent (%.0f/s)\n", sent, stream.Records(), float64(sent)/elapsed.Seconds())
		},
	})
}

func printStream(w io.Writer, s *loadtest.Stream, took time.Duration) {
	fmt.Fprintf(w, "generated %d records (%d events + %d duplicates) for %d users over %v of event time, in %v:",
		s.Records(), s.Distinct, len(s.Events)-s.Distinct, len(s.Users), s.Config.Span, took.Round(time.Millisecond))
	for t := attribution.TypeBid; t <= attribution.TypeConversion; t++ {
		n := s.Count(t)
		fmt.Fprintf(w, " %d %ss (%.1f%%)", n, t, 100*float64(n)/float64(s.Records()))
	}
	fmt.Fprintln(w)
}

// summary collects what each phase found, for the closing report.
type summary struct {
	stream       *loadtest.Stream
	produced     *loadtest.ProduceResult
	expected     *loadtest.Expected
	drain        *loadtest.DrainResult
	drainErr     error
	warehouse    string
	verification *loadtest.Verification
	lookups      *loadtest.LookupResult
}

func (s *summary) print(w io.Writer) {
	fmt.Fprintln(w, "\n== summary ==")
	fmt.Fprintf(w, "events      %d records (%d distinct, %d duplicates), %d users, over %v of event time\n",
		s.stream.Records(), s.stream.Distinct, len(s.stream.Events)-s.stream.Distinct, len(s.stream.Users), s.stream.Config.Span)
	if p := s.produced; p != nil {
		fmt.Fprintf(w, "produced    %d records in %v: %.0f records/s", p.Records, p.Elapsed.Round(time.Millisecond), p.Rate())
		if p.Failed > 0 {
			fmt.Fprintf(w, ", %d FAILED", p.Failed)
		}
		fmt.Fprintln(w)
	}
	if d := s.drain; d != nil {
		if s.drainErr != nil {
			fmt.Fprintf(w, "drain       NOT FINISHED: %v\n", s.drainErr)
		} else {
			fmt.Fprintf(w, "drain       %d records consumed in %v (%.0f records/s); all applied after %v; durable (checkpointed) after %v: %.0f events/s\n",
				d.Records, d.Consumed.Sub(d.Started).Round(time.Millisecond), d.ConsumeRate(), d.Applied.Sub(d.Started).Round(time.Millisecond),
				d.Elapsed().Round(time.Millisecond), d.Rate())
		}
		line := fmt.Sprintf("engine      %.0f applied, %.0f duplicates, %.0f late, %.0f rejected, %.0f evicted, %.0f facts written",
			d.Applies, d.Duplicates, d.Late, d.Rejected, d.Evicted, d.FactsWritten)
		if e := s.expected; e != nil {
			line += fmt.Sprintf(" (oracle: %d duplicates, %d evictions)", e.Duplicates, e.Evictions)
		}
		fmt.Fprintln(w, line)
		if d.Late > 0 {
			fmt.Fprintf(w, "            %.0f records arrived after the engine's watermark had passed them: their facts depend on arrival order,\n"+
				"            and the oracle's may differ (a backlog needs an engine without a watermark yet; see --time)\n", d.Late)
		}
	}
	if l := s.lookups; l != nil {
		fmt.Fprintf(w, "lookups     %d GET /v1/users/{id} (%.0f/s): p50 %v, p95 %v, p99 %v, max %v; %d errors\n",
			l.Requests, l.Rate(), l.P50.Round(time.Microsecond), l.P95.Round(time.Microsecond), l.P99.Round(time.Microsecond), l.Max.Round(time.Microsecond), l.Errors)
		if l.FirstError != "" {
			fmt.Fprintf(w, "            first error: %s\n", l.FirstError)
		}
	}
	if v := s.verification; v != nil {
		got, want := v.Diff.Rows()
		verdict := "MATCH: the facts are exactly the oracle's"
		if !v.Equal() {
			verdict = "DIFFERENT from the oracle"
		}
		fmt.Fprintf(w, "verify      %s: %d rows, expected %d, %s (after %v", s.warehouse, got, want, verdict, v.Waited.Round(time.Millisecond))
		if v.Ignored > 0 {
			fmt.Fprintf(w, "; %d rows of other users ignored", v.Ignored)
		}
		fmt.Fprintln(w, ")")
		fmt.Fprint(w, v.Diff.String())
	}
}
