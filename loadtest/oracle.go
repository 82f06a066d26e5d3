package loadtest

import (
	"math"
	"slices"
	"sort"
	"time"

	"github.com/lookback-dev/lookback/attribution"
	"github.com/lookback-dev/lookback/persist"
)

// The oracle: what lookback must produce for a set of events, written
// from the spec text (shared/spec/attribution.md) and deliberately naive:
// sort everything, drop duplicates, and simulate each user with plain
// slices. It shares no code with attribution.Rules or attribution.State
// (only their types), so that a bug there is not copied here: the
// attribution property test and the load test both compare the engine
// with it.

// Expected is the oracle's answer for a stream: the facts a sink must end
// up holding, and counts of what happened on the way.
type Expected struct {
	// Snapshot holds the facts: the final fact of each impression (a bid
	// joining later replaces it), in the order impressions were first
	// seen; one fact per click; and the attribution rows, conversion by
	// conversion in application order, model by model in configuration
	// order, path order within a model. Normalize it before comparing it
	// with a sink's.
	persist.Snapshot
	// ImpressionFacts counts the impression facts produced, a re-emitted
	// (bid-joined) impression counting again.
	ImpressionFacts int
	// Conversions counts the conversions attributed (duplicates excluded).
	Conversions int
	// Organic counts the conversions with no eligible touch.
	Organic int
	// Duplicates counts the records dropped as already seen.
	Duplicates int
	// Evictions counts touches and bids pushed out by MaxTouchesPerUser.
	Evictions int
	// BidJoins counts impressions joined with their bid.
	BidJoins int
}

// Window is the lookback window of a touch of type typ in campaign: the
// global window of the touch's type, unless the campaign overrides it with
// a non-zero value.
func Window(cfg *attribution.Config, typ attribution.Type, campaign string) time.Duration {
	w := cfg.Windows.View
	if typ == attribution.TypeClick {
		w = cfg.Windows.Click
	}
	if o, ok := cfg.CampaignWindows[campaign]; ok {
		if typ == attribution.TypeClick && o.Click != 0 {
			w = o.Click
		}
		if typ == attribution.TypeImpression && o.View != 0 {
			w = o.View
		}
	}
	return w
}

func oracleWindow(cfg *attribution.Config, typ attribution.Type, campaign string) int64 {
	return Window(cfg, typ, campaign).Milliseconds()
}

// oracleRank: "ordered by time, then bid, impression, click, conversion,
// then id" (byte order).
var oracleRank = [...]int{attribution.TypeBid: 0, attribution.TypeImpression: 1, attribution.TypeClick: 2, attribution.TypeConversion: 3}

// OracleLess is the spec's application order: by time, then bid,
// impression, click, conversion, then id in byte order.
func OracleLess(a, b *attribution.Event) bool {
	if a.Time != b.Time {
		return a.Time < b.Time
	}
	if oracleRank[a.Type] != oracleRank[b.Type] {
		return oracleRank[a.Type] < oracleRank[b.Type]
	}
	return a.ID < b.ID
}

type oTouch struct {
	typ                attribution.Type
	id                 string
	time, window       int64
	creative, campaign string
	auction, website   string // impressions
	joinedBid          bool
}

type oBid struct {
	id   string
	time int64
	bid  *attribution.Bid
}

type oUser struct {
	touches []*oTouch // in (time, id) order
	bids    []*oBid   // in application order
	latest  int64
}

// oracleMaxView is the longest view window of any campaign: how long a bid
// is kept for impressions to join it.
func oracleMaxView(cfg *attribution.Config) int64 {
	w := cfg.Windows.View
	for _, o := range cfg.CampaignWindows {
		w = max(w, o.View)
	}
	return w.Milliseconds()
}

// eventKey is what makes an event a duplicate: same user, type and id.
type eventKey struct {
	user string
	typ  attribution.Type
	id   string
}

// oracle is the state of one run.
type oracle struct {
	cfg    *attribution.Config
	res    *Expected
	impIdx map[eventKey]int // index in res.Impressions
}

