package ingest

import (
	"bytes"
	"errors"
	"io"
	"reflect"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/lookback-dev/lookback/attribution"
)

// codecRow is one result of CSVFileReader.Next.
type codecRow struct {
	line int
	raw  string
	ev   attribution.Event
	err  string // "" for a good row
}

func codecReadRows(t *testing.T, in string, typ attribution.Type) ([]codecRow, error) {
	t.Helper()
	rd, err := NewCSVFileReader(strings.NewReader(in), typ)
	if err != nil {
		return nil, err
	}
	var rows []codecRow
	for {
		ev, line, raw, err := rd.Next()
		if err == io.EOF {
			return rows, nil
		}
		row := codecRow{line: line, raw: string(raw), ev: ev}
		if err != nil {
			var re *RowError
			if !errors.As(err, &re) {
				t.Fatalf("fatal error %v", err)
			}
			if re.Line != line {
				t.Errorf("RowError line %d, Next line %d", re.Line, line)
			}
			if !errors.Is(err, ErrMalformed) && !errors.Is(err, attribution.ErrInvalidEvent) {
				t.Errorf("row error %v matches neither ErrMalformed nor ErrInvalidEvent", err)
			}
			row.err = err.Error()
		}
		rows = append(rows, row)
		if len(rows) > 1000 {
			t.Fatal("too many rows")
		}
	}
}

