package ingest

import (
	"strings"
	"testing"

	"github.com/lookback-dev/lookback/attribution"
)

func TestClickRowDecoder(t *testing.T) {
	const ok = "clk-5e6f7a8b,u-1f3a9c,2026-11-28T10:00:30.123Z,cr-1042,camp-77,imp-7d1e0b2a-5c4f-4e8b-9a61-3f2d8c7b6a50"
	field := func(i int, v string) string {
		f := strings.Split(ok, ",")
		f[i] = v
		return strings.Join(f, ",")
	}
	cases := []codecCase{
		{name: "ok", in: ok},
		{name: "LF", in: ok + "\n"},
		{name: "CRLF", in: ok + "\r\n"},
		{name: "all quoted", in: `"clk-5e6f7a8b","u-1f3a9c","2026-11-28T10:00:30.123Z","cr-1042","camp-77","imp-7d1e0b2a-5c4f-4e8b-9a61-3f2d8c7b6a50"` + "\r\n"},
		{name: "quoted comma and quote", in: field(4, `"camp ""77"", spring"`), want: func(ev *attribution.Event) { ev.CampaignID = `camp "77", spring` }},
		{name: "quoted empty", in: field(5, `""`), want: func(ev *attribution.Event) { ev.ImpressionID = "" }},
		{name: "empty impression", in: field(5, ""), want: func(ev *attribution.Event) { ev.ImpressionID = "" }},
		{name: "unicode", in: field(3, "crème-日本"), want: func(ev *attribution.Event) { ev.CreativeID = "crème-日本" }},
		{name: "Unix ms", in: field(2, "1795860030123")},
		{name: "missing id is derived", in: field(0, ""), want: func(ev *attribution.Event) {
			ev.ID = ""
			ev.ID = attribution.DeriveID(ev)
		}},

		{name: "empty", in: "", errIs: ErrMalformed, errHas: "click: 1 columns, want 6"},
		{name: "five columns", in: ok[:strings.LastIndexByte(ok, ',')], errIs: ErrMalformed, errHas: "click: 5 columns, want 6 (click_id,user_id,event_timestamp,ad_creative_id,campaign_id,impression_id)"},
		{name: "seven columns", in: ok + ",x", errIs: ErrMalformed, errHas: "click: 7 columns, want 6"},
		{name: "bare quote", in: field(1, `u"1`), errIs: ErrMalformed, errHas: `click: bad CSV: bare " in unquoted column 2`},
		{name: "unterminated quote", in: field(5, `"imp`), errIs: ErrMalformed, errHas: "click: bad CSV: unterminated quoted field"},
		{name: "text after closing quote", in: field(3, `"cr"x`), errIs: ErrMalformed, errHas: "unexpected character after the closing quote of column 4"},
		{name: "bad timestamp", in: field(2, "28/11/2026"), errIs: attribution.ErrInvalidEvent, errHas: `timestamp: not RFC 3339 or Unix milliseconds: "28/11/2026"`},
		{name: "empty timestamp", in: field(2, ""), errIs: attribution.ErrInvalidEvent, errHas: "timestamp: missing"},
		{name: "empty user_id", in: field(1, ""), errIs: attribution.ErrInvalidEvent, errHas: "user_id: missing"},
		{name: "control character", in: field(3, "a\x01b"), errIs: attribution.ErrInvalidEvent, errHas: "ad_creative_id: contains a control character"},
		{name: "line break in quotes", in: field(3, "\"a\nb\""), errIs: attribution.ErrInvalidEvent, errHas: "ad_creative_id: contains a control character"},
	}
	var d ClickRowDecoder
	runCodecCases(t, d.Decode, codecClick(), cases)
}

