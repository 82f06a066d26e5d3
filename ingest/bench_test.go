package ingest

import (
	"bytes"
	stdjson "encoding/json"
	"fmt"
	"math/rand/v2"
	"testing"

	gojson "github.com/goccy/go-json"
	"github.com/hamba/avro/v2"

	"github.com/lookback-dev/lookback/attribution"
)

// Benchmarks decode and encode realistic records: UUID-like ids, and
// creatives, campaigns, websites, currencies and criteria drawn from pools
// of realistic sizes, cycling through benchRecords distinct records.

const benchRecords = 4096

func benchID(r *rand.Rand, prefix string) string {
	return fmt.Sprintf("%s%08x-%04x-%04x-%04x-%012x", prefix, r.Uint32(), r.Uint32()&0xffff, r.Uint32()&0xffff, r.Uint32()&0xffff, r.Uint64()&0xffffffffffff)
}

func benchEvents(b *testing.B, typ attribution.Type) []attribution.Event {
	r := rand.New(rand.NewPCG(7, uint64(typ)))
	evs := make([]attribution.Event, benchRecords)
	for i := range evs {
		ev := attribution.Event{
			Type:   typ,
			UserID: fmt.Sprintf("u-%012x", r.Uint64()&0xffffffffffff),
			ID:     benchID(r, ""),
			Time:   1795860000000 + r.Int64N(86_400_000),
		}
		creative := fmt.Sprintf("cr-%05d", r.IntN(500))
		campaign := fmt.Sprintf("camp-%03d", r.IntN(50))
		website := fmt.Sprintf("site%03d.example.com", r.IntN(200))
		switch typ {
		case attribution.TypeImpression:
			ev.CreativeID, ev.CampaignID, ev.Website, ev.AuctionID = creative, campaign, website, benchID(r, "auc-")
		case attribution.TypeBid:
			ev.CreativeID, ev.CampaignID, ev.Website = creative, campaign, website
			ev.Bid = &attribution.Bid{FloorPrice: float64(r.IntN(100)) / 100, BidPrice: float64(r.IntN(500)) / 100,
				Currency: []string{"USD", "EUR", "GBP"}[r.IntN(3)], Exchange: []string{"adx", "appnexus", "rubicon"}[r.IntN(3)]}
			for range 2 + r.IntN(2) {
				ev.Bid.Criteria = append(ev.Bid.Criteria, fmt.Sprintf("seg:%02d", r.IntN(100)))
			}
		case attribution.TypeClick:
			ev.CreativeID, ev.CampaignID, ev.ImpressionID = creative, campaign, benchID(r, "")
		case attribution.TypeConversion:
			ev.ConversionType = []string{"purchase", "signup", "add_to_cart"}[r.IntN(3)]
			ev.Value = float64(r.IntN(50000)) / 100
			ev.Currency = []string{"USD", "EUR", "GBP"}[r.IntN(3)]
		}
		ev.Normalize()
		if err := ev.Validate(); err != nil {
			b.Fatal(err)
		}
		evs[i] = ev
	}
	return evs
}

func benchValues(b *testing.B, evs []attribution.Event, enc func([]byte, *attribution.Event) []byte) [][]byte {
	vals := make([][]byte, len(evs))
	for i := range evs {
		vals[i] = enc(nil, &evs[i])
	}
	return vals
}

func benchDecode(b *testing.B, vals [][]byte, decode codecDecodeFunc) {
	b.ReportAllocs()
	var ev attribution.Event
	for i := 0; b.Loop(); i++ {
		if err := decode(vals[i%len(vals)], &ev); err != nil {
			b.Fatal(err)
		}
	}
	n := 0
	for _, v := range vals {
		n += len(v)
	}
	b.ReportMetric(float64(n)/float64(len(vals)), "B/record")
}

// impressionStruct is the impression for encoding/json and goccy/go-json,
// the alternatives measured against the hand-written scanner.
type impressionStruct struct {
	ImpressionID string `json:"impression_id"`
	UserID       string `json:"user_id"`
	Timestamp    string `json:"timestamp"`
	CreativeID   string `json:"ad_creative_id"`
	CampaignID   string `json:"campaign_id"`
	Website      string `json:"website"`
	AuctionID    string `json:"auction_id"`
}

func impressionVia(unmarshal func([]byte, any) error) codecDecodeFunc {
	return func(value []byte, ev *attribution.Event) error {
		var s impressionStruct
		if err := unmarshal(value, &s); err != nil {
			return err
		}
		t, err := attribution.ParseTime(s.Timestamp)
		if err != nil {
			return err
		}
		*ev = attribution.Event{Type: attribution.TypeImpression, ID: s.ImpressionID, UserID: s.UserID, Time: t,
			CreativeID: s.CreativeID, CampaignID: s.CampaignID, Website: s.Website, AuctionID: s.AuctionID}
		return finish(ev)
	}
}

func BenchmarkImpressionDecoder(b *testing.B) {
	vals := benchValues(b, benchEvents(b, attribution.TypeImpression), AppendImpressionJSON)
	b.Run("scanner", func(b *testing.B) {
		var d ImpressionDecoder
		benchDecode(b, vals, d.Decode)
	})
	b.Run("scanner-nointern", func(b *testing.B) {
		var d ImpressionDecoder
		d.intern.off = true
		benchDecode(b, vals, d.Decode)
	})
	b.Run("goccy", func(b *testing.B) { benchDecode(b, vals, impressionVia(gojson.Unmarshal)) })
	b.Run("stdlib", func(b *testing.B) { benchDecode(b, vals, impressionVia(stdjson.Unmarshal)) })
}