// Expect runs the oracle over events (every record sent, duplicates
// included, in any order) under cfg. cfg is used as given (it is not
// validated): the caller's rules must have accepted it.
func Expect(cfg attribution.Config, events []attribution.Event) *Expected {
	o := &oracle{cfg: &cfg, res: &Expected{}, impIdx: map[eventKey]int{}}
	res := o.res
	// Sort pointers rather than copies: the events of a load test run to
	// millions.
	evs := make([]*attribution.Event, len(events))
	for i := range events {
		evs[i] = &events[i]
	}
	sort.SliceStable(evs, func(i, j int) bool { return OracleLess(evs[i], evs[j]) })
	maxView := oracleMaxView(&cfg)
	users := map[string]*oUser{}
	seen := map[eventKey]bool{}
	for _, e := range evs {
		u := users[e.UserID]
		if u == nil {
			u = &oUser{}
			users[e.UserID] = u
		}
		key := eventKey{e.UserID, e.Type, e.ID}
		if seen[key] {
			res.Duplicates++
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
			if u.latest-maxView <= b.time {
				keptBids = append(keptBids, b)
			}
		}
		u.bids = keptBids

		switch e.Type {
		case attribution.TypeBid:
			// The bid may come after its impressions: it joins every kept
			// one that names it and has not joined yet.
			for _, tc := range u.touches {
				if tc.typ == attribution.TypeImpression && tc.auction == e.ID && !tc.joinedBid && absDiff(tc.time, e.Time) <= tc.window {
					tc.joinedBid = true
					o.impression(attribution.ImpressionFact{ImpressionID: tc.id, UserID: e.UserID, Time: tc.time,
						CreativeID: tc.creative, CampaignID: tc.campaign, Website: tc.website, AuctionID: e.ID, Bid: e.Bid})
					res.BidJoins++
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
				res.Evictions++
			}
		case attribution.TypeImpression:
			tc := &oTouch{typ: attribution.TypeImpression, id: e.ID, time: e.Time, window: oracleWindow(&cfg, attribution.TypeImpression, e.CampaignID),
				creative: e.CreativeID, campaign: e.CampaignID, auction: e.AuctionID, website: e.Website}
			f := attribution.ImpressionFact{ImpressionID: e.ID, UserID: e.UserID, Time: e.Time, CreativeID: e.CreativeID,
				CampaignID: e.CampaignID, Website: e.Website, AuctionID: e.AuctionID}
			if e.AuctionID != "" {
				for _, b := range u.bids {
					if b.id == e.AuctionID && absDiff(e.Time, b.time) <= tc.window {
						f.Bid, tc.joinedBid = b.bid, true
						res.BidJoins++
					}
				}
			}
			o.impression(f)
			o.addTouch(u, tc)
		case attribution.TypeClick:
			f := attribution.ClickFact{ClickID: e.ID, UserID: e.UserID, Time: e.Time, CreativeID: e.CreativeID, CampaignID: e.CampaignID, ImpressionID: e.ImpressionID}
			window := oracleWindow(&cfg, attribution.TypeClick, e.CampaignID)
			var joined *oTouch
			for _, tc := range u.touches {
				if tc.typ != attribution.TypeImpression {
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
			res.Clicks = append(res.Clicks, f)
			o.addTouch(u, &oTouch{typ: attribution.TypeClick, id: e.ID, time: e.Time, window: window, creative: e.CreativeID, campaign: e.CampaignID})
		case attribution.TypeConversion:
			var path []*oTouch
			for _, typ := range []attribution.Type{attribution.TypeClick, attribution.TypeImpression} {
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
				res.Organic++
			}
			res.Conversions++
			res.Attributions = oracleRows(res.Attributions, &cfg, e, path)
		}
	}
	return res
}

// impression records an impression fact: the first of an id is added, a
// later one (joined with its bid) replaces it.
func (o *oracle) impression(f attribution.ImpressionFact) {
	o.res.ImpressionFacts++
	k := eventKey{f.UserID, attribution.TypeImpression, f.ImpressionID}
	if i, ok := o.impIdx[k]; ok {
		o.res.Impressions[i] = f
		return
	}
	o.impIdx[k] = len(o.res.Impressions)
	o.res.Impressions = append(o.res.Impressions, f)
}

func (o *oracle) addTouch(u *oUser, tc *oTouch) {
	// Keep touches in (time, id) order: insert after every touch that is
	// not later.
	i := sort.Search(len(u.touches), func(i int) bool {
		a := u.touches[i]
		return a.time > tc.time || a.time == tc.time && a.id > tc.id
	})
	u.touches = slices.Insert(u.touches, i, tc)
	for len(u.touches) > o.cfg.MaxTouchesPerUser {
		u.touches = u.touches[1:] // oldest first
		o.res.Evictions++
	}
}

// oracleRows appends the rows of conversion e with path: per model, one
// row per touch with a non-zero credit, or one organic row.
func oracleRows(rows []attribution.AttributionRow, cfg *attribution.Config, e *attribution.Event, path []*oTouch) []attribution.AttributionRow {
	n := len(path)
	for _, m := range cfg.Models {
		row := attribution.AttributionRow{ConversionID: e.ID, UserID: e.UserID, Model: m, ConversionTime: e.Time,
			ConversionType: e.ConversionType, Value: e.Value, Currency: e.Currency}
		if n == 0 {
			row.TouchType, row.Credit, row.CreditedValue = attribution.TypeNone, 1, e.Value
			rows = append(rows, row)
			continue
		}
		credit := make([]float64, n)
		switch m {
		case attribution.LastTouch:
			credit[n-1] = 1
		case attribution.FirstTouch:
			credit[0] = 1
		case attribution.Linear:
			for i := range credit {
				credit[i] = 1 / float64(n)
			}
		case attribution.TimeDecay:
			hl := float64(cfg.HalfLife.Milliseconds())
			sum := 0.0
			for i, tc := range path {
				credit[i] = math.Pow(2, -float64(e.Time-tc.time)/hl)
				sum += credit[i]
			}
			for i := range credit {
				credit[i] /= sum
			}
		case attribution.PositionBased:
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
