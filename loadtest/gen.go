package loadtest

import (
	"cmp"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strconv"

	"github.com/lookback-dev/lookback/attribution"
)

// Stream is generated traffic: every record to produce, in production
// order, and the users it concerns.
type Stream struct {
	// Config is the configuration the stream was generated from.
	Config GenConfig
	// Start and End bound the event times, Unix milliseconds.
	Start, End int64
	// Events holds the distinct events, then the re-sent copies: every
	// record sent, and so what the oracle is given.
	Events []attribution.Event
	// Distinct is the number of distinct events: Events[Distinct:] are
	// duplicates of earlier entries.
	Distinct int
	// Order lists every record (an index into Events) in production order:
	// by event time plus a jitter below Config.Jitter, the topics
	// interleaved, a duplicate after its original.
	Order []int32
	// Users are the user ids, the ones that see ads first.
	Users []string
}

// Records is the number of records to produce, duplicates included.
func (s *Stream) Records() int { return len(s.Order) }

// Topic returns the records of the topic of events of type t, in the
// order they are produced.
func (s *Stream) Topic(t attribution.Type) []*attribution.Event {
	var out []*attribution.Event
	for _, i := range s.Order {
		if s.Events[i].Type == t {
			out = append(out, &s.Events[i])
		}
	}
	return out
}

// Count returns the number of records of type t, duplicates included.
func (s *Stream) Count(t attribution.Type) int {
	n := 0
	for i := range s.Events {
		if s.Events[i].Type == t {
			n++
		}
	}
	return n
}

// Generate draws a stream from cfg, which must be valid (see Validate; an
// invalid one panics). The same config gives the same stream: every draw
// comes from a PCG seeded with cfg.Seed and cfg.End, so two runs with the
// same seed at different times do not reuse ids.
//
// The funnel: bids (auction ids are UUIDs) for users drawn with a skew (a
// few heavy users see 15% of the ads, enough to reach the default cap of
// 200 touches and bids per user); impressions, most of them of a bid (naming its auction,
// usually a little after it, sometimes a little before), the rest sold
// directly; clicks on impressions, most naming the impression_id, the
// others joined by creative; conversions, most by users some time after
// one of their touches, some by users who saw no ad. Campaigns and
// creatives come from small pools, users, ids and values from the seed.
func Generate(cfg GenConfig) *Stream {
	if err := cfg.Validate(); err != nil {
		panic("loadtest.Generate: " + err.Error())
	}
	g := newGenerator(cfg)
	nb, ni, nc, nv := g.counts()
	g.bids(nb)
	g.impressions(ni, nb)
	g.clicks(nc, nb, ni)
	g.conversions(nv, nb, ni, nc)
	g.duplicates()
	return &Stream{
		Config: cfg, Start: g.start, End: g.end,
		Events: g.events, Distinct: cfg.Events, Order: g.order(), Users: g.users,
	}
}

// generator holds the pools and the events drawn so far.
type generator struct {
	cfg        GenConfig
	rng        *rand.Rand
	start, end int64
	jitter     int64
	users      []string
	adUsers    int // users[:adUsers] see ads, the others only convert
	heavy      int // users[:heavy] are heavy
	campaigns  []string
	creatives  [][]string // per campaign
	websites   []string
	criteria   [][]string
	exchanges  []string
	events     []attribution.Event
	keys       []int64 // production order key of each event
}

func newGenerator(cfg GenConfig) *generator {
	end := cfg.End.UnixMilli()
	g := &generator{
		cfg:    cfg,
		rng:    rand.New(rand.NewPCG(cfg.Seed, uint64(end))),
		start:  end - cfg.Span.Milliseconds(),
		end:    end,
		jitter: cfg.Jitter.Milliseconds(),
	}
	extra := int(math.Round(float64(cfg.Events) * cfg.Duplicates))
	g.events = make([]attribution.Event, 0, cfg.Events+extra)
	g.keys = make([]int64, 0, cfg.Events+extra)
	n := cfg.users()
	g.users = make([]string, n)
	for i := range g.users {
		g.users[i] = g.uuid()
	}
	g.adUsers = n
	if n >= 10 && cfg.Organic > 0 {
		g.adUsers = n - n/10
	}
	g.heavy = max(1, g.adUsers/300)
	for c := 0; c < cfg.Campaigns; c++ {
		camp := fmt.Sprintf("cmp-%02d", c)
		g.campaigns = append(g.campaigns, camp)
		var crs []string
		for k := 0; k < cfg.CreativesPerCampaign; k++ {
			crs = append(crs, camp+"-cr-"+strconv.Itoa(k))
		}
		g.creatives = append(g.creatives, crs)
	}
	for _, s := range []string{"news", "sports", "weather", "recipes", "travel", "games", "tech", "finance", "music", "video"} {
		g.websites = append(g.websites, s+".example.com", "m."+s+".example.com")
	}
	pool := []string{"sports", "news", "travel", "auto", "finance", "tech", "age:18-24", "age:25-34", "age:35-54", "geo:us", "geo:eu", "device:mobile"}
	for k := 0; k < 24; k++ {
		var c []string
		for j := 0; j < 1+g.rng.IntN(3); j++ {
			c = append(c, pool[g.rng.IntN(len(pool))])
		}
		g.criteria = append(g.criteria, c)
	}
	g.exchanges = []string{"adx", "openx", "rubicon", "appnexus", "pubmatic"}
	return g
}

