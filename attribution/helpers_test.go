package attribution

import (
	"encoding/json"
	"math/rand/v2"
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
		seq.Release(now, apply)
		now += tick.Milliseconds()
	}
	// Idle inputs let the watermark follow the wall clock: jump past
	// everything.
	end := now + wm.IdleTimeout.Milliseconds() + 365*24*3600*1000
	seq.Release(end, apply)
	if seq.Buffer.Len() != 0 {
		t.Fatalf("%d records still buffered", seq.Buffer.Len())
	}
	return facts, seq
}

// shuffleInputs returns events interleaved at random across the four
// inputs, keeping each input's own order (as a consumer of four topics
// read at different speeds sees them).
func shuffleInputs(rng *rand.Rand, events []Event) []Event {
	var queues [4][]Event
	for _, e := range events {
		queues[inputOf(e.Type)] = append(queues[inputOf(e.Type)], e)
	}
	out := make([]Event, 0, len(events))
	for len(out) < len(events) {
		i := rng.IntN(4)
		if len(queues[i]) > 0 {
			out = append(out, queues[i][0])
			queues[i] = queues[i][1:]
		}
	}
	return out
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
