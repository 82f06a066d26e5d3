package attribution

import (
	"errors"
	"math"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"
	"time"
)

// Tests of the rules of shared/spec/attribution.md, one test (or subtest)
// per rule, named after it. Events are built with the helpers of
// helpers_test.go; times are relative to T0.

// wantPath checks that the conversion fact's path is exactly ids (nil or
// empty: organic).
func wantPath(t *testing.T, f *ConversionFact, ids ...string) {
	t.Helper()
	if got := pathIDs(f); !equalStrings(got, ids) {
		t.Fatalf("conversion %s: path %q, want %q", f.ID, got, ids)
	}
}

// wantOrganic checks the organic shape of a conversion fact: an empty
// path, one credit of 1 per model, one row per model with touch type none,
// an empty touch id and credited value = value.
func wantOrganic(t *testing.T, f *ConversionFact) {
	t.Helper()
	wantPath(t, f)
	for i, m := range f.Models {
		if c := f.CreditsOf(i); len(c) != 1 || c[0] != 1 {
			t.Fatalf("organic %s: %s credits %v, want [1]", f.ID, m, c)
		}
	}
	rows := f.AppendRows(nil)
	if len(rows) != len(f.Models) {
		t.Fatalf("organic %s: %d rows, want one per model (%d)", f.ID, len(rows), len(f.Models))
	}
	for i, row := range rows {
		if row.Model != f.Models[i] || row.TouchType != TypeNone || row.TouchType.String() != "none" ||
			row.TouchID != "" || row.TouchTime != 0 || row.Credit != 1 || row.CreditedValue != f.Value {
			t.Fatalf("organic %s: row %+v", f.ID, row)
		}
	}
}

// sequenced runs events through runSequenced (a Sequencer, several
// arrival orders) and checks every order gives the same facts.
func sequenced(t *testing.T, r *Rules, events ...Event) *Facts {
	t.Helper()
	wm := WatermarkConfig{AllowedLateness: 30 * day, IdleTimeout: 5 * time.Second, MaxSkew: 60 * day}
	first, _ := runSequenced(t, r, wm, events, time.Millisecond)
	rng := rand.New(rand.NewPCG(7, uint64(len(events))))
	for i := 0; i < 8; i++ {
		order := append([]Event(nil), events...)
		if i == 0 {
			for a, b := 0, len(order)-1; a < b; a, b = a+1, b-1 {
				order[a], order[b] = order[b], order[a]
			}
		} else {
			rng.Shuffle(len(order), func(a, b int) { order[a], order[b] = order[b], order[a] })
		}
		got, _ := runSequenced(t, r, wm, order, time.Millisecond)
		if !reflect.DeepEqual(factsByUser(first), factsByUser(got)) {
			t.Fatalf("arrival order %d changed the facts:\n%+v\nwant\n%+v", i, got, first)
		}
	}
	return first
}

// factsByUser splits facts by user, keeping their order: the order of
// facts of different users with equal (time, type, id) is not defined.
func factsByUser(f *Facts) map[string]*Facts {
	m := map[string]*Facts{}
	get := func(u string) *Facts {
		if m[u] == nil {
			m[u] = &Facts{}
		}
		return m[u]
	}
	for _, x := range f.Impressions {
		get(x.UserID).Impressions = append(get(x.UserID).Impressions, x)
	}
	for _, x := range f.Clicks {
		get(x.UserID).Clicks = append(get(x.UserID).Clicks, x)
	}
	for _, x := range f.Conversions {
		get(x.UserID).Conversions = append(get(x.UserID).Conversions, x)
	}
	return m
}

func TestWindowEdges(t *testing.T) {
	r := rulesWith(t, nil)
	cases := []struct {
		name   string
		events []Event
		want   []string // path; nil: organic
	}{
		{"click window inclusive: exactly 7 d is in", []Event{clk("k", at(-7*day)), conv("v", at(0))}, []string{"k"}},
		{"click window: 7 d + 1 ms is out", []Event{clk("k", at(-7*day-ms)), conv("v", at(0))}, nil},
		{"view window inclusive: exactly 24 h is in", []Event{imp("i", at(-24*hour)), conv("v", at(0))}, []string{"i"}},
		{"view window: 24 h + 1 ms is out", []Event{imp("i", at(-24*hour-ms)), conv("v", at(0))}, nil},
		{"click out of its window, a view inside takes it", []Event{clk("k", at(-7*day-ms)), imp("i", at(-hour)), conv("v", at(0))}, []string{"i"}},
		{"a view 2 d old is out though a click of that age would be in", []Event{imp("i", at(-2*day)), conv("v", at(0))}, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := conversionFact(t, sequenced(t, r, c.events...), "v")
			if c.want == nil {
				wantOrganic(t, f)
				return
			}
			wantPath(t, f, c.want...)
		})
	}
}

func TestTouchAtConversionTime(t *testing.T) {
	r := rulesWith(t, nil)
	t.Run("a touch at the conversion's time counts", func(t *testing.T) {
		// The ids sort the conversion first: type order must win over id.
		f := conversionFact(t, sequenced(t, r, clk("z-click", at(0)), conv("a-conv", at(0))), "a-conv")
		wantPath(t, f, "z-click")
		f = conversionFact(t, sequenced(t, r, imp("z-imp", at(0)), conv("a-conv", at(0))), "a-conv")
		wantPath(t, f, "z-imp")
	})
	t.Run("a touch 1 ms after the conversion does not count", func(t *testing.T) {
		f := conversionFact(t, sequenced(t, r, clk("k", at(ms)), conv("v", at(0))), "v")
		wantOrganic(t, f)
	})
	t.Run("a touch 1 ms after does not count even when already in the state", func(t *testing.T) {
		// The conversion is applied late, after the touch: eligibility
		// itself, not only the order of application, keeps it out.
		_, facts, _ := applyAll(t, r, clk("k0", at(-hour)), clk("k", at(ms)), imp("i", at(ms)), conv("v", at(0)))
		wantPath(t, conversionFact(t, facts, "v"), "k0")
	})
}

func TestPathTieOrder(t *testing.T) {
	// Of two touches at the same time, the one with the larger id (byte
	// order) is the later.
	r := rulesWith(t, nil)
	for _, c := range []struct{ small, large string }{
		{"k-a", "k-b"},
		{"K1", "k1"},    // 'K' 0x4b < 'k' 0x6b
		{"k10", "k9"},   // bytes, not numbers
		{"a", "ab"},     // a prefix is smaller
		{"z", "\u00e9"}, // UTF-8 bytes: 0xc3 > 'z'
	} {
		t.Run("tie in time ordered by id "+c.small+" < "+c.large, func(t *testing.T) {
			for _, typ := range []Type{TypeClick, TypeImpression} {
				mk := clk
				if typ == TypeImpression {
					mk = imp
				}
				f := conversionFact(t, sequenced(t, r, mk(c.large, at(-hour)), mk(c.small, at(-hour)), conv("v", at(0))), "v")
				wantPath(t, f, c.small, c.large)
				if got := modelCredits(f, LastTouch); got[1] != 1 {
					t.Fatalf("%s: last_touch %v, want the larger id %q credited", typ, got, c.large)
				}
				if got := modelCredits(f, FirstTouch); got[0] != 1 {
					t.Fatalf("%s: first_touch %v, want the smaller id %q credited", typ, got, c.small)
				}
			}
		})
	}
}

func TestClicksBeatViews(t *testing.T) {
	r := rulesWith(t, nil)
	t.Run("clicks beat views before and after the click", func(t *testing.T) {
		f := conversionFact(t, sequenced(t, r,
			imp("i1", at(-5*hour)), clk("k", at(-4*hour), withCreative("cr-9")), imp("i2", at(-hour)), imp("i3", at(0)),
			conv("v", at(0))), "v")
		wantPath(t, f, "k")
		for i, m := range f.Models {
			if c := f.CreditsOf(i); len(c) != 1 || c[0] != 1 {
				t.Fatalf("%s: credits %v, want [1] for the click", m, c)
			}
		}
		for _, row := range f.AppendRows(nil) {
			if row.TouchType != TypeClick || row.TouchID != "k" {
				t.Fatalf("row %+v credits something else than the click", row)
			}
		}
	})
	t.Run("views count only when no click is eligible", func(t *testing.T) {
		f := conversionFact(t, sequenced(t, r,
			clk("k", at(-8*day)), imp("i1", at(-5*hour)), imp("i2", at(-hour)), conv("v", at(0))), "v")
		wantPath(t, f, "i1", "i2")
		if f.Path[0].Type != TypeImpression {
			t.Fatalf("path %+v", f.Path)
		}
	})
}

func TestNamedImpressionNotBesideItsClick(t *testing.T) {
	t.Run("an impression a path's click names is not counted beside it", func(t *testing.T) {
		r := rulesWith(t, nil)
		f := conversionFact(t, sequenced(t, r,
			imp("i", at(-2*hour)), clk("k", at(-hour), naming("i")), conv("v", at(0))), "v")
		wantPath(t, f, "k")
		for _, row := range f.AppendRows(nil) {
			if row.TouchID == "i" {
				t.Fatalf("named impression credited: %+v", row)
			}
		}
	})
	t.Run("the named impression counts when its click is out of the click window", func(t *testing.T) {
		r := rulesWith(t, func(c *Config) { c.CampaignWindows = map[string]Windows{"ca-1": {Click: hour}} })
		f := conversionFact(t, sequenced(t, r,
			imp("i", at(-3*hour)), clk("k", at(-2*hour), naming("i")), conv("v", at(0))), "v")
		wantPath(t, f, "i")
	})
}

func TestOrganic(t *testing.T) {
	r := rulesWith(t, nil)
	cases := []struct {
		name   string
		events []Event
	}{
		{"organic: no touches", []Event{conv("v", at(0), withValue(42))}},
		{"organic: only ineligible touches", []Event{
			clk("k", at(-7*day-ms)), imp("i", at(-24*hour-ms)), clk("k2", at(-hour), withUser("someone-else")),
			conv("v", at(0), withValue(42)), clk("k3", at(ms)), imp("i3", at(ms))}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := conversionFact(t, sequenced(t, r, c.events...), "v")
			if len(f.Models) != len(AllModels) {
				t.Fatalf("models %v", f.Models)
			}
			wantOrganic(t, f)
			if f.Value != 42 || f.UserID != "u1" {
				t.Fatalf("fact %+v", f)
			}
		})
	}
}

