package attribution

import (
	"errors"
	"math"
	"time"
)

// NoWatermark is the watermark before any input has given it a value.
const NoWatermark int64 = math.MinInt64

// WatermarkConfig sets how a partition's watermark follows its inputs.
type WatermarkConfig struct {
	// AllowedLateness is how far behind the newest event of the slowest
	// input the watermark stays: out-of-order records within it still
	// apply in order.
	AllowedLateness time.Duration
	// IdleTimeout: an input with no new record for this long stops holding
	// the watermark back.
	IdleTimeout time.Duration
	// MaxSkew: an input whose newest event runs further ahead of the
	// watermark is paused until the others catch up.
	MaxSkew time.Duration
}

// DefaultWatermarkConfig returns the defaults of the spec.
func DefaultWatermarkConfig() WatermarkConfig {
	return WatermarkConfig{AllowedLateness: 10 * time.Second, IdleTimeout: 5 * time.Second, MaxSkew: 5 * time.Minute}
}

// Validate reports the first problem with the configuration.
func (c *WatermarkConfig) Validate() error {
	if c.AllowedLateness < 0 {
		return errors.New("allowed lateness must not be negative")
	}
	// The watermark counts in milliseconds, like event times.
	if c.IdleTimeout < time.Millisecond {
		return errors.New("idle timeout must be at least 1ms")
	}
	if c.MaxSkew < time.Millisecond {
		return errors.New("max skew must be at least 1ms")
	}
	return nil
}

// Watermark tracks one partition's event-time progress over its inputs
// (one per topic). It is pure: the caller passes the wall clock, in Unix
// milliseconds, to every method that needs it.
//
// The watermark is the minimum, over inputs that are not idle, of the
// newest event time seen minus the allowed lateness; when every input is
// idle it follows the wall clock (now minus the lateness). It never moves
// back. An input is idle when it has had no new record for the idle
// timeout; one that is known to have unread records (Active) or that is
// paused for running ahead is never idle, so that a backlog or a pause is
// not mistaken for silence.
type Watermark struct {
	lateness, idle, skew int64
	inputs               []wmInput
	current              int64
}

type wmInput struct {
	newest     int64 // newest event time seen, NoWatermark if none
	lastActive int64 // wall clock of the last sign of life
}

// NewWatermark returns the watermark of a partition with n inputs, all
// counted active as of now.
func NewWatermark(n int, cfg WatermarkConfig, now int64) *Watermark {
	w := &Watermark{
		lateness: cfg.AllowedLateness.Milliseconds(),
		idle:     cfg.IdleTimeout.Milliseconds(),
		skew:     cfg.MaxSkew.Milliseconds(),
		inputs:   make([]wmInput, n),
		current:  NoWatermark,
	}
	for i := range w.inputs {
		w.inputs[i] = wmInput{newest: NoWatermark, lastActive: now}
	}
	return w
}

// Current is the watermark: every record with a time at or before it has
// been released (or was late).
func (w *Watermark) Current() int64 { return w.current }

// Inputs is the number of inputs.
func (w *Watermark) Inputs() int { return len(w.inputs) }

// Newest is the newest event time seen on input i (NoWatermark if none).
func (w *Watermark) Newest(i int) int64 { return w.inputs[i].newest }

// Observe records that input i delivered a record with event time t.
func (w *Watermark) Observe(i int, t, now int64) {
	in := &w.inputs[i]
	if t > in.newest {
		in.newest = t
	}
	in.lastActive = now
}

// Active records that input i is known to have unread records (it lags
// behind its log's end), so it must not count as idle.
func (w *Watermark) Active(i int, now int64) { w.inputs[i].lastActive = now }

// Late reports whether a record with event time t would arrive after the
// watermark passed it.
func (w *Watermark) Late(t int64) bool { return t <= w.current }

// Advance recomputes the watermark as of now and returns it.
func (w *Watermark) Advance(now int64) int64 {
	next := int64(math.MaxInt64)
	allIdle := true
	for i := range w.inputs {
		in := &w.inputs[i]
		if w.Ahead(i) {
			in.lastActive = now // paused, not silent
		}
		if now-in.lastActive >= w.idle {
			continue
		}
		allIdle = false
		if in.newest == NoWatermark {
			next = NoWatermark // an active input not heard from yet holds everything
			continue
		}
		next = min(next, in.newest-w.lateness)
	}
	if allIdle {
		next = now - w.lateness
	}
	if next > w.current {
		w.current = next
	}
	return w.current
}

// Ahead reports whether input i runs more than the max skew ahead of the
// watermark, and so should be paused. Before the watermark has a value,
// inputs are measured against the slowest input heard from.
func (w *Watermark) Ahead(i int) bool {
	newest := w.inputs[i].newest
	if newest == NoWatermark {
		return false
	}
	base := w.current
	if base == NoWatermark {
		slowest := newest
		for _, in := range w.inputs {
			if in.newest != NoWatermark {
				slowest = min(slowest, in.newest)
			}
		}
		base = slowest - w.lateness
	}
	return newest-base > w.skew
}
