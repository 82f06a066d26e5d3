package loadtest

import (
	"errors"
	"fmt"
	"math"
	"time"
)

// Mix is the share of each event type among the distinct events. Shares
// are relative: they need not sum to 1.
type Mix struct {
	Bids, Impressions, Clicks, Conversions float64
}

// DefaultMix is a display funnel: most bids win an impression, about half
// the impressions are clicked, and a few users convert.
func DefaultMix() Mix { return Mix{Bids: 0.40, Impressions: 0.35, Clicks: 0.17, Conversions: 0.08} }

// GenConfig configures Generate. Start from DefaultGenConfig: the zero
// value is not valid.
type GenConfig struct {
	// Seed makes the stream reproducible: the same config (seed and End
	// included) gives the same stream, ids and all.
	Seed uint64
	// Events is the number of distinct events; duplicates come on top.
	Events int
	// Users is the number of users; 0 means Events/20 (at least 1). About
	// a tenth of them see no ad and only convert (organic traffic).
	Users int
	// End is the event time of the newest event. The span ends before the
	// wall clock so that no event is refused as too far in the future and
	// so that idle inputs let the engine's watermark pass everything.
	End time.Time
	// Span is the event time the stream covers, ending at End. It exceeds
	// the default view window so that windows matter.
	Span time.Duration
	// Duplicates is the fraction of Events re-sent: the same record again,
	// later in its topic.
	Duplicates float64
	// Jitter bounds the out-of-orderness of each topic: a record's event
	// time is never Jitter or more behind one produced before it in the
	// same topic. Keep it below the engine's allowed lateness (10 s by
	// default), or records arrive late and the facts depend on arrival.
	Jitter time.Duration
	// Mix is the share of each event type.
	Mix Mix
	// Organic is the fraction of conversions by users who saw no ad.
	Organic float64
	// Campaigns and CreativesPerCampaign size the pools that touches draw
	// from. Campaigns are named cmp-00, cmp-01, ...: see
	// SuggestedCampaignWindows.
	Campaigns            int
	CreativesPerCampaign int
}

// SuggestedCampaignWindows are per-campaign windows for the generated
// campaigns, in the form of the --campaign-windows flag: short enough to
// change answers within the default span. They apply only when the engine
// and the load test are both given them.
const SuggestedCampaignWindows = "cmp-00=6h/1h,cmp-01=/2h,cmp-02=30m/"

// DefaultGenConfig returns the defaults, with End a minute before now.
func DefaultGenConfig() GenConfig {
	return GenConfig{
		Seed:                 1,
		Events:               100_000,
		End:                  time.Now().Add(-time.Minute).Truncate(time.Millisecond),
		Span:                 48 * time.Hour,
		Duplicates:           0.02,
		Jitter:               2 * time.Second,
		Mix:                  DefaultMix(),
		Organic:              0.15,
		Campaigns:            10,
		CreativesPerCampaign: 4,
	}
}

// Validate reports the first problem with the configuration.
func (c *GenConfig) Validate() error {
	switch {
	case c.Events < 1:
		return fmt.Errorf("events %d: want at least 1", c.Events)
	case c.Events > math.MaxInt32/2:
		return fmt.Errorf("events %d: want at most %d", c.Events, math.MaxInt32/2)
	case c.Users < 0:
		return fmt.Errorf("users %d: want 0 (events/20) or more", c.Users)
	case c.End.IsZero():
		return errors.New("end time not set")
	case c.Span < time.Second:
		return fmt.Errorf("span %v: want at least 1s", c.Span)
	case c.Duplicates < 0 || c.Duplicates > 1:
		return fmt.Errorf("duplicates %v: want a fraction in [0, 1]", c.Duplicates)
	case c.Jitter < 0:
		return fmt.Errorf("jitter %v: want 0 or more", c.Jitter)
	case c.Organic < 0 || c.Organic > 1:
		return fmt.Errorf("organic %v: want a fraction in [0, 1]", c.Organic)
	case c.Campaigns < 1 || c.Campaigns > 100:
		return fmt.Errorf("campaigns %d: want 1 to 100", c.Campaigns)
	case c.CreativesPerCampaign < 1:
		return fmt.Errorf("creatives per campaign %d: want at least 1", c.CreativesPerCampaign)
	}
	m := c.Mix
	for _, v := range []float64{m.Bids, m.Impressions, m.Clicks, m.Conversions} {
		if v < 0 || math.IsNaN(v) || math.IsInf(v, 0) {
			return fmt.Errorf("mix %+v: shares must be finite and non-negative", m)
		}
	}
	if m.Bids+m.Impressions+m.Clicks+m.Conversions == 0 {
		return fmt.Errorf("mix %+v: all shares are zero", m)
	}
	return nil
}

// users is the effective number of users.
func (c *GenConfig) users() int {
	if c.Users > 0 {
		return c.Users
	}
	return max(1, c.Events/20)
}