// TestModels checks every model on paths of 1, 2, 3 and 5 clicks. Clicks
// are at the given ages before the conversion; time_decay is computed by
// hand: weight 2^(-age/half_life), credit = weight / sum of weights.
func TestModels(t *testing.T) {
	third := 1.0 / 3
	fifteenth := 0.2 / 3
	cases := []struct {
		name     string
		halfLife time.Duration
		ages     []time.Duration // oldest first
		want     map[Model][]float64
	}{
		{
			name: "n=1", ages: []time.Duration{day},
			want: map[Model][]float64{
				LastTouch: {1}, FirstTouch: {1}, Linear: {1}, TimeDecay: {1}, PositionBased: {1},
			},
		},
		{
			// weights 2^-1 = 0.5 and 2^0 = 1, sum 1.5
			name: "n=2", ages: []time.Duration{7 * day, 0},
			want: map[Model][]float64{
				LastTouch: {0, 1}, FirstTouch: {1, 0}, Linear: {0.5, 0.5},
				TimeDecay:     {0.5 / 1.5, 1 / 1.5},
				PositionBased: {0.5, 0.5},
			},
		},
		{
			// weights 2^-1 = 0.5, 2^-0.5 = 0.707106781187, 1; sum 2.207106781187
			name: "n=3", ages: []time.Duration{7 * day, 84 * hour, 0},
			want: map[Model][]float64{
				LastTouch: {0, 0, 1}, FirstTouch: {1, 0, 0}, Linear: {third, third, third},
				TimeDecay:     {0.226540919661, 0.320377241017, 0.453081839322},
				PositionBased: {0.4, 0.2, 0.4},
			},
		},
		{
			// ages 7, 5.25, 3.5, 1.75, 0 days: weights 2^-1, 2^-0.75, 2^-0.5,
			// 2^-0.25, 1 = 0.5, 0.594603557501, 0.707106781187,
			// 0.840896415254, 1; sum 3.642606753942
			name: "n=5", ages: []time.Duration{7 * day, 126 * hour, 84 * hour, 42 * hour, 0},
			want: map[Model][]float64{
				LastTouch: {0, 0, 0, 0, 1}, FirstTouch: {1, 0, 0, 0, 0}, Linear: {0.2, 0.2, 0.2, 0.2, 0.2},
				TimeDecay:     {0.137264336717, 0.163235725860, 0.194121086615, 0.230850177375, 0.274528673434},
				PositionBased: {0.4, fifteenth, fifteenth, fifteenth, 0.4},
			},
		},
		{
			// half life 1 d, ages 2, 1, 0 d: weights 0.25, 0.5, 1, sum 1.75
			name: "n=3 time_decay half life 1 d", halfLife: day, ages: []time.Duration{2 * day, day, 0},
			want: map[Model][]float64{TimeDecay: {1.0 / 7, 2.0 / 7, 4.0 / 7}},
		},
		{
			// the vectors' case: ages 6 d, 3 d, 2 h
			name: "n=3 time_decay uneven ages", ages: []time.Duration{6 * day, 3 * day, 2 * hour},
			want: map[Model][]float64{TimeDecay: {0.241402369545, 0.324903495672, 0.433694134783}},
		},
	}
	for _, c := range cases {
		for _, m := range AllModels {
			want, ok := c.want[m]
			if !ok {
				continue
			}
			t.Run(m.String()+" "+c.name, func(t *testing.T) {
				r := rulesWith(t, func(cfg *Config) {
					cfg.Models = []Model{m}
					if c.halfLife != 0 {
						cfg.HalfLife = c.halfLife
					}
				})
				var events []Event
				var ids []string
				for i, age := range c.ages {
					id := "k" + string(rune('1'+i))
					ids = append(ids, id)
					events = append(events, clk(id, at(-age)))
				}
				events = append(events, conv("v", at(0), withValue(200)))
				f := conversionFact(t, sequenced(t, r, events...), "v")
				wantPath(t, f, ids...)
				got := f.CreditsOf(0)
				if len(got) != len(want) {
					t.Fatalf("credits %v, want %v", got, want)
				}
				sum := 0.0
				for i := range want {
					if !near(got[i], want[i]) {
						t.Fatalf("credits %v, want %v", got, want)
					}
					sum += got[i]
				}
				if !near(sum, 1) {
					t.Fatalf("credits sum to %v", sum)
				}
				// One row per credited touch, credited_value = value * credit.
				rows := f.AppendRows(nil)
				nonzero := 0
				for _, w := range want {
					if w != 0 {
						nonzero++
					}
				}
				if len(rows) != nonzero {
					t.Fatalf("%d rows, want %d", len(rows), nonzero)
				}
				for _, row := range rows {
					if !near(row.CreditedValue, 200*row.Credit) {
						t.Fatalf("row %+v: credited_value != value * credit", row)
					}
				}
			})
		}
	}
}

func TestCampaignWindows(t *testing.T) {
	r := rulesWith(t, func(c *Config) {
		c.CampaignWindows = map[string]Windows{
			"long":  {Click: 14 * day},
			"wide":  {View: 48 * hour},
			"short": {Click: hour, View: 30 * time.Minute},
			"zero":  {Click: 0, View: 0},
		}
	})
	long, wide, short, zero := withCampaign("long"), withCampaign("wide"), withCampaign("short"), withCampaign("zero")
	cases := []struct {
		name   string
		events []Event
		want   []string
	}{
		{"click override: 10 d in", []Event{clk("k", at(-10*day), long)}, []string{"k"}},
		{"click override: exactly 14 d in", []Event{clk("k", at(-14*day), long)}, []string{"k"}},
		{"click override: 14 d + 1 ms out", []Event{clk("k", at(-14*day-ms), long)}, nil},
		{"click override: other campaigns keep 7 d", []Event{clk("k", at(-10*day))}, nil},
		{"click override does not change the campaign's view window", []Event{imp("i", at(-24*hour-ms), long)}, nil},
		{"view override: 36 h in", []Event{imp("i", at(-36*hour), wide)}, []string{"i"}},
		{"view override: exactly 48 h in", []Event{imp("i", at(-48*hour), wide)}, []string{"i"}},
		{"view override: 48 h + 1 ms out", []Event{imp("i", at(-48*hour-ms), wide)}, nil},
		{"view override does not change the campaign's click window", []Event{clk("k", at(-7*day-ms), wide)}, nil},
		{"shorter override: click 1 h in", []Event{clk("k", at(-hour), short)}, []string{"k"}},
		{"shorter override: click 1 h + 1 ms out", []Event{clk("k", at(-hour-ms), short)}, nil},
		{"shorter override: view 30 min in", []Event{imp("i", at(-30*time.Minute), short)}, []string{"i"}},
		{"shorter override: view 30 min + 1 ms out", []Event{imp("i", at(-30*time.Minute-ms), short)}, nil},
		{"zero field means the global click window: 7 d in", []Event{clk("k", at(-7*day), zero)}, []string{"k"}},
		{"zero field means the global click window: 7 d + 1 ms out", []Event{clk("k", at(-7*day-ms), zero)}, nil},
		{"zero field means the global view window: 24 h in", []Event{imp("i", at(-24*hour), zero)}, []string{"i"}},
		{"zero field means the global view window: 24 h + 1 ms out", []Event{imp("i", at(-24*hour-ms), zero)}, nil},
		{"touches of other campaigns unaffected", []Event{
			clk("k-short", at(-2*hour), short), clk("k-other", at(-2*hour)), clk("k-long", at(-10*day), long)},
			[]string{"k-long", "k-other"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := conversionFact(t, sequenced(t, r, append(c.events, conv("v", at(0)))...), "v")
			if c.want == nil {
				wantOrganic(t, f)
				return
			}
			wantPath(t, f, c.want...)
		})
	}
	t.Run("Rules.Window", func(t *testing.T) {
		for _, c := range []struct {
			typ      Type
			campaign string
			want     time.Duration
		}{
			{TypeClick, "", 7 * day}, {TypeImpression, "", 24 * hour},
			{TypeClick, "long", 14 * day}, {TypeImpression, "long", 24 * hour},
			{TypeClick, "wide", 7 * day}, {TypeImpression, "wide", 48 * hour},
			{TypeClick, "short", hour}, {TypeImpression, "short", 30 * time.Minute},
			{TypeClick, "zero", 7 * day}, {TypeImpression, "zero", 24 * hour},
		} {
			if got := r.Window(c.typ, c.campaign); got != c.want.Milliseconds() {
				t.Errorf("Window(%s, %q) = %d, want %d", c.typ, c.campaign, got, c.want.Milliseconds())
			}
		}
	})
}

func TestDedupe(t *testing.T) {
	r := rulesWith(t, nil)
	cases := []struct {
		name   string
		first  []Event // applied first; the last one is re-sent
		resend Event
	}{
		{"dedupe impression: same record", []Event{imp("i", at(-hour))}, imp("i", at(-hour))},
		{"dedupe impression: same id, other fields", []Event{imp("i", at(-hour))}, imp("i", at(-hour), withCreative("cr-2"), withCampaign("ca-2"))},
		{"dedupe click: same record", []Event{imp("i", at(-2*hour)), clk("k", at(-hour), naming("i"))}, clk("k", at(-hour), naming("i"))},
		{"dedupe click: same id, other fields", []Event{clk("k", at(-hour))}, clk("k", at(-hour), withCreative("cr-2"))},
		{"dedupe bid: same record", []Event{bidReq("a", at(-hour))}, bidReq("a", at(-hour))},
		{"dedupe bid: after it joined its impression", []Event{imp("i", at(-2*hour), withAuction("a")), bidReq("a", at(-hour))}, bidReq("a", at(-hour), withBidPrice(9))},
		{"dedupe conversion: same record", []Event{clk("k", at(-hour)), conv("v", at(0))}, conv("v", at(0))},
		{"dedupe conversion: by id, other time and value", []Event{clk("k", at(-hour)), conv("v", at(0))}, conv("v", at(hour), withValue(7))},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s, facts, outs := applyAll(t, r, c.first...)
			for _, o := range outs {
				if o.Duplicate {
					t.Fatalf("first application reported a duplicate: %+v", outs)
				}
			}
			before := mustMarshal(t, s)
			n := facts.Len()
			o, err := r.Apply(s, &c.resend, facts)
			if err != nil {
				t.Fatal(err)
			}
			if !o.Duplicate || o.Evicted != 0 {
				t.Fatalf("outcome %+v, want Duplicate", o)
			}
			if facts.Len() != n {
				t.Fatalf("a duplicate produced a fact: %+v", facts)
			}
			if after := mustMarshal(t, s); string(after) != string(before) {
				t.Fatalf("a duplicate changed the state")
			}
		})
	}
	t.Run("dedupe is per type: the same id of another type is not a duplicate", func(t *testing.T) {
		s, facts, outs := applyAll(t, r, bidReq("x", at(-3*hour)), imp("x", at(-2*hour)), clk("x", at(-hour)), conv("x", at(0)))
		for _, o := range outs {
			if o.Duplicate {
				t.Fatalf("outcomes %+v", outs)
			}
		}
		if len(facts.Impressions) != 1 || len(facts.Clicks) != 1 || len(facts.Conversions) != 1 || len(s.Touches()) != 2 {
			t.Fatalf("facts %+v, touches %+v", facts, s.Touches())
		}
	})
	t.Run("dedupe is per user", func(t *testing.T) {
		facts := sequenced(t, r, imp("i", at(-hour)), imp("i", at(-hour), withUser("u2")), conv("v", at(0)), conv("v", at(0), withUser("u2")))
		if len(facts.Impressions) != 2 || len(facts.Conversions) != 2 {
			t.Fatalf("facts %+v", facts)
		}
	})
	t.Run("dedupe through the sequencer: a re-sent record in any order gives the facts of one", func(t *testing.T) {
		once := sequenced(t, r, imp("i", at(-2*hour)), clk("k", at(-hour), naming("i")), bidReq("a", at(-hour)), conv("v", at(0)))
		twice := sequenced(t, r, imp("i", at(-2*hour)), clk("k", at(-hour), naming("i")), bidReq("a", at(-hour)), conv("v", at(0)),
			conv("v", at(0)), clk("k", at(-hour), naming("i")), imp("i", at(-2*hour)), bidReq("a", at(-hour)))
		if !reflect.DeepEqual(once, twice) {
			t.Fatalf("re-sent records changed the facts:\n%+v\nwant\n%+v", twice, once)
		}
	})
	t.Run("dedupe conversion: within the longest window", func(t *testing.T) {
		s, facts, _ := applyAll(t, r, conv("v", at(0)), bidReq("later", at(7*day)))
		o, err := r.Apply(s, ptr(conv("v", at(0))), facts)
		if err != nil || !o.Duplicate || len(facts.Conversions) != 1 {
			t.Fatalf("outcome %+v, err %v, %d conversion facts", o, err, len(facts.Conversions))
		}
	})
}

