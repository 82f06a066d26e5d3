package loadtest

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"time"
)

// DrainConfig configures WatchDrain.
type DrainConfig struct {
	// MetricsURL is the engine's /metrics (with a cluster: one node's
	// counts are that node's share only; point it at a single node).
	MetricsURL string
	// Records is how many records the engine is to consume.
	Records int
	// Poll is the scrape interval, and so the resolution of the times.
	Poll time.Duration
}

// Validate reports the first problem with the configuration.
func (c *DrainConfig) Validate() error {
	switch {
	case c.MetricsURL == "":
		return errors.New("drain: no metrics URL")
	case c.Records < 1:
		return fmt.Errorf("drain: records %d: want at least 1", c.Records)
	case c.Poll <= 0:
		return fmt.Errorf("drain: poll %v: want positive", c.Poll)
	}
	return nil
}

// DrainResult is how the engine drained the records, from its metrics.
// Times are as seen by the scrapes (within one Poll), except Checkpointed,
// the engine's own timestamp.
type DrainResult struct {
	Records int
	// Started is when the engine consumed the first record, Consumed when
	// it had consumed them all.
	Started, Consumed time.Time
	// Applied is when the engine's statistics first accounted for every
	// record as applied, duplicate or rejected. The engine records them
	// as a checkpoint collects its users' facts; the last records wait in
	// its event-time buffers until the watermark passes them, which for a
	// finished backlog is the idle timeout (5 s by default) after the last
	// record.
	Applied time.Time
	// Checkpointed is when the first checkpoint that completed after
	// Applied did: the one that collected the last records or the next,
	// so the facts are durable and the offsets stored by then (at most
	// one checkpoint interval later than exactly).
	Checkpointed time.Time
	// Deltas of the engine's counters over the drain as of the last
	// scrape (Ingested: records consumed; Rejected: dead-lettered at
	// ingest or refused at application), and the records still buffered.
	Ingested, Applies, Duplicates, Late, Evicted, Rejected, FactsWritten float64
	Buffered                                                             float64
}

// Elapsed is the drain time: first record consumed to checkpointed.
func (r *DrainResult) Elapsed() time.Duration { return r.Checkpointed.Sub(r.Started) }

// Rate is the drain throughput in records per second, consumption to
// durable facts.
func (r *DrainResult) Rate() float64 { return perSecond(r.Records, r.Elapsed()) }

// ConsumeRate is the consumption throughput in records per second.
func (r *DrainResult) ConsumeRate() float64 { return perSecond(r.Records, r.Consumed.Sub(r.Started)) }

func perSecond(n int, d time.Duration) float64 {
	if d <= 0 {
		return math.Inf(1)
	}
	return float64(n) / d.Seconds()
}

// DrainWatcher follows an engine's metrics while it drains records.
type DrainWatcher struct {
	done chan struct{}
	res  DrainResult
	err  error
}

// WatchDrain scrapes the engine's counters once, as the baseline (call it
// before producing), then keeps scraping in the background until the
// records are consumed and checkpointed, or ctx ends.
func WatchDrain(ctx context.Context, client *http.Client, cfg DrainConfig) (*DrainWatcher, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	base, err := Scrape(ctx, client, cfg.MetricsURL)
	if err != nil {
		return nil, err
	}
	w := &DrainWatcher{done: make(chan struct{})}
	go func() {
		defer close(w.done)
		w.res, w.err = follow(ctx, client, cfg, base)
	}()
	return w, nil
}

// Wait waits for the drain to end, or for ctx or the watcher's context.
// An unfinished drain's result holds what was seen (the counters' deltas
// as of the last scrape), and the error says which stage it was in.
func (w *DrainWatcher) Wait(ctx context.Context) (DrainResult, error) {
	select {
	case <-w.done:
		return w.res, w.err
	case <-ctx.Done():
	}
	// The watcher usually shares ctx: give it a moment to say where it
	// stopped.
	select {
	case <-w.done:
		return w.res, w.err
	case <-time.After(time.Second):
		return DrainResult{}, fmt.Errorf("waiting for the drain: %w", ctx.Err())
	}
}

func follow(ctx context.Context, client *http.Client, cfg DrainConfig, base Metrics) (DrainResult, error) {
	res := DrainResult{Records: cfg.Records}
	records := float64(cfg.Records)
	prev := time.Now()
	tick := time.NewTicker(cfg.Poll)
	defer tick.Stop()
	var (
		lastErr     error
		checkpoints float64 // completed when Applied was seen
	)
	for {
		select {
		case <-ctx.Done():
			err := fmt.Errorf("drain not finished (%s; of %d records %.0f consumed, %.0f accounted for, %.0f buffered): %w",
				drainStage(&res), res.Records, res.Ingested, res.Applies+res.Duplicates+res.Rejected, res.Buffered, ctx.Err())
			if lastErr != nil {
				err = fmt.Errorf("%w (last scrape: %w)", err, lastErr)
			}
			return res, err
		case <-tick.C:
		}
		m, err := Scrape(ctx, client, cfg.MetricsURL)
		now := time.Now()
		if err != nil {
			if ctx.Err() == nil {
				lastErr = err
			}
			continue
		}
		lastErr = nil
		mid := prev.Add(now.Sub(prev) / 2) // the event happened between scrapes
		prev = now
		res.deltas(m, base)
		if res.Started.IsZero() && res.Ingested > 0 {
			res.Started = mid
		}
		if res.Consumed.IsZero() && res.Ingested >= records {
			res.Consumed = mid
		}
		completed := m.Sum(metricCheckpoints)
		if !res.Consumed.IsZero() && res.Applied.IsZero() && res.Applies+res.Duplicates+res.Rejected >= records {
			res.Applied, checkpoints = mid, completed
		}
		// The checkpoint that recorded the last statistics may still be
		// writing when they show: wait for a completion after they did.
		if !res.Applied.IsZero() && completed > checkpoints {
			if ts := m[metricLastCheckpoint].Max; ts > 0 {
				res.Checkpointed = time.Unix(0, int64(ts*1e9))
				return res, nil
			}
		}
	}
}

// deltas sets the counters' changes since base.
func (r *DrainResult) deltas(m, base Metrics) {
	d := func(names ...string) float64 {
		v := 0.0
		for _, n := range names {
			v += m.Sum(n) - base.Sum(n)
		}
		return v
	}
	r.Ingested = d(metricIngested)
	r.Applies, r.Duplicates, r.Late = d(metricApplied), d(metricDuplicates), d(metricLate)
	r.Evicted, r.FactsWritten = d(metricEvicted), d(metricFactsWritten)
	r.Rejected = d(metricDeadLetters, metricApplyPanics)
	r.Buffered = m.Sum(metricBuffered)
}

func drainStage(r *DrainResult) string {
	switch {
	case r.Started.IsZero():
		return "no record consumed"
	case r.Consumed.IsZero():
		return "still consuming"
	case r.Applied.IsZero():
		return "records not applied yet"
	}
	return "no checkpoint since"
}
