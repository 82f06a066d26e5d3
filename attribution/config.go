package attribution

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// Model is an attribution model: a way to split a conversion's credit over
// its path.
type Model uint8

const (
	LastTouch Model = iota + 1
	FirstTouch
	Linear
	TimeDecay
	PositionBased
)

var modelNames = [...]string{"", "last_touch", "first_touch", "linear", "time_decay", "position_based"}

// AllModels lists every model, in a fixed order.
var AllModels = []Model{LastTouch, FirstTouch, Linear, TimeDecay, PositionBased}

func (m Model) String() string {
	if int(m) < len(modelNames) && m != 0 {
		return modelNames[m]
	}
	return fmt.Sprintf("model(%d)", uint8(m))
}

// ParseModel reads a model name as String writes it.
func ParseModel(s string) (Model, error) {
	for i, n := range modelNames {
		if i > 0 && n == s {
			return Model(i), nil
		}
	}
	return 0, fmt.Errorf("unknown attribution model %q (want one of %s)", s, strings.Join(modelNames[1:], ", "))
}

// ParseModels reads a comma-separated list of model names.
func ParseModels(s string) ([]Model, error) {
	var ms []Model
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		m, err := ParseModel(part)
		if err != nil {
			return nil, err
		}
		ms = append(ms, m)
	}
	return ms, nil
}

// Windows are lookback windows. In a campaign override a zero field means
// "the global value".
type Windows struct {
	Click time.Duration
	View  time.Duration
}

// Config holds the attribution rules. The zero value is not valid: start
// from DefaultConfig.
type Config struct {
	// Windows are the global lookback windows.
	Windows Windows
	// CampaignWindows override the windows for touches of a campaign.
	CampaignWindows map[string]Windows
	// Models are the enabled models; each yields its own credits.
	Models []Model
	// HalfLife is time_decay's half life.
	HalfLife time.Duration
	// MaxTouchesPerUser caps the touches kept per user; the oldest go first.
	MaxTouchesPerUser int
	// MaxConversionsPerUser caps the conversions kept per user for dedupe
	// and lookups; the oldest go first. It bounds the memory of a user who
	// converts without end (a bot); dedupe of an evicted conversion is lost.
	MaxConversionsPerUser int
}

// DefaultConfig returns the defaults of the spec.
func DefaultConfig() Config {
	return Config{
		Windows:               Windows{Click: 7 * 24 * time.Hour, View: 24 * time.Hour},
		Models:                []Model{LastTouch},
		HalfLife:              7 * 24 * time.Hour,
		MaxTouchesPerUser:     200,
		MaxConversionsPerUser: 1000,
	}
}

// Validate reports the first problem with the configuration.
func (c *Config) Validate() error {
	// Event times have millisecond precision; so do windows.
	if c.Windows.Click < time.Millisecond || c.Windows.View < time.Millisecond {
		return errors.New("click and view windows must be at least 1ms")
	}
	for camp, w := range c.CampaignWindows {
		if w.Click < 0 || w.View < 0 || w.Click > 0 && w.Click < time.Millisecond || w.View > 0 && w.View < time.Millisecond {
			return fmt.Errorf("campaign %q: windows must be 0 (the global one) or at least 1ms", camp)
		}
	}
	if len(c.Models) == 0 {
		return errors.New("at least one attribution model must be enabled")
	}
	seen := map[Model]bool{}
	for _, m := range c.Models {
		if m < LastTouch || m > PositionBased {
			return fmt.Errorf("unknown attribution model %d", m)
		}
		if seen[m] {
			return fmt.Errorf("model %s listed twice", m)
		}
		seen[m] = true
	}
	if c.HalfLife < time.Millisecond {
		return errors.New("time_decay half life must be at least 1ms")
	}
	if c.MaxTouchesPerUser < 1 {
		return errors.New("max touches per user must be at least 1")
	}
	if c.MaxConversionsPerUser < 1 {
		return errors.New("max conversions per user must be at least 1")
	}
	return nil
}

// Rules are a validated Config compiled for the hot path (windows in
// milliseconds). A Rules is immutable and safe for concurrent use.
type Rules struct {
	cfg         Config
	click, view int64
	campaigns   map[string]windowsMS
	halfLife    float64
	maxView     int64 // longest view window of any campaign: bid retention
	maxWindow   int64 // longest window of any kind: conversion retention
	// maxForgotten bounds the evicted ids a state remembers for dedupe.
	maxForgotten int
}

type windowsMS struct{ click, view int64 }

// NewRules validates cfg and compiles it.
func NewRules(cfg Config) (*Rules, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	r := &Rules{
		cfg:      cfg,
		click:    cfg.Windows.Click.Milliseconds(),
		view:     cfg.Windows.View.Milliseconds(),
		halfLife: float64(cfg.HalfLife.Milliseconds()),
	}
	r.cfg.Models = append([]Model(nil), cfg.Models...)
	r.maxForgotten = max(4*cfg.MaxTouchesPerUser, 256)
	r.maxView, r.maxWindow = r.view, max(r.click, r.view)
	if len(cfg.CampaignWindows) > 0 {
		r.campaigns = make(map[string]windowsMS, len(cfg.CampaignWindows))
		r.cfg.CampaignWindows = make(map[string]Windows, len(cfg.CampaignWindows))
		for camp, w := range cfg.CampaignWindows {
			r.cfg.CampaignWindows[camp] = w
			cw := windowsMS{click: r.click, view: r.view}
			if w.Click > 0 {
				cw.click = w.Click.Milliseconds()
			}
			if w.View > 0 {
				cw.view = w.View.Milliseconds()
			}
			r.campaigns[camp] = cw
			r.maxView = max(r.maxView, cw.view)
			r.maxWindow = max(r.maxWindow, cw.click, cw.view)
		}
	}
	return r, nil
}

// MustRules is NewRules for configurations known to be valid (tests,
// examples); it panics on an invalid one.
func MustRules(cfg Config) *Rules {
	r, err := NewRules(cfg)
	if err != nil {
		panic(err)
	}
	return r
}

// Config returns a copy of the configuration the rules were built from.
func (r *Rules) Config() Config {
	c := r.cfg
	c.Models = append([]Model(nil), r.cfg.Models...)
	return c
}

// Models returns the enabled models. The slice must not be modified.
func (r *Rules) Models() []Model { return r.cfg.Models }

// Window returns the lookback window, in milliseconds, of a touch of type t
// in campaign.
func (r *Rules) Window(t Type, campaign string) int64 {
	w := windowsMS{click: r.click, view: r.view}
	if r.campaigns != nil {
		if cw, ok := r.campaigns[campaign]; ok {
			w = cw
		}
	}
	if t == TypeClick {
		return w.click
	}
	return w.view
}