// TestDedupeAfterEviction: the spec makes a duplicate produce no fact
// "whatever crashes or replays happen"; a touch evicted by the per-user
// cap is forgotten by dedupe.
func TestDedupeAfterEviction(t *testing.T) {
	r := rulesWith(t, func(c *Config) { c.MaxTouchesPerUser = 1 })
	t.Run("dedupe impression: re-sent after the cap evicted it", func(t *testing.T) {
		// The bid joins the impression; a click evicts the impression
		// (cap 1); the impression is read again (a replay after a crash
		// re-reads records applied before the checkpoint).
		s, facts, _ := applyAll(t, r, bidReq("a", at(-2*hour)), imp("i", at(-hour), withAuction("a")), clk("k", at(0)))
		if len(facts.Impressions) != 1 || facts.Impressions[0].Bid == nil {
			t.Fatalf("setup: %+v", facts.Impressions)
		}
		o, err := r.Apply(s, ptr(imp("i", at(-hour), withAuction("a"))), facts)
		if err != nil {
			t.Fatal(err)
		}
		if !o.Duplicate || len(facts.Impressions) != 1 {
			t.Fatalf("outcome %+v, impression facts %+v: the re-sent impression is not a duplicate, and its new fact (bid %v) replaces the joined one in the sink",
				o, facts.Impressions, facts.Impressions[len(facts.Impressions)-1].Bid)
		}
	})
	t.Run("dedupe click: duplicate applied in order after a same-time tie evicted it", func(t *testing.T) {
		// Cap 1, both at T0. Impressions apply before clicks, but in path
		// order the click "a" is older than the impression "z", so the
		// click is evicted as soon as it is applied; its duplicate,
		// applied right after it, must still be a duplicate.
		facts := sequenced(t, r, imp("z", at(0)), clk("a", at(0)), clk("a", at(0)))
		if len(facts.Clicks) != 1 {
			t.Fatalf("%d click facts for one click: %+v", len(facts.Clicks), facts.Clicks)
		}
	})
}

func ptr[T any](v T) *T { return &v }

func TestLateEvents(t *testing.T) {
	r := rulesWith(t, nil)
	wm := DefaultWatermarkConfig() // 10 s lateness, 5 s idle timeout
	// The wall clock runs an hour ahead of the events so that an idle
	// partition's watermark (now - 10 s) passes them.
	states := map[string]*State{}
	facts := &Facts{}
	apply := func(ev *Event) {
		s := states[ev.UserID]
		if s == nil {
			s = &State{}
			states[ev.UserID] = s
		}
		if _, err := r.Apply(s, ev, facts); err != nil {
			t.Fatal(err)
		}
	}
	now := at(2 * hour)
	seq := NewSequencer(4, wm, now)
	pos := int64(0)
	add := func(ev Event) bool {
		pos++
		late := seq.Add(inputOf(ev.Type), pos, &ev, now)
		if late {
			apply(&ev)
		}
		return late
	}
	flush := func() {
		// Every input is silent for longer than the idle timeout: the
		// watermark follows the wall clock. An input more than MaxSkew
		// ahead of the watermark counts as paused, not idle, until an
		// Advance has brought the watermark within MaxSkew of it, and
		// then needs another idle timeout: hence two steps.
		for i := 0; i < 2; i++ {
			now += 6000
			seq.Release(now, func(_ int, _ int64, ev *Event) { apply(ev) })
		}
	}

	if add(clk("k1", at(0))) || add(conv("v1", at(hour))) {
		t.Fatal("on-time records reported late")
	}
	flush()
	if seq.Buffer.Len() != 0 || seq.Late != 0 {
		t.Fatalf("buffer %d, late %d", seq.Buffer.Len(), seq.Late)
	}
	wantPath(t, conversionFact(t, facts, "v1"), "k1")

	t.Run("late touch is applied, counted, and kept for later conversions", func(t *testing.T) {
		if !add(clk("k0", at(-hour))) {
			t.Fatal("a record behind the watermark not reported late")
		}
		if seq.Late != 1 {
			t.Fatalf("Late = %d, want 1", seq.Late)
		}
		if got := touchIDs(states["u1"]); !equalStrings(got, []string{"k0", "k1"}) {
			t.Fatalf("touches %q", got)
		}
		now += 1000
		if add(conv("v2", now-5000)) { // not late: the watermark is 11 s behind now
			t.Fatal("on-time conversion reported late")
		}
		flush()
		wantPath(t, conversionFact(t, facts, "v2"), "k0", "k1")
		// The conversion attributed before the late touch keeps its answer.
		wantPath(t, conversionFact(t, facts, "v1"), "k1")
	})
	t.Run("late conversion is attributed with what the state holds", func(t *testing.T) {
		if !add(conv("v0", at(-30*time.Minute))) {
			t.Fatal("late conversion not reported late")
		}
		if seq.Late != 2 {
			t.Fatalf("Late = %d, want 2", seq.Late)
		}
		wantPath(t, conversionFact(t, facts, "v0"), "k0")
	})
	t.Run("late duplicate is still a duplicate", func(t *testing.T) {
		n := facts.Len()
		add(clk("k0", at(-hour)))
		add(conv("v1", at(hour)))
		if facts.Len() != n || seq.Late != 4 {
			t.Fatalf("facts %d -> %d, late %d", n, facts.Len(), seq.Late)
		}
	})
}

func TestMaxTouchesPerUser(t *testing.T) {
	r := rulesWith(t, func(c *Config) { c.MaxTouchesPerUser = 3 })
	t.Run("cap evicts the oldest first and counts it", func(t *testing.T) {
		s, facts, outs := applyAll(t, r, clk("k1", at(-4*hour)), clk("k2", at(-3*hour)), clk("k3", at(-2*hour)),
			clk("k4", at(-hour)), conv("v", at(0)))
		if want := []int{0, 0, 0, 1, 0}; !reflect.DeepEqual(evictions(outs), want) {
			t.Fatalf("Evicted %v, want %v", evictions(outs), want)
		}
		if got := touchIDs(s); !equalStrings(got, []string{"k2", "k3", "k4"}) {
			t.Fatalf("touches %q", got)
		}
		wantPath(t, conversionFact(t, facts, "v"), "k2", "k3", "k4")
	})
	t.Run("cap counts impressions and clicks together", func(t *testing.T) {
		s, _, outs := applyAll(t, r, imp("i1", at(-4*hour)), clk("k1", at(-3*hour)), imp("i2", at(-2*hour)), clk("k2", at(-hour)))
		if want := []int{0, 0, 0, 1}; !reflect.DeepEqual(evictions(outs), want) {
			t.Fatalf("Evicted %v, want %v", evictions(outs), want)
		}
		if got := touchIDs(s); !equalStrings(got, []string{"k1", "i2", "k2"}) {
			t.Fatalf("touches %q", got)
		}
	})
	t.Run("cap evicts by event time, not arrival: a late older touch goes first", func(t *testing.T) {
		s, _, outs := applyAll(t, r, clk("k2", at(-3*hour)), clk("k3", at(-2*hour)), clk("k4", at(-hour)), clk("k1", at(-4*hour)))
		if want := []int{0, 0, 0, 1}; !reflect.DeepEqual(evictions(outs), want) {
			t.Fatalf("Evicted %v, want %v", evictions(outs), want)
		}
		if got := touchIDs(s); !equalStrings(got, []string{"k2", "k3", "k4"}) {
			t.Fatalf("touches %q", got)
		}
	})
	t.Run("cap does not depend on arrival order", func(t *testing.T) {
		a := sequenced(t, r, clk("k1", at(-4*hour)), imp("i1", at(-4*hour)), clk("k2", at(-3*hour)), clk("k3", at(-2*hour)),
			imp("i2", at(-90*time.Minute)), clk("k4", at(-hour)), conv("v", at(0)))
		wantPath(t, conversionFact(t, a, "v"), "k3", "k4")
	})
	t.Run("MaxConversionsPerUser evicts the oldest conversion", func(t *testing.T) {
		r := rulesWith(t, func(c *Config) { c.MaxConversionsPerUser = 2 })
		s, _, outs := applyAll(t, r, conv("v1", at(0)), conv("v2", at(hour)), conv("v3", at(2*hour)))
		if want := []int{0, 0, 1}; !reflect.DeepEqual(evictions(outs), want) {
			t.Fatalf("Evicted %v, want %v", evictions(outs), want)
		}
		if cs := s.Conversions(); len(cs) != 2 || cs[0].ID != "v2" || cs[1].ID != "v3" {
			t.Fatalf("conversions %+v", cs)
		}
	})
}

