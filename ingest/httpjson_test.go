package ingest

import (
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/lookback-dev/lookback/attribution"
)

const (
	codecImpJSON   = `{"type":"impression","impression_id":"imp-7d1e0b2a-5c4f-4e8b-9a61-3f2d8c7b6a50","user_id":"u-1f3a9c","timestamp":"2026-11-28T10:00:00.123Z","ad_creative_id":"cr-1042","campaign_id":"camp-77","website":"news.example.com","auction_id":"auc-0b9a7c6d-2e1f-4a3b-8c5d-6e7f8a9b0c1d"}`
	codecBidJSON   = `{"type":"bid","user_info":{"user_id":"u-1f3a9c","country":"US","device_type":null,"segments":["s1"]},"auction_details":{"auction_id":"auc-0b9a7c6d-2e1f-4a3b-8c5d-6e7f8a9b0c1d","floor_price":0.35,"bid_price":1.25,"currency":"usd","exchange":"adx"},"ad_targeting":{"targeting_criteria":["sports","age:25-34","geo:US"],"ad_creative_id":"cr-1042","campaign_id":"camp-77","website":"news.example.com"},"timestamp":"2026-11-28T09:59:59.973Z"}`
	codecClickJSON = `{"type":"click","click_id":"clk-5e6f7a8b","user_id":"u-1f3a9c","timestamp":"2026-11-28T10:00:30.123Z","ad_creative_id":"cr-1042","campaign_id":"camp-77","impression_id":"imp-7d1e0b2a-5c4f-4e8b-9a61-3f2d8c7b6a50"}`
	codecConvJSON  = `{"timestamp":"2026-11-28T11:00:00.123Z","type":"conversion","conversion_id":"conv-9a8b7c6d","user_id":"u-1f3a9c","conversion_type":"purchase","value":129.99,"currency":"EUR"}`
)