// counts splits Events by the mix, largest remainders first, so that the
// counts sum to Events exactly.
func (g *generator) counts() (nb, ni, nc, nv int) {
	m := g.cfg.Mix
	shares := []float64{m.Bids, m.Impressions, m.Clicks, m.Conversions}
	sum := m.Bids + m.Impressions + m.Clicks + m.Conversions
	n := make([]int, 4)
	rem := make([]float64, 4)
	total := 0
	for i, s := range shares {
		x := float64(g.cfg.Events) * s / sum
		n[i] = int(x)
		rem[i] = x - float64(n[i])
		total += n[i]
	}
	for ; total < g.cfg.Events; total++ {
		best := 0
		for i := range rem {
			if rem[i] > rem[best] {
				best = i
			}
		}
		n[best]++
		rem[best] = -1
	}
	return n[0], n[1], n[2], n[3]
}

// add appends an event, its time clamped to the span, with its order key.
func (g *generator) add(e attribution.Event) {
	e.Time = min(max(e.Time, g.start), g.end)
	g.events = append(g.events, e)
	g.keys = append(g.keys, e.Time+g.jitterIn(0))
}

// jitterIn draws a delay in [from, jitter) milliseconds (0 without jitter).
func (g *generator) jitterIn(from int64) int64 {
	if g.jitter <= from {
		return from
	}
	return from + g.rng.Int64N(g.jitter-from)
}

// adUser draws a user who sees ads: one of the heavy third of a percent
// of them 15% of the time, so that they reach the per-user touch cap.
func (g *generator) adUser() string {
	if g.rng.IntN(20) < 3 {
		return g.users[g.rng.IntN(g.heavy)]
	}
	return g.users[g.rng.IntN(g.adUsers)]
}

func (g *generator) anyTime() int64 { return g.start + g.rng.Int64N(g.end-g.start+1) }

// after returns t plus an exponential delay of the given mean (at least
// lo), redrawn uniformly within the span when it would pass its end.
func (g *generator) after(t int64, mean, lo float64) int64 {
	d := int64(lo - mean*math.Log(1-g.rng.Float64()))
	if t+d > g.end {
		if t >= g.end {
			return g.end
		}
		return t + g.rng.Int64N(g.end-t+1)
	}
	return t + d
}

func (g *generator) creative() (campaign, creative string) {
	c := g.rng.IntN(len(g.campaigns))
	crs := g.creatives[c]
	return g.campaigns[c], crs[g.rng.IntN(len(crs))]
}

func (g *generator) bids(n int) {
	for i := 0; i < n; i++ {
		camp, cr := g.creative()
		floor := float64(5+g.rng.IntN(196)) / 100
		g.add(attribution.Event{
			Type: attribution.TypeBid, UserID: g.adUser(), ID: g.uuid(), Time: g.anyTime(),
			CreativeID: cr, CampaignID: camp, Website: g.websites[g.rng.IntN(len(g.websites))],
			Bid: &attribution.Bid{
				FloorPrice: floor, BidPrice: floor + float64(g.rng.IntN(300))/100, Currency: "USD",
				Exchange: g.exchanges[g.rng.IntN(len(g.exchanges))], Criteria: g.criteria[g.rng.IntN(len(g.criteria))],
			},
		})
	}
}

// impressions adds n impressions: nine in ten of them win a distinct bid
// of the first nb events (while bids last), the others are sold directly,
// a few of those naming an auction that is not in the stream.
func (g *generator) impressions(n, nb int) {
	won := min(n*9/10, nb)
	perm := g.sample(nb, won)
	for i := 0; i < n; i++ {
		e := attribution.Event{Type: attribution.TypeImpression, ID: g.uuid()}
		if i < won {
			b := &g.events[perm[i]]
			e.UserID, e.CampaignID, e.CreativeID, e.Website, e.AuctionID = b.UserID, b.CampaignID, b.CreativeID, b.Website, b.ID
			if g.rng.IntN(20) == 0 {
				e.Time = b.Time - g.rng.Int64N(1500) // logged before the bid
			} else {
				e.Time = b.Time + 20 + g.rng.Int64N(2000)
			}
		} else {
			e.UserID, e.Time = g.adUser(), g.anyTime()
			e.CampaignID, e.CreativeID = g.creative()
			e.Website = g.websites[g.rng.IntN(len(g.websites))]
			if g.rng.IntN(20) == 0 {
				e.AuctionID = g.uuid() // a bid that was never logged
			}
		}
		g.add(e)
	}
}

