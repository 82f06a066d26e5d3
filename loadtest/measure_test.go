package loadtest

import (
	"context"
	"fmt"
	"math"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestParseMetrics(t *testing.T) {
	text := `# HELP lookback_ingest_records_total Records read.
# TYPE lookback_ingest_records_total counter
lookback_ingest_records_total{outcome="ok",topic="clicks"} 10
lookback_ingest_records_total{outcome="dead_letter",topic="we{ird} \"topic\""} 2.5
lookback_ingest_records_total{outcome="ok",topic="bids"} 1e3 1795860000000
lookback_watermark_lag_seconds{partition="0"} 12.5
lookback_watermark_lag_seconds{partition="1"} 10
lookback_checkpoint_duration_seconds_bucket{le="+Inf"} 4
lookback_checkpoint_duration_seconds_sum 1.5
lookback_checkpoint_duration_seconds_count 4
go_gc_gogc_percent NaN

lookback_backpressure_active 0
`
	m, err := ParseMetrics(strings.NewReader(text))
	if err != nil {
		t.Fatal(err)
	}
	if got := m.Sum(metricIngested); got != 1012.5 {
		t.Errorf("ingested sum %v, want 1012.5", got)
	}
	if a := m[metricWatermarkLag]; a.N != 2 || a.Min != 10 || a.Max != 12.5 {
		t.Errorf("lag %+v", a)
	}
	if m.Sum(metricCheckpoints) != 4 || m.Sum("lookback_checkpoint_duration_seconds_bucket") != 4 {
		t.Errorf("histogram parts: %+v", m)
	}
	if !math.IsNaN(m.Sum("go_gc_gogc_percent")) || m["lookback_backpressure_active"].N != 1 {
		t.Errorf("gauges: %+v", m)
	}
	for _, bad := range []string{"lookback_x{a=\"b\" 1\n", "lookback_x one\n", "lookback_x\n"} {
		if _, err := ParseMetrics(strings.NewReader(bad)); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// fakeEngine serves /metrics from counters a test moves.
type fakeEngine struct {
	mu                                      sync.Mutex
	ingested, applied, dups, buffered, late float64
	checkpoints                             float64
	lastCheckpoint                          time.Time
}

func (f *fakeEngine) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fmt.Fprintf(w, "lookback_ingest_records_total{outcome=\"ok\",topic=\"clicks\"} %g\n", f.ingested)
	fmt.Fprintf(w, "lookback_events_applied_total{type=\"click\"} %g\n", f.applied)
	fmt.Fprintf(w, "lookback_events_duplicate_total %g\n", f.dups)
	fmt.Fprintf(w, "lookback_events_late_total %g\n", f.late)
	fmt.Fprintf(w, "lookback_buffered_records{partition=\"0\"} %g\n", f.buffered)
	fmt.Fprintf(w, "lookback_checkpoint_duration_seconds_count %g\n", f.checkpoints)
	if !f.lastCheckpoint.IsZero() {
		fmt.Fprintf(w, "lookback_checkpoint_last_success_timestamp_seconds %.6f\n", float64(f.lastCheckpoint.UnixNano())/1e9)
	}
}

func (f *fakeEngine) set(fn func(f *fakeEngine)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

func (f *fakeEngine) checkpoint() {
	f.set(func(f *fakeEngine) { f.checkpoints++; f.lastCheckpoint = time.Now() })
}

func TestWatchDrain(t *testing.T) {
	eng := &fakeEngine{ingested: 500, applied: 480, dups: 20} // an earlier run
	srv := httptest.NewServer(eng)
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	w, err := WatchDrain(ctx, srv.Client(), DrainConfig{MetricsURL: srv.URL, Records: 1000, Poll: 5 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	step := func() { time.Sleep(30 * time.Millisecond) }
	eng.checkpoint()
	step()
	eng.set(func(f *fakeEngine) { f.ingested += 400; f.buffered = 400 })
	step()
	eng.set(func(f *fakeEngine) { f.ingested += 600; f.buffered = 1000 })
	step()
	eng.checkpoint() // collected nothing: the records are buffered
	step()
	// The watermark passes: the next checkpoint records the statistics,
	// is still writing when they show, and completes later.
	eng.set(func(f *fakeEngine) { f.buffered = 0; f.applied += 980; f.dups += 20 })
	step()
	beforeLast := time.Now()
	step()
	eng.checkpoint()
	res, err := w.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if res.Applies != 980 || res.Duplicates != 20 || res.Ingested != 1000 || res.Late != 0 {
		t.Fatalf("deltas: %+v", res)
	}
	if !(res.Started.Before(res.Consumed) && res.Consumed.Before(res.Applied) && res.Applied.Before(res.Checkpointed)) {
		t.Fatalf("times out of order: %+v", res)
	}
	if res.Checkpointed.Before(beforeLast) {
		t.Fatalf("checkpointed at %v: the checkpoint that completed before the statistics showed, not after", res.Checkpointed)
	}
	if res.Rate() <= 0 || res.ConsumeRate() <= res.Rate() {
		t.Fatalf("rates %v, %v", res.Rate(), res.ConsumeRate())
	}
}

func TestWatchDrainUnfinished(t *testing.T) {
	eng := &fakeEngine{}
	srv := httptest.NewServer(eng)
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	w, err := WatchDrain(ctx, srv.Client(), DrainConfig{MetricsURL: srv.URL, Records: 10, Poll: 5 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	eng.set(func(f *fakeEngine) { f.ingested = 10; f.buffered = 10 })
	res, err := w.Wait(ctx)
	if err == nil || !strings.Contains(err.Error(), "not applied yet") || res.Ingested != 10 {
		t.Fatalf("err %v, result %+v", err, res)
	}
	if _, err := WatchDrain(ctx, srv.Client(), DrainConfig{MetricsURL: srv.URL}); err == nil {
		t.Fatal("no records accepted")
	}
}

func TestLookups(t *testing.T) {
	var mu sync.Mutex
	seen := map[string]int{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		user := strings.TrimPrefix(r.URL.Path, "/v1/users/")
		mu.Lock()
		seen[user]++
		mu.Unlock()
		if user == "gone" {
			w.WriteHeader(http.StatusNotFound)
			fmt.Fprint(w, `{"error":"user \"gone\" not found"}`)
			return
		}
		fmt.Fprintf(w, `{"user_id":%q}`, user)
	}))
	defer srv.Close()
	cfg := DefaultLookupConfig()
	cfg.BaseURL, cfg.Users, cfg.Requests, cfg.Concurrency = srv.URL+"/", []string{"a", "b/c", "gone"}, 300, 4
	res, err := Lookups(context.Background(), HTTPClient(4, time.Second), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if res.Requests != 300 || res.Errors != seen["gone"] || res.Errors == 0 || !strings.Contains(res.FirstError, "404") {
		t.Fatalf("result %+v, seen %v", res, seen)
	}
	if seen["b/c"] == 0 || seen["a"]+seen["b/c"]+seen["gone"] != 300 {
		t.Fatalf("users looked up: %v (an escaped id must reach the server whole)", seen)
	}
	if !(0 < res.P50 && res.P50 <= res.P95 && res.P95 <= res.P99 && res.P99 <= res.Max) {
		t.Fatalf("percentiles %v %v %v %v", res.P50, res.P95, res.P99, res.Max)
	}
}

func TestPlacement(t *testing.T) {
	now := time.UnixMilli(1795860000000)
	p, err := LivePlacement(now, 10*time.Second, 0)
	if err != nil {
		t.Fatal(err)
	}
	start := p.End.Add(-p.Span)
	if !p.Live || p.End.After(now) || !start.After(now.Add(-10*time.Second)) || p.Span < 4*time.Second {
		t.Fatalf("live placement %+v: want seconds of event time after now-10s and before now", p)
	}
	if err := p.CheckLive(now.Add(time.Second)); err != nil {
		t.Fatalf("a second later: %v", err)
	}
	if err := p.CheckLive(now.Add(5 * time.Second)); err == nil {
		t.Fatal("5 s later the stream would be late, and CheckLive accepted it")
	}
	// An engine with a smaller lateness than we were told: its lag rules.
	if p, _ := LivePlacement(now, 10*time.Second, 4*time.Second); p.End.Add(-p.Span).Before(now.Add(-4 * time.Second)) {
		t.Fatalf("placement %+v starts behind a watermark 4 s behind now", p)
	}
	if _, err := LivePlacement(now, 10*time.Second, time.Second); err == nil {
		t.Fatal("no room, and a placement")
	}
	b := BacklogPlacement(now, 48*time.Hour)
	if b.Live || !b.End.Before(now) || b.Span != 48*time.Hour || b.CheckLive(now.Add(time.Hour)) != nil {
		t.Fatalf("backlog placement %+v", b)
	}
}
