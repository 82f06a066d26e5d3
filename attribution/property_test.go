package attribution_test

import (
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/lookback-dev/lookback/attribution"
	"github.com/lookback-dev/lookback/loadtest"
)

// The property test: random event streams delivered through a Sequencer in
// random interleavings of the four inputs, applied with Rules.Apply, must
// give exactly the facts of a naive oracle written from the spec text
// (shared/spec/attribution.md), and the same facts for any interleaving.
//
// The oracle is loadtest.Expect, shared with the load test, which checks
// the running engine's warehouse against it: this file is an external test
// package so that the oracle cannot lean on the package's internals.
//
// Reproduce one stream with ATTRIBUTION_PROP_STREAM=<index> (verbose dump);
// run more streams with ATTRIBUTION_PROP_STREAMS=<n>.

const propSeed = 0x10cba1c

func TestPropertyOracle(t *testing.T) {
	n := 10_000
	if testing.Short() {
		n = 1_000
	}
	if v := os.Getenv("ATTRIBUTION_PROP_STREAMS"); v != "" {
		n, _ = strconv.Atoi(v)
	}
	first := 0
	only := os.Getenv("ATTRIBUTION_PROP_STREAM")
	if only != "" {
		first, _ = strconv.Atoi(only)
		n = first + 1
	}
	var stats struct{ events, dups, evicted, joins, convs, organic int }
	for i := first; i < n; i++ {
		rng := rand.New(rand.NewPCG(propSeed, uint64(i)))
		st := genStream(rng)
		fail := func(format string, args ...any) {
			t.Helper()
			t.Fatalf("seed %#x stream %d (ATTRIBUTION_PROP_STREAM=%d): %s\n%s", propSeed, i, i, fmt.Sprintf(format, args...), st.describe())
		}
		if only != "" {
			t.Logf("stream %d:\n%s", i, st.describe())
		}
		r, err := attribution.NewRules(st.cfg)
		if err != nil {
			fail("config: %v", err)
		}
		got1 := deliver(r, st, rand.New(rand.NewPCG(propSeed^1, uint64(i))))
		if got1.err != "" {
			fail("delivery 1: %s", got1.err)
		}
		got2 := deliver(r, st, rand.New(rand.NewPCG(propSeed^2, uint64(i))))
		if got2.err != "" {
			fail("delivery 2: %s", got2.err)
		}
		if !reflect.DeepEqual(got1.facts, got2.facts) {
			fail("two interleavings gave different facts:\n%s\nvs\n%s", dumpFacts(got1.facts), dumpFacts(got2.facts))
		}
		want := loadtest.Expect(st.cfg, st.events)
		if msg := compareWithOracle(got1, want); msg != "" {
			fail("implementation and oracle disagree: %s\nfacts:\n%s", msg, dumpFacts(got1.facts))
		}
		stats.events += len(st.events)
		stats.dups += want.Duplicates
		stats.evicted += want.Evictions
		stats.joins += want.BidJoins
		stats.convs += want.Conversions
		stats.organic += want.Organic
	}
	t.Logf("seed %#x: %d streams, %d records, %d duplicates, %d evictions, %d bid joins, %d conversions (%d organic)",
		propSeed, n-first, stats.events, stats.dups, stats.evicted, stats.joins, stats.convs, stats.organic)
}

// stream is one generated test case: a config and every record sent
// (duplicates included), and the sequencer's lateness.
type stream struct {
	cfg      attribution.Config
	lateness time.Duration
	events   []attribution.Event
}

func (st *stream) describe() string {
	var b strings.Builder
	fmt.Fprintf(&b, "config: windows %v/%v campaigns %v models %v half life %v max touches %d; lateness %v\n",
		st.cfg.Windows.Click, st.cfg.Windows.View, st.cfg.CampaignWindows, st.cfg.Models, st.cfg.HalfLife, st.cfg.MaxTouchesPerUser, st.lateness)
	evs := append([]attribution.Event(nil), st.events...)
	sort.SliceStable(evs, func(i, j int) bool { return loadtest.OracleLess(&evs[i], &evs[j]) })
	for _, e := range evs {
		fmt.Fprintf(&b, "  %s\n", describeEvent(&e))
	}
	return b.String()
}

