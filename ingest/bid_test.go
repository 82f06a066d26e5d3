package ingest

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math"
	"math/rand/v2"
	"reflect"
	"testing"

	"github.com/hamba/avro/v2"

	"github.com/lookback-dev/lookback/attribution"
)

// codecFullBid is the whole bid_request.avsc record, for hamba/avro.
type codecFullBid struct {
	UserInfo struct {
		UserID     string   `avro:"user_id"`
		Country    *string  `avro:"country"`
		DeviceType *string  `avro:"device_type"`
		Segments   []string `avro:"segments"`
	} `avro:"user_info"`
	AuctionDetails struct {
		AuctionID  string  `avro:"auction_id"`
		FloorPrice float64 `avro:"floor_price"`
		BidPrice   float64 `avro:"bid_price"`
		Currency   string  `avro:"currency"`
		Exchange   string  `avro:"exchange"`
	} `avro:"auction_details"`
	AdTargeting struct {
		Criteria   []string `avro:"targeting_criteria"`
		CreativeID string   `avro:"ad_creative_id"`
		CampaignID string   `avro:"campaign_id"`
		Website    string   `avro:"website"`
	} `avro:"ad_targeting"`
	Timestamp int64 `avro:"timestamp"`
}

func codecFullBidOf(ev *attribution.Event) codecFullBid {
	var f codecFullBid
	f.UserInfo.UserID = ev.UserID
	f.UserInfo.Segments = []string{}
	f.AuctionDetails.AuctionID = ev.ID
	f.AuctionDetails.FloorPrice = ev.Bid.FloorPrice
	f.AuctionDetails.BidPrice = ev.Bid.BidPrice
	f.AuctionDetails.Currency = ev.Bid.Currency
	f.AuctionDetails.Exchange = ev.Bid.Exchange
	f.AdTargeting.Criteria = append([]string{}, ev.Bid.Criteria...)
	f.AdTargeting.CreativeID = ev.CreativeID
	f.AdTargeting.CampaignID = ev.CampaignID
	f.AdTargeting.Website = ev.Website
	f.Timestamp = ev.Time
	return f
}

