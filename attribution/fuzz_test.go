package attribution

import (
	"bytes"
	"errors"
	"math"
	"math/rand/v2"
	"reflect"
	"runtime"
	"strings"
	"testing"
	"time"
)

// FuzzStateDecode: any bytes decode to an error or a State, never a panic;
// a decoded State re-encodes to bytes that decode to the same encoding;
// allocation is bounded by the input's length; and the rules can work on
// whatever decodes.
func FuzzStateDecode(f *testing.F) {
	full := fullState()
	enc := mustMarshal(f, &full)
	f.Add(enc)
	f.Add(mustMarshal(f, &State{}))
	f.Add([]byte{})
	f.Add([]byte{1})
	f.Add([]byte{2, 1, 1, 0})
	f.Add(enc[:len(enc)/2])
	f.Add(append(append([]byte{1}, appendSection(nil, 77, []byte("newer"))...), enc[1:]...))
	r := rulesWith(f, nil)
	s, _, _ := applyAll(f, r, bidReq("a1", at(-3*hour)), imp("i1", at(-2*hour), withAuction("a1")),
		imp("i2", at(-2*hour), withAuction("a2")), clk("k1", at(-hour), naming("i1")), conv("v1", at(0)), conv("v0", at(-5*hour)))
	f.Add(mustMarshal(f, s))
	f.Fuzz(func(t *testing.T, data []byte) {
		var s State
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		err := s.UnmarshalBinary(data)
		runtime.ReadMemStats(&after)
		if alloc := after.TotalAlloc - before.TotalAlloc; alloc > uint64(64*len(data)+64<<10) {
			t.Fatalf("decoding %d bytes allocated %d bytes", len(data), alloc)
		}
		if err != nil {
			if !errors.Is(err, ErrCorruptState) && !errors.Is(err, ErrStateVersion) {
				t.Fatalf("error %v is neither ErrCorruptState nor ErrStateVersion", err)
			}
			if !s.Empty() {
				t.Fatal("state not empty after an error")
			}
			return
		}
		enc1, err := s.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		var s2 State
		if err := s2.UnmarshalBinary(enc1); err != nil {
			t.Fatalf("re-encoded state does not decode: %v", err)
		}
		if diff := stateDiff(&s2, &s); diff != "" {
			t.Fatalf("re-encoded state decodes differently: %s", diff)
		}
		enc2, _ := s2.MarshalBinary()
		if !bytes.Equal(enc1, enc2) {
			t.Fatalf("encoding not stable:\n%x\n%x", enc1, enc2)
		}
		// The engine may be handed any checkpoint that decodes: applying
		// events to it must not panic.
		ts := s.Latest()
		if ts < MinEventTime || ts >= MaxEventTime-day.Milliseconds() {
			ts = T0
		}
		var facts Facts
		for _, ev := range []Event{imp("fz-i", ts, withAuction("auction-7")), bidReq("fz-a", ts+1), clk("fz-k", ts+2),
			conv("fz-v", ts+3), conv("fz-old", ts-day.Milliseconds()), bidReq("0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0", ts+day.Milliseconds())} {
			if _, err := r.Apply(&s, &ev, &facts); err != nil {
				t.Fatal(err)
			}
		}
	})
}

// fuzzEvents turns bytes into a configuration and a sequence of events of
// every type, valid and invalid, on time or late. Layout: one config byte,
// then 6 bytes per event (at most 300 events):
//
//	op      bits 0-1 type (bid, impression, click, conversion); bits 2-4
//	        all set: make the event invalid, the kind of defect in bits 5-7
//	id      index in fuzzIDs
//	delta   signed time step (a negative one makes a late event), in
//	        units of:
//	scale   bits 0-2 unit (ms, s, min, h, 6 h, d, 3 d, 7 d); bits 3-4 creative;
//	        bits 5-6 campaign
//	ref     auction_id (impression) or impression_id (click) when >= 128:
//	        fuzzIDs[ref%len]
//	value   conversion value, bid price
type fuzzStream struct {
	cfg Config
	evs []Event
}

var fuzzIDs = []string{"a", "b", "c", "k1", "i1", "123e4567-e89b-12d3-a456-426614174000", "deadbeefcafebabe", "", "Z", "\u00e9"}

