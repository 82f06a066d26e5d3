package ingest

import (
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/lookback-dev/lookback/attribution"
)

const codecT0 = 1795860000123 // 2026-11-28T10:00:00.123Z

func codecImpression() attribution.Event {
	return attribution.Event{
		Type: attribution.TypeImpression, UserID: "u-1f3a9c", ID: "imp-7d1e0b2a-5c4f-4e8b-9a61-3f2d8c7b6a50", Time: codecT0,
		CreativeID: "cr-1042", CampaignID: "camp-77", Website: "news.example.com",
		AuctionID: "auc-0b9a7c6d-2e1f-4a3b-8c5d-6e7f8a9b0c1d",
	}
}

func codecBid() attribution.Event {
	return attribution.Event{
		Type: attribution.TypeBid, UserID: "u-1f3a9c", ID: "auc-0b9a7c6d-2e1f-4a3b-8c5d-6e7f8a9b0c1d", Time: codecT0 - 150,
		CreativeID: "cr-1042", CampaignID: "camp-77", Website: "news.example.com",
		Bid: &attribution.Bid{FloorPrice: 0.35, BidPrice: 1.25, Currency: "USD", Exchange: "adx",
			Criteria: []string{"sports", "age:25-34", "geo:US"}},
	}
}

func codecClick() attribution.Event {
	return attribution.Event{
		Type: attribution.TypeClick, UserID: "u-1f3a9c", ID: "clk-5e6f7a8b", Time: codecT0 + 30_000,
		CreativeID: "cr-1042", CampaignID: "camp-77", ImpressionID: "imp-7d1e0b2a-5c4f-4e8b-9a61-3f2d8c7b6a50",
	}
}

func codecConversion() attribution.Event {
	return attribution.Event{
		Type: attribution.TypeConversion, UserID: "u-1f3a9c", ID: "conv-9a8b7c6d", Time: codecT0 + 3_600_000,
		ConversionType: "purchase", Value: 129.99, Currency: "EUR",
	}
}

// codecPieces are the bits random strings are made of: CSV and JSON
// specials, spaces, multi-byte UTF-8, and plain text.
var codecPieces = []string{
	"a", "b", "Z", "0", "9", "-", "_", ".", ":", "/", ",", `"`, `""`, `\`, "'", " ", "  ", "\t",
	"é", "ü", "日本", "🙂", "\u2028", "\u00a0", "<", ">", "&", "{", "}", "[", "]", "=", "#",
	"user", "camp", "creative", "news.example.com",
}

// codecString returns a random valid field of at most max bytes; it may be
// empty when empty is true.
func codecString(r *rand.Rand, empty bool, max int) string {
	n := r.IntN(8)
	if !empty {
		n++
	}
	var b strings.Builder
	for range n {
		p := codecPieces[r.IntN(len(codecPieces))]
		if b.Len()+len(p) > max {
			break
		}
		b.WriteString(p)
	}
	s := b.String()
	if s == "" && !empty {
		s = "x"
	}
	// Tabs are control characters, which validation refuses.
	return strings.ReplaceAll(s, "\t", " ")
}

func codecFloat(r *rand.Rand, negative bool) float64 {
	var v float64
	switch r.IntN(7) {
	case 0:
		v = 0
	case 1:
		v = float64(r.IntN(100000))
	case 2:
		v = float64(r.IntN(1000000)) / 100
	case 3:
		v = r.Float64() * math.Pow(10, float64(r.IntN(40)-20))
	case 4:
		v = math.Float64frombits(r.Uint64())
		if math.IsNaN(v) || math.IsInf(v, 0) {
			v = 1.5
		}
	case 5:
		v = 1e21
	default:
		v = r.Float64()
	}
	if v < 0 {
		v = -v
	}
	if negative && r.IntN(4) == 0 {
		v = -v
	}
	return v
}

func codecCurrency(r *rand.Rand) string {
	if r.IntN(5) == 0 {
		return ""
	}
	return string([]byte{byte('A' + r.IntN(26)), byte('A' + r.IntN(26)), byte('A' + r.IntN(26))})
}

// codecRandomEvent returns a random valid event of type typ, normalized.
func codecRandomEvent(t testing.TB, r *rand.Rand, typ attribution.Type) attribution.Event {
	t.Helper()
	ev := attribution.Event{
		Type:   typ,
		UserID: codecString(r, false, 64),
		ID:     codecString(r, true, 64),
		Time:   attribution.MinEventTime + r.Int64N(attribution.MaxEventTime-attribution.MinEventTime),
	}
	switch typ {
	case attribution.TypeImpression:
		ev.CreativeID, ev.CampaignID = codecString(r, true, 40), codecString(r, true, 40)
		ev.Website, ev.AuctionID = codecString(r, true, 80), codecString(r, true, 64)
	case attribution.TypeClick:
		ev.CreativeID, ev.CampaignID = codecString(r, true, 40), codecString(r, true, 40)
		ev.ImpressionID = codecString(r, true, 64)
	case attribution.TypeConversion:
		ev.ConversionType, ev.Value, ev.Currency = codecString(r, true, 30), codecFloat(r, true), codecCurrency(r)
	case attribution.TypeBid:
		ev.CreativeID, ev.CampaignID = codecString(r, true, 40), codecString(r, true, 40)
		ev.Website = codecString(r, true, 80)
		b := &attribution.Bid{FloorPrice: codecFloat(r, false), BidPrice: codecFloat(r, false),
			Currency: codecCurrency(r), Exchange: codecString(r, true, 20)}
		for range r.IntN(6) {
			b.Criteria = append(b.Criteria, codecString(r, true, 30))
		}
		ev.Bid = b
	}
	ev.Normalize()
	if err := ev.Validate(); err != nil {
		t.Fatalf("random event is invalid: %v: %+v", err, ev)
	}
	return ev
}

var codecTypes = []attribution.Type{attribution.TypeBid, attribution.TypeImpression, attribution.TypeClick, attribution.TypeConversion}