func TestDecodeEventsJSON(t *testing.T) {
	imp, bid, click, conv := codecImpression(), codecBid(), codecClick(), codecConversion()
	all := []attribution.Event{imp, bid, click, conv}
	bidWith := func(edit func(s string) string) string { return edit(codecBidJSON) }
	cases := []struct {
		name     string
		body     string
		events   []attribution.Event
		rejected []Rejection
		err      string
	}{
		{name: "array", body: "[" + codecImpJSON + "," + codecBidJSON + ",\n" + codecClickJSON + " , " + codecConvJSON + "]", events: all},
		{name: "NDJSON", body: codecImpJSON + "\n" + codecBidJSON + "\r\n\n" + codecClickJSON + "\n" + codecConvJSON + "\n", events: all},
		{name: "NDJSON, pretty-printed objects", body: strings.ReplaceAll(codecImpJSON, ",", ",\n  ") + "\n" + strings.ReplaceAll(codecConvJSON, ",", ",\n  "), events: []attribution.Event{imp, conv}},
		{name: "one object", body: codecClickJSON, events: []attribution.Event{click}},
		{name: "empty array", body: " [ ] "},
		{name: "bid defaults", body: "[" + bidWith(func(s string) string {
			s = strings.Replace(s, `,"currency":"usd"`, "", 1)
			s = strings.Replace(s, `"targeting_criteria":["sports","age:25-34","geo:US"],`, "", 1)
			return strings.Replace(s, `"user_info":{"user_id":"u-1f3a9c","country":"US","device_type":null,"segments":["s1"]}`, `"user_info":{"user_id":"u-1f3a9c"}`, 1)
		}) + "]", events: []attribution.Event{func() attribution.Event {
			e := codecBid()
			e.Bid.Criteria = nil
			return e
		}()}},
		{name: "Unix ms timestamp", body: strings.Replace(codecClickJSON, `"2026-11-28T10:00:30.123Z"`, "1795860030123", 1), events: []attribution.Event{click}},
		{name: "rejections", body: "[" + strings.Join([]string{
			codecClickJSON,
			`{"user_id":"u1"}`,
			`{"type":"view","user_id":"u1"}`,
			`{"type":3}`,
			`"click"`,
			`[1]`,
			strings.Replace(codecClickJSON, `"u-1f3a9c"`, `""`, 1),
			strings.Replace(codecConvJSON, `129.99`, `"129.99"`, 1),
			strings.Replace(codecConvJSON, `"2026-11-28T11:00:00.123Z"`, `"tomorrow"`, 1),
			bidWith(func(s string) string {
				return s[:strings.Index(s, `"auction_details"`)] + s[strings.Index(s, `"ad_targeting"`):]
			}),
			bidWith(func(s string) string { return strings.Replace(s, `"bid_price":1.25,`, "", 1) }),
			bidWith(func(s string) string { return strings.Replace(s, `"bid_price":1.25`, `"bid_price":-1`, 1) }),
			bidWith(func(s string) string { return strings.Replace(s, `["sports","age:25-34","geo:US"]`, `["sports",7]`, 1) }),
			bidWith(func(s string) string { return strings.Replace(s, `"country":"US"`, `"country":1`, 1) }),
			bidWith(func(s string) string {
				return strings.Replace(s, `"user_info":{"user_id":"u-1f3a9c","country":"US","device_type":null,"segments":["s1"]}`, `"user_info":"u-1f3a9c"`, 1)
			}),
			codecConvJSON,
		}, ",\n") + "]",
			events: []attribution.Event{click, conv},
			rejected: []Rejection{
				{Index: 1, Error: "type: missing (impression, bid, click or conversion)"},
				{Index: 2, Error: `type: unknown event type "view"`},
				{Index: 3, Error: "type: expected a string, got a number"},
				{Index: 4, Error: "event: bad JSON at offset 0: expected an object, found a string"},
				{Index: 5, Error: "event: bad JSON at offset 0: expected an object, found an array"},
				{Index: 6, Error: "user_id: missing"},
				{Index: 7, Error: "value: expected a number, got a string"},
				{Index: 8, Error: `timestamp: not RFC 3339 or Unix milliseconds: "tomorrow"`},
				{Index: 9, Error: "auction_details: missing"},
				{Index: 10, Error: "auction_details.bid_price: missing"},
				{Index: 11, Error: "auction_details.bid_price: not a finite, non-negative number"},
				{Index: 12, Error: "ad_targeting.targeting_criteria: expected strings in the array, got a number"},
				{Index: 13, Error: "user_info.country: expected a string, got a number"},
				{Index: 14, Error: "user_info: expected an object, got a string"},
			}},
		{name: "NDJSON line that is not JSON", body: codecClickJSON + "\n" + `{"type":"click","user_id":` + "\n" + codecConvJSON + "\n" + `{"a" 1}` + "\n",
			events: []attribution.Event{click, conv},
			rejected: []Rejection{
				{Index: 1, Error: "events: bad JSON at offset 415: expected ',' or '}' after an object value"},
				{Index: 3, Error: "events: bad JSON at offset 420: expected ':' after an object key"},
			}},

		{name: "NUL byte in NDJSON", body: codecClickJSON + "\n\x00\n" + codecConvJSON,
			events:   []attribution.Event{click, conv},
			rejected: []Rejection{{Index: 1, Error: "events: bad JSON at offset 213: unexpected byte 0x00"}}},
		{name: "NUL byte", body: "\x00[]", err: "events: bad JSON at offset 0: unexpected byte 0x00"},
		{name: "empty", body: "", err: "events: empty body"},
		{name: "blank", body: " \n ", err: "events: empty body"},
		{name: "a string", body: `"click"`, err: "events: bad JSON at offset 0: want a JSON array or NDJSON of event objects, found a string"},
		{name: "a number", body: `12`, err: "found a number"},
		{name: "text", body: `type=click`, err: "events: bad JSON at offset 0: invalid literal"},
		{name: "truncated array", body: "[" + codecClickJSON, err: "unexpected end of input"},
		{name: "trailing comma", body: "[" + codecClickJSON + ",]", err: "expected a value after ','"},
		{name: "data after the array", body: "[" + codecClickJSON + "] x", err: "after the top-level value"},
		{name: "no line is JSON", body: "{nope}\n{nope}\n", err: "events: bad JSON at offset 1: expected a string for an object key"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			events, rejected, err := DecodeEventsJSON([]byte(tc.body), nil)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) || !errors.Is(err, ErrMalformed) {
					t.Fatalf("error %v, want %q", err, tc.err)
				}
				if events != nil || rejected != nil {
					t.Fatal("events or rejections with an error")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(events) != len(tc.events) {
				t.Fatalf("%d events, want %d; rejected %v", len(events), len(tc.events), rejected)
			}
			for i := range events {
				if !reflect.DeepEqual(events[i], tc.events[i]) {
					t.Errorf("event %d: got %+v\nwant %+v", i, codecDump(events[i]), codecDump(tc.events[i]))
				}
			}
			for i := range rejected {
				if len(rejected[i].Raw) == 0 {
					t.Errorf("rejection %d without raw bytes", i)
				}
				rejected[i].Raw = nil
			}
			if !reflect.DeepEqual(rejected, tc.rejected) {
				t.Errorf("rejected:\n%v\nwant\n%v", rejected, tc.rejected)
			}
		})
	}
}

func TestDecodeEventsJSONRaw(t *testing.T) {
	bad := `{"type":"click","user_id":""}`
	_, rej, err := DecodeEventsJSON([]byte("["+codecClickJSON+", "+bad+" ]"), nil)
	if err != nil || len(rej) != 1 || string(rej[0].Raw) != bad {
		t.Fatalf("%v %+v", err, rej)
	}
	_, rej, err = DecodeEventsJSON([]byte(codecClickJSON+"\n{\"type\": \r\n"+bad+"\r\n"), nil)
	if err != nil || len(rej) != 2 || string(rej[0].Raw) != `{"type": ` || string(rej[1].Raw) != bad {
		t.Fatalf("%v %+v", err, rej)
	}
}
