package loadtest

import (
	"context"
	"fmt"
	"net/http"
	"time"
)

// Placement is where a stream's event times lie (GenConfig.End and Span),
// chosen against the engine's watermark.
//
// The engine applies a record in event-time order only if it arrives
// before the partition's watermark passes its time; a later one is late,
// applied at once, and the facts then depend on arrival order (the oracle
// cannot predict them). An engine whose inputs have all been idle for the
// idle timeout (5 s) moves its watermark with the wall clock, minus the
// allowed lateness (10 s), and never back. So:
//
//   - Backlog: hours of event time ending a little before now. Right for an
//     engine that has no watermark yet: one that starts (or restarts)
//     after the records are produced, or started less than its idle
//     timeout ago. Windows, retention and joins across hours are then
//     exercised.
//   - Live: a few seconds of event time, just ahead of the watermark of an
//     engine that has been idle: the only events it can still apply in
//     order. Windows never expire within it; dedupe, joins, caps and the
//     models are exercised all the same.
type Placement struct {
	Live bool
	End  time.Time
	Span time.Duration
	// Reason says why, for reports.
	Reason string
	room   time.Duration // live: how far the watermark trails the clock
}

// BacklogPlacement is span of event time ending a minute before now.
func BacklogPlacement(now time.Time, span time.Duration) Placement {
	return Placement{End: now.Add(-time.Minute).Truncate(time.Millisecond), Span: span}
}

// LivePlacement fits the events between an idle engine's watermark and
// now. lateness is the engine's allowed lateness; lag, when positive, how
// far its most advanced watermark was seen to trail the clock (it bounds
// the room when the engine's lateness is smaller than the caller thinks).
// The span is half the room and ends a tenth of it before now: the other
// half is the margin for generating and producing the first records.
func LivePlacement(now time.Time, lateness, lag time.Duration) (Placement, error) {
	room := lateness
	if lag > 0 {
		room = min(room, lag)
	}
	if room < 2*time.Second {
		return Placement{}, fmt.Errorf("the engine's watermark trails the clock by only %v: no room for live traffic", room)
	}
	return Placement{Live: true, End: now.Add(-room / 10).Truncate(time.Millisecond), Span: (room / 2).Truncate(time.Millisecond), room: room}, nil
}

// EngineWatermarkLag reads how far the engine's most advanced partition
// watermark trails the wall clock (its lookback_watermark_lag_seconds);
// ok is false when no partition has a watermark yet.
func EngineWatermarkLag(ctx context.Context, client *http.Client, metricsURL string) (lag time.Duration, ok bool, err error) {
	m, err := Scrape(ctx, client, metricsURL)
	if err != nil {
		return 0, false, err
	}
	a, ok := m[metricWatermarkLag]
	if !ok || a.N == 0 {
		return 0, false, nil
	}
	return time.Duration(a.Min * float64(time.Second)), true, nil
}

// CheckLive reports whether a live stream generated from p is still ahead
// of an idle engine's watermark now (generation takes time).
func (p Placement) CheckLive(now time.Time) error {
	if !p.Live {
		return nil
	}
	start := p.End.Add(-p.Span)
	if margin := start.Sub(now.Add(-p.room)); margin < 500*time.Millisecond {
		return fmt.Errorf("live traffic starts %v ahead of the engine's watermark only: generating it took too long (use fewer --events)", margin)
	}
	return nil
}