// clicks adds n clicks on the impressions events[nb:nb+ni], distinct
// while they last; four in five name their impression_id.
func (g *generator) clicks(n, nb, ni int) {
	perm := g.sample(ni, min(n, ni))
	for i := 0; i < n; i++ {
		e := attribution.Event{Type: attribution.TypeClick, ID: g.uuid()}
		if ni == 0 {
			e.UserID, e.Time = g.adUser(), g.anyTime()
			e.CampaignID, e.CreativeID = g.creative()
			g.add(e)
			continue
		}
		k := g.rng.IntN(ni)
		if i < len(perm) {
			k = perm[i]
		}
		imp := &g.events[nb+k]
		e.UserID, e.CampaignID, e.CreativeID = imp.UserID, imp.CampaignID, imp.CreativeID
		e.Time = g.after(imp.Time, 30_000, 500)
		if g.rng.IntN(5) != 0 {
			e.ImpressionID = imp.ID
		}
		g.add(e)
	}
}

// conversions adds n conversions: the organic share by users who saw no
// ad, the others by the user of a click (seven in ten) or an impression,
// some hours after it.
func (g *generator) conversions(n, nb, ni, nc int) {
	organic := 0
	if g.adUsers < len(g.users) {
		organic = int(math.Round(float64(n) * g.cfg.Organic))
	}
	for i := 0; i < n; i++ {
		e := attribution.Event{Type: attribution.TypeConversion, ID: g.uuid()}
		var touch *attribution.Event
		switch {
		case i < organic:
			e.UserID, e.Time = g.users[g.adUsers+g.rng.IntN(len(g.users)-g.adUsers)], g.anyTime()
		case nc > 0 && (ni == 0 || g.rng.IntN(10) < 7):
			touch = &g.events[nb+ni+g.rng.IntN(nc)]
		case ni > 0:
			touch = &g.events[nb+g.rng.IntN(ni)]
		default:
			e.UserID, e.Time = g.adUser(), g.anyTime()
		}
		if touch != nil {
			e.UserID, e.Time = touch.UserID, g.after(touch.Time, 2*3600_000, 1000)
		}
		switch k := g.rng.IntN(20); {
		case k < 12:
			e.ConversionType = "purchase"
			cents := min(max(int(math.Exp(8.3+0.8*g.rng.NormFloat64())), 99), 500_000)
			e.Value = float64(cents) / 100
		case k < 17:
			e.ConversionType = "signup"
		default:
			e.ConversionType = "add_to_cart"
			e.Value = float64(100+g.rng.IntN(20_000)) / 100
		}
		switch k := g.rng.IntN(10); {
		case k < 7:
			e.Currency = "USD"
		case k < 9:
			e.Currency = "EUR"
		default:
			e.Currency = "GBP"
		}
		g.add(e)
	}
}

// duplicates re-sends a fraction of the events: exact copies, produced
// after their original but still within the jitter of their event time.
func (g *generator) duplicates() {
	n := int(math.Round(float64(g.cfg.Events) * g.cfg.Duplicates))
	for i := 0; i < n; i++ {
		k := g.rng.IntN(g.cfg.Events)
		e := g.events[k]
		g.events = append(g.events, e)
		g.keys = append(g.keys, e.Time+g.jitterIn(g.keys[k]-e.Time))
	}
}

// order sorts the records by key, ties in generation order (so a
// duplicate drawn with its original's key still comes after it).
func (g *generator) order() []int32 {
	type rec struct {
		key int64
		i   int32
	}
	recs := make([]rec, len(g.keys))
	for i, k := range g.keys {
		recs[i] = rec{k, int32(i)}
	}
	slices.SortFunc(recs, func(a, b rec) int {
		if c := cmp.Compare(a.key, b.key); c != 0 {
			return c
		}
		return cmp.Compare(a.i, b.i)
	})
	out := make([]int32, len(recs))
	for i, r := range recs {
		out[i] = r.i
	}
	g.keys = nil
	return out
}

// sample returns k distinct numbers of [0, n) in random order.
func (g *generator) sample(n, k int) []int {
	perm := make([]int, n)
	for i := range perm {
		perm[i] = i
	}
	for i := 0; i < k; i++ {
		j := i + g.rng.IntN(n-i)
		perm[i], perm[j] = perm[j], perm[i]
	}
	return perm[:k]
}

const hexDigits = "0123456789abcdef"

// uuid draws a version 4 UUID from the generator's source.
func (g *generator) uuid() string {
	var b [16]byte
	hi, lo := g.rng.Uint64(), g.rng.Uint64()
	for i := 0; i < 8; i++ {
		b[i], b[8+i] = byte(hi>>(56-8*i)), byte(lo>>(56-8*i))
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	var s [36]byte
	j := 0
	for i, x := range b {
		if i == 4 || i == 6 || i == 8 || i == 10 {
			s[j] = '-'
			j++
		}
		s[j], s[j+1] = hexDigits[x>>4], hexDigits[x&0xf]
		j += 2
	}
	return string(s[:])
}