func evictions(outs []Outcome) []int {
	var n []int
	for _, o := range outs {
		n = append(n, o.Evicted)
	}
	return n
}

func TestRetention(t *testing.T) {
	r := rulesWith(t, func(c *Config) { c.CampaignWindows = map[string]Windows{"wide": {View: 48 * hour}} })
	s, _, _ := applyAll(t, r, imp("i", at(0)), clk("k", at(0)), imp("w", at(0), withCampaign("wide")), conv("v", at(0)))
	steps := []struct {
		name    string
		latest  time.Duration
		touches []string
		convs   int
	}{
		{"retention: impression kept at exactly its view window", 24 * hour, []string{"i", "k", "w"}, 1},
		{"retention: impression dropped 1 ms after its view window", 24*hour + ms, []string{"k", "w"}, 1},
		{"retention: campaign view window keeps its impression", 48 * hour, []string{"k", "w"}, 1},
		{"retention: campaign impression dropped 1 ms after", 48*hour + ms, []string{"k"}, 1},
		{"retention: click kept at exactly its click window", 7 * day, []string{"k"}, 1},
		{"retention: click dropped 1 ms after; conversions after the longest window", 7*day + ms, nil, 0},
	}
	for i, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			// A bid of an unrelated auction moves the user's clock.
			b := bidReq("adv-"+string(rune('a'+i)), at(st.latest))
			if _, err := r.Apply(s, &b, &Facts{}); err != nil {
				t.Fatal(err)
			}
			if s.Latest() != at(st.latest) {
				t.Fatalf("Latest %d, want %d", s.Latest(), at(st.latest))
			}
			if got := touchIDs(s); !equalStrings(got, st.touches) {
				t.Fatalf("touches %q, want %q", got, st.touches)
			}
			if len(s.Conversions()) != st.convs {
				t.Fatalf("%d conversions kept, want %d", len(s.Conversions()), st.convs)
			}
		})
	}
	t.Run("retention: Expiry is the touch time plus its window", func(t *testing.T) {
		s, _, _ := applyAll(t, r, imp("i", at(0)), clk("k", at(0)), imp("w", at(0), withCampaign("wide")))
		want := map[string]int64{"i": at(24 * hour), "k": at(7 * day), "w": at(48 * hour)}
		for _, tc := range s.Touches() {
			if tc.Expiry() != want[tc.ID] {
				t.Errorf("%s: Expiry %d, want %d", tc.ID, tc.Expiry(), want[tc.ID])
			}
		}
	})
	t.Run("retention: a late event does not move the clock", func(t *testing.T) {
		s, _, _ := applyAll(t, r, imp("i", at(0)), bidReq("x", at(24*hour)), clk("old", at(-hour)))
		if s.Latest() != at(24*hour) || !equalStrings(touchIDs(s), []string{"old", "i"}) {
			t.Fatalf("latest %d, touches %q", s.Latest(), touchIDs(s))
		}
	})
}

func TestBidJoin(t *testing.T) {
	r := rulesWith(t, func(c *Config) {
		c.CampaignWindows = map[string]Windows{"wide": {View: 48 * hour}, "narrow": {View: hour}}
	})
	wantJoined := func(t *testing.T, f ImpressionFact, id, auction string) {
		t.Helper()
		if f.ImpressionID != id || f.AuctionID != auction || f.Bid == nil {
			t.Fatalf("impression fact %+v: want %s joined to %s", f, id, auction)
		}
		want := Bid{FloorPrice: 0.5, BidPrice: 1.25, Currency: "USD", Exchange: "adx", Criteria: []string{"sports", "news"}}
		if !reflect.DeepEqual(*f.Bid, want) {
			t.Fatalf("joined bid %+v, want %+v", *f.Bid, want)
		}
		if f.Website != "example.com" || f.CreativeID != "cr-1" || f.UserID != "u1" {
			t.Fatalf("impression fact %+v", f)
		}
	}
	t.Run("bid join: bid first", func(t *testing.T) {
		facts := sequenced(t, r, bidReq("a", at(-2*hour)), imp("i", at(-hour), withAuction("a")))
		if len(facts.Impressions) != 1 {
			t.Fatalf("impression facts %+v", facts.Impressions)
		}
		wantJoined(t, facts.Impressions[0], "i", "a")
	})
	t.Run("bid join: same time, either id order", func(t *testing.T) {
		facts := sequenced(t, r, bidReq("z-auction", at(-hour)), imp("a-imp", at(-hour), withAuction("z-auction")))
		if len(facts.Impressions) != 1 {
			t.Fatalf("impression facts %+v", facts.Impressions)
		}
		wantJoined(t, facts.Impressions[0], "a-imp", "z-auction")
	})
	t.Run("bid join: impression first, the bid re-emits the impression fact", func(t *testing.T) {
		_, facts, _ := applyAll(t, r, imp("i", at(-2*hour), withAuction("a")), bidReq("a", at(-hour)))
		if len(facts.Impressions) != 2 {
			t.Fatalf("impression facts %+v", facts.Impressions)
		}
		first := facts.Impressions[0]
		if first.Bid != nil || first.AuctionID != "a" || first.ImpressionID != "i" {
			t.Fatalf("first fact %+v", first)
		}
		wantJoined(t, facts.Impressions[1], "i", "a")
		second := facts.Impressions[1]
		second.Bid = nil
		if second != first {
			t.Fatalf("re-emitted fact %+v differs from the first %+v beyond the bid", second, first)
		}
	})
	for _, c := range []struct {
		name       string
		bid, imp   time.Duration
		campaign   string
		wantJoined bool
	}{
		{"bid join: bid exactly the view window before", -24 * hour, 0, "", true},
		{"bid join: bid the view window + 1 ms before: no join", -24*hour - ms, 0, "", false},
		{"bid join: bid exactly the view window after", 24 * hour, 0, "", true},
		{"bid join: bid the view window + 1 ms after: no join", 24*hour + ms, 0, "", false},
		{"bid join: campaign view window 48 h, bid 36 h before", -36 * hour, 0, "wide", true},
		{"bid join: campaign view window 48 h, bid 36 h after", 36 * hour, 0, "wide", true},
		{"bid join: campaign view window 1 h, bid 2 h before: no join", -2 * hour, 0, "narrow", false},
		{"bid join: campaign view window 1 h, bid 2 h after: no join", 2 * hour, 0, "narrow", false},
	} {
		t.Run(c.name, func(t *testing.T) {
			opts := []evOpt{withAuction("a")}
			if c.campaign != "" {
				opts = append(opts, withCampaign(c.campaign))
			}
			facts := sequenced(t, r, bidReq("a", at(c.bid)), imp("i", at(c.imp), opts...))
			last := facts.Impressions[len(facts.Impressions)-1]
			if joined := last.Bid != nil; joined != c.wantJoined {
				t.Fatalf("impression facts %+v: joined %v, want %v", facts.Impressions, joined, c.wantJoined)
			}
			if !c.wantJoined && len(facts.Impressions) != 1 {
				t.Fatalf("impression facts %+v", facts.Impressions)
			}
		})
	}
	t.Run("bid join: duplicate bid joins nothing again", func(t *testing.T) {
		s, facts, _ := applyAll(t, r, imp("i", at(-2*hour), withAuction("a")), bidReq("a", at(-hour)))
		o, err := r.Apply(s, ptr(bidReq("a", at(-hour))), facts)
		if err != nil || !o.Duplicate || len(facts.Impressions) != 2 {
			t.Fatalf("outcome %+v, err %v, facts %+v", o, err, facts.Impressions)
		}
	})
	t.Run("bid join: a bid alone produces no fact", func(t *testing.T) {
		_, facts, _ := applyAll(t, r, bidReq("a", at(0)), imp("i", at(hour), withAuction("other")))
		if facts.Len() != 1 || facts.Impressions[0].Bid != nil {
			t.Fatalf("facts %+v", facts)
		}
	})
	t.Run("bid join: an impression without auction_id joins no bid", func(t *testing.T) {
		_, facts, _ := applyAll(t, r, bidReq("a", at(0)), imp("a", at(hour)))
		if facts.Len() != 1 || facts.Impressions[0].Bid != nil {
			t.Fatalf("facts %+v", facts)
		}
	})
	t.Run("bid join: only the same user's bid", func(t *testing.T) {
		facts := sequenced(t, r, bidReq("a", at(0), withUser("u2")), imp("i", at(hour), withAuction("a")))
		if len(facts.Impressions) != 1 || facts.Impressions[0].Bid != nil {
			t.Fatalf("facts %+v", facts.Impressions)
		}
	})
}