func TestCSVFileReader(t *testing.T) {
	click, conv := codecClick(), codecConversion()
	click2 := click
	click2.ID, click2.ImpressionID = "clk-2", ""
	conv2 := conv
	conv2.ID, conv2.Value, conv2.Currency, conv2.ConversionType = "conv-2", 0, "", "signup"

	const clickRow = "clk-5e6f7a8b,u-1f3a9c,2026-11-28T10:00:30.123Z,cr-1042,camp-77,imp-7d1e0b2a-5c4f-4e8b-9a61-3f2d8c7b6a50"
	const convRow = "conv-9a8b7c6d,u-1f3a9c,2026-11-28T11:00:00.123Z,purchase,129.99,EUR"
	type want struct {
		line int
		ev   *attribution.Event
		err  string
		raw  string // checked when not empty
	}
	cases := []struct {
		name string
		typ  attribution.Type
		in   string
		want []want
	}{
		{name: "clicks in topic order", typ: attribution.TypeClick,
			in:   ClickCSVHeader + "\n" + clickRow + "\n" + "clk-2,u-1f3a9c,2026-11-28T10:00:30.123Z,cr-1042,camp-77,\n",
			want: []want{{line: 2, ev: &click, raw: clickRow}, {line: 3, ev: &click2}}},
		{name: "inferred clicks, other order, timestamp, no final newline",
			in:   "impression_id,timestamp,campaign_id,click_id,user_id,ad_creative_id\nimp-7d1e0b2a-5c4f-4e8b-9a61-3f2d8c7b6a50,2026-11-28T10:00:30.123Z,camp-77,clk-5e6f7a8b,u-1f3a9c,cr-1042",
			want: []want{{line: 2, ev: &click}}},
		{name: "inferred conversions, header names loosely written, extra column",
			in:   " Conversion_ID ,USER_ID,note,Event_Timestamp,conversion_type,value,currency\nconv-9a8b7c6d,u-1f3a9c,hello,2026-11-28T11:00:00.123Z,purchase,129.99,eur\n",
			want: []want{{line: 2, ev: &conv}}},
		{name: "conversions without optional columns",
			in:   "conversion_id,user_id,timestamp\nconv-2,u-1f3a9c,2026-11-28T11:00:00.123Z\n",
			want: []want{{line: 2, ev: func() *attribution.Event { e := conv2; e.ConversionType = ""; return &e }()}}},
		{name: "combined with event_type",
			in: "event_type,user_id,event_timestamp,click_id,ad_creative_id,campaign_id,impression_id,conversion_id,conversion_type,value,currency\n" +
				"click,u-1f3a9c,2026-11-28T10:00:30.123Z,clk-5e6f7a8b,cr-1042,camp-77,imp-7d1e0b2a-5c4f-4e8b-9a61-3f2d8c7b6a50,,,,\n" +
				"Conversion,u-1f3a9c,2026-11-28T11:00:00.123Z,,,,,conv-9a8b7c6d,purchase,129.99,EUR\n" +
				"conversion,u-1f3a9c,2026-11-28T11:00:00.123Z,,,,,conv-2,signup,,\n" +
				"impression,u-1f3a9c,2026-11-28T11:00:00.123Z,,,,,,,,\n" +
				",u-1f3a9c,2026-11-28T11:00:00.123Z,,,,,,,,\n",
			want: []want{{line: 2, ev: &click}, {line: 3, ev: &conv}, {line: 4, ev: &conv2},
				{line: 5, err: `line 5: event_type: must be click or conversion, not "impression"`},
				{line: 6, err: "line 6: event_type: missing"}}},
		{name: "type given, event_type column disagrees", typ: attribution.TypeClick,
			in:   "event_type," + ClickCSVHeader + "\nclick," + clickRow + "\nconversion," + clickRow + "\n," + clickRow + "\n",
			want: []want{{line: 2, ev: &click}, {line: 3, err: "line 3: event_type: conversion in a file of clicks"}, {line: 4, ev: &click}}},
		{name: "quoted fields, one spanning lines",
			in: ConversionCSVHeader + "\n" +
				`"conv-9a8b7c6d","u-1f3a9c","2026-11-28T11:00:00.123Z","purchase","129.99","EUR"` + "\n" +
				"conv-x,u-1,2026-11-28T11:00:00.123Z,\"two\nlines\",1,USD\n" +
				`"conv-9a8b7c6d",u-1f3a9c,2026-11-28T11:00:00.123Z,"purchase",129.99,"EUR"` + "\n",
			want: []want{{line: 2, ev: &conv}, {line: 3, err: "line 3: conversion_type: contains a control character", raw: "conv-x,u-1,2026-11-28T11:00:00.123Z,\"two\nlines\",1,USD"}, {line: 5, ev: &conv}}},
		{name: "CRLF, BOM and blank lines",
			in:   "\xEF\xBB\xBF" + ClickCSVHeader + "\r\n\r\n" + clickRow + "\r\n\r\n\n" + clickRow + "\r\n\r\n",
			want: []want{{line: 3, ev: &click, raw: clickRow}, {line: 6, ev: &click}}},
		{name: "blank lines before the header",
			in:   "\n\r\n" + ClickCSVHeader + "\n" + clickRow,
			want: []want{{line: 4, ev: &click}}},
		{name: "bad rows, reading goes on",
			in: ConversionCSVHeader + "\n" +
				"conv-1,u-1,2026-11-28T11:00:00.123Z,purchase,12.5 EUR,EUR\n" +
				"conv-1,u-1,2026-11-28T11:00:00.123Z,purchase,1,EUR,extra\n" +
				"conv-1,,2026-11-28T11:00:00.123Z,purchase,1,EUR\n" +
				"conv-1,u-1,yesterday,purchase,1,EUR\n" +
				"conv-1,u-1,2026-11-28T11:00:00.123Z,5\" screen,1,EUR\n" +
				convRow + "\n" +
				"conv-1,u-1,2026-11-28T11:00:00.123Z,\"unterminated,1,EUR\n" +
				"conv-1,u-1,2026-11-28T11:00:00.123Z,purchase,1,EUR\n",
			want: []want{
				{line: 2, err: `line 2: value: not a number: "12.5 EUR"`},
				{line: 3, err: "line 3: 7 columns, the header has 6", raw: "conv-1,u-1,2026-11-28T11:00:00.123Z,purchase,1,EUR,extra"},
				{line: 4, err: "line 4: user_id: missing"},
				{line: 5, err: `line 5: timestamp: not RFC 3339 or Unix milliseconds: "yesterday"`},
				{line: 6, err: `line 6: bad CSV: bare " in unquoted column 4`},
				{line: 7, ev: &conv},
				{line: 8, err: "line 8: bad CSV: unterminated quoted field", raw: "conv-1,u-1,2026-11-28T11:00:00.123Z,\"unterminated,1,EUR\nconv-1,u-1,2026-11-28T11:00:00.123Z,purchase,1,EUR"},
			}},
		{name: "empty file", in: ""},
		{name: "BOM only", in: "\xEF\xBB\xBF"},
		{name: "header only", in: ClickCSVHeader + "\r\n"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rows, err := codecReadRows(t, tc.in, tc.typ)
			if err != nil {
				t.Fatal(err)
			}
			if len(rows) != len(tc.want) {
				t.Fatalf("%d rows, want %d: %+v", len(rows), len(tc.want), rows)
			}
			for i, w := range tc.want {
				got := rows[i]
				if got.line != w.line {
					t.Errorf("row %d: line %d, want %d", i, got.line, w.line)
				}
				if w.raw != "" && got.raw != w.raw {
					t.Errorf("row %d: raw %q, want %q", i, got.raw, w.raw)
				}
				if w.err != "" {
					if got.err != w.err {
						t.Errorf("row %d: error %q, want %q", i, got.err, w.err)
					}
					continue
				}
				if got.err != "" {
					t.Errorf("row %d: %s", i, got.err)
					continue
				}
				if !reflect.DeepEqual(got.ev, *w.ev) {
					t.Errorf("row %d: got %+v\nwant %+v", i, codecDump(got.ev), codecDump(*w.ev))
				}
			}
		})
	}
}

