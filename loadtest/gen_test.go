package loadtest

import (
	"math"
	"reflect"
	"regexp"
	"testing"
	"time"

	"github.com/lookback-dev/lookback/attribution"
	"github.com/lookback-dev/lookback/ingest"
)

// testEnd is a fixed end of event time: 2026-11-28T10:00:00Z.
var testEnd = time.UnixMilli(1795860000000).UTC()

func testGenConfig(events int) GenConfig {
	cfg := DefaultGenConfig()
	cfg.Seed, cfg.End, cfg.Events = 42, testEnd, events
	return cfg
}

func TestGenerateDeterministic(t *testing.T) {
	cfg := testGenConfig(5000)
	a, b := Generate(cfg), Generate(cfg)
	if !reflect.DeepEqual(a, b) {
		t.Fatal("the same config gave two different streams")
	}
	cfg.Seed++
	c := Generate(cfg)
	if reflect.DeepEqual(a.Events, c.Events) || a.Users[0] == c.Users[0] {
		t.Fatal("another seed gave the same stream")
	}
	cfg.Seed--
	cfg.End = cfg.End.Add(time.Hour)
	if d := Generate(cfg); d.Events[0].ID == a.Events[0].ID {
		t.Fatal("another end time reused the ids: a rerun would be all duplicates to the engine")
	}
}

func TestGenerateMix(t *testing.T) {
	cfg := testGenConfig(100_000)
	s := Generate(cfg)
	if s.Distinct != cfg.Events || len(s.Events) != cfg.Events+2000 || s.Records() != len(s.Events) {
		t.Fatalf("%d distinct, %d events, %d records; want %d, %d", s.Distinct, len(s.Events), s.Records(), cfg.Events, cfg.Events+2000)
	}
	var n [5]int
	for _, e := range s.Events[:s.Distinct] {
		n[e.Type]++
	}
	m := cfg.Mix
	for typ, share := range map[attribution.Type]float64{
		attribution.TypeBid: m.Bids, attribution.TypeImpression: m.Impressions,
		attribution.TypeClick: m.Clicks, attribution.TypeConversion: m.Conversions,
	} {
		if want := share * float64(cfg.Events); math.Abs(float64(n[typ])-want) > 1 {
			t.Errorf("%d %ss, want %.0f", n[typ], typ, want)
		}
	}

	// The funnel: impressions name bids of their user, clicks name
	// impressions, a share of conversions are by users who saw no ad.
	byID := map[string]*attribution.Event{}
	for i := range s.Events[:s.Distinct] {
		byID[s.Events[i].ID] = &s.Events[i]
	}
	var named, joinable, before, clicksNaming, organic, convs int
	exposed := map[string]bool{}
	for i := range s.Events[:s.Distinct] {
		e := &s.Events[i]
		switch e.Type {
		case attribution.TypeImpression:
			exposed[e.UserID] = true
			if e.AuctionID == "" {
				continue
			}
			named++
			if b := byID[e.AuctionID]; b != nil && b.Type == attribution.TypeBid && b.UserID == e.UserID {
				joinable++
				if e.Time < b.Time {
					before++
				}
			}
		case attribution.TypeClick:
			exposed[e.UserID] = true
			if imp := byID[e.ImpressionID]; imp != nil && imp.UserID == e.UserID && imp.Time <= e.Time {
				clicksNaming++
			}
		case attribution.TypeBid:
			exposed[e.UserID] = true
		}
	}
	for i := range s.Events[:s.Distinct] {
		if e := &s.Events[i]; e.Type == attribution.TypeConversion {
			convs++
			if !exposed[e.UserID] {
				organic++
			}
		}
	}
	imps, clicks := n[attribution.TypeImpression], n[attribution.TypeClick]
	checkShare(t, "impressions naming an auction", named, imps, 0.85, 0.95)
	checkShare(t, "impressions naming a bid of their user", joinable, imps, 0.85, 0.92)
	checkShare(t, "joined impressions before their bid", before, joinable, 0.02, 0.08)
	checkShare(t, "clicks naming an earlier impression of their user", clicksNaming, clicks, 0.75, 0.85)
	checkShare(t, "conversions by users who saw no ad", organic, convs, 0.10, 0.20)
}

func checkShare(t *testing.T, what string, n, of int, lo, hi float64) {
	t.Helper()
	if share := float64(n) / float64(of); share < lo || share > hi {
		t.Errorf("%s: %d of %d (%.3f), want %.2f to %.2f", what, n, of, share, lo, hi)
	}
}

var uuidRE = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

