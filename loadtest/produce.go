package loadtest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lookback-dev/lookback/ingest"
)

// ProduceConfig configures Produce.
type ProduceConfig struct {
	// Rate is the target in records per second; 0 produces as fast as
	// Kafka takes them.
	Rate float64
	// Progress, when set, is called about once a second with the records
	// sent so far.
	Progress func(sent int, elapsed time.Duration)
}

// Validate reports the first problem with the configuration.
func (c *ProduceConfig) Validate() error {
	if c.Rate < 0 {
		return fmt.Errorf("rate %v: want 0 (as fast as possible) or more", c.Rate)
	}
	return nil
}

// ProduceResult is what Produce did.
type ProduceResult struct {
	Records int           // records acknowledged by Kafka
	Failed  int           // records refused or not acknowledged
	Elapsed time.Duration // from the first record sent to the last acknowledged
}

// Rate is the acknowledged records per second.
func (r ProduceResult) Rate() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Records) / r.Elapsed.Seconds()
}

// Produce sends every record of s in s.Order and waits until Kafka
// acknowledged them all. One goroutine sends, so each topic (and each of
// its partitions, the producer keying by user id) gets its records in the
// stream's order, and the topics advance together in event time: a topic
// produced ahead of the others would let the engine's watermark pass
// records of the others before they arrive, making them late.
//
// It returns an error when a record failed (the first error, with the
// count) or ctx ended; the result counts what was acknowledged anyway.
func Produce(ctx context.Context, p *ingest.Producer, s *Stream, cfg ProduceConfig) (ProduceResult, error) {
	if err := cfg.Validate(); err != nil {
		return ProduceResult{}, err
	}
	var (
		wg       sync.WaitGroup
		acked    atomic.Int64
		failed   atomic.Int64
		firstMu  sync.Mutex
		firstErr error
	)
	done := func(err error) {
		if err != nil {
			failed.Add(1)
			firstMu.Lock()
			if firstErr == nil {
				firstErr = err
			}
			firstMu.Unlock()
		} else {
			acked.Add(1)
		}
		wg.Done()
	}
	start := time.Now()
	lastProgress := start
	sent := 0
	for n, i := range s.Order {
		if ctx.Err() != nil {
			break
		}
		if cfg.Rate > 0 && n%64 == 0 {
			pace(ctx, start, n, cfg.Rate)
		}
		wg.Add(1)
		p.ProduceAsync(ctx, &s.Events[i], done)
		sent++
		if cfg.Progress != nil && n%1024 == 0 {
			if now := time.Now(); now.Sub(lastProgress) >= time.Second {
				lastProgress = now
				cfg.Progress(sent, now.Sub(start))
			}
		}
	}
	flushErr := p.Flush(ctx)
	wg.Wait()
	res := ProduceResult{Records: int(acked.Load()), Failed: int(failed.Load()) + len(s.Order) - sent, Elapsed: time.Since(start)}
	switch {
	case ctx.Err() != nil:
		return res, fmt.Errorf("producing: %d of %d records sent: %w", sent, len(s.Order), ctx.Err())
	case firstErr != nil:
		return res, fmt.Errorf("producing: %d of %d records failed, the first: %w", res.Failed, len(s.Order), firstErr)
	case flushErr != nil && !errors.Is(flushErr, context.Canceled):
		return res, fmt.Errorf("producing: flushing: %w", flushErr)
	}
	return res, nil
}

// pace sleeps until n records are due at rate records per second.
func pace(ctx context.Context, start time.Time, n int, rate float64) {
	due := start.Add(time.Duration(float64(n) / rate * float64(time.Second)))
	if d := time.Until(due); d > 0 {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-ctx.Done():
		case <-t.C:
		}
	}
}