func TestClickJoin(t *testing.T) {
	r := rulesWith(t, func(c *Config) { c.CampaignWindows = map[string]Windows{"short": {Click: hour}} })
	cr2 := withCreative("cr-2")
	cases := []struct {
		name     string
		events   []Event // the click is last
		joined   bool
		impID    string
		sinceImp time.Duration
	}{
		{"click join: by named impression_id", []Event{
			imp("i1", at(-3*hour)), imp("i2", at(-2*hour)), clk("k", at(-hour), naming("i1"))}, true, "i1", 2 * hour},
		{"click join: named impression of another creative", []Event{
			imp("i1", at(-3*hour), cr2), imp("i2", at(-2*hour)), clk("k", at(-hour), naming("i1"))}, true, "i1", 2 * hour},
		{"click join: named impression at the click's time", []Event{
			imp("z", at(-hour)), clk("a", at(-hour), naming("z"))}, true, "z", 0},
		{"click join: named impression not found", []Event{
			imp("i1", at(-3*hour)), clk("k", at(-hour), naming("nope"))}, false, "nope", 0},
		{"click join: latest same-creative impression when the click names none", []Event{
			imp("i1", at(-4*hour)), imp("i2", at(-3*hour)), imp("i3", at(-2*hour), cr2), clk("k", at(-hour))}, true, "i2", 2 * hour},
		{"click join: latest same-creative impression, tie by id", []Event{
			imp("i-b", at(-2*hour)), imp("i-a", at(-2*hour)), clk("k", at(-hour))}, true, "i-b", hour},
		{"click join: same-creative impression at the click's time", []Event{
			imp("i", at(-hour)), clk("k", at(-hour))}, true, "i", 0},
		{"click join: none found (no impression of the creative)", []Event{
			imp("i1", at(-2*hour), cr2), clk("k", at(-hour))}, false, "", 0},
		{"click join: none found (impression of another user)", []Event{
			imp("i1", at(-2*hour), withUser("u2")), clk("k", at(-hour))}, false, "", 0},
		{"click join: none found (impression after the click)", []Event{
			clk("k", at(-hour)), imp("i1", at(-hour+ms))}, false, "", 0},
		{"click join: same-creative impression within the click's campaign window", []Event{
			imp("i1", at(-2*hour)), clk("k", at(-hour), withCampaign("short"))}, true, "i1", hour},
		{"click join: same-creative impression beyond the click's campaign window", []Event{
			imp("i1", at(-2*hour-ms)), clk("k", at(-hour), withCampaign("short"))}, false, "", 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			facts := sequenced(t, r, c.events...)
			var f *ClickFact
			for i := range facts.Clicks {
				if facts.Clicks[i].UserID == "u1" {
					f = &facts.Clicks[i]
				}
			}
			if f == nil || len(facts.Clicks) != 1 {
				t.Fatalf("click facts %+v", facts.Clicks)
			}
			if f.Joined != c.joined || f.ImpressionID != c.impID || f.SinceImpression != c.sinceImp.Milliseconds() {
				t.Fatalf("click fact %+v, want joined %v to %q, since %v", *f, c.joined, c.impID, c.sinceImp)
			}
		})
	}
	// Joins look at what the state keeps: an impression is kept for its
	// view window (24 h), shorter than the click window (see the report on
	// this reading of the spec).
	t.Run("click join: an impression past its view window is no longer kept", func(t *testing.T) {
		facts := sequenced(t, r, imp("i1", at(-25*hour)), clk("k", at(0)))
		if f := facts.Clicks[0]; f.Joined || f.ImpressionID != "" {
			t.Fatalf("click fact %+v", f)
		}
		facts = sequenced(t, r, imp("i1", at(-25*hour)), clk("k", at(0), naming("i1")))
		if f := facts.Clicks[0]; f.Joined || f.ImpressionID != "i1" {
			t.Fatalf("click fact %+v", f)
		}
	})
	t.Run("click join: the click's touch keeps the impression id", func(t *testing.T) {
		s, _, _ := applyAll(t, r, imp("i1", at(-2*hour)), clk("k", at(-hour)))
		if tc := s.Touches()[1]; tc.ID != "k" || tc.ImpressionID != "i1" {
			t.Fatalf("touch %+v", tc)
		}
	})
}

func TestValidation(t *testing.T) {
	long := strings.Repeat("x", MaxFieldLen+1)
	max := strings.Repeat("x", MaxFieldLen)
	many := make([]string, MaxCriteria+1)
	for i := range many {
		many[i] = "c"
	}
	set := func(f func(*Event)) func(*Event) { return f }
	base := map[Type]Event{
		TypeImpression: imp("i-new", at(0), withAuction("a")),
		TypeClick:      clk("k-new", at(0), naming("i")),
		TypeConversion: conv("v-new", at(0)),
		TypeBid:        bidReq("a-new", at(0)),
	}
	cases := []struct {
		name  string
		typ   Type
		edit  func(*Event)
		field string // "" for a valid event
	}{
		{"type 0", TypeClick, set(func(e *Event) { e.Type = TypeNone }), "type"},
		{"type 5", TypeClick, set(func(e *Event) { e.Type = 5 }), "type"},
		{"user_id missing", TypeImpression, set(func(e *Event) { e.UserID = "" }), "user_id"},
		{"impression_id missing", TypeImpression, set(func(e *Event) { e.ID = "" }), "impression_id"},
		{"click_id missing", TypeClick, set(func(e *Event) { e.ID = "" }), "click_id"},
		{"conversion_id missing", TypeConversion, set(func(e *Event) { e.ID = "" }), "conversion_id"},
		{"auction id missing", TypeBid, set(func(e *Event) { e.ID = "" }), "auction_details.auction_id"},
		{"timestamp before 2000", TypeClick, set(func(e *Event) { e.Time = MinEventTime - 1 }), "timestamp"},
		{"timestamp 2000-01-01 is valid", TypeClick, set(func(e *Event) { e.Time = MinEventTime }), ""},
		{"timestamp 2200-01-01", TypeClick, set(func(e *Event) { e.Time = MaxEventTime }), "timestamp"},
		{"timestamp zero", TypeConversion, set(func(e *Event) { e.Time = 0 }), "timestamp"},
		{"user_id too long", TypeClick, set(func(e *Event) { e.UserID = long }), "user_id"},
		{"user_id of 256 bytes is valid", TypeClick, set(func(e *Event) { e.UserID = max }), ""},
		{"click_id with a newline", TypeClick, set(func(e *Event) { e.ID = "k\n1" }), "click_id"},
		{"impression_id not UTF-8", TypeImpression, set(func(e *Event) { e.ID = "i\xff" }), "impression_id"},
		{"ad_creative_id with a control character", TypeImpression, set(func(e *Event) { e.CreativeID = "cr\x01" }), "ad_creative_id"},
		{"campaign_id not UTF-8", TypeClick, set(func(e *Event) { e.CampaignID = "\xc3\x28" }), "campaign_id"},
		{"website with DEL", TypeImpression, set(func(e *Event) { e.Website = "a\x7fb" }), "website"},
		{"auction_id too long", TypeImpression, set(func(e *Event) { e.AuctionID = long }), "auction_id"},
		{"impression_id (click) with a tab", TypeClick, set(func(e *Event) { e.ImpressionID = "i\t" }), "impression_id"},
		{"conversion_type too long", TypeConversion, set(func(e *Event) { e.ConversionType = long }), "conversion_type"},
		{"value NaN", TypeConversion, set(func(e *Event) { e.Value = math.NaN() }), "value"},
		{"value +Inf", TypeConversion, set(func(e *Event) { e.Value = math.Inf(1) }), "value"},
		{"value -Inf", TypeConversion, set(func(e *Event) { e.Value = math.Inf(-1) }), "value"},
		{"currency of two letters", TypeConversion, set(func(e *Event) { e.Currency = "US" }), "currency"},
		{"currency lower case (not normalized)", TypeConversion, set(func(e *Event) { e.Currency = "usd" }), "currency"},
		{"currency with a digit", TypeConversion, set(func(e *Event) { e.Currency = "US1" }), "currency"},
		{"currency empty is valid", TypeConversion, set(func(e *Event) { e.Currency = "" }), ""},
		{"auction_details missing", TypeBid, set(func(e *Event) { e.Bid = nil }), "auction_details"},
		{"bid price negative", TypeBid, set(func(e *Event) { e.Bid.BidPrice = -0.01 }), "auction_details.bid_price"},
		{"bid price NaN", TypeBid, set(func(e *Event) { e.Bid.BidPrice = math.NaN() }), "auction_details.bid_price"},
		{"floor price +Inf", TypeBid, set(func(e *Event) { e.Bid.FloorPrice = math.Inf(1) }), "auction_details.floor_price"},
		{"bid currency", TypeBid, set(func(e *Event) { e.Bid.Currency = "dollars" }), "auction_details.currency"},
		{"targeting criteria: too many", TypeBid, set(func(e *Event) { e.Bid.Criteria = many }), "ad_targeting.targeting_criteria"},
		{"targeting criteria: 64 is valid", TypeBid, set(func(e *Event) { e.Bid.Criteria = many[:MaxCriteria] }), ""},
		{"targeting criterion with a control character", TypeBid, set(func(e *Event) { e.Bid.Criteria = []string{"ok", "a\x00"} }), "ad_targeting.targeting_criteria"},
		{"exchange too long", TypeBid, set(func(e *Event) { e.Bid.Exchange = long }), "auction_details.exchange"},
		{"zero prices are valid", TypeBid, set(func(e *Event) { e.Bid.BidPrice, e.Bid.FloorPrice = 0, 0 }), ""},
	}
	for _, c := range cases {
		t.Run("validation: "+c.name, func(t *testing.T) {
			r := rulesWith(t, nil)
			// A state with every kind of content, and a pending join.
			s, facts, _ := applyAll(t, r, bidReq("b0", at(-3*hour)), imp("i", at(-2*hour), withAuction("a")),
				clk("k", at(-hour)), conv("v", at(-30*time.Minute)))
			before := mustMarshal(t, s)
			ev := base[c.typ]
			if ev.Bid != nil {
				b := *ev.Bid
				ev.Bid = &b
			}
			c.edit(&ev)
			n := facts.Len()
			o, err := r.Apply(s, &ev, facts)
			verr := ev.Validate()
			if c.field == "" {
				if err != nil || verr != nil {
					t.Fatalf("valid event rejected: %v / %v", err, verr)
				}
				return
			}
			if err == nil {
				t.Fatalf("invalid event accepted: %+v", ev)
			}
			var ve *ValidationError
			if !errors.As(err, &ve) || ve.Field != c.field {
				t.Fatalf("error %q (%T), want a *ValidationError of field %q", err, err, c.field)
			}
			if !errors.Is(err, ErrInvalidEvent) || errors.Is(err, ErrFutureEvent) {
				t.Fatalf("error %v: errors.Is(ErrInvalidEvent) = %v, errors.Is(ErrFutureEvent) = %v",
					err, errors.Is(err, ErrInvalidEvent), errors.Is(err, ErrFutureEvent))
			}
			if !strings.HasPrefix(err.Error(), c.field+": ") || verr == nil || verr.Error() != err.Error() {
				t.Fatalf("error text %q (Validate: %v)", err, verr)
			}
			if o != (Outcome{}) || facts.Len() != n {
				t.Fatalf("invalid event: outcome %+v, facts %d -> %d", o, n, facts.Len())
			}
			if after := mustMarshal(t, s); string(after) != string(before) {
				t.Fatal("an invalid event changed the state")
			}
		})
	}
	t.Run("validation: ParseType of an unknown type", func(t *testing.T) {
		_, err := ParseType("purchase")
		var ve *ValidationError
		if !errors.As(err, &ve) || ve.Field != "type" || !errors.Is(err, ErrInvalidEvent) {
			t.Fatalf("error %v", err)
		}
		for _, typ := range []Type{TypeBid, TypeImpression, TypeClick, TypeConversion} {
			if got, err := ParseType(typ.String()); err != nil || got != typ {
				t.Fatalf("ParseType(%q) = %v, %v", typ, got, err)
			}
		}
	})
	t.Run("validation: ParseTime", func(t *testing.T) {
		for in, want := range map[string]int64{
			"2026-01-15T12:00:00Z":          T0,
			"2026-01-15T12:00:00.123Z":      T0 + 123,
			"2026-01-15T12:00:00.1239Z":     T0 + 123,
			"2026-01-15T13:00:00.000+01:00": T0,
			"1768478400000":                 T0,
		} {
			if got, err := ParseTime(in); err != nil || got != want {
				t.Errorf("ParseTime(%q) = %d, %v; want %d", in, got, err, want)
			}
		}
		for _, in := range []string{"", "yesterday", "2026-13-01T00:00:00Z"} {
			if _, err := ParseTime(in); !errors.Is(err, ErrInvalidEvent) {
				t.Errorf("ParseTime(%q): error %v", in, err)
			}
		}
		if got := FormatTime(T0 + 5); got != "2026-01-15T12:00:00.005Z" {
			t.Errorf("FormatTime = %q", got)
		}
	})
}

