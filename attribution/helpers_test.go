package attribution

import (
	"encoding/json"
	"math"
	"os"
	"sort"
	"testing"
	"time"
)

// jsonEvent is the vectors' event shape (the HTTP API's JSON form).
type jsonEvent struct {
	Type           string  `json:"type"`
	UserID         string  `json:"user_id"`
	ImpressionID   string  `json:"impression_id"`
	ClickID        string  `json:"click_id"`
	ConversionID   string  `json:"conversion_id"`
	Timestamp      string  `json:"timestamp"`
	CreativeID     string  `json:"ad_creative_id"`
	CampaignID     string  `json:"campaign_id"`
	Website        string  `json:"website"`
	AuctionID      string  `json:"auction_id"`
	ConversionType string  `json:"conversion_type"`
	Value          float64 `json:"value"`
	Currency       string  `json:"currency"`
}

func (j jsonEvent) event(t testing.TB) Event {
	t.Helper()
	typ, err := ParseType(j.Type)
	if err != nil {
		t.Fatal(err)
	}
	ts, err := ParseTime(j.Timestamp)
	if err != nil {
		t.Fatal(err)
	}
	ev := Event{
		Type: typ, UserID: j.UserID, Time: ts, CreativeID: j.CreativeID, CampaignID: j.CampaignID,
		Website: j.Website, AuctionID: j.AuctionID, ConversionType: j.ConversionType,
		Value: j.Value, Currency: j.Currency,
	}
	switch typ {
	case TypeImpression:
		ev.ID = j.ImpressionID
	case TypeClick:
		ev.ID = j.ClickID
		ev.ImpressionID = j.ImpressionID
	case TypeConversion:
		ev.ID = j.ConversionID
	}
	ev.Normalize()
	if err := ev.Validate(); err != nil {
		t.Fatalf("vector event %+v: %v", j, err)
	}
	return ev
}

type vector struct {
	Name   string                                   `json:"name"`
	Events []jsonEvent                              `json:"events"`
	Expect map[string]map[string]map[string]float64 `json:"expect"`
}

func loadVectors(t testing.TB) []vector {
	t.Helper()
	data, err := os.ReadFile("testdata/vectors.json")
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		Vectors []vector `json:"vectors"`
	}
	if err := json.Unmarshal(data, &f); err != nil {
		t.Fatal(err)
	}
	return f.Vectors
}

// credits maps conversion id -> model name -> touch id ("" for organic) ->
// credit, the shape of the vectors' expectations.
type credits map[string]map[string]map[string]float64

func creditsOf(facts *Facts) credits {
	out := credits{}
	for i := range facts.Conversions {
		f := &facts.Conversions[i]
		byModel := map[string]map[string]float64{}
		for _, row := range f.AppendRows(nil) {
			m := byModel[row.Model.String()]
			if m == nil {
				m = map[string]float64{}
				byModel[row.Model.String()] = m
			}
			m[row.TouchID] += row.Credit
		}
		out[f.ID] = byModel
	}
	return out
}

// inputOf is the input (topic) a record of type t arrives on.
func inputOf(t Type) int { return int(t) - 1 }

// runSequenced delivers events through a Sequencer in the given arrival
// order, one user state per user, and returns every fact produced. The
// wall clock starts at the earliest event time and advances by tick per
// delivered record; at the end every input goes idle, which flushes.
func runSequenced(t testing.TB, r *Rules, wm WatermarkConfig, events []Event, tick time.Duration) (*Facts, *Sequencer) {
	t.Helper()
	states := map[string]*State{}
	facts := &Facts{}
	apply := func(ev *Event) {
		s := states[ev.UserID]
		if s == nil {
			s = &State{}
			states[ev.UserID] = s
		}
		if _, err := r.Apply(s, ev, facts); err != nil {
			t.Fatalf("apply %+v: %v", ev, err)
		}
	}
	start := events[0].Time
	for _, e := range events {
		start = min(start, e.Time)
	}
	now := start
	seq := NewSequencer(4, wm, now)
	for i := range events {
		ev := events[i]
		if seq.Add(inputOf(ev.Type), int64(i), &ev, now) {
			apply(&ev)
		}
		seq.Release(now, func(_ int, _ int64, ev *Event) { apply(ev) })
		now += tick.Milliseconds()
	}
	// Idle inputs let the watermark follow the wall clock: jump past
	// everything.
	end := now + wm.IdleTimeout.Milliseconds() + 365*24*3600*1000
	seq.Release(end, func(_ int, _ int64, ev *Event) { apply(ev) })
	if seq.Buffer.Len() != 0 {
		t.Fatalf("%d records still buffered", seq.Buffer.Len())
	}
	return facts, seq
}

func sortedEvents(events []Event) []Event {
	out := append([]Event(nil), events...)
	sort.SliceStable(out, func(i, j int) bool { return Less(&out[i], &out[j]) })
	return out
}

