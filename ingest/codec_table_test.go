package ingest

import (
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/lookback-dev/lookback/attribution"
)

// codecCase is one decoder input and what it should give: an event, or an
// error matching errIs whose message contains errHas.
type codecCase struct {
	name   string
	in     string
	want   func(ev *attribution.Event) // edits the sample event; nil: the sample itself
	errIs  error
	errHas string
}

type codecDecodeFunc func(value []byte, ev *attribution.Event) error

func runCodecCases(t *testing.T, decode codecDecodeFunc, sample attribution.Event, cases []codecCase) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var got attribution.Event
			err := decode([]byte(tc.in), &got)
			if tc.errIs != nil || tc.errHas != "" {
				if err == nil {
					t.Fatalf("no error; event %+v", codecDump(got))
				}
				if tc.errIs != nil && !errors.Is(err, tc.errIs) {
					t.Errorf("error %q does not match %v", err, tc.errIs)
				}
				// The two kinds are exclusive.
				if errors.Is(err, ErrMalformed) == errors.Is(err, attribution.ErrInvalidEvent) {
					t.Errorf("error %q: malformed %v, invalid %v", err, errors.Is(err, ErrMalformed), errors.Is(err, attribution.ErrInvalidEvent))
				}
				if !strings.Contains(err.Error(), tc.errHas) {
					t.Errorf("error %q does not contain %q", err, tc.errHas)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			want := sample
			if want.Bid != nil {
				b := *want.Bid
				b.Criteria = append([]string(nil), b.Criteria...)
				want.Bid = &b
			}
			if tc.want != nil {
				tc.want(&want)
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("got  %+v\nwant %+v", codecDump(got), codecDump(want))
			}
		})
	}
}