func describeEvent(e *attribution.Event) string {
	s := fmt.Sprintf("%s %s %-10s t=%s(%d) cr=%s ca=%s", e.UserID, e.Type, e.ID, attribution.FormatTime(e.Time), e.Time-attribution.T0, e.CreativeID, e.CampaignID)
	if e.AuctionID != "" {
		s += " auction=" + e.AuctionID
	}
	if e.ImpressionID != "" {
		s += " names=" + e.ImpressionID
	}
	if e.Type == attribution.TypeConversion {
		s += fmt.Sprintf(" value=%v %s", e.Value, e.Currency)
	}
	if e.Bid != nil {
		s += fmt.Sprintf(" price=%v", e.Bid.BidPrice)
	}
	return s
}

func dumpFacts(f *attribution.Facts) string {
	var b strings.Builder
	for _, x := range f.Impressions {
		fmt.Fprintf(&b, "  imp %+v", x)
		if x.Bid != nil {
			fmt.Fprintf(&b, " bid %+v", *x.Bid)
		}
		b.WriteString("\n")
	}
	for _, x := range f.Clicks {
		fmt.Fprintf(&b, "  click %+v\n", x)
	}
	for _, x := range f.Conversions {
		fmt.Fprintf(&b, "  conv %s/%s path %q models %v credits %v\n", x.UserID, x.ID, pathIDs(&x), x.Models, x.Credits)
	}
	return b.String()
}