func BenchmarkBidDecoder(b *testing.B) {
	evs := benchEvents(b, attribution.TypeBid)
	plain := benchValues(b, evs, func(dst []byte, ev *attribution.Event) []byte {
		out, _ := BidEncoder{}.Append(dst, ev)
		return out
	})
	framed := benchValues(b, evs, func(dst []byte, ev *attribution.Event) []byte {
		out, _ := BidEncoder{Framed: true, SchemaID: 1}.Append(dst, ev)
		return out
	})
	b.Run("plain", func(b *testing.B) { benchDecode(b, plain, NewBidDecoder([]int32{1}).Decode) })
	b.Run("framed", func(b *testing.B) { benchDecode(b, framed, NewBidDecoder([]int32{1}).Decode) })
	b.Run("plain-nointern", func(b *testing.B) {
		d := NewBidDecoder(nil)
		d.intern.off = true
		benchDecode(b, plain, d.Decode)
	})
	// hamba alone, as dependencies.md measured it: no check, no copies,
	// no validation.
	b.Run("hamba-unmarshal-only", func(b *testing.B) {
		b.ReportAllocs()
		var rec avroBid
		for i := 0; b.Loop(); i++ {
			rec = avroBid{}
			if err := avro.Unmarshal(bidSchema, plain[i%len(plain)], &rec); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func BenchmarkClickRowDecoder(b *testing.B) {
	evs := benchEvents(b, attribution.TypeClick)
	b.Run("plain", func(b *testing.B) {
		var d ClickRowDecoder
		benchDecode(b, benchValues(b, evs, AppendClickCSV), d.Decode)
	})
	b.Run("quoted", func(b *testing.B) {
		vals := benchValues(b, evs, func(dst []byte, ev *attribution.Event) []byte {
			e := *ev
			e.CampaignID = `"` + e.CampaignID + `", spring`
			return AppendClickCSV(dst, &e)
		})
		var d ClickRowDecoder
		benchDecode(b, vals, d.Decode)
	})
	b.Run("plain-nointern", func(b *testing.B) {
		var d ClickRowDecoder
		d.intern.off = true
		benchDecode(b, benchValues(b, evs, AppendClickCSV), d.Decode)
	})
}

func BenchmarkConversionRowDecoder(b *testing.B) {
	var d ConversionRowDecoder
	benchDecode(b, benchValues(b, benchEvents(b, attribution.TypeConversion), AppendConversionCSV), d.Decode)
}

func BenchmarkCSVFileReader(b *testing.B) {
	evs := benchEvents(b, attribution.TypeClick)
	file := []byte(ClickCSVHeader + "\n")
	for i := range evs {
		file = AppendClickCSV(file, &evs[i])
		file = append(file, '\n')
	}
	b.ReportAllocs()
	b.SetBytes(int64(len(file) / len(evs)))
	rd, err := NewCSVFileReader(bytes.NewReader(file), attribution.TypeNone)
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if _, _, _, err := rd.Next(); err != nil {
			if rd, err = NewCSVFileReader(bytes.NewReader(file), attribution.TypeNone); err != nil {
				b.Fatal(err)
			}
		}
	}
}

// BenchmarkDecodeEventsJSON decodes bodies of 100 mixed events; the time
// is per event.
func BenchmarkDecodeEventsJSON(b *testing.B) {
	var all []attribution.Event
	for _, typ := range codecTypes {
		all = append(all, benchEvents(b, typ)[:25]...)
	}
	body := []byte{'['}
	for i := range all {
		if i > 0 {
			body = append(body, ',')
		}
		body = AppendEventJSON(body, &all[i])
	}
	body = append(body, ']')
	b.ReportAllocs()
	b.SetBytes(int64(len(body) / len(all)))
	for b.Loop() {
		if _, rej, err := DecodeEventsJSON(body, nil); err != nil || rej != nil {
			b.Fatal(err, rej)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(all)), "ns/event")
}

func benchEncode(b *testing.B, evs []attribution.Event, enc func([]byte, *attribution.Event) []byte) {
	b.ReportAllocs()
	buf := make([]byte, 0, 1024)
	for i := 0; b.Loop(); i++ {
		buf = enc(buf[:0], &evs[i%len(evs)])
	}
}

func BenchmarkAppendImpressionJSON(b *testing.B) {
	benchEncode(b, benchEvents(b, attribution.TypeImpression), AppendImpressionJSON)
}

func BenchmarkBidEncoder(b *testing.B) {
	evs := benchEvents(b, attribution.TypeBid)
	b.Run("plain", func(b *testing.B) {
		benchEncode(b, evs, func(dst []byte, ev *attribution.Event) []byte {
			out, _ := BidEncoder{}.Append(dst, ev)
			return out
		})
	})
	b.Run("framed", func(b *testing.B) {
		benchEncode(b, evs, func(dst []byte, ev *attribution.Event) []byte {
			out, _ := BidEncoder{Framed: true, SchemaID: 1}.Append(dst, ev)
			return out
		})
	})
}

func BenchmarkAppendClickCSV(b *testing.B) {
	benchEncode(b, benchEvents(b, attribution.TypeClick), AppendClickCSV)
}

func BenchmarkAppendConversionCSV(b *testing.B) {
	benchEncode(b, benchEvents(b, attribution.TypeConversion), AppendConversionCSV)
}

func BenchmarkAppendEventJSON(b *testing.B) {
	benchEncode(b, benchEvents(b, attribution.TypeBid), AppendEventJSON)
}