func fuzzEvents(data []byte) fuzzStream {
	cfg := DefaultConfig()
	cfg.Models = append([]Model(nil), AllModels...)
	var c0 byte
	if len(data) > 0 {
		c0, data = data[0], data[1:]
	}
	cfg.MaxTouchesPerUser = []int{1, 2, 3, 5, 8, 200}[int(c0%6)]
	if c0&0x40 != 0 {
		cfg.CampaignWindows = map[string]Windows{"c1": {Click: hour, View: 48 * hour}, "c2": {View: 10 * time.Minute}}
	}
	if c0&0x80 != 0 {
		cfg.HalfLife = hour
	}
	units := []int64{1, 1000, 60_000, 3_600_000, 6 * 3_600_000, 86_400_000, 3 * 86_400_000, 7 * 86_400_000}
	var st fuzzStream
	st.cfg = cfg
	cur := T0
	for len(data) >= 6 && len(st.evs) < 300 {
		op, idb, delta, scale, refb, val := data[0], data[1], int8(data[2]), data[3], data[4], data[5]
		data = data[6:]
		typ := []Type{TypeBid, TypeImpression, TypeClick, TypeConversion}[op&3]
		ts := cur + int64(delta)*units[scale&7]
		if ts > cur {
			cur = min(ts, T0+365*86_400_000) // forward; a step back is a late event
		}
		ev := Event{Type: typ, UserID: "u", ID: fuzzIDs[int(idb)%len(fuzzIDs)], Time: ts,
			CreativeID: "cr" + string(rune('0'+(scale>>3)&3)), CampaignID: "c" + string(rune('0'+(scale>>5)&3))}
		var refID string
		if refb >= 128 {
			refID = fuzzIDs[int(refb)%len(fuzzIDs)]
		}
		switch typ {
		case TypeImpression:
			ev.Website, ev.AuctionID = "w", refID
		case TypeClick:
			ev.ImpressionID = refID
		case TypeConversion:
			ev.ConversionType, ev.Value, ev.Currency = "purchase", float64(val)/4, "usd"
		case TypeBid:
			ev.Website = "w"
			ev.Bid = &Bid{FloorPrice: 0.1, BidPrice: float64(val) / 100, Currency: "usd", Exchange: "x", Criteria: []string{"c"}}
		}
		ev.Normalize()
		if op&0x1c == 0x1c {
			switch op >> 5 {
			case 0:
				ev.UserID = ""
			case 1:
				ev.Time = 0
			case 2:
				ev.CreativeID = "cr\x00"
			case 3:
				ev.CampaignID = strings.Repeat("c", MaxFieldLen+1)
			case 4:
				ev.Value = math.NaN()
				ev.Website = "\xff"
			case 5:
				ev.Type = Type(5 + op&1)
			case 6:
				ev.ID = ""
			case 7:
				if ev.Bid != nil {
					ev.Bid.BidPrice = -1
				}
				ev.Currency = "us"
				ev.ImpressionID = "bad\n"
				ev.AuctionID = "bad\t"
			}
		}
		st.evs = append(st.evs, ev)
	}
	return st
}

// fuzzBytes builds fuzzEvents input from readable steps, for seeds.
type fuzzStep struct {
	op, id       byte
	delta        int8
	scale        byte
	ref, value   byte
	creativeCamp byte // creative | campaign<<2
}

// ref is the ref byte naming fuzzIDs[i].
func ref(i int) byte { return byte(130 + i) }

func fuzzBytes(cfg byte, steps ...fuzzStep) []byte {
	b := []byte{cfg}
	for _, s := range steps {
		b = append(b, s.op, s.id, byte(s.delta), s.scale&7|(s.creativeCamp&3)<<3|(s.creativeCamp>>2&3)<<5, s.ref, s.value)
	}
	return b
}

