package loadtest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/lookback-dev/lookback/persist"
)

// Want returns the facts a warehouse must hold, normalized (a copy: e's
// own order is kept).
func (e *Expected) Want() *persist.Snapshot {
	s := &persist.Snapshot{
		Impressions:  slices.Clone(e.Impressions),
		Clicks:       slices.Clone(e.Clicks),
		Attributions: slices.Clone(e.Attributions),
	}
	s.Normalize()
	return s
}

// UserSet returns the stream's users as a set, for Filter.
func (s *Stream) UserSet() map[string]bool {
	m := make(map[string]bool, len(s.Users))
	for _, u := range s.Users {
		m[u] = true
	}
	return m
}

// Verification is the outcome of comparing a warehouse with the oracle.
type Verification struct {
	Diff *Diff
	// Ignored counts the warehouse's rows of users not in the stream.
	Ignored int
	// Waited is how long Wait polled.
	Waited time.Duration
}

// Equal reports whether the warehouse holds exactly the expected facts.
func (v *Verification) Equal() bool { return v.Diff != nil && v.Diff.Equal() }

// Verify reads the warehouse once and compares the facts of users (all
// of them when users is nil) with want (normalized, see Expected.Want).
func Verify(ctx context.Context, w persist.SnapshotReader, want *persist.Snapshot, users map[string]bool) (*Verification, error) {
	got, err := w.Snapshot(ctx)
	if err != nil {
		return nil, fmt.Errorf("reading the warehouse: %w", err)
	}
	v := &Verification{}
	if users != nil {
		v.Ignored = Filter(got, users)
	}
	got.Normalize()
	v.Diff = Compare(got, want)
	return v, nil
}

// WaitConfig configures Wait.
type WaitConfig struct {
	// Poll is the pause between reads; it grows to twice the time a read
	// takes, so that a large warehouse is not read back to back.
	Poll time.Duration
	// Stable is how long the warehouse must hold at least the expected
	// rows, unchanged, before Wait settles for facts that differ.
	Stable time.Duration
	// Timeout bounds the wait.
	Timeout time.Duration
	// Progress, when set, is called after each read.
	Progress func(v *Verification)
}

// DefaultWaitConfig returns the defaults.
func DefaultWaitConfig() WaitConfig {
	return WaitConfig{Poll: time.Second, Stable: 5 * time.Second, Timeout: 5 * time.Minute}
}

// Validate reports the first problem with the configuration.
func (c *WaitConfig) Validate() error {
	if c.Poll <= 0 || c.Stable < 0 || c.Timeout <= 0 {
		return fmt.Errorf("wait: poll %v, stable %v and timeout %v must be positive", c.Poll, c.Stable, c.Timeout)
	}
	return nil
}

// ErrWaitTimeout is returned by Wait when the warehouse neither matched
// nor settled in time.
var ErrWaitTimeout = errors.New("timed out waiting for the warehouse")

// Wait polls the warehouse until its facts of users match want, or it
// holds at least as many rows as want in every table and has not changed
// for cfg.Stable (the engine is done, and wrong), or cfg.Timeout passes.
// It returns the last verification, with ErrWaitTimeout on a timeout (and
// the last read error, if reads failed: the warehouse may not be migrated
// yet when the engine starts with the load test).
func Wait(ctx context.Context, w persist.SnapshotReader, want *persist.Snapshot, users map[string]bool, cfg WaitConfig) (*Verification, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	var (
		last, prev *persist.Snapshot
		lastV      *Verification
		lastErr    error
		since      time.Time // when the warehouse last changed
	)
	for {
		readStart := time.Now()
		got, err := w.Snapshot(ctx)
		took := time.Since(readStart)
		if err == nil {
			lastErr = nil
			v := &Verification{}
			if users != nil {
				v.Ignored = Filter(got, users)
			}
			got.Normalize()
			v.Diff = Compare(got, want)
			v.Waited = time.Since(start)
			lastV, prev, last = v, last, got
			if cfg.Progress != nil {
				cfg.Progress(v)
			}
			if v.Equal() {
				return v, nil
			}
			if prev == nil || !Compare(last, prev).Equal() {
				since = time.Now()
			} else if complete(v.Diff) && time.Since(since) >= cfg.Stable {
				return v, nil
			}
		} else if ctx.Err() == nil {
			lastErr = err
		}
		pause := max(cfg.Poll, 2*took)
		select {
		case <-ctx.Done():
			if lastV != nil {
				lastV.Waited = time.Since(start)
			}
			if lastErr != nil {
				return lastV, fmt.Errorf("%w (last read: %w)", ErrWaitTimeout, lastErr)
			}
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return lastV, ErrWaitTimeout
			}
			return lastV, ctx.Err()
		case <-time.After(pause):
		}
	}
}

// complete reports whether every table holds at least the rows expected.
func complete(d *Diff) bool {
	for _, t := range d.Tables {
		if t.Got < t.Want {
			return false
		}
	}
	return true
}