func TestConversionRowDecoder(t *testing.T) {
	const ok = "conv-9a8b7c6d,u-1f3a9c,2026-11-28T11:00:00.123Z,purchase,129.99,EUR"
	field := func(i int, v string) string {
		f := strings.Split(ok, ",")
		f[i] = v
		return strings.Join(f, ",")
	}
	cases := []codecCase{
		{name: "ok", in: ok},
		{name: "CRLF", in: ok + "\r\n"},
		{name: "lower-case currency", in: field(5, "eur")},
		{name: "no currency", in: field(5, ""), want: func(ev *attribution.Event) { ev.Currency = "" }},
		{name: "empty value is 0", in: field(4, ""), want: func(ev *attribution.Event) { ev.Value = 0 }},
		{name: "integer value", in: field(4, "100"), want: func(ev *attribution.Event) { ev.Value = 100 }},
		{name: "exponent", in: field(4, "1.5e3"), want: func(ev *attribution.Event) { ev.Value = 1500 }},
		{name: "negative (a refund)", in: field(4, "-20"), want: func(ev *attribution.Event) { ev.Value = -20 }},
		{name: "quoted", in: field(3, `"purchase, gift"`) + "\n", want: func(ev *attribution.Event) { ev.ConversionType = "purchase, gift" }},
		{name: "quoted value", in: field(4, `"129.99"`)},

		{name: "five columns", in: ok[:strings.LastIndexByte(ok, ',')], errIs: ErrMalformed, errHas: "conversion: 5 columns, want 6 (conversion_id,"},
		{name: "decimal comma", in: field(4, "129,99"), errIs: ErrMalformed, errHas: "conversion: 7 columns, want 6"},
		{name: "bad value", in: field(4, "12.5 EUR"), errIs: attribution.ErrInvalidEvent, errHas: `value: not a number: "12.5 EUR"`},
		{name: "value out of range", in: field(4, "1e999"), errIs: attribution.ErrInvalidEvent, errHas: "value: not a number"},
		{name: "NaN value", in: field(4, "NaN"), errIs: attribution.ErrInvalidEvent, errHas: "value: not a finite number"},
		{name: "bad currency", in: field(5, "EURO"), errIs: attribution.ErrInvalidEvent, errHas: `currency: not a three-letter code: "EURO"`},
		{name: "bad timestamp", in: field(2, "2026-11-28 11:00"), errIs: attribution.ErrInvalidEvent, errHas: "timestamp: not RFC 3339"},
		{name: "empty user_id", in: field(1, `""`), errIs: attribution.ErrInvalidEvent, errHas: "user_id: missing"},
		{name: "bare quote", in: field(3, `5" screen`), errIs: ErrMalformed, errHas: `conversion: bad CSV: bare " in unquoted column 4`},
	}
	var d ConversionRowDecoder
	runCodecCases(t, d.Decode, codecConversion(), cases)
}

func TestCSVSplit(t *testing.T) {
	cases := []struct {
		in   string
		want []string
		err  string
	}{
		{in: "", want: []string{""}},
		{in: ",", want: []string{"", ""}},
		{in: "a,b,,c,", want: []string{"a", "b", "", "c", ""}},
		{in: `"a,b",c`, want: []string{"a,b", "c"}},
		{in: `"",""`, want: []string{"", ""}},
		{in: `""""`, want: []string{`"`}},
		{in: `a,"b""c""d",e`, want: []string{"a", `b"c"d`, "e"}},
		{in: "\"x\ny\",z", want: []string{"x\ny", "z"}},
		{in: `x,""`, want: []string{"x", ""}},
		{in: `"a" ,b`, err: "after the closing quote of column 1"},
		{in: `a"b`, err: `bare " in unquoted column 1`},
		{in: `"ab`, err: "unterminated"},
		{in: `"a""`, err: "unterminated"},
	}
	var sp csvSplitter
	for _, tc := range cases {
		got, err := sp.split([]byte(tc.in))
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q: error %v, want %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q: %v", tc.in, err)
			continue
		}
		var s []string
		for _, f := range got {
			s = append(s, string(f))
		}
		if strings.Join(s, "|") != strings.Join(tc.want, "|") || len(s) != len(tc.want) {
			t.Errorf("%q: got %q, want %q", tc.in, s, tc.want)
		}
	}
}

func TestCSVQuoting(t *testing.T) {
	for in, want := range map[string]string{
		"":         "",
		"plain":    "plain",
		"a,b":      `"a,b"`,
		`say "hi"`: `"say ""hi"""`,
		" lead":    `" lead"`,
		"trail ":   "trail ",
		"日本":       "日本",
		"a\nb":     "\"a\nb\"",
	} {
		if got := string(appendCSVField(nil, in)); got != want {
			t.Errorf("%q: got %s, want %s", in, got, want)
		}
	}
}
