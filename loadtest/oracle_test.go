package loadtest

import (
	"encoding/json"
	"math"
	"math/rand/v2"
	"os"
	"reflect"
	"testing"

	"github.com/lookback-dev/lookback/attribution"
	"github.com/lookback-dev/lookback/ingest"
)

// The spec's vectors (a copy of shared/spec/vectors.json): every stream
// with the credits the spec gives it under the default windows and all
// five models. Their events are in the HTTP API's JSON shape.
type vectorFile struct {
	Vectors []struct {
		Name   string          `json:"name"`
		Events json.RawMessage `json:"events"`
		// conversion id -> model -> touch id ("" organic) -> credit
		Expect map[string]map[string]map[string]float64 `json:"expect"`
	} `json:"vectors"`
}

func TestOracleVectors(t *testing.T) {
	data, err := os.ReadFile("../attribution/testdata/vectors.json")
	if err != nil {
		t.Fatal(err)
	}
	var f vectorFile
	if err := json.Unmarshal(data, &f); err != nil {
		t.Fatal(err)
	}
	if len(f.Vectors) == 0 {
		t.Fatal("no vectors")
	}
	cfg := attribution.DefaultConfig()
	cfg.Models = attribution.AllModels
	for _, v := range f.Vectors {
		t.Run(v.Name, func(t *testing.T) {
			events, rejected, err := ingest.DecodeEventsJSON(v.Events, nil)
			if err != nil || len(rejected) > 0 {
				t.Fatalf("decoding the events: %v %+v", err, rejected)
			}
			want := Expect(cfg, events)
			checkVectorCredits(t, want, v.Expect)
			// The oracle sorts: any order of the same records is the same.
			rng := rand.New(rand.NewPCG(7, uint64(len(v.Name))))
			for i := 0; i < 20; i++ {
				shuffled := append([]attribution.Event(nil), events...)
				rng.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
				if got := Expect(cfg, shuffled); !reflect.DeepEqual(got.Want(), want.Want()) {
					t.Fatalf("shuffled %d: other facts", i)
				}
			}
		})
	}
}

func checkVectorCredits(t *testing.T, got *Expected, want map[string]map[string]map[string]float64) {
	t.Helper()
	credits := map[string]map[string]map[string]float64{}
	organic := 0
	for _, r := range got.Attributions {
		byModel := credits[r.ConversionID]
		if byModel == nil {
			byModel = map[string]map[string]float64{}
			credits[r.ConversionID] = byModel
		}
		m := byModel[r.Model.String()]
		if m == nil {
			m = map[string]float64{}
			byModel[r.Model.String()] = m
		}
		m[r.TouchID] += r.Credit
		if math.Abs(r.CreditedValue-r.Value*r.Credit) > 1e-9 {
			t.Errorf("%s %s %q: credited value %v, value %v x credit %v", r.ConversionID, r.Model, r.TouchID, r.CreditedValue, r.Value, r.Credit)
		}
		if r.TouchType == attribution.TypeNone {
			organic++
		}
	}
	if len(credits) != len(want) || got.Conversions != len(want) {
		t.Fatalf("%d conversions attributed (%d counted), want %d: %v", len(credits), got.Conversions, len(want), credits)
	}
	if organic != got.Organic*len(attribution.AllModels) {
		t.Errorf("%d organic rows for %d organic conversions", organic, got.Organic)
	}
	for conv, models := range want {
		for model, touches := range models {
			g := credits[conv][model]
			if len(g) != len(touches) {
				t.Fatalf("%s %s: credits %v, want %v", conv, model, g, touches)
			}
			for touch, c := range touches {
				if gc, ok := g[touch]; !ok || math.Abs(gc-c) > 1e-9 {
					t.Fatalf("%s %s %q: credit %v, want %v (all %v)", conv, model, touch, gc, c, g)
				}
			}
		}
	}
}

// TestOracleCounts checks the oracle's bookkeeping on a stream small
// enough to count by hand.
func TestOracleCounts(t *testing.T) {
	const t0 = 1795860000000
	bid := &attribution.Bid{BidPrice: 1.5, FloorPrice: 0.5, Currency: "USD", Exchange: "adx"}
	ev := func(typ attribution.Type, id string, ms int64) attribution.Event {
		return attribution.Event{Type: typ, UserID: "u", ID: id, Time: t0 + ms, CreativeID: "cr", CampaignID: "ca"}
	}
	imp := ev(attribution.TypeImpression, "i1", 1000)
	imp.AuctionID = "a1"
	b := ev(attribution.TypeBid, "a1", 2000) // after its impression: re-emits it joined
	b.Bid = bid
	clk := ev(attribution.TypeClick, "k1", 3000) // names nothing: joined by creative
	conv := ev(attribution.TypeConversion, "v1", 4000)
	conv.Value, conv.Currency = 10, "USD"
	organicConv := conv
	organicConv.UserID, organicConv.ID = "w", "v2"
	events := []attribution.Event{conv, clk, b, imp, clk, organicConv, imp}
	cfg := attribution.DefaultConfig()
	got := Expect(cfg, events)
	if got.Duplicates != 2 || got.BidJoins != 1 || got.ImpressionFacts != 2 || got.Conversions != 2 || got.Organic != 1 || got.Evictions != 0 {
		t.Fatalf("counts %+v", *got)
	}
	if len(got.Impressions) != 1 || got.Impressions[0].Bid != bid {
		t.Fatalf("impressions %+v: want one, joined with its bid", got.Impressions)
	}
	if c := got.Clicks[0]; !c.Joined || c.ImpressionID != "i1" || c.SinceImpression != 2000 {
		t.Fatalf("click %+v: want joined to i1 2 s before", c)
	}
	if len(got.Attributions) != 2 || got.Attributions[0].TouchID != "k1" || got.Attributions[1].TouchType != attribution.TypeNone {
		t.Fatalf("rows %+v: want v1 to k1 and v2 organic", got.Attributions)
	}
	// A cap of one touch: the impression is evicted by the click.
	cfg.MaxTouchesPerUser = 1
	if got := Expect(cfg, events); got.Evictions != 1 {
		t.Fatalf("%d evictions with a cap of 1, want 1", got.Evictions)
	}
}