func TestImpressionDecoder(t *testing.T) {
	const ok = `{"impression_id":"imp-7d1e0b2a-5c4f-4e8b-9a61-3f2d8c7b6a50","user_id":"u-1f3a9c","timestamp":"2026-11-28T10:00:00.123Z","ad_creative_id":"cr-1042","campaign_id":"camp-77","website":"news.example.com","auction_id":"auc-0b9a7c6d-2e1f-4a3b-8c5d-6e7f8a9b0c1d"}`
	without := func(key string) string {
		i := strings.Index(ok, `"`+key+`"`)
		j := strings.IndexAny(ok[i+len(key)+4:], ",}") + i + len(key) + 4
		if ok[j] == ',' {
			return ok[:i] + ok[j+1:]
		}
		return strings.TrimSuffix(ok[:i], ",") + "}"
	}
	with := func(key, value string) string {
		return without(key)[:len(without(key))-1] + `,"` + key + `":` + value + "}"
	}
	cases := []codecCase{
		{name: "ok", in: ok},
		{name: "white space", in: " \n\t" + strings.ReplaceAll(ok, ",", " ,\r\n ") + "\n"},
		{name: "unknown fields of every kind", in: `{"x":{"a":[1,2,{"b":null}],"c":"d"},"y":[],"z":-1.5e3,"w":true,"v":false,"u":null,` + ok[1:]},
		{name: "escaped key and value", in: strings.Replace(with("website", `"news\u002eexample\u002Ecom"`), `"user_id"`, `"user\u005fid"`, 1)},
		{name: "repeated key, last wins", in: `{"user_id":"other",` + ok[1:]},
		{name: "null is absent", in: `{"auction_id":"x",` + ok[1:len(ok)-1] + `,"auction_id":null}`, want: func(ev *attribution.Event) { ev.AuctionID = "" }},
		{name: "optional fields absent", in: without("auction_id"), want: func(ev *attribution.Event) { ev.AuctionID = "" }},
		{name: "time as Unix ms", in: with("timestamp", "1795860000123")},
		{name: "time as Unix ms string", in: with("timestamp", `"1795860000123"`)},
		{name: "time with offset", in: with("timestamp", `"2026-11-28T12:00:00.123456+02:00"`)},
		{name: "time without fraction", in: with("timestamp", `"2026-11-28T10:00:00Z"`), want: func(ev *attribution.Event) { ev.Time -= 123 }},
		{name: "unicode", in: with("website", `"日本.example\u00e9 \ud83d\ude42"`), want: func(ev *attribution.Event) { ev.Website = "日本.exampleé 🙂" }},
		{name: "lone surrogate", in: with("website", `"a\ud83db"`), want: func(ev *attribution.Event) { ev.Website = "a\uFFFDb" }},
		{name: "missing id is derived", in: without("impression_id"), want: func(ev *attribution.Event) {
			ev.ID = ""
			ev.ID = attribution.DeriveID(ev)
		}},

		{name: "empty", in: "", errIs: ErrMalformed, errHas: "impression: bad JSON at offset 0: unexpected end of input"},
		{name: "not an object", in: `["a"]`, errIs: ErrMalformed, errHas: "expected an object, found an array"},
		{name: "truncated", in: ok[:40], errIs: ErrMalformed, errHas: "bad JSON at offset"},
		{name: "truncated after key", in: `{"user_id":`, errIs: ErrMalformed, errHas: "unexpected end of input"},
		{name: "missing colon", in: `{"user_id" "u"}`, errIs: ErrMalformed, errHas: "impression: bad JSON at offset 11: expected ':' after an object key"},
		{name: "trailing comma", in: `{"user_id":"u",}`, errIs: ErrMalformed, errHas: "expected a string for an object key"},
		{name: "missing comma", in: `{"user_id":"u" "x":1}`, errIs: ErrMalformed, errHas: "expected ',' or '}'"},
		{name: "trailing data", in: ok + ` {}`, errIs: ErrMalformed, errHas: "after the top-level value"},
		{name: "control character", in: with("website", "\"a\nb\""), errIs: ErrMalformed, errHas: "control character"},
		{name: "bad escape", in: with("website", `"a\xb"`), errIs: ErrMalformed, errHas: "bad escape"},
		{name: "bad unicode escape", in: with("website", `"a\u12"`), errIs: ErrMalformed, errHas: `bad \u escape`},
		{name: "bad number", in: `{"x":01,` + ok[1:], errIs: ErrMalformed, errHas: "expected ',' or '}'"},
		{name: "NUL byte", in: "{\x00}", errIs: ErrMalformed, errHas: "impression: bad JSON at offset 1: expected a string for an object key"},
		{name: "non-ASCII byte", in: `{"x":` + "\xc3\xa9" + `}`, errIs: ErrMalformed, errHas: "bad JSON at offset 5: unexpected byte 0xc3"},
		{name: "bad literal", in: `{"x":nul,` + ok[1:], errIs: ErrMalformed, errHas: "invalid literal"},
		{name: "too deep", in: `{"x":` + strings.Repeat("[", 2000) + strings.Repeat("]", 2000) + `,` + ok[1:], errIs: ErrMalformed, errHas: "nested too deeply"},
		{name: "user_id a number", in: with("user_id", "123"), errIs: attribution.ErrInvalidEvent, errHas: "user_id: expected a string, got a number"},
		{name: "website an object", in: with("website", `{"a":1}`), errIs: attribution.ErrInvalidEvent, errHas: "website: expected a string, got an object"},
		{name: "timestamp a boolean", in: with("timestamp", "true"), errIs: attribution.ErrInvalidEvent, errHas: "timestamp: expected an RFC 3339 string, got a boolean"},
		{name: "bad timestamp", in: with("timestamp", `"yesterday"`), errIs: attribution.ErrInvalidEvent, errHas: `timestamp: not RFC 3339`},
		{name: "fractional ms", in: with("timestamp", "1795860000123.5"), errIs: attribution.ErrInvalidEvent, errHas: "timestamp: not an integer"},
		{name: "timestamp out of range", in: with("timestamp", `"1999-12-31T23:59:59Z"`), errIs: attribution.ErrInvalidEvent, errHas: "timestamp: out of range"},
		{name: "missing timestamp", in: without("timestamp"), errIs: attribution.ErrInvalidEvent, errHas: "timestamp: missing"},
		{name: "null timestamp", in: with("timestamp", "null"), errIs: attribution.ErrInvalidEvent, errHas: "timestamp: missing"},
		{name: "empty user_id", in: with("user_id", `""`), errIs: attribution.ErrInvalidEvent, errHas: "user_id: missing"},
		{name: "missing user_id", in: without("user_id"), errIs: attribution.ErrInvalidEvent, errHas: "user_id: missing"},
		{name: "invalid UTF-8", in: with("campaign_id", "\"a\xffb\""), errIs: attribution.ErrInvalidEvent, errHas: "campaign_id: not valid UTF-8"},
		{name: "escaped control character", in: with("campaign_id", `"a\u0001b"`), errIs: attribution.ErrInvalidEvent, errHas: "campaign_id: contains a control character"},
		{name: "too long", in: with("campaign_id", `"`+strings.Repeat("x", 300)+`"`), errIs: attribution.ErrInvalidEvent, errHas: "campaign_id: longer than 256 bytes"},
	}
	var d ImpressionDecoder
	runCodecCases(t, d.Decode, codecImpression(), cases)
}