func allModelsRules(t testing.TB) *Rules {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Models = AllModels
	r, err := NewRules(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// Event builders for hand-written cases. Every builder returns a valid,
// normalized event of user "u1"; options adjust it.

// T0 is the reference time of hand-written cases: 2026-01-15T12:00:00Z.
var T0 = time.Date(2026, 1, 15, 12, 0, 0, 0, time.UTC).UnixMilli()

// at is T0 plus d, in Unix milliseconds.
func at(d time.Duration) int64 { return T0 + d.Milliseconds() }

const (
	hour = time.Hour
	day  = 24 * time.Hour
	ms   = time.Millisecond
)

type evOpt func(*Event)

func withUser(u string) evOpt      { return func(e *Event) { e.UserID = u } }
func withCampaign(c string) evOpt  { return func(e *Event) { e.CampaignID = c } }
func withCreative(c string) evOpt  { return func(e *Event) { e.CreativeID = c } }
func withAuction(a string) evOpt   { return func(e *Event) { e.AuctionID = a } }
func naming(impID string) evOpt    { return func(e *Event) { e.ImpressionID = impID } }
func withValue(v float64) evOpt    { return func(e *Event) { e.Value = v } }
func withBidPrice(p float64) evOpt { return func(e *Event) { e.Bid.BidPrice = p } }
func withCurrency(c string) evOpt  { return func(e *Event) { e.Currency = c } }
func withConvType(c string) evOpt  { return func(e *Event) { e.ConversionType = c } }

func build(e Event, opts []evOpt) Event {
	for _, o := range opts {
		o(&e)
	}
	e.Normalize()
	return e
}

func imp(id string, ts int64, opts ...evOpt) Event {
	return build(Event{Type: TypeImpression, UserID: "u1", ID: id, Time: ts,
		CreativeID: "cr-1", CampaignID: "ca-1", Website: "example.com"}, opts)
}

func clk(id string, ts int64, opts ...evOpt) Event {
	return build(Event{Type: TypeClick, UserID: "u1", ID: id, Time: ts,
		CreativeID: "cr-1", CampaignID: "ca-1"}, opts)
}

func conv(id string, ts int64, opts ...evOpt) Event {
	return build(Event{Type: TypeConversion, UserID: "u1", ID: id, Time: ts,
		ConversionType: "purchase", Value: 100, Currency: "USD"}, opts)
}

func bidReq(auction string, ts int64, opts ...evOpt) Event {
	return build(Event{Type: TypeBid, UserID: "u1", ID: auction, Time: ts,
		CreativeID: "cr-1", CampaignID: "ca-1", Website: "example.com",
		Bid: &Bid{FloorPrice: 0.5, BidPrice: 1.25, Currency: "USD", Exchange: "adx", Criteria: []string{"sports", "news"}}}, opts)
}

// rulesWith returns rules from DefaultConfig with all models on, changed by
// edit.
func rulesWith(t testing.TB, edit func(*Config)) *Rules {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Models = append([]Model(nil), AllModels...)
	if edit != nil {
		edit(&cfg)
	}
	r, err := NewRules(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// applyAll applies events in the order given to one state and returns the
// state, the facts and the outcomes; any error fails the test.
func applyAll(t testing.TB, r *Rules, events ...Event) (*State, *Facts, []Outcome) {
	t.Helper()
	s := &State{}
	facts := &Facts{}
	var outs []Outcome
	for i := range events {
		o, err := r.Apply(s, &events[i], facts)
		if err != nil {
			t.Fatalf("apply %+v: %v", events[i], err)
		}
		outs = append(outs, o)
	}
	return s, facts, outs
}

// mustMarshal is MarshalBinary that fails the test on error.
func mustMarshal(t testing.TB, s *State) []byte {
	t.Helper()
	b, err := s.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// pathIDs lists the ids of a conversion fact's path, oldest first.
func pathIDs(f *ConversionFact) []string {
	ids := make([]string, 0, len(f.Path))
	for _, p := range f.Path {
		ids = append(ids, p.ID)
	}
	return ids
}

// modelCredits returns f's credits under model m (nil if m is not on).
func modelCredits(f *ConversionFact, m Model) []float64 {
	for i, fm := range f.Models {
		if fm == m {
			return f.CreditsOf(i)
		}
	}
	return nil
}

// conversionFact returns the fact of the conversion with that id.
func conversionFact(t testing.TB, facts *Facts, id string) *ConversionFact {
	t.Helper()
	for i := range facts.Conversions {
		if facts.Conversions[i].ID == id {
			return &facts.Conversions[i]
		}
	}
	t.Fatalf("no fact for conversion %q", id)
	return nil
}

func touchIDs(s *State) []string {
	var ids []string
	for _, t := range s.Touches() {
		ids = append(ids, t.ID)
	}
	return ids
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func near(a, b float64) bool { return math.Abs(a-b) <= 1e-9 }