func TestCSVFileReaderHeaderErrors(t *testing.T) {
	cases := []struct {
		name, in string
		typ      attribution.Type
		err      string
	}{
		{name: "missing user_id", in: "click_id,event_timestamp\n", err: `csv: header: missing column "user_id"`},
		{name: "missing time", in: "click_id,user_id,ad_creative_id\n", err: `csv: header: missing column "event_timestamp" (or "timestamp")`},
		{name: "missing id, type given", typ: attribution.TypeConversion, in: "user_id,timestamp,value\n", err: `missing column "conversion_id"`},
		{name: "combined without conversion_id", in: "event_type,click_id,user_id,timestamp\n", err: `missing column "conversion_id"`},
		{name: "column twice", in: "click_id,user_id,timestamp,user_id\n", err: `column "user_id" appears twice`},
		{name: "both time columns", in: "click_id,user_id,timestamp,event_timestamp\n", err: `both "timestamp" and "event_timestamp" columns`},
		{name: "both id columns", in: "click_id,conversion_id,user_id,timestamp\n", err: "both click_id and conversion_id columns and no event_type column"},
		{name: "no type", in: "user_id,timestamp\n", err: "no event_type, click_id or conversion_id column"},
		{name: "bid type", typ: attribution.TypeBid, in: ClickCSVHeader + "\n", err: "events of type bid do not come in CSV files"},
		{name: "bad header", in: "click_id,\"user_id\n", err: "csv: header (line 1): bad CSV: unterminated quoted field"},
	}
	for _, tc := range cases {
		_, err := NewCSVFileReader(strings.NewReader(tc.in), tc.typ)
		if err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("%s: error %v, want %q", tc.name, err, tc.err)
		}
	}
}

func TestCSVFileReaderLongRow(t *testing.T) {
	row := "clk-1,u-1,2026-11-28T10:00:30.123Z,cr,camp,imp"
	in := ClickCSVHeader + "\n" + "\"" + strings.Repeat("x", maxCSVRecordBytes) + "\n" + strings.Repeat("y", 100) + "\n" + row + "\n"
	rows, err := codecReadRows(t, in, attribution.TypeNone)
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 3 || !strings.Contains(rows[0].err, "row longer than 1 MiB") || rows[0].line != 2 ||
		!strings.Contains(rows[1].err, "line 3: 1 columns") || rows[2].err != "" || rows[2].line != 4 {
		for _, r := range rows {
			t.Logf("line %d: %s", r.line, r.err)
		}
		t.Fatal("unexpected rows")
	}
}

func TestCSVFileReaderReadError(t *testing.T) {
	boom := errors.New("disk on fire")
	in := io.MultiReader(strings.NewReader(ClickCSVHeader+"\nclk-1,u-1,2026-11-28T10:00:30.123Z,cr,camp,imp\nclk-2,u"), iotest.ErrReader(boom))
	rd, err := NewCSVFileReader(in, attribution.TypeNone)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, _, err := rd.Next(); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if _, _, _, err := rd.Next(); !errors.Is(err, boom) {
			t.Fatalf("error %v, want the read error", err)
		}
	}
	if _, err := NewCSVFileReader(iotest.ErrReader(boom), attribution.TypeClick); !errors.Is(err, boom) {
		t.Errorf("header read error: %v", err)
	}
}

// TestCSVFileReaderRawIsACopy checks that the bytes Next hands out stay as
// they were after later calls reuse the reader's buffers.
func TestCSVFileReaderRawIsACopy(t *testing.T) {
	var in bytes.Buffer
	in.WriteString(ClickCSVHeader + "\n")
	for i := range 5000 {
		in.WriteString("clk-" + strings.Repeat("x", i%50) + ",u-1,2026-11-28T10:00:30.123Z,cr,camp,imp\n")
	}
	want := strings.Split(strings.TrimSpace(in.String()), "\n")[1:]
	rd, err := NewCSVFileReader(bytes.NewReader(in.Bytes()), attribution.TypeClick)
	if err != nil {
		t.Fatal(err)
	}
	var raws [][]byte
	var evs []attribution.Event
	for {
		ev, _, raw, err := rd.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		raws = append(raws, raw)
		evs = append(evs, ev)
	}
	for i := range want {
		if string(raws[i]) != want[i] || evs[i].ID != strings.SplitN(want[i], ",", 2)[0] {
			t.Fatalf("row %d: raw %q id %q, want %q", i, raws[i], evs[i].ID, want[i])
		}
	}
}
