package attribution

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
)

// The property test: random event streams delivered through a Sequencer in
// random interleavings of the four inputs, applied with Rules.Apply, must
// give exactly the facts of a naive oracle written from the spec text
// (shared/spec/attribution.md), and the same facts for any interleaving.
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
		r, err := NewRules(st.cfg)
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
		want := runOracle(st.cfg, st.events)
		if msg := compareWithOracle(got1, want); msg != "" {
			fail("implementation and oracle disagree: %s\nfacts:\n%s", msg, dumpFacts(got1.facts))
		}
		stats.events += len(st.events)
		stats.dups += want.dups
		stats.evicted += want.evicted
		stats.joins += want.bidJoins
		stats.convs += len(want.rows)
		stats.organic += want.organic
	}
	t.Logf("seed %#x: %d streams, %d records, %d duplicates, %d evictions, %d bid joins, %d conversions (%d organic)",
		propSeed, n-first, stats.events, stats.dups, stats.evicted, stats.joins, stats.convs, stats.organic)
}

// stream is one generated test case: a config and every record sent
// (duplicates included), and the sequencer's lateness.
type stream struct {
	cfg      Config
	lateness time.Duration
	events   []Event
}

func (st *stream) describe() string {
	var b strings.Builder
	fmt.Fprintf(&b, "config: windows %v/%v campaigns %v models %v half life %v max touches %d; lateness %v\n",
		st.cfg.Windows.Click, st.cfg.Windows.View, st.cfg.CampaignWindows, st.cfg.Models, st.cfg.HalfLife, st.cfg.MaxTouchesPerUser, st.lateness)
	evs := append([]Event(nil), st.events...)
	sort.SliceStable(evs, func(i, j int) bool { return oracleLess(&evs[i], &evs[j]) })
	for _, e := range evs {
		fmt.Fprintf(&b, "  %s\n", describeEvent(&e))
	}
	return b.String()
}

func describeEvent(e *Event) string {
	s := fmt.Sprintf("%s %s %-10s t=%s(%d) cr=%s ca=%s", e.UserID, e.Type, e.ID, FormatTime(e.Time), e.Time-T0, e.CreativeID, e.CampaignID)
	if e.AuctionID != "" {
		s += " auction=" + e.AuctionID
	}
	if e.ImpressionID != "" {
		s += " names=" + e.ImpressionID
	}
	if e.Type == TypeConversion {
		s += fmt.Sprintf(" value=%v %s", e.Value, e.Currency)
	}
	if e.Bid != nil {
		s += fmt.Sprintf(" price=%v", e.Bid.BidPrice)
	}
	return s
}