// FuzzApply applies the events bytes drive to one State, and after each
// step checks the invariants of the spec: invalid events are rejected with
// an error matching ErrInvalidEvent and change nothing; duplicates change
// nothing and produce no fact; credits of every conversion fact sum to 1
// and lie in [0, 1]; paths hold eligible touches of one type in (time, id)
// order; the touch cap holds; touches are in (time, id) order; the state
// round-trips through its encoding; and a state restored from that
// encoding behaves exactly like the original.
func FuzzApply(f *testing.F) {
	const bid, imp, click, conv = 0, 1, 2, 3
	const bad = 0x1c
	f.Add(fuzzBytes(5, // default cap, all models
		fuzzStep{op: bid, id: 0, delta: 1, scale: 3, value: 120},
		fuzzStep{op: imp, id: 4, delta: 1, scale: 3, ref: ref(0)},   // names auction "a"
		fuzzStep{op: click, id: 3, delta: 2, scale: 3, ref: ref(4)}, // names impression "i1"
		fuzzStep{op: conv, id: 1, delta: 1, scale: 5, value: 40},
		fuzzStep{op: conv, id: 1, delta: 0, scale: 0, value: 40}, // duplicate
	))
	f.Add(fuzzBytes(0x42, // cap 3, campaign windows
		fuzzStep{op: imp, id: 0, delta: 1, scale: 2, creativeCamp: 1<<2 | 1},
		fuzzStep{op: imp, id: 1, delta: 1, scale: 2, creativeCamp: 2 << 2},
		fuzzStep{op: click, id: 2, delta: 1, scale: 2, creativeCamp: 1},
		fuzzStep{op: click, id: 3, delta: 0, scale: 2},
		fuzzStep{op: click, id: 5, delta: 1, scale: 4},
		fuzzStep{op: conv, id: 6, delta: 1, scale: 3},
		fuzzStep{op: click, id: 8, delta: -3, scale: 4}, // late
		fuzzStep{op: conv, id: 9, delta: -1, scale: 4},  // late conversion
		fuzzStep{op: conv, id: 0, delta: 10, scale: 5},
	))
	f.Add(fuzzBytes(0x81, // cap 2, half life 1 h
		fuzzStep{op: imp, id: 4, delta: 1, scale: 0, ref: ref(1)},
		fuzzStep{op: bid, id: 1, delta: 100, scale: 3, value: 3},   // bid after its impression
		fuzzStep{op: bid | bad, id: 2, delta: 1, scale: 3},         // invalid: no user
		fuzzStep{op: conv | bad | 4<<5, id: 2, delta: 1, scale: 3}, // invalid: NaN
		fuzzStep{op: click | bad | 6<<5, id: 7, delta: 1, scale: 3},
		fuzzStep{op: imp, id: 7, delta: 1, scale: 3}, // derived id
		fuzzStep{op: imp, id: 7, delta: 0, scale: 3}, // same record again
		fuzzStep{op: conv, id: 3, delta: 1, scale: 6},
	))
	rng := rand.New(rand.NewPCG(11, 12))
	for i := 0; i < 4; i++ {
		b := make([]byte, 1+6*(5+rng.IntN(40)))
		for j := range b {
			b[j] = byte(rng.UintN(256))
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		st := fuzzEvents(data)
		r, err := NewRules(st.cfg)
		if err != nil {
			t.Fatal(err)
		}
		var s State
		var facts Facts
		for i := range st.evs {
			ev := &st.evs[i]
			before := mustMarshal(t, &s)
			var restored State
			if err := restored.UnmarshalBinary(before); err != nil {
				t.Fatalf("step %d: state does not decode: %v", i, err)
			}
			if again := mustMarshal(t, &restored); !bytes.Equal(again, before) {
				t.Fatalf("step %d: state does not round-trip to identical bytes", i)
			}
			n := facts.Len()
			ni, nc, nv := len(facts.Impressions), len(facts.Clicks), len(facts.Conversions)
			o, err := r.Apply(&s, ev, &facts)
			if (err != nil) != (ev.Validate() != nil) {
				t.Fatalf("step %d: Apply error %v, Validate %v", i, err, ev.Validate())
			}
			after := mustMarshal(t, &s)
			if err != nil {
				var ve *ValidationError
				if !errors.Is(err, ErrInvalidEvent) || !errors.As(err, &ve) || ve.Field == "" {
					t.Fatalf("step %d: error %v", i, err)
				}
				if !bytes.Equal(before, after) || facts.Len() != n || o != (Outcome{}) {
					t.Fatalf("step %d: an invalid event changed something", i)
				}
			}
			if o.Duplicate && (!bytes.Equal(before, after) || facts.Len() != n) {
				t.Fatalf("step %d: a duplicate changed something", i)
			}
			// The restored state gives the same outcome, facts and state.
			var rf Facts
			ro, rerr := r.Apply(&restored, ev, &rf)
			if ro != o || (rerr == nil) != (err == nil) {
				t.Fatalf("step %d: restored state: outcome %+v err %v, original %+v err %v", i, ro, rerr, o, err)
			}
			added := newFacts(&facts, ni, nc, nv)
			if !reflect.DeepEqual(&rf, added) {
				t.Fatalf("step %d: restored state produced\n%+v\nthe original\n%+v", i, rf, *added)
			}
			if ra := mustMarshal(t, &restored); !bytes.Equal(ra, after) {
				t.Fatalf("step %d: restored state diverged", i)
			}
			checkStateInvariants(t, r, &s, i)
			for j := range added.Conversions {
				checkConversionFact(t, r, &added.Conversions[j], i)
			}
		}
	})
}