// genStream draws a random stream: 1-4 users, 5-40 events of all types
// (plus re-sent duplicates), times spanning minutes to 10 days with ties
// and window edges, campaigns with window overrides, clicks naming
// impressions or not, impressions with and without auctions and their bids
// before or after them, and sometimes a small touch cap.
func genStream(rng *rand.Rand) *stream {
	pick := func(xs ...time.Duration) time.Duration { return xs[rng.IntN(len(xs))] }
	cfg := attribution.DefaultConfig()
	models := append([]attribution.Model(nil), attribution.AllModels...)
	rng.Shuffle(len(models), func(i, j int) { models[i], models[j] = models[j], models[i] })
	if rng.IntN(4) == 0 {
		models = models[:1+rng.IntN(len(models))]
	}
	cfg.Models = models
	if rng.IntN(3) == 0 {
		cfg.Windows = attribution.Windows{Click: pick(day, 2*day, 7*day), View: pick(hour, 6*hour, 24*hour)}
	}
	cfg.HalfLife = pick(7*day, 7*day, day, 3*hour)
	campaigns := []string{"ca0", "ca1", "ca2", "ca3"}
	for _, c := range campaigns[:3] {
		if rng.IntN(5) < 2 {
			if cfg.CampaignWindows == nil {
				cfg.CampaignWindows = map[string]attribution.Windows{}
			}
			cfg.CampaignWindows[c] = attribution.Windows{Click: pick(0, 30*time.Minute, 12*hour, 3*day, 10*day), View: pick(0, 10*time.Minute, 2*hour, 48*hour)}
		}
	}
	if rng.IntN(2) == 0 {
		cfg.MaxTouchesPerUser = 1 + rng.IntN(5)
	}
	st := &stream{cfg: cfg, lateness: pick(10*time.Second, 10*time.Second, 2*time.Second, time.Minute)}

	users := []string{"u0", "u1", "u2", "u3"}[:1+rng.IntN(4)]
	span := pick(5*time.Minute, 2*hour, day, 3*day, 10*day).Milliseconds()
	base := attribution.T0 + rng.Int64N(day.Milliseconds())
	n := 5 + rng.IntN(36)
	var evs []attribution.Event
	seq := 0
	newID := func(prefix string) string {
		seq++
		switch rng.IntN(10) {
		case 0:
			return fmt.Sprintf("%08x-%04x-4%03x-a%03x-%012x", rng.Uint32(), rng.IntN(1<<16), rng.IntN(1<<12), rng.IntN(1<<12), rng.Int64N(1<<48))
		case 1:
			return fmt.Sprintf("%016x%016x", rng.Uint64(), rng.Uint64())
		case 2:
			return "" // derived by Normalize
		}
		return prefix + strconv.Itoa(seq)
	}
	var touches []int // indices in evs of generated touches, for edge times and names
	timeOf := func() int64 {
		switch k := rng.IntN(20); {
		case k < 6 && len(evs) > 0: // a tie
			return evs[rng.IntN(len(evs))].Time
		case k < 9 && len(touches) > 0: // a window edge of an earlier touch
			tc := &evs[touches[rng.IntN(len(touches))]]
			return tc.Time + window(&cfg, tc.Type, tc.CampaignID) + rng.Int64N(2)
		}
		return base + rng.Int64N(span+1)
	}
	for len(evs) < n {
		user := users[rng.IntN(len(users))]
		ts := timeOf()
		switch k := rng.IntN(20); {
		case k < 6: // impression, maybe with an auction and its bid
			e := attribution.Event{Type: attribution.TypeImpression, UserID: user, ID: newID("i"), Time: ts,
				CreativeID: "cr" + strconv.Itoa(rng.IntN(3)), CampaignID: campaigns[rng.IntN(4)], Website: "site" + strconv.Itoa(rng.IntN(2)) + ".example"}
			if rng.IntN(2) == 0 {
				seq++
				e.AuctionID = "a" + strconv.Itoa(seq)
				if rng.IntN(10) < 7 {
					vw := window(&cfg, attribution.TypeImpression, e.CampaignID)
					var d int64
					switch rng.IntN(6) {
					case 0:
						d = 0
					case 1:
						d = vw
					case 2:
						d = vw + 1
					case 3:
						d = rng.Int64N(3*vw + 1)
					default:
						d = rng.Int64N(vw + 1)
					}
					if rng.IntN(2) == 0 {
						d = -d
					}
					evs = append(evs, genBid(rng, user, e.AuctionID, ts+d))
				}
			}
			evs = append(evs, e)
			touches = append(touches, len(evs)-1)
		case k < 11: // click
			e := attribution.Event{Type: attribution.TypeClick, UserID: user, ID: newID("k"), Time: ts,
				CreativeID: "cr" + strconv.Itoa(rng.IntN(3)), CampaignID: campaigns[rng.IntN(4)]}
			switch m := rng.IntN(20); {
			case m < 8: // names an impression, often of the same user
				var imps []string
				for _, ti := range touches {
					if tc := &evs[ti]; tc.Type == attribution.TypeImpression && tc.ID != "" && (tc.UserID == user || m == 0) {
						imps = append(imps, tc.ID)
					}
				}
				if len(imps) > 0 {
					e.ImpressionID = imps[rng.IntN(len(imps))]
				}
			case m == 8:
				e.ImpressionID = "i-missing"
			}
			evs = append(evs, e)
			touches = append(touches, len(evs)-1)
		case k < 16: // conversion
			e := attribution.Event{Type: attribution.TypeConversion, UserID: user, ID: newID("v"), Time: ts,
				ConversionType: []string{"purchase", "signup"}[rng.IntN(2)],
				Value:          float64(rng.IntN(50000)) / 100, Currency: []string{"usd", "EUR", ""}[rng.IntN(3)]}
			evs = append(evs, e)
		default: // a bid with no impression
			seq++
			evs = append(evs, genBid(rng, user, "a"+strconv.Itoa(seq), ts))
		}
	}
	// Re-sent records: exact copies.
	for i := range evs {
		evs[i].Normalize()
	}
	all := append([]attribution.Event(nil), evs...)
	for _, e := range evs {
		if rng.IntN(10) == 0 {
			all = append(all, e)
		}
	}
	st.events = all
	return st
}

func genBid(rng *rand.Rand, user, auction string, ts int64) attribution.Event {
	return attribution.Event{Type: attribution.TypeBid, UserID: user, ID: auction, Time: ts, CreativeID: "cr0", CampaignID: "ca0", Website: "site0.example",
		Bid: &attribution.Bid{FloorPrice: float64(rng.IntN(100)) / 100, BidPrice: float64(rng.IntN(500)) / 100, Currency: "usd",
			Exchange: "adx", Criteria: []string{"c" + strconv.Itoa(rng.IntN(3))}}}
}

// delivered is what one delivery of a stream produced.
type delivered struct {
	facts    *attribution.Facts
	dups     int
	evicted  int
	err      string
	released int
}