func dumpFacts(f *Facts) string {
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
	cfg := DefaultConfig()
	models := append([]Model(nil), AllModels...)
	rng.Shuffle(len(models), func(i, j int) { models[i], models[j] = models[j], models[i] })
	if rng.IntN(4) == 0 {
		models = models[:1+rng.IntN(len(models))]
	}
	cfg.Models = models
	if rng.IntN(3) == 0 {
		cfg.Windows = Windows{Click: pick(day, 2*day, 7*day), View: pick(hour, 6*hour, 24*hour)}
	}
	cfg.HalfLife = pick(7*day, 7*day, day, 3*hour)
	campaigns := []string{"ca0", "ca1", "ca2", "ca3"}
	for _, c := range campaigns[:3] {
		if rng.IntN(5) < 2 {
			if cfg.CampaignWindows == nil {
				cfg.CampaignWindows = map[string]Windows{}
			}
			cfg.CampaignWindows[c] = Windows{Click: pick(0, 30*time.Minute, 12*hour, 3*day, 10*day), View: pick(0, 10*time.Minute, 2*hour, 48*hour)}
		}
	}
	if rng.IntN(2) == 0 {
		cfg.MaxTouchesPerUser = 1 + rng.IntN(5)
	}
	st := &stream{cfg: cfg, lateness: pick(10*time.Second, 10*time.Second, 2*time.Second, time.Minute)}

	users := []string{"u0", "u1", "u2", "u3"}[:1+rng.IntN(4)]
	span := pick(5*time.Minute, 2*hour, day, 3*day, 10*day).Milliseconds()
	base := T0 + rng.Int64N(day.Milliseconds())
	n := 5 + rng.IntN(36)
	var evs []Event
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
			return tc.Time + oracleWindow(&cfg, tc.Type, tc.CampaignID) + rng.Int64N(2)
		}
		return base + rng.Int64N(span+1)
	}
	for len(evs) < n {
		user := users[rng.IntN(len(users))]
		ts := timeOf()
		switch k := rng.IntN(20); {
		case k < 6: // impression, maybe with an auction and its bid
			e := Event{Type: TypeImpression, UserID: user, ID: newID("i"), Time: ts,
				CreativeID: "cr" + strconv.Itoa(rng.IntN(3)), CampaignID: campaigns[rng.IntN(4)], Website: "site" + strconv.Itoa(rng.IntN(2)) + ".example"}
			if rng.IntN(2) == 0 {
				seq++
				e.AuctionID = "a" + strconv.Itoa(seq)
				if rng.IntN(10) < 7 {
					vw := oracleWindow(&cfg, TypeImpression, e.CampaignID)
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
			e := Event{Type: TypeClick, UserID: user, ID: newID("k"), Time: ts,
				CreativeID: "cr" + strconv.Itoa(rng.IntN(3)), CampaignID: campaigns[rng.IntN(4)]}
			switch m := rng.IntN(20); {
			case m < 8: // names an impression, often of the same user
				var imps []string
				for _, ti := range touches {
					if tc := &evs[ti]; tc.Type == TypeImpression && tc.ID != "" && (tc.UserID == user || m == 0) {
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
			e := Event{Type: TypeConversion, UserID: user, ID: newID("v"), Time: ts,
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
	all := append([]Event(nil), evs...)
	for _, e := range evs {
		if rng.IntN(10) == 0 {
			all = append(all, e)
		}
	}
	st.events = all
	return st
}

func genBid(rng *rand.Rand, user, auction string, ts int64) Event {
	return Event{Type: TypeBid, UserID: user, ID: auction, Time: ts, CreativeID: "cr0", CampaignID: "ca0", Website: "site0.example",
		Bid: &Bid{FloorPrice: float64(rng.IntN(100)) / 100, BidPrice: float64(rng.IntN(500)) / 100, Currency: "usd",
			Exchange: "adx", Criteria: []string{"c" + strconv.Itoa(rng.IntN(3))}}}
}

// delivered is what one delivery of a stream produced.
type delivered struct {
	facts    *Facts
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
func deliver(r *Rules, st *stream, rng *rand.Rand) *delivered {
	out := &delivered{facts: &Facts{}}
	lateness := st.lateness.Milliseconds()
	type rec struct {
		ev  Event
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
	states := map[string]*State{}
	var last *Event
	apply := func(ev *Event) {
		if out.err != "" {
			return
		}
		if last != nil && Less(ev, last) {
			out.err = fmt.Sprintf("released out of order: %s after %s", describeEvent(ev), describeEvent(last))
		}
		cp := *ev
		last = &cp
		s := states[ev.UserID]
		if s == nil {
			s = &State{}
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
	wm := WatermarkConfig{AllowedLateness: st.lateness, IdleTimeout: 5 * time.Second, MaxSkew: 5 * time.Minute}
	now := start + rng.Int64N(60_000)
	seq := NewSequencer(4, wm, now)
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
			out.err = fmt.Sprintf("record late: %s (watermark %d)", describeEvent(&ev), seq.Watermark.Current()-T0)
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
		seq.Release(now, apply)
		if out.err != "" {
			return out
		}
	}
	// Everything delivered: the inputs go idle and the watermark follows
	// the wall clock, far ahead.
	now = max(now, end) + lateness
	for k := 0; k < 4 && seq.Buffer.Len() > 0; k++ {
		now += 6000
		seq.Release(now, apply)
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

// ---- The oracle ----
//
// Written from the spec text, deliberately naive: sort everything, drop
// duplicates, and simulate each user with plain slices.

// oracleLess: "ordered by time, then bid, impression, click, conversion,
// then id" (byte order).
func oracleLess(a, b *Event) bool {
	rank := map[Type]int{TypeBid: 0, TypeImpression: 1, TypeClick: 2, TypeConversion: 3}
	if a.Time != b.Time {
		return a.Time < b.Time
	}
	if rank[a.Type] != rank[b.Type] {
		return rank[a.Type] < rank[b.Type]
	}
	return a.ID < b.ID
}

// oracleWindow: the global window of the touch's type, unless its campaign
// overrides it with a non-zero value.
func oracleWindow(cfg *Config, typ Type, campaign string) int64 {
	w := cfg.Windows.View
	if typ == TypeClick {
		w = cfg.Windows.Click
	}
	if o, ok := cfg.CampaignWindows[campaign]; ok {
		if typ == TypeClick && o.Click != 0 {
			w = o.Click
		}
		if typ == TypeImpression && o.View != 0 {
			w = o.View
		}
	}
	return w.Milliseconds()
}

type oTouch struct {
	typ                  Type
	id                   string
	time, window         int64
	creative, campaign   string
	auction, website     string // impressions
	joinedBid, hasAuctio bool
}

type oBid struct {
	id   string
	time int64
	bid  *Bid
}

type oUser struct {
	touches []*oTouch // in (time, id) order
	bids    []*oBid   // in application order
	latest  int64
}

// oracleMaxView is the longest view window of any campaign: how long a bid
// is kept for impressions to join it.
func oracleMaxView(cfg *Config) int64 {
	w := cfg.Windows.View
	for _, o := range cfg.CampaignWindows {
		w = max(w, o.View)
	}
	return w.Milliseconds()
}

type oracleResult struct {
	impressions map[string]ImpressionFact // user/id -> the last fact
	nImpFacts   int
	clicks      map[string]ClickFact // user/id
	rows        map[string][]AttributionRow
	dups        int
	evicted     int
	bidJoins    int
	organic     int
}

func runOracle(cfg Config, events []Event) *oracleResult {
	res := &oracleResult{impressions: map[string]ImpressionFact{}, clicks: map[string]ClickFact{}, rows: map[string][]AttributionRow{}}
	evs := append([]Event(nil), events...)
	sort.SliceStable(evs, func(i, j int) bool { return oracleLess(&evs[i], &evs[j]) })
	users := map[string]*oUser{}
	seen := map[string]bool{}
	for k := range evs {
		e := &evs[k]
		u := users[e.UserID]
		if u == nil {
			u = &oUser{}
			users[e.UserID] = u
		}
		key := e.UserID + "\x00" + e.Type.String() + "\x00" + e.ID
		if seen[key] {
			res.dups++
			continue
		}
		seen[key] = true
		// Retention: a touch is kept until latest - window passes its time.
		u.latest = e.Time
		kept := u.touches[:0]
		for _, tc := range u.touches {
			if u.latest-tc.window <= tc.time {
				kept = append(kept, tc)
			}
		}
		u.touches = kept
		keptBids := u.bids[:0]
		for _, b := range u.bids {
			if u.latest-oracleMaxView(&cfg) <= b.time {
				keptBids = append(keptBids, b)
			}
		}
		u.bids = keptBids

		switch e.Type {
		case TypeBid:
			// The bid may come after its impressions: it joins every kept
			// one that names it and has not joined yet.
			for _, tc := range u.touches {
				if tc.typ == TypeImpression && tc.auction == e.ID && !tc.joinedBid && absDiff(tc.time, e.Time) <= tc.window {
					tc.joinedBid = true
					res.impressions[e.UserID+"/"+tc.id] = ImpressionFact{ImpressionID: tc.id, UserID: e.UserID, Time: tc.time,
						CreativeID: tc.creative, CampaignID: tc.campaign, Website: tc.website, AuctionID: e.ID, Bid: e.Bid}
					res.nImpFacts++
					res.bidJoins++
				}
			}
			// Bids are kept for the longest view window, at most
			// MaxTouchesPerUser of them, the oldest evicted first.
			u.bids = append(u.bids, &oBid{id: e.ID, time: e.Time, bid: e.Bid})
			if len(u.bids) > cfg.MaxTouchesPerUser {
				oldest := 0
				for i, b := range u.bids {
					if b.time < u.bids[oldest].time {
						oldest = i
					}
				}
				u.bids = append(u.bids[:oldest], u.bids[oldest+1:]...)
				res.evicted++
			}
		case TypeImpression:
			tc := &oTouch{typ: TypeImpression, id: e.ID, time: e.Time, window: oracleWindow(&cfg, TypeImpression, e.CampaignID),
				creative: e.CreativeID, campaign: e.CampaignID, auction: e.AuctionID, website: e.Website}
			f := ImpressionFact{ImpressionID: e.ID, UserID: e.UserID, Time: e.Time, CreativeID: e.CreativeID,
				CampaignID: e.CampaignID, Website: e.Website, AuctionID: e.AuctionID}
			if e.AuctionID != "" {
				for _, b := range u.bids {
					if b.id == e.AuctionID && absDiff(e.Time, b.time) <= tc.window {
						f.Bid, tc.joinedBid = b.bid, true
						res.bidJoins++
					}
				}
			}
			res.impressions[e.UserID+"/"+e.ID] = f
			res.nImpFacts++
			res.addTouch(&cfg, u, tc)
		case TypeClick:
			f := ClickFact{ClickID: e.ID, UserID: e.UserID, Time: e.Time, CreativeID: e.CreativeID, CampaignID: e.CampaignID, ImpressionID: e.ImpressionID}
			window := oracleWindow(&cfg, TypeClick, e.CampaignID)
			var joined *oTouch
			for _, tc := range u.touches {
				if tc.typ != TypeImpression {
					continue
				}
				if e.ImpressionID != "" {
					if tc.id == e.ImpressionID {
						joined = tc
					}
				} else if tc.creative == e.CreativeID && tc.time <= e.Time && e.Time-tc.time <= window {
					joined = tc // touches are in (time, id) order: the last match is the latest
				}
			}
			if joined != nil {
				f.ImpressionID, f.Joined, f.SinceImpression = joined.id, true, e.Time-joined.time
			}
			res.clicks[e.UserID+"/"+e.ID] = f
			res.addTouch(&cfg, u, &oTouch{typ: TypeClick, id: e.ID, time: e.Time, window: window, creative: e.CreativeID, campaign: e.CampaignID})
		case TypeConversion:
			var path []*oTouch
			for _, typ := range []Type{TypeClick, TypeImpression} {
				for _, tc := range u.touches {
					if tc.typ == typ && tc.time <= e.Time && e.Time-tc.time <= tc.window {
						path = append(path, tc)
					}
				}
				if len(path) > 0 {
					break // clicks beat views
				}
			}
			if len(path) == 0 {
				res.organic++
			}
			res.rows[e.UserID+"/"+e.ID] = oracleRows(&cfg, e, path)
		}
	}
	return res
}

func (res *oracleResult) addTouch(cfg *Config, u *oUser, tc *oTouch) {
	u.touches = append(u.touches, tc)
	sort.SliceStable(u.touches, func(i, j int) bool {
		a, b := u.touches[i], u.touches[j]
		if a.time != b.time {
			return a.time < b.time
		}
		return a.id < b.id
	})
	for len(u.touches) > cfg.MaxTouchesPerUser {
		u.touches = u.touches[1:] // oldest first
		res.evicted++
	}
}

func oracleRows(cfg *Config, e *Event, path []*oTouch) []AttributionRow {
	var rows []AttributionRow
	n := len(path)
	for _, m := range cfg.Models {
		row := AttributionRow{ConversionID: e.ID, UserID: e.UserID, Model: m, ConversionTime: e.Time,
			ConversionType: e.ConversionType, Value: e.Value, Currency: e.Currency}
		if n == 0 {
			row.TouchType, row.Credit, row.CreditedValue = TypeNone, 1, e.Value
			rows = append(rows, row)
			continue
		}
		credit := make([]float64, n)
		switch m {
		case LastTouch:
			credit[n-1] = 1
		case FirstTouch:
			credit[0] = 1
		case Linear:
			for i := range credit {
				credit[i] = 1 / float64(n)
			}
		case TimeDecay:
			hl := float64(cfg.HalfLife.Milliseconds())
			sum := 0.0
			for i, tc := range path {
				credit[i] = math.Pow(2, -float64(e.Time-tc.time)/hl)
				sum += credit[i]
			}
			for i := range credit {
				credit[i] /= sum
			}
		case PositionBased:
			switch n {
			case 1:
				credit[0] = 1
			case 2:
				credit[0], credit[1] = 0.5, 0.5
			default:
				for i := range credit {
					credit[i] = 0.2 / float64(n-2)
				}
				credit[0], credit[n-1] = 0.4, 0.4
			}
		}
		for i, tc := range path {
			if credit[i] == 0 {
				continue
			}
			r := row
			r.TouchType, r.TouchID, r.TouchTime, r.CreativeID, r.CampaignID = tc.typ, tc.id, tc.time, tc.creative, tc.campaign
			r.Credit, r.CreditedValue = credit[i], e.Value*credit[i]
			rows = append(rows, r)
		}
	}
	return rows
}

func absDiff(a, b int64) int64 {
	if a > b {
		return a - b
	}
	return b - a
}

// compareWithOracle returns "" when the delivered facts are the oracle's.
func compareWithOracle(got *delivered, want *oracleResult) string {
	f := got.facts
	// Impressions: sinks key them by id, a later fact replacing an
	// earlier one; compare the final fact of each, and how many there are.
	imps := map[string]ImpressionFact{}
	for _, x := range f.Impressions {
		imps[x.UserID+"/"+x.ImpressionID] = x
	}
	if len(imps) != len(want.impressions) || len(f.Impressions) != want.nImpFacts {
		return fmt.Sprintf("%d impression facts for %d impressions, oracle %d for %d", len(f.Impressions), len(imps), want.nImpFacts, len(want.impressions))
	}
	for k, w := range want.impressions {
		g, ok := imps[k]
		if !ok || !reflect.DeepEqual(g, w) {
			return fmt.Sprintf("impression %s: got %+v (bid %v), oracle %+v (bid %v)", k, g, g.Bid, w, w.Bid)
		}
	}
	if len(f.Clicks) != len(want.clicks) {
		return fmt.Sprintf("%d click facts, oracle %d", len(f.Clicks), len(want.clicks))
	}
	for _, g := range f.Clicks {
		if w, ok := want.clicks[g.UserID+"/"+g.ClickID]; !ok || g != w {
			return fmt.Sprintf("click %s/%s: got %+v, oracle %+v", g.UserID, g.ClickID, g, w)
		}
	}
	if len(f.Conversions) != len(want.rows) {
		return fmt.Sprintf("%d conversion facts, oracle %d", len(f.Conversions), len(want.rows))
	}
	for i := range f.Conversions {
		c := &f.Conversions[i]
		k := c.UserID + "/" + c.ID
		w, ok := want.rows[k]
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
	if got.dups != want.dups || got.evicted != want.evicted {
		return fmt.Sprintf("%d duplicates and %d evictions, oracle %d and %d", got.dups, got.evicted, want.dups, want.evicted)
	}
	return ""
}