func TestCheckTime(t *testing.T) {
	now := time.UnixMilli(T0)
	skew := 5 * time.Minute
	for _, c := range []struct {
		name   string
		ts     int64
		future bool
	}{
		{"CheckTime: now", T0, false},
		{"CheckTime: in the past", at(-30 * day), false},
		{"CheckTime: exactly max_future_skew ahead", at(skew), false},
		{"CheckTime: max_future_skew + 1 ms ahead is ErrFutureEvent", at(skew + ms), true},
		{"CheckTime: a day ahead is ErrFutureEvent", at(day), true},
	} {
		t.Run(c.name, func(t *testing.T) {
			ev := clk("k", c.ts)
			err := ev.CheckTime(now, skew)
			if !c.future {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			var ve *ValidationError
			if !errors.Is(err, ErrFutureEvent) || !errors.Is(err, ErrInvalidEvent) || !errors.As(err, &ve) || ve.Field != "timestamp" {
				t.Fatalf("error %v", err)
			}
		})
	}
	t.Run("CheckTime: Validate does not look at the clock", func(t *testing.T) {
		ev := clk("k", MaxEventTime-1)
		if err := ev.Validate(); err != nil {
			t.Fatal(err)
		}
	})
}

func TestDeriveID(t *testing.T) {
	base := func() Event {
		return Event{Type: TypeBid, UserID: "u1", Time: T0, CreativeID: "cr", CampaignID: "ca", Website: "w",
			AuctionID: "au", ImpressionID: "im", ConversionType: "ct", Value: 1.5, Currency: "USD",
			Bid: &Bid{FloorPrice: 1, BidPrice: 2, Currency: "EUR", Exchange: "x", Criteria: []string{"a", "b"}}}
	}
	ref := base()
	id := DeriveID(&ref)
	t.Run("DeriveID is deterministic", func(t *testing.T) {
		again := base()
		if DeriveID(&again) != id || DeriveID(&ref) != id {
			t.Fatal("DeriveID differs for the same record")
		}
		if len(id) != 32 || strings.Trim(id, "0123456789abcdef") != "" {
			t.Fatalf("id %q: want 32 lower-case hex digits", id)
		}
		withID := base()
		withID.ID = "given"
		if DeriveID(&withID) != id {
			t.Fatal("DeriveID depends on the id field")
		}
	})
	t.Run("DeriveID differs for different records", func(t *testing.T) {
		edits := map[string]func(*Event){
			"type":          func(e *Event) { e.Type = TypeImpression },
			"user":          func(e *Event) { e.UserID = "u2" },
			"time":          func(e *Event) { e.Time++ },
			"creative":      func(e *Event) { e.CreativeID = "cr2" },
			"campaign":      func(e *Event) { e.CampaignID = "ca2" },
			"website":       func(e *Event) { e.Website = "w2" },
			"auction":       func(e *Event) { e.AuctionID = "au2" },
			"impression":    func(e *Event) { e.ImpressionID = "im2" },
			"conv type":     func(e *Event) { e.ConversionType = "ct2" },
			"value":         func(e *Event) { e.Value = 1.25 },
			"currency":      func(e *Event) { e.Currency = "EUR" },
			"floor":         func(e *Event) { e.Bid.FloorPrice = 1.5 },
			"bid price":     func(e *Event) { e.Bid.BidPrice = 2.5 },
			"bid currency":  func(e *Event) { e.Bid.Currency = "USD" },
			"exchange":      func(e *Event) { e.Bid.Exchange = "y" },
			"criteria":      func(e *Event) { e.Bid.Criteria = []string{"a", "c"} },
			"criteria join": func(e *Event) { e.Bid.Criteria = []string{"ab"} },
			"no bid":        func(e *Event) { e.Bid = nil },
			"field shift":   func(e *Event) { e.CreativeID, e.CampaignID = "crc", "a" },
			"empty to next": func(e *Event) { e.Website, e.AuctionID = "", "wau" },
		}
		seen := map[string]string{id: "base"}
		for name, edit := range edits {
			e := base()
			edit(&e)
			d := DeriveID(&e)
			if prev, dup := seen[d]; dup {
				t.Errorf("%s: same id as %s", name, prev)
			}
			seen[d] = name
		}
	})
	t.Run("Normalize derives a missing id and keeps a given one", func(t *testing.T) {
		e := base()
		e.Normalize()
		if e.ID != id {
			t.Fatalf("Normalize set id %q, want %q", e.ID, id)
		}
		e.Normalize()
		if e.ID != id {
			t.Fatal("Normalize is not idempotent")
		}
		g := base()
		g.ID = "given"
		g.Normalize()
		if g.ID != "given" {
			t.Fatalf("Normalize replaced a given id: %q", g.ID)
		}
	})
	t.Run("DeriveID: a re-sent record without id dedupes", func(t *testing.T) {
		r := rulesWith(t, nil)
		a := clk("", at(-hour))
		b := clk("", at(-hour))
		s, facts, outs := applyAll(t, r, a, b)
		if a.ID == "" || a.ID != b.ID || !outs[1].Duplicate || len(facts.Clicks) != 1 || len(s.Touches()) != 1 {
			t.Fatalf("ids %q %q, outcomes %+v", a.ID, b.ID, outs)
		}
		// Currency case does not make a different record.
		c1, c2 := conv("", at(0), withCurrency("usd")), conv("", at(0), withCurrency("USD"))
		if c1.ID != c2.ID {
			t.Fatal("currency case changed the derived id")
		}
	})
}

func TestNormalize(t *testing.T) {
	t.Run("Normalize upper-cases currency", func(t *testing.T) {
		e := Event{Type: TypeConversion, UserID: "u", ID: "v", Time: T0, Currency: "usd"}
		e.Normalize()
		if e.Currency != "USD" {
			t.Fatalf("currency %q", e.Currency)
		}
		if err := e.Validate(); err != nil {
			t.Fatal(err)
		}
		b := Event{Type: TypeBid, UserID: "u", ID: "a", Time: T0, Bid: &Bid{Currency: "eUr"}}
		b.Normalize()
		if b.Bid.Currency != "EUR" {
			t.Fatalf("bid currency %q", b.Bid.Currency)
		}
		m := Event{Type: TypeConversion, UserID: "u", ID: "v", Time: T0, Currency: "\u00e9ur"}
		m.Normalize()
		if m.Currency != "\u00e9UR" {
			t.Fatalf("non-ASCII currency %q", m.Currency)
		}
		if err := m.Validate(); err == nil {
			t.Fatal("non-ASCII currency accepted")
		}
	})
	t.Run("Normalize leaves other fields alone", func(t *testing.T) {
		e := Event{Type: TypeClick, UserID: "User", ID: "Click", Time: T0, CreativeID: "Cr", CampaignID: "Ca"}
		want := e
		e.Normalize()
		if !reflect.DeepEqual(e, want) {
			t.Fatalf("%+v", e)
		}
	})
}

func TestWatermark(t *testing.T) {
	cfg := DefaultWatermarkConfig() // lateness 10 s, idle 5 s, max skew 5 min
	const L, idle, skew = 10_000, 5_000, 300_000
	w0 := T0 // wall clock at start
	t.Run("watermark: min over inputs minus lateness", func(t *testing.T) {
		w := NewWatermark(3, cfg, w0)
		if w.Current() != NoWatermark || w.Advance(w0) != NoWatermark {
			t.Fatal("a new watermark has a value")
		}
		w.Observe(0, T0+100_000, w0)
		w.Observe(1, T0+50_000, w0)
		if got := w.Advance(w0); got != NoWatermark {
			t.Fatalf("an active input not heard from yet must hold the watermark: %d", got)
		}
		w.Observe(2, T0+70_000, w0)
		if got := w.Advance(w0); got != T0+50_000-L {
			t.Fatalf("watermark %d, want %d", got-T0, 50_000-L)
		}
		w.Observe(1, T0+40_000, w0+1) // older record: newest unchanged
		if got := w.Advance(w0 + 1); got != T0+50_000-L || w.Newest(1) != T0+50_000 {
			t.Fatalf("watermark %d, newest %d", got-T0, w.Newest(1)-T0)
		}
		if w.Inputs() != 3 {
			t.Fatal("Inputs")
		}
		if !w.Late(T0+50_000-L) || w.Late(T0+50_000-L+1) {
			t.Fatal("Late: a time at or before the watermark is late, after it is not")
		}
	})
	t.Run("watermark: an idle input stops holding it", func(t *testing.T) {
		w := NewWatermark(2, cfg, w0)
		w.Observe(0, T0+100_000, w0)
		w.Observe(1, T0+50_000, w0)
		w.Advance(w0)
		w.Observe(0, T0+200_000, w0+1000)
		if got := w.Advance(w0 + idle - 1); got != T0+50_000-L {
			t.Fatalf("input 1 silent for less than the idle timeout: watermark %d", got-T0)
		}
		if got := w.Advance(w0 + idle); got != T0+200_000-L {
			t.Fatalf("input 1 silent for the idle timeout: watermark %d, want %d", got-T0, 200_000-L)
		}
		// It holds the watermark again once it delivers (but the
		// watermark never moves back).
		w.Observe(1, T0+300_000, w0+idle+1)
		w.Observe(0, T0+400_000, w0+idle+1)
		if got := w.Advance(w0 + idle + 1); got != T0+300_000-L {
			t.Fatalf("watermark %d", got-T0)
		}
	})
	t.Run("watermark: all idle follows the wall clock", func(t *testing.T) {
		w := NewWatermark(2, cfg, w0)
		w.Observe(0, T0-hour.Milliseconds(), w0)
		w.Observe(1, T0-hour.Milliseconds(), w0)
		w.Advance(w0)
		now := w0 + idle
		if got := w.Advance(now); got != now-L {
			t.Fatalf("watermark %d, want now - lateness %d", got, now-L)
		}
		if got := w.Advance(now + 1234); got != now+1234-L {
			t.Fatalf("watermark %d, want %d", got, now+1234-L)
		}
		n := NewWatermark(4, cfg, w0) // nothing ever heard
		if got := n.Advance(w0 + idle); got != w0+idle-L {
			t.Fatalf("silent partition: watermark %d", got)
		}
	})
	t.Run("watermark: never moves back", func(t *testing.T) {
		w := NewWatermark(2, cfg, w0)
		now := w0 + idle
		high := w.Advance(now) // all idle: now - L
		w.Observe(0, T0-day.Milliseconds(), now+1)
		w.Observe(1, T0-day.Milliseconds(), now+1)
		if got := w.Advance(now + 1); got != high || w.Current() != high {
			t.Fatalf("watermark moved back to %d from %d", got, high)
		}
	})
	t.Run("watermark: Active keeps an input from going idle", func(t *testing.T) {
		w := NewWatermark(2, cfg, w0)
		w.Observe(0, T0-100_000, w0)
		w.Observe(1, T0-150_000, w0)
		w.Active(1, w0+4000)
		if got := w.Advance(w0 + 8000); got != T0-150_000-L {
			t.Fatalf("watermark %d: the active input must hold it", got-T0)
		}
		if got := w.Advance(w0 + 4000 + idle); got != w0+4000+idle-L {
			t.Fatalf("watermark %d once both are idle", got)
		}
		// An input never heard from but known to lag holds everything.
		v := NewWatermark(2, cfg, w0)
		v.Observe(0, T0, w0)
		v.Active(1, w0+idle)
		if got := v.Advance(w0 + idle + 1); got != NoWatermark {
			t.Fatalf("watermark %d, want none while input 1 is active and unheard", got)
		}
	})
	t.Run("watermark: Ahead for an input more than MaxSkew ahead", func(t *testing.T) {
		w := NewWatermark(2, cfg, w0)
		w.Observe(0, T0, w0)
		w.Observe(1, T0, w0)
		cur := w.Advance(w0) // T0 - L
		w.Observe(1, cur+skew, w0)
		if w.Ahead(1) || w.Ahead(0) {
			t.Fatal("exactly MaxSkew ahead is not ahead")
		}
		w.Observe(1, cur+skew+1, w0)
		if !w.Ahead(1) || w.Ahead(0) {
			t.Fatal("MaxSkew + 1 ms ahead must be Ahead")
		}
	})
	t.Run("watermark: Ahead before the watermark has a value", func(t *testing.T) {
		w := NewWatermark(3, cfg, w0)
		if w.Ahead(0) {
			t.Fatal("an input not heard from is not ahead")
		}
		w.Observe(0, T0, w0)
		w.Observe(1, T0-L+skew, w0)
		if w.Advance(w0) != NoWatermark {
			t.Fatal("input 2 (active, unheard) must keep the watermark unset")
		}
		if w.Ahead(0) || w.Ahead(1) {
			t.Fatal("within MaxSkew of the slowest input's time minus lateness is not ahead")
		}
		w.Observe(1, T0-L+skew+1, w0)
		if !w.Ahead(1) || w.Ahead(0) {
			t.Fatal("an input more than MaxSkew ahead of the slowest must be Ahead before the watermark has a value")
		}
	})
}

func TestWatermarkConfigValidate(t *testing.T) {
	good := DefaultWatermarkConfig()
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	zeroLate := good
	zeroLate.AllowedLateness = 0
	if err := zeroLate.Validate(); err != nil {
		t.Fatalf("zero lateness rejected: %v", err)
	}
	for name, edit := range map[string]func(*WatermarkConfig){
		"negative lateness": func(c *WatermarkConfig) { c.AllowedLateness = -1 },
		"zero idle timeout": func(c *WatermarkConfig) { c.IdleTimeout = 0 },
		"zero max skew":     func(c *WatermarkConfig) { c.MaxSkew = 0 },
	} {
		c := good
		edit(&c)
		if c.Validate() == nil {
			t.Errorf("%s accepted", name)
		}
	}
}

func TestBuffer(t *testing.T) {
	// Records of all types at a few times, pushed in a scrambled order on
	// their inputs; positions are per input.
	evs := []Event{
		conv("v", at(0)), clk("k2", at(0)), imp("i", at(0)), bidReq("a", at(0)),
		clk("k1", at(0)), clk("K", at(0)), imp("i0", at(-ms)), conv("v0", at(-ms)),
		bidReq("b", at(ms)), clk("k10", at(0)), clk("k9", at(0)),
	}
	want := []string{"imp i0", "conversion v0", "bid a", "imp i", "click K", "click k1", "click k10", "click k2", "click k9", "conversion v", "bid b"}
	name := func(e *Event) string {
		if e.Type == TypeImpression {
			return "imp " + e.ID
		}
		return e.Type.String() + " " + e.ID
	}
	t.Run("buffer releases in (time, type, id) order", func(t *testing.T) {
		b := NewBuffer(4)
		for i := range evs {
			b.Push(inputOf(evs[i].Type), int64(i), &evs[i])
		}
		if b.Len() != len(evs) {
			t.Fatalf("Len %d", b.Len())
		}
		if pt, ok := b.PeekTime(); !ok || pt != at(-ms) {
			t.Fatalf("PeekTime %d %v", pt, ok)
		}
		held := 0
		b.Each(func(*Event) { held++ })
		if held != len(evs) {
			t.Fatalf("Each visited %d", held)
		}
		var got []string
		if n := b.PopUntil(at(-ms)-1, func(_ int, _ int64, e *Event) { got = append(got, name(e)) }); n != 0 {
			t.Fatalf("released %d before the watermark passed them", n)
		}
		n := b.PopUntil(at(0), func(_ int, _ int64, e *Event) { got = append(got, name(e)) })
		if n != len(evs)-1 || b.Len() != 1 {
			t.Fatalf("released %d, %d held", n, b.Len())
		}
		b.PopUntil(at(ms), func(_ int, _ int64, e *Event) { got = append(got, name(e)) })
		if !equalStrings(got, want) {
			t.Fatalf("order\n%q\nwant\n%q", got, want)
		}
		if _, ok := b.PeekTime(); ok || b.Len() != 0 {
			t.Fatal("buffer not empty")
		}
		// Sorting with Less gives the same order.
		sorted := sortedEvents(evs)
		for i := range sorted {
			if name(&sorted[i]) != want[i] {
				t.Fatalf("Less order %d: %s, want %s", i, name(&sorted[i]), want[i])
			}
		}
	})
	t.Run("buffer Earliest is the earliest held position per input", func(t *testing.T) {
		b := NewBuffer(2)
		// Input 0: positions 10, 11, 12, 13 with times 300, 100, 200, 400.
		for i, ts := range []time.Duration{300, 100, 200, 400} {
			e := clk("k"+string(rune('a'+i)), at(ts*ms))
			b.Push(0, int64(10+i), &e)
		}
		e := imp("i", at(150*ms))
		b.Push(1, 7, &e)
		check := func(input int, wantPos int64, wantOK bool) {
			t.Helper()
			if pos, ok := b.Earliest(input); ok != wantOK || pos != wantPos {
				t.Fatalf("Earliest(%d) = %d, %v; want %d, %v", input, pos, ok, wantPos, wantOK)
			}
		}
		check(0, 10, true)
		check(1, 7, true)
		b.PopUntil(at(100*ms), func(int, int64, *Event) {}) // releases pos 11
		check(0, 10, true)
		b.PopUntil(at(150*ms), func(int, int64, *Event) {}) // releases input 1
		check(1, 0, false)
		b.PopUntil(at(300*ms), func(int, int64, *Event) {}) // releases 12 then 10
		check(0, 13, true)
		b.PopUntil(at(400*ms), func(int, int64, *Event) {})
		check(0, 0, false)
		// Positions keep counting after a drain.
		e2 := clk("kz", at(500*ms))
		b.Push(0, 20, &e2)
		check(0, 20, true)
	})
	t.Run("buffer PopUntil reports each record's input and position", func(t *testing.T) {
		b := NewBuffer(3)
		type rec struct {
			input int
			pos   int64
			id    string
		}
		pushed := []rec{{2, 40, "v"}, {0, 7, "k"}, {1, 12, "i"}, {0, 8, "k0"}}
		times := map[string]int64{"v": at(ms), "k": at(0), "i": at(0), "k0": at(-ms)}
		for _, p := range pushed {
			e := clk(p.id, times[p.id])
			b.Push(p.input, p.pos, &e)
		}
		var got []rec
		b.PopUntil(at(ms), func(input int, pos int64, e *Event) { got = append(got, rec{input, pos, e.ID}) })
		want := []rec{{0, 8, "k0"}, {1, 12, "i"}, {0, 7, "k"}, {2, 40, "v"}}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("released %+v, want %+v", got, want)
		}
		seq := NewSequencer(1, DefaultWatermarkConfig(), T0)
		e := clk("k", T0)
		seq.Add(0, 99, &e, T0)
		var pos []int64
		seq.Release(T0+6000+10_000, func(_ int, p int64, _ *Event) { pos = append(pos, p) })
		if !reflect.DeepEqual(pos, []int64{99}) {
			t.Fatalf("Release positions %v", pos)
		}
	})
	t.Run("sequencer holds records until the watermark passes them", func(t *testing.T) {
		seq := NewSequencer(2, DefaultWatermarkConfig(), T0)
		e1, e2 := clk("k1", at(0)), imp("i1", at(5*time.Second))
		if seq.Add(0, 1, &e1, T0) || seq.Add(1, 1, &e2, T0) {
			t.Fatal("reported late")
		}
		var got []string
		if n := seq.Release(T0, func(_ int, _ int64, e *Event) { got = append(got, e.ID) }); n != 0 {
			t.Fatalf("released %d while the watermark is at %d", n, seq.Watermark.Current()-T0)
		}
		e3 := clk("k2", at(15*time.Second))
		seq.Add(0, 2, &e3, T0+1)
		e4 := imp("i2", at(16*time.Second))
		seq.Add(1, 2, &e4, T0+1)
		seq.Release(T0+1, func(_ int, _ int64, e *Event) { got = append(got, e.ID) }) // watermark 5 s
		if !equalStrings(got, []string{"k1", "i1"}) || seq.Late != 0 {
			t.Fatalf("released %q", got)
		}
		if pos, ok := seq.Buffer.Earliest(0); !ok || pos != 2 {
			t.Fatalf("Earliest %d %v", pos, ok)
		}
	})
}