// deliver sends the stream through a Sequencer: each input (topic) gets
// its records in event-time order plus a jitter smaller than the allowed
// lateness, the inputs are interleaved at random, the wall clock advances
// between deliveries, an input with undelivered records is marked Active
// (a consumer that knows it lags), and an input running ahead is paused.
// No record may be late; released records must come in (time, type, id)
// order.
func deliver(r *attribution.Rules, st *stream, rng *rand.Rand) *delivered {
	out := &delivered{facts: &attribution.Facts{}}
	lateness := st.lateness.Milliseconds()
	type rec struct {
		ev  attribution.Event
		key int64
	}
	var queues [4][]rec
	start, end := int64(math.MaxInt64), int64(math.MinInt64)
	for _, e := range st.events {
		i := inputOf(e.Type)
		queues[i] = append(queues[i], rec{ev: e, key: e.Time + rng.Int64N(lateness)})
		start, end = min(start, e.Time), max(end, e.Time)
	}
	for i := range queues {
		sort.SliceStable(queues[i], func(a, b int) bool { return queues[i][a].key < queues[i][b].key })
	}
	states := map[string]*attribution.State{}
	var last *attribution.Event
	apply := func(ev *attribution.Event) {
		if out.err != "" {
			return
		}
		if last != nil && attribution.Less(ev, last) {
			out.err = fmt.Sprintf("released out of order: %s after %s", describeEvent(ev), describeEvent(last))
		}
		cp := *ev
		last = &cp
		s := states[ev.UserID]
		if s == nil {
			s = &attribution.State{}
			states[ev.UserID] = s
		}
		o, err := r.Apply(s, ev, out.facts)
		if err != nil {
			out.err = fmt.Sprintf("apply %s: %v", describeEvent(ev), err)
			return
		}
		if o.Duplicate {
			out.dups++
		}
		out.evicted += o.Evicted
		out.released++
	}
	wm := attribution.WatermarkConfig{AllowedLateness: st.lateness, IdleTimeout: 5 * time.Second, MaxSkew: 5 * time.Minute}
	now := start + rng.Int64N(60_000)
	seq := attribution.NewSequencer(4, wm, now)
	var pos [4]int64
	for {
		var ready, all []int
		for i := range queues {
			if len(queues[i]) > 0 {
				all = append(all, i)
				if !seq.Watermark.Ahead(i) {
					ready = append(ready, i)
				}
			}
		}
		if len(all) == 0 {
			break
		}
		if len(ready) == 0 {
			ready = all
		}
		i := ready[rng.IntN(len(ready))]
		ev := queues[i][0].ev
		queues[i] = queues[i][1:]
		pos[i]++
		if seq.Add(i, pos[i], &ev, now) {
			out.err = fmt.Sprintf("record late: %s (watermark %d)", describeEvent(&ev), seq.Watermark.Current()-attribution.T0)
			return out
		}
		switch k := rng.IntN(20); {
		case k == 0:
			now += 5000 + rng.Int64N(4000) // long enough for finished inputs to go idle
		case k < 10:
			now += rng.Int64N(2000)
		}
		for j := range queues {
			if len(queues[j]) > 0 {
				seq.Watermark.Active(j, now)
			}
		}
		seq.Release(now, func(_ int, _ int64, ev *attribution.Event) { apply(ev) })
		if out.err != "" {
			return out
		}
	}
	// Everything delivered: the inputs go idle and the watermark follows
	// the wall clock, far ahead.
	now = max(now, end) + lateness
	for k := 0; k < 4 && seq.Buffer.Len() > 0; k++ {
		now += 6000
		seq.Release(now, func(_ int, _ int64, ev *attribution.Event) { apply(ev) })
	}
	switch {
	case out.err != "":
	case seq.Buffer.Len() != 0:
		out.err = fmt.Sprintf("%d records never released", seq.Buffer.Len())
	case seq.Late != 0:
		out.err = fmt.Sprintf("Sequencer.Late = %d", seq.Late)
	case out.released != len(st.events):
		out.err = fmt.Sprintf("%d records applied, %d sent", out.released, len(st.events))
	}
	return out
}

// Durations of the generated streams.
const (
	hour = time.Hour
	day  = 24 * time.Hour
)