// newFacts returns the facts appended to f since it had ni impressions, nc
// clicks and nv conversions (nil slices when none).
func newFacts(f *Facts, ni, nc, nv int) *Facts {
	out := &Facts{}
	if len(f.Impressions) > ni {
		out.Impressions = f.Impressions[ni:]
	}
	if len(f.Clicks) > nc {
		out.Clicks = f.Clicks[nc:]
	}
	if len(f.Conversions) > nv {
		out.Conversions = f.Conversions[nv:]
	}
	return out
}

func checkStateInvariants(t *testing.T, r *Rules, s *State, step int) {
	t.Helper()
	ts := s.Touches()
	if len(ts) > r.Config().MaxTouchesPerUser {
		t.Fatalf("step %d: %d touches kept, cap %d", step, len(ts), r.Config().MaxTouchesPerUser)
	}
	for i := 1; i < len(ts); i++ {
		a, b := &ts[i-1], &ts[i]
		if a.Time > b.Time || a.Time == b.Time && a.ID > b.ID {
			t.Fatalf("step %d: touches out of (time, id) order: %s@%d before %s@%d", step, a.ID, a.Time, b.ID, b.Time)
		}
		if a.Time == b.Time && a.ID == b.ID && a.Type == b.Type {
			t.Fatalf("step %d: touch %s kept twice", step, a.ID)
		}
	}
	for _, tc := range ts {
		if tc.Expiry() != tc.Time+r.Window(tc.Type, tc.CampaignID) {
			t.Fatalf("step %d: touch %s expiry %d, want time + window", step, tc.ID, tc.Expiry())
		}
	}
	cs := s.Conversions()
	for i := 1; i < len(cs); i++ {
		if cs[i-1].Time > cs[i].Time || cs[i-1].Time == cs[i].Time && cs[i-1].ID >= cs[i].ID {
			t.Fatalf("step %d: conversions out of order", step)
		}
	}
}

func checkConversionFact(t *testing.T, r *Rules, f *ConversionFact, step int) {
	t.Helper()
	if !reflect.DeepEqual(f.Models, r.Models()) || len(f.Credits) != len(f.Models)*max(len(f.Path), 1) {
		t.Fatalf("step %d: conversion %s: models %v, %d credits for a path of %d", step, f.ID, f.Models, len(f.Credits), len(f.Path))
	}
	for i, m := range f.Models {
		sum := 0.0
		for _, c := range f.CreditsOf(i) {
			if !(c >= 0 && c <= 1) {
				t.Fatalf("step %d: conversion %s %s: credit %v outside [0, 1]", step, f.ID, m, c)
			}
			sum += c
		}
		if math.Abs(sum-1) > 1e-9 {
			t.Fatalf("step %d: conversion %s %s: credits sum to %v", step, f.ID, m, sum)
		}
	}
	for j, p := range f.Path {
		if p.Type != f.Path[0].Type || !p.Type.IsTouch() {
			t.Fatalf("step %d: conversion %s: path mixes types or holds a %s", step, f.ID, p.Type)
		}
		if p.Time > f.Time || f.Time-p.Time > r.Window(p.Type, p.CampaignID) {
			t.Fatalf("step %d: conversion %s: touch %s at %d is not eligible", step, f.ID, p.ID, p.Time-f.Time)
		}
		if j > 0 {
			q := f.Path[j-1]
			if q.Time > p.Time || q.Time == p.Time && q.ID >= p.ID {
				t.Fatalf("step %d: conversion %s: path out of (time, id) order", step, f.ID)
			}
		}
	}
	var rows int
	for i := range f.Models {
		for _, c := range f.CreditsOf(i) {
			if c != 0 {
				rows++
			}
		}
	}
	if got := len(f.AppendRows(nil)); got != rows {
		t.Fatalf("step %d: conversion %s: %d rows for %d credited touches", step, f.ID, got, rows)
	}
}