func TestCredits(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for _, hl := range []time.Duration{time.Millisecond, time.Hour, 7 * day, 365 * day} {
		r := rulesWith(t, func(c *Config) { c.HalfLife = hl })
		for n := 0; n <= 40; n++ {
			for rep := 0; rep < 5; rep++ {
				ct := T0
				path := make([]PathTouch, n)
				for i := range path {
					path[i] = PathTouch{Type: TypeClick, ID: string(rune('a' + i)), Time: ct - rng.Int64N(30*day.Milliseconds())}
				}
				sortPath(path)
				for _, m := range AllModels {
					c := r.Credits(m, ct, path, nil)
					if len(c) != max(n, 1) {
						t.Fatalf("%s n=%d: %d credits", m, n, len(c))
					}
					sum := 0.0
					for _, x := range c {
						if !(x >= 0 && x <= 1) {
							t.Fatalf("credits sum to 1 within 1e-9 and lie in [0,1]: %s n=%d half life %v: credit %v", m, n, hl, x)
						}
						sum += x
					}
					if !near(sum, 1) {
						t.Fatalf("credits sum to 1 within 1e-9: %s n=%d half life %v: sum %v", m, n, hl, sum)
					}
				}
			}
		}
	}
	t.Run("Credits reuses dst", func(t *testing.T) {
		r := rulesWith(t, nil)
		dst := []float64{9, 9, 9, 9}
		path := []PathTouch{{ID: "a", Time: T0 - 10}, {ID: "b", Time: T0}}
		got := r.Credits(LastTouch, T0, path, dst)
		if len(got) != 2 || got[0] != 0 || got[1] != 1 {
			t.Fatalf("credits %v", got)
		}
	})
}