func TestGenerateValidEvents(t *testing.T) {
	cfg := testGenConfig(20_000)
	s := Generate(cfg)
	if s.End != cfg.End.UnixMilli() || s.Start != s.End-cfg.Span.Milliseconds() {
		t.Fatalf("span %d..%d, want %v ending %v", s.Start, s.End, cfg.Span, cfg.End)
	}
	ids := map[string]bool{}
	var enc ingest.ValueEncoder
	for i := range s.Events[:s.Distinct] {
		e := s.Events[i]
		if !uuidRE.MatchString(e.ID) || !uuidRE.MatchString(e.UserID) {
			t.Fatalf("event %d: id %q, user %q: want UUIDs", i, e.ID, e.UserID)
		}
		if ids[e.ID] {
			t.Fatalf("event %d: id %s used twice", i, e.ID)
		}
		ids[e.ID] = true
		if e.Time < s.Start || e.Time > s.End {
			t.Fatalf("event %d at %d, outside %d..%d", i, e.Time, s.Start, s.End)
		}
		norm := e
		norm.Normalize()
		if !reflect.DeepEqual(norm, e) {
			t.Fatalf("event %d changes when normalized: %+v", i, e)
		}
		if err := e.Validate(); err != nil {
			t.Fatalf("event %d: %v: %+v", i, err, e)
		}
		if _, err := enc.Append(nil, &e); err != nil {
			t.Fatalf("event %d cannot be encoded: %v", i, err)
		}
	}
}

func TestGenerateDuplicatesAndOrder(t *testing.T) {
	for _, jitter := range []time.Duration{0, 2 * time.Second, 9 * time.Second} {
		cfg := testGenConfig(30_000)
		cfg.Jitter, cfg.Duplicates = jitter, 0.05
		s := Generate(cfg)
		if got, want := len(s.Events)-s.Distinct, 1500; got != want {
			t.Fatalf("jitter %v: %d duplicates, want %d", jitter, got, want)
		}
		// Every duplicate is an exact copy of a distinct event.
		orig := map[string]int{}
		for i := range s.Events[:s.Distinct] {
			orig[s.Events[i].ID] = i
		}
		for i := s.Distinct; i < len(s.Events); i++ {
			j, ok := orig[s.Events[i].ID]
			if !ok || !reflect.DeepEqual(s.Events[i], s.Events[j]) {
				t.Fatalf("record %d is not a copy of a distinct event: %+v", i, s.Events[i])
			}
		}
		// Each record once in Order; a duplicate after its original.
		pos := make([]int, len(s.Events))
		for i := range pos {
			pos[i] = -1
		}
		for p, i := range s.Order {
			if pos[i] >= 0 {
				t.Fatalf("record %d twice in Order", i)
			}
			pos[i] = p
		}
		for i := s.Distinct; i < len(s.Events); i++ {
			if o := orig[s.Events[i].ID]; pos[i] < pos[o] {
				t.Fatalf("duplicate %d produced at %d, before its original at %d", i, pos[i], pos[o])
			}
		}
		// Within each topic, no record is Jitter or more behind one
		// produced before it; and the topics are out of order at all.
		var disorder int
		for typ := attribution.TypeBid; typ <= attribution.TypeConversion; typ++ {
			newest := s.Start
			for _, e := range s.Topic(typ) {
				if behind := newest - e.Time; behind >= jitter.Milliseconds() && behind > 0 {
					t.Fatalf("jitter %v: %s at %d produced after one at %d", jitter, typ, e.Time, newest)
				} else if behind > 0 {
					disorder++
				}
				newest = max(newest, e.Time)
			}
		}
		if jitter > 0 && disorder == 0 {
			t.Fatalf("jitter %v: every topic is in order", jitter)
		}
	}
}

func TestGenerateSmallAndSkewed(t *testing.T) {
	for _, cfg := range []GenConfig{
		func() GenConfig { c := testGenConfig(1); return c }(),
		func() GenConfig { c := testGenConfig(50); c.Users = 3; return c }(),
		func() GenConfig { c := testGenConfig(500); c.Mix = Mix{Clicks: 1, Conversions: 1}; return c }(),
		func() GenConfig { c := testGenConfig(500); c.Mix = Mix{Conversions: 1}; c.Organic = 0; return c }(),
		func() GenConfig { c := testGenConfig(500); c.Mix = Mix{Bids: 1, Impressions: 5}; return c }(),
	} {
		s := Generate(cfg)
		if s.Distinct != cfg.Events || s.Records() < cfg.Events {
			t.Fatalf("%+v: %d distinct, %d records", cfg.Mix, s.Distinct, s.Records())
		}
		for i := range s.Events {
			if err := s.Events[i].Validate(); err != nil {
				t.Fatalf("%+v: %v", cfg.Mix, err)
			}
		}
	}
}

func TestGenConfigValidate(t *testing.T) {
	for name, edit := range map[string]func(*GenConfig){
		"no events":      func(c *GenConfig) { c.Events = 0 },
		"no end":         func(c *GenConfig) { c.End = time.Time{} },
		"short span":     func(c *GenConfig) { c.Span = time.Millisecond },
		"duplicates > 1": func(c *GenConfig) { c.Duplicates = 2 },
		"negative":       func(c *GenConfig) { c.Jitter = -time.Second },
		"empty mix":      func(c *GenConfig) { c.Mix = Mix{} },
		"NaN mix":        func(c *GenConfig) { c.Mix.Bids = math.NaN() },
	} {
		cfg := testGenConfig(10)
		edit(&cfg)
		if cfg.Validate() == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	cfg := DefaultGenConfig()
	if err := cfg.Validate(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
}

// BenchmarkGenerate measures generation per million events.
func BenchmarkGenerate(b *testing.B) {
	cfg := testGenConfig(1_000_000)
	for i := 0; i < b.N; i++ {
		Generate(cfg)
	}
}