// window is a touch's lookback window in milliseconds (the oracle's
// reading of the config), for drawing window edges.
func window(cfg *attribution.Config, typ attribution.Type, campaign string) int64 {
	return loadtest.Window(cfg, typ, campaign).Milliseconds()
}

// inputOf is the input (topic) a record of type t arrives on.
func inputOf(t attribution.Type) int { return int(t) - 1 }

// pathIDs lists the ids of a conversion fact's path, oldest first.
func pathIDs(f *attribution.ConversionFact) []string {
	ids := make([]string, 0, len(f.Path))
	for _, p := range f.Path {
		ids = append(ids, p.ID)
	}
	return ids
}

// compareWithOracle returns "" when the delivered facts are the oracle's.
// Facts are keyed by user and id: the streams reuse ids across users.
func compareWithOracle(got *delivered, want *loadtest.Expected) string {
	f := got.facts
	// Impressions: sinks key them by id, a later fact replacing an
	// earlier one; compare the final fact of each, and how many there are.
	imps := map[string]attribution.ImpressionFact{}
	for _, x := range f.Impressions {
		imps[x.UserID+"/"+x.ImpressionID] = x
	}
	if len(imps) != len(want.Impressions) || len(f.Impressions) != want.ImpressionFacts {
		return fmt.Sprintf("%d impression facts for %d impressions, oracle %d for %d", len(f.Impressions), len(imps), want.ImpressionFacts, len(want.Impressions))
	}
	for _, w := range want.Impressions {
		k := w.UserID + "/" + w.ImpressionID
		g, ok := imps[k]
		if !ok || !reflect.DeepEqual(g, w) {
			return fmt.Sprintf("impression %s: got %+v (bid %v), oracle %+v (bid %v)", k, g, g.Bid, w, w.Bid)
		}
	}
	wantClicks := map[string]attribution.ClickFact{}
	for _, w := range want.Clicks {
		wantClicks[w.UserID+"/"+w.ClickID] = w
	}
	if len(f.Clicks) != len(wantClicks) {
		return fmt.Sprintf("%d click facts, oracle %d", len(f.Clicks), len(wantClicks))
	}
	for _, g := range f.Clicks {
		if w, ok := wantClicks[g.UserID+"/"+g.ClickID]; !ok || g != w {
			return fmt.Sprintf("click %s/%s: got %+v, oracle %+v", g.UserID, g.ClickID, g, w)
		}
	}
	// The oracle's rows come conversion by conversion, in AppendRows order.
	wantRows := map[string][]attribution.AttributionRow{}
	for _, r := range want.Attributions {
		k := r.UserID + "/" + r.ConversionID
		wantRows[k] = append(wantRows[k], r)
	}
	if len(f.Conversions) != len(wantRows) || len(wantRows) != want.Conversions {
		return fmt.Sprintf("%d conversion facts, oracle %d (%d with rows)", len(f.Conversions), want.Conversions, len(wantRows))
	}
	for i := range f.Conversions {
		c := &f.Conversions[i]
		k := c.UserID + "/" + c.ID
		w, ok := wantRows[k]
		if !ok {
			return "unexpected conversion " + k
		}
		g := c.AppendRows(nil)
		if len(g) != len(w) {
			return fmt.Sprintf("conversion %s: %d rows, oracle %d:\n got %+v\nwant %+v", k, len(g), len(w), g, w)
		}
		for j := range g {
			a, b := g[j], w[j]
			if math.Abs(a.Credit-b.Credit) > 1e-9 || math.Abs(a.CreditedValue-b.CreditedValue) > 1e-9*math.Max(1, math.Abs(b.Value)) {
				return fmt.Sprintf("conversion %s row %d: credit %v (value %v), oracle %v (value %v)\n got %+v\nwant %+v", k, j, a.Credit, a.CreditedValue, b.Credit, b.CreditedValue, g, w)
			}
			a.Credit, a.CreditedValue, b.Credit, b.CreditedValue = 0, 0, 0, 0
			if a != b {
				return fmt.Sprintf("conversion %s row %d:\n got %+v\nwant %+v", k, j, a, b)
			}
		}
	}
	if got.dups != want.Duplicates || got.evicted != want.Evictions {
		return fmt.Sprintf("%d duplicates and %d evictions, oracle %d and %d", got.dups, got.evicted, want.Duplicates, want.Evictions)
	}
	return ""
}