func sortPath(p []PathTouch) {
	for i := 1; i < len(p); i++ {
		for j := i; j > 0 && (p[j].Time < p[j-1].Time || p[j].Time == p[j-1].Time && p[j].ID < p[j-1].ID); j-- {
			p[j], p[j-1] = p[j-1], p[j]
		}
	}
}

// TestSubMillisecondDurations: configurations are validated as durations
// but compiled to whole milliseconds; a positive duration below 1 ms must
// either be rejected or behave as a positive one.
func TestSubMillisecondDurations(t *testing.T) {
	t.Run("Config.Validate: a half life below 1 ms", func(t *testing.T) {
		cfg := DefaultConfig()
		cfg.Models = []Model{TimeDecay}
		cfg.HalfLife = 500 * time.Microsecond
		r, err := NewRules(cfg)
		if err != nil {
			return // rejecting it is a fix too
		}
		c := r.Credits(TimeDecay, T0, []PathTouch{{ID: "a", Time: T0 - 1}, {ID: "b", Time: T0}}, nil)
		if !near(c[0]+c[1], 1) || !(c[0] >= 0 && c[1] <= 1) {
			t.Fatalf("credits %v", c)
		}
	})
	t.Run("WatermarkConfig.Validate: an idle timeout below 1 ms", func(t *testing.T) {
		cfg := WatermarkConfig{AllowedLateness: 10 * time.Second, IdleTimeout: 500 * time.Microsecond, MaxSkew: 5 * time.Minute}
		if cfg.Validate() != nil {
			return
		}
		now := T0 + hour.Milliseconds() // a backlog: events an hour behind the clock
		seq := NewSequencer(1, cfg, now)
		e1, e2 := clk("k1", T0), clk("k2", T0+1000)
		seq.Add(0, 1, &e1, now)
		seq.Release(now, func(int, int64, *Event) {})
		if seq.Add(0, 2, &e2, now) {
			t.Fatalf("an input that delivered a record this very millisecond counted as idle: the watermark is at the wall clock (%d ms after the record)", seq.Watermark.Current()-e2.Time)
		}
	})
}

func TestAppendRows(t *testing.T) {
	r := rulesWith(t, func(c *Config) {
		c.Models = []Model{PositionBased, LastTouch, Linear, FirstTouch, TimeDecay}
	})
	_, facts, _ := applyAll(t, r,
		clk("k1", at(-7*day), withCampaign("c1"), withCreative("cr-a")),
		clk("k2", at(-84*hour), withCampaign("c2"), withCreative("cr-b")),
		clk("k3", at(0), withCampaign("c3"), withCreative("cr-c")),
		conv("v", at(0), withValue(200), withCurrency("EUR"), withConvType("signup")),
		conv("organic", at(8*day), withValue(50)))
	f := conversionFact(t, facts, "v")
	rows := f.AppendRows(nil)
	type short struct {
		model Model
		touch string
		value float64
	}
	want := []short{
		{PositionBased, "k1", 80}, {PositionBased, "k2", 40}, {PositionBased, "k3", 80},
		{LastTouch, "k3", 200},
		{Linear, "k1", 200.0 / 3}, {Linear, "k2", 200.0 / 3}, {Linear, "k3", 200.0 / 3},
		{FirstTouch, "k1", 200},
		{TimeDecay, "k1", 200 * 0.226540919661}, {TimeDecay, "k2", 200 * 0.320377241017}, {TimeDecay, "k3", 200 * 0.453081839322},
	}
	t.Run("AppendRows: one row per credited touch, model by model in path order", func(t *testing.T) {
		if len(rows) != len(want) {
			t.Fatalf("%d rows, want %d: %+v", len(rows), len(want), rows)
		}
		touch := map[string]struct {
			time               int64
			campaign, creative string
		}{"k1": {at(-7 * day), "c1", "cr-a"}, "k2": {at(-84 * hour), "c2", "cr-b"}, "k3": {at(0), "c3", "cr-c"}}
		for i, row := range rows {
			w := want[i]
			tc := touch[row.TouchID]
			if row.Model != w.model || row.TouchID != w.touch || row.TouchType != TypeClick ||
				row.TouchTime != tc.time || row.CampaignID != tc.campaign || row.CreativeID != tc.creative ||
				row.ConversionID != "v" || row.UserID != "u1" || row.ConversionTime != at(0) ||
				row.ConversionType != "signup" || row.Value != 200 || row.Currency != "EUR" {
				t.Fatalf("row %d: %+v, want %+v", i, row, w)
			}
			if math.Abs(row.CreditedValue-w.value) > 1e-7 || !near(row.CreditedValue, row.Value*row.Credit) {
				t.Fatalf("row %d: credited_value %v, want value*credit %v", i, row.CreditedValue, w.value)
			}
		}
	})
	t.Run("AppendRows appends", func(t *testing.T) {
		prefix := []AttributionRow{{ConversionID: "x"}}
		got := f.AppendRows(prefix)
		if len(got) != len(want)+1 || got[0].ConversionID != "x" {
			t.Fatalf("%d rows", len(got))
		}
	})
	t.Run("AppendRows: organic gives one row per model", func(t *testing.T) {
		o := conversionFact(t, facts, "organic")
		wantOrganic(t, o)
		for i, row := range o.AppendRows(nil) {
			if row.Model != r.Models()[i] || row.CreditedValue != 50 {
				t.Fatalf("row %+v", row)
			}
		}
	})
	t.Run("Facts Len, Append, Reset", func(t *testing.T) {
		var all Facts
		all.Append(facts)
		all.Append(facts)
		if all.Len() != 2*facts.Len() || facts.Len() != 5 {
			t.Fatalf("Len %d %d", all.Len(), facts.Len())
		}
		all.Reset()
		if all.Len() != 0 {
			t.Fatal("Reset")
		}
	})
}

func TestConfigValidate(t *testing.T) {
	if c := DefaultConfig(); c.Validate() != nil || c.Windows.Click != 7*day || c.Windows.View != 24*hour ||
		c.HalfLife != 7*day || c.MaxTouchesPerUser != 200 || !reflect.DeepEqual(c.Models, []Model{LastTouch}) {
		t.Fatalf("DefaultConfig %+v", c)
	}
	for _, c := range []struct {
		name string
		edit func(*Config)
	}{
		{"zero click window", func(c *Config) { c.Windows.Click = 0 }},
		{"negative view window", func(c *Config) { c.Windows.View = -time.Hour }},
		{"negative campaign click window", func(c *Config) { c.CampaignWindows = map[string]Windows{"c": {Click: -1}} }},
		{"negative campaign view window", func(c *Config) { c.CampaignWindows = map[string]Windows{"c": {View: -time.Hour}} }},
		{"no models", func(c *Config) { c.Models = nil }},
		{"unknown model 0", func(c *Config) { c.Models = []Model{0} }},
		{"unknown model 6", func(c *Config) { c.Models = []Model{LastTouch, 6} }},
		{"model listed twice", func(c *Config) { c.Models = []Model{Linear, LastTouch, Linear} }},
		{"zero half life", func(c *Config) { c.HalfLife = 0 }},
		{"negative half life", func(c *Config) { c.HalfLife = -day }},
		{"zero max touches", func(c *Config) { c.MaxTouchesPerUser = 0 }},
		{"zero max conversions", func(c *Config) { c.MaxConversionsPerUser = 0 }},
	} {
		t.Run("Config.Validate rejects "+c.name, func(t *testing.T) {
			cfg := DefaultConfig()
			c.edit(&cfg)
			if cfg.Validate() == nil {
				t.Fatal("accepted")
			}
			if _, err := NewRules(cfg); err == nil {
				t.Fatal("NewRules accepted it")
			}
			defer func() {
				if recover() == nil {
					t.Fatal("MustRules did not panic")
				}
			}()
			MustRules(cfg)
		})
	}
	t.Run("Config.Validate accepts zero campaign fields", func(t *testing.T) {
		cfg := DefaultConfig()
		cfg.CampaignWindows = map[string]Windows{"c": {}}
		if err := cfg.Validate(); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("Rules keep their own copy of the config", func(t *testing.T) {
		cfg := DefaultConfig()
		cfg.Models = []Model{Linear}
		cfg.CampaignWindows = map[string]Windows{"c": {Click: hour}}
		r := MustRules(cfg)
		cfg.Models[0] = FirstTouch
		cfg.CampaignWindows["c"] = Windows{Click: 2 * hour}
		if r.Models()[0] != Linear || r.Window(TypeClick, "c") != hour.Milliseconds() || r.Config().CampaignWindows["c"].Click != hour {
			t.Fatal("rules changed with the caller's config")
		}
	})
	t.Run("ParseModels", func(t *testing.T) {
		ms, err := ParseModels(" last_touch, time_decay,,position_based ")
		if err != nil || !reflect.DeepEqual(ms, []Model{LastTouch, TimeDecay, PositionBased}) {
			t.Fatalf("%v %v", ms, err)
		}
		if _, err := ParseModels("last_touch,u_shaped"); err == nil {
			t.Fatal("unknown model accepted")
		}
		for _, m := range AllModels {
			if got, err := ParseModel(m.String()); err != nil || got != m {
				t.Fatalf("ParseModel(%s)", m)
			}
		}
	})
}