func codecMarshalBid(t testing.TB, api avro.API, f codecFullBid) []byte {
	t.Helper()
	b, err := api.Marshal(bidSchema, f)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func codecFrame(id int32, body []byte) []byte {
	return append(binary.BigEndian.AppendUint32([]byte{0}, uint32(id)), body...)
}

// TestBidEncoderMatchesHamba checks the hand-written encoder against
// hamba/avro's, and the decoder against hamba's default output (arrays with
// block byte sizes) and records with the fields Event drops.
func TestBidEncoderMatchesHamba(t *testing.T) {
	noSizes := avro.Config{DisableBlockSizeHeader: true}.Freeze()
	d := NewBidDecoder(nil)
	r := rand.New(rand.NewPCG(5, 6))
	for range 500 {
		ev := codecRandomEvent(t, r, attribution.TypeBid)
		mine, err := BidEncoder{}.Append(nil, &ev)
		if err != nil {
			t.Fatal(err)
		}
		f := codecFullBidOf(&ev)
		if theirs := codecMarshalBid(t, noSizes, f); !bytes.Equal(mine, theirs) {
			t.Fatalf("encodings differ\nmine   %x\nhamba  %x", mine, theirs)
		}
		country, device := "DE", "mobile"
		f.UserInfo.Country, f.UserInfo.DeviceType = &country, &device
		f.UserInfo.Segments = []string{"s1", "s2", "s3"}
		var got attribution.Event
		for _, value := range [][]byte{codecMarshalBid(t, avro.DefaultConfig, f), codecMarshalBid(t, noSizes, f)} {
			if err := d.Decode(value, &got); err != nil {
				t.Fatalf("%v: %x", err, value)
			}
			if !reflect.DeepEqual(got, ev) {
				t.Fatalf("got %+v\nwant %+v", codecDump(got), codecDump(ev))
			}
		}
	}
}

func TestBidDecoder(t *testing.T) {
	sample := codecBid()
	plain, err := BidEncoder{}.Append(nil, &sample)
	if err != nil {
		t.Fatal(err)
	}
	enc := func(edit func(f *codecFullBid)) string {
		f := codecFullBidOf(&sample)
		if edit != nil {
			edit(&f)
		}
		return string(codecMarshalBid(t, avro.Config{DisableBlockSizeHeader: true}.Freeze(), f))
	}
	// The byte offset of the targeting criteria array in plain.
	critAt := len(appendAvroString(nil, sample.UserID)) + 3 + len(appendAvroString(nil, sample.ID)) + 16 +
		len(appendAvroString(nil, sample.Bid.Currency)) + len(appendAvroString(nil, sample.Bid.Exchange))
	withCriteriaHeader := func(header []byte) string {
		return string(plain[:critAt]) + string(header) + "\x02a"
	}
	minLong := binary.AppendUvarint(nil, math.MaxUint64) // zigzag of math.MinInt64
	cases := []codecCase{
		{name: "plain", in: string(plain)},
		{name: "framed", in: string(codecFrame(7, plain))},
		{name: "framed, other accepted id", in: string(codecFrame(8, plain))},
		{name: "dropped fields set", in: enc(func(f *codecFullBid) {
			c := "FR"
			f.UserInfo.Country = &c
			f.UserInfo.Segments = []string{"a", "b"}
		})},
		{name: "lower-case currency", in: enc(func(f *codecFullBid) { f.AuctionDetails.Currency = "usd" })},
		{name: "empty currency", in: enc(func(f *codecFullBid) { f.AuctionDetails.Currency = "" }), want: func(ev *attribution.Event) { ev.Bid.Currency = "" }},
		{name: "no criteria", in: enc(func(f *codecFullBid) { f.AdTargeting.Criteria = nil }), want: func(ev *attribution.Event) { ev.Bid.Criteria = nil }},
		{name: "missing auction id is derived", in: enc(func(f *codecFullBid) { f.AuctionDetails.AuctionID = "" }), want: func(ev *attribution.Event) {
			ev.ID = ""
			ev.ID = attribution.DeriveID(ev)
		}},

		{name: "empty", in: "", errIs: ErrMalformed, errHas: "bid: empty Avro record"},
		{name: "framing only", in: string(codecFrame(7, nil)), errIs: ErrMalformed, errHas: "bid: empty Avro record"},
		{name: "truncated framing", in: "\x00\x00\x00", errIs: ErrMalformed, errHas: "truncated Confluent wire-format header"},
		{name: "schema id not accepted", in: string(codecFrame(9, plain)), errIs: ErrMalformed, errHas: "bid: schema id 9 not accepted"},
		{name: "negative schema id", in: string(codecFrame(-1, plain)), errIs: ErrMalformed, errHas: "schema id -1 not accepted"},
		{name: "truncated", in: string(plain[:len(plain)-1]), errIs: ErrMalformed, errHas: "bid: truncated Avro record"},
		{name: "truncated in a string", in: string(plain[:5]), errIs: ErrMalformed, errHas: "bid: truncated Avro record"},
		{name: "trailing data", in: string(plain) + "\x00", errIs: ErrMalformed, errHas: "bid: unexpected data after the Avro record (1 bytes)"},
		{name: "negative string length", in: "\x01abc", errIs: ErrMalformed, errHas: "bid: bad Avro"},
		{name: "huge string length", in: "\xfe\xff\xff\xff\x0f", errIs: ErrMalformed, errHas: "bid: truncated Avro record (in user_info.user_id)"},
		{name: "bad union index", in: "\x02u\x08" + string(plain[3:]), errIs: ErrMalformed, errHas: "bid: bad Avro at offset 3 (user_info.country): union index 4 out of range"},
		{name: "huge array", in: withCriteriaHeader([]byte{0xfe, 0xff, 0xff, 0xff, 0x0f}), errIs: ErrMalformed, errHas: "bid: truncated Avro record (in ad_targeting.targeting_criteria)"},
		{name: "min int64 array count", in: withCriteriaHeader(minLong), errIs: ErrMalformed, errHas: "(ad_targeting.targeting_criteria): bad block count"},
		{name: "negative block size", in: withCriteriaHeader([]byte{0x01, 0x01}), errIs: ErrMalformed, errHas: "negative block size"},
		{name: "block size mismatch", in: withCriteriaHeader([]byte{0x01, 0x02}) + "\x00" + string(plain[critAt+len(appendAvroLong(nil, 3))+len("\x0csports\x12age:25-34\x0cgeo:US"):]), errIs: ErrMalformed, errHas: "block size 1 does not match its items"},
		{name: "long overflow", in: string(plain[:critAt]) + "\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff", errIs: ErrMalformed, errHas: "bid: "},
		{name: "empty user_id plain reads as framing", in: enc(func(f *codecFullBid) { f.UserInfo.UserID = "" }), errIs: ErrMalformed, errHas: "not accepted"},
		{name: "empty user_id framed", in: string(codecFrame(7, []byte(enc(func(f *codecFullBid) { f.UserInfo.UserID = "" })))), errIs: attribution.ErrInvalidEvent, errHas: "user_id: missing"},
		{name: "negative bid price", in: enc(func(f *codecFullBid) { f.AuctionDetails.BidPrice = -1 }), errIs: attribution.ErrInvalidEvent, errHas: "auction_details.bid_price"},
		{name: "NaN floor price", in: enc(func(f *codecFullBid) { f.AuctionDetails.FloorPrice = math.NaN() }), errIs: attribution.ErrInvalidEvent, errHas: "auction_details.floor_price"},
		{name: "bad currency", in: enc(func(f *codecFullBid) { f.AuctionDetails.Currency = "dollars" }), errIs: attribution.ErrInvalidEvent, errHas: "auction_details.currency"},
		{name: "too many criteria", in: enc(func(f *codecFullBid) { f.AdTargeting.Criteria = make([]string, 65) }), errIs: attribution.ErrInvalidEvent, errHas: "more than 64"},
		{name: "timestamp out of range", in: enc(func(f *codecFullBid) { f.Timestamp = 0 }), errIs: attribution.ErrInvalidEvent, errHas: "timestamp: out of range"},
		{name: "invalid UTF-8", in: enc(func(f *codecFullBid) { f.AdTargeting.Website = "a\xff" }), errIs: attribution.ErrInvalidEvent, errHas: "website: not valid UTF-8"},
	}
	d := NewBidDecoder([]int32{7, 8})
	runCodecCases(t, d.Decode, sample, cases)

	// Every strict prefix of a record is truncated.
	for i := 1; i < len(plain); i++ {
		var ev attribution.Event
		if err := d.Decode(plain[:i], &ev); !errors.Is(err, ErrMalformed) {
			t.Errorf("prefix of %d bytes: %v", i, err)
		}
	}
	// The decoder still works after all those errors.
	var ev attribution.Event
	if err := d.Decode(plain, &ev); err != nil || !reflect.DeepEqual(ev, sample) {
		t.Fatalf("%v %+v", err, ev)
	}
	// No accepted ids: any id is.
	if err := NewBidDecoder(nil).Decode(codecFrame(12345, plain), &ev); err != nil {
		t.Fatal(err)
	}
}

func TestBidDecoderDoesNotShareMemory(t *testing.T) {
	d := NewBidDecoder(nil)
	a, b := codecBid(), codecBid()
	b.Bid.Criteria = []string{"x", "y", "z"}
	b.UserID = "someone-else"
	va, _ := BidEncoder{}.Append(nil, &a)
	vb, _ := BidEncoder{}.Append(nil, &b)
	var ea, eb attribution.Event
	if err := d.Decode(va, &ea); err != nil {
		t.Fatal(err)
	}
	if err := d.Decode(vb, &eb); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(ea, a) || !reflect.DeepEqual(eb, b) {
		t.Fatalf("decoding b changed a: %+v", codecDump(ea))
	}
}

func TestBidEncoderErrors(t *testing.T) {
	ev := codecClick()
	if _, err := (BidEncoder{}).Append(nil, &ev); err == nil {
		t.Error("encoded a click as a bid")
	}
	ev = codecBid()
	ev.UserID = ""
	if _, err := (BidEncoder{}).Append(nil, &ev); err == nil {
		t.Error("encoded an empty user_id as plain Avro")
	}
	if _, err := (BidEncoder{Framed: true, SchemaID: 1}).Append(nil, &ev); err != nil {
		t.Error(err)
	}
}

func TestBidRequestSchema(t *testing.T) {
	s, err := avro.Parse(BidRequestSchema())
	if err != nil {
		t.Fatal(err)
	}
	rec := s.(*avro.RecordSchema)
	if rec.FullName() != "lookback.BidRequest" {
		t.Errorf("name %s", rec.FullName())
	}
	var names []string
	for _, f := range rec.Fields() {
		names = append(names, f.Name())
		if r, ok := f.Type().(*avro.RecordSchema); ok {
			for _, g := range r.Fields() {
				names = append(names, f.Name()+"."+g.Name()+":"+string(g.Type().Type()))
			}
		}
	}
	want := []string{"user_info", "user_info.user_id:string", "user_info.country:union", "user_info.device_type:union", "user_info.segments:array",
		"auction_details", "auction_details.auction_id:string", "auction_details.floor_price:double", "auction_details.bid_price:double",
		"auction_details.currency:string", "auction_details.exchange:string",
		"ad_targeting", "ad_targeting.targeting_criteria:array", "ad_targeting.ad_creative_id:string", "ad_targeting.campaign_id:string", "ad_targeting.website:string",
		"timestamp"}
	if !reflect.DeepEqual(names, want) {
		t.Errorf("fields %v", names)
	}
	ts := rec.Fields()[3].Type().(*avro.PrimitiveSchema)
	if ts.Type() != avro.Long || ts.Logical() == nil || ts.Logical().Type() != avro.TimestampMillis {
		t.Errorf("timestamp is %s", ts.String())
	}
}
