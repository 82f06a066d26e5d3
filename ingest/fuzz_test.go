package ingest

import (
	"bytes"
	"encoding/csv"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/lookback-dev/lookback/attribution"
)

// The fuzz targets check that no input makes a decoder panic, that
// whatever a decoder accepts is a valid event, and that re-encoding an
// accepted event and decoding it again gives the same event. Their seed
// corpora (f.Add, the golden inputs and testdata/fuzz) run in every go test.

// fuzzSeeds adds the golden inputs whose names start with prefix.
func fuzzSeeds(f *testing.F, prefix string) {
	paths, _ := filepath.Glob(filepath.Join(goldenDir, prefix+"*"))
	for _, p := range paths {
		if strings.HasSuffix(p, ".want.json") {
			continue
		}
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
}

// checkAccepted fails unless an accepted event is valid and normalized.
func checkAccepted(t *testing.T, ev *attribution.Event, input []byte) {
	t.Helper()
	if err := ev.Validate(); err != nil {
		t.Fatalf("accepted an invalid event (%v) from %q", err, input)
	}
	n := *ev
	n.Normalize()
	if !reflect.DeepEqual(n, *ev) {
		t.Fatalf("accepted an event that is not normalized from %q", input)
	}
}

// checkErrorKind fails unless err is a decode or a validation error.
func checkErrorKind(t *testing.T, err error) {
	t.Helper()
	if !errors.Is(err, ErrMalformed) && !errors.Is(err, attribution.ErrInvalidEvent) {
		t.Fatalf("error %q is neither ErrMalformed nor ErrInvalidEvent", err)
	}
}

func FuzzImpressionDecoder(f *testing.F) {
	sample := codecImpression()
	f.Add(AppendImpressionJSON(nil, &sample))
	f.Add([]byte(`{"user_id":"u","timestamp":1795860000123,"x":[{"y":null}],"website":"\ud83d\ude42"}`))
	f.Add([]byte(`{"user_id":"u","timestamp":"2026-11-28T10:00:00Z","user_id":"v"}`))
	f.Add([]byte(`{"user_id":"u","timestamp":"2026-11-28T10:00:00Z",}`))
	f.Add([]byte(`{"user\u005fid":"\"","timestamp":"2026-11-28T10:00:00+05:30"}`))
	f.Add([]byte(`[]`))
	fuzzSeeds(f, "impression_")
	var d ImpressionDecoder
	f.Fuzz(func(t *testing.T, in []byte) {
		var ev attribution.Event
		err := d.Decode(in, &ev)
		if err != nil {
			checkErrorKind(t, err)
			if errors.Is(err, ErrMalformed) && json.Valid(in) && !strings.Contains(err.Error(), "nested too deeply") &&
				bytes.HasPrefix(bytes.TrimLeft(in, " \t\r\n"), []byte("{")) {
				t.Fatalf("valid JSON object reported malformed: %v: %q", err, in)
			}
			return
		}
		checkAccepted(t, &ev, in)
		if !json.Valid(in) {
			t.Fatalf("accepted invalid JSON %q", in)
		}
		// The fields agree with encoding/json's reading.
		var m map[string]any
		if err := json.Unmarshal(in, &m); err != nil {
			t.Fatal(err)
		}
		for key, got := range map[string]string{"user_id": ev.UserID, "ad_creative_id": ev.CreativeID,
			"campaign_id": ev.CampaignID, "website": ev.Website, "auction_id": ev.AuctionID} {
			want, _ := m[key].(string)
			if got != want && utf8.ValidString(want) {
				t.Fatalf("%s: got %q, encoding/json %q", key, got, want)
			}
		}
		out := AppendImpressionJSON(nil, &ev)
		var again attribution.Event
		if err := d.Decode(out, &again); err != nil || !reflect.DeepEqual(again, ev) {
			t.Fatalf("round trip: %v\n%q\n%+v\n%+v", err, out, ev, again)
		}
	})
}

func FuzzBidDecoder(f *testing.F) {
	sample := codecBid()
	plain, _ := BidEncoder{}.Append(nil, &sample)
	f.Add(plain)
	framed, _ := BidEncoder{Framed: true, SchemaID: 42}.Append(nil, &sample)
	f.Add(framed)
	f.Add(plain[:len(plain)/2])
	f.Add([]byte{0, 0, 0, 0, 7})
	f.Add([]byte("\x02u\x02\x04DE\x00\x03\x04\x02a\x00"))
	fuzzSeeds(f, "bid_")
	d := NewBidDecoder([]int32{1, 42})
	f.Fuzz(func(t *testing.T, in []byte) {
		var ev attribution.Event
		if err := d.Decode(in, &ev); err != nil {
			checkErrorKind(t, err)
			return
		}
		checkAccepted(t, &ev, in)
		enc := BidEncoder{}
		if in[0] == 0 {
			enc = BidEncoder{Framed: true, SchemaID: 42}
		}
		out, err := enc.Append(nil, &ev)
		if err != nil {
			t.Fatal(err)
		}
		var again attribution.Event
		if err := d.Decode(out, &again); err != nil || !reflect.DeepEqual(again, ev) {
			t.Fatalf("round trip: %v\n%x\n%+v\n%+v", err, out, codecDump(ev), codecDump(again))
		}
	})
}

func fuzzRow(f *testing.F, decode codecDecodeFunc, encode func([]byte, *attribution.Event) []byte) {
	f.Fuzz(func(t *testing.T, in []byte) {
		var ev attribution.Event
		if err := decode(in, &ev); err != nil {
			checkErrorKind(t, err)
			return
		}
		checkAccepted(t, &ev, in)
		out := encode(nil, &ev)
		var again attribution.Event
		if err := decode(out, &again); err != nil || !reflect.DeepEqual(again, ev) {
			t.Fatalf("round trip: %v\nin  %q\nout %q\n%+v\n%+v", err, in, out, ev, again)
		}
	})
}

func FuzzClickRowDecoder(f *testing.F) {
	f.Add([]byte("clk-1,u-1,2026-11-28T10:00:30.123Z,cr-1,camp-1,imp-1"))
	f.Add([]byte(`"clk ""1""",u-1,1795860030123,"cr,1",,` + "\r\n"))
	f.Add([]byte(",u,2026-11-28T10:00:30+02:00,,,"))
	f.Add([]byte(`a,"b`))
	fuzzSeeds(f, "click_")
	var d ClickRowDecoder
	fuzzRow(f, d.Decode, AppendClickCSV)
}

func FuzzConversionRowDecoder(f *testing.F) {
	f.Add([]byte("conv-1,u-1,2026-11-28T11:00:00.123Z,purchase,129.99,eur"))
	f.Add([]byte(`conv-1,u-1,2026-11-28T11:00:00Z,"gift, card",1e3,` + "\n"))
	f.Add([]byte("conv-1,u-1,2026-11-28T11:00:00Z,,-0,"))
	f.Add([]byte("conv-1,u-1,2026-11-28T11:00:00Z,,0x1p-2,USD"))
	fuzzSeeds(f, "conversion_")
	var d ConversionRowDecoder
	fuzzRow(f, d.Decode, AppendConversionCSV)
}

func FuzzCSVFileReader(f *testing.F) {
	f.Add([]byte(ClickCSVHeader+"\nclk-1,u-1,2026-11-28T10:00:30.123Z,cr-1,camp-1,imp-1\n"), uint8(0))
	f.Add([]byte(ConversionCSVHeader+"\r\nconv-1,u-1,2026-11-28T11:00:00Z,\"a\nb\",1,USD\r\n\r\n"), uint8(4))
	f.Add([]byte("\xEF\xBB\xBFevent_type,click_id,conversion_id,user_id,timestamp,value\nclick,k,,u,1795860030123,\nconversion,,v,u,1795860030123,5\n"), uint8(0))
	paths, _ := filepath.Glob(filepath.Join(goldenDir, "file_*.csv"))
	for _, p := range paths {
		b, _ := os.ReadFile(p)
		f.Add(b, uint8(0))
		f.Add(b, uint8(3))
	}
	var clicks ClickRowDecoder
	var convs ConversionRowDecoder
	f.Fuzz(func(t *testing.T, in []byte, typ uint8) {
		rd, err := NewCSVFileReader(bytes.NewReader(in), attribution.Type(typ%5))
		if err != nil {
			return
		}
		last := 0
		for range 100_000 {
			ev, line, raw, err := rd.Next()
			if err == io.EOF {
				return
			}
			if line <= last {
				t.Fatalf("line %d after line %d", line, last)
			}
			last = line
			if raw == nil {
				t.Fatal("no raw bytes")
			}
			if err != nil {
				var re *RowError
				if !errors.As(err, &re) || re.Line != line {
					t.Fatalf("not a RowError for line %d: %v", line, err)
				}
				checkErrorKind(t, err)
				continue
			}
			checkAccepted(t, &ev, raw)
			var again attribution.Event
			var out []byte
			if ev.Type == attribution.TypeClick {
				out = AppendClickCSV(nil, &ev)
				err = clicks.Decode(out, &again)
			} else {
				out = AppendConversionCSV(nil, &ev)
				err = convs.Decode(out, &again)
			}
			if err != nil || !reflect.DeepEqual(again, ev) {
				t.Fatalf("round trip: %v\n%q\n%+v\n%+v", err, out, ev, again)
			}
		}
		t.Fatal("no end")
	})
}

// FuzzCSVSplit checks the RFC 4180 splitter against encoding/csv.
func FuzzCSVSplit(f *testing.F) {
	f.Add([]byte(`a,"b,c","d""e",`))
	f.Add([]byte(`"a` + "\n" + `b",c`))
	f.Add([]byte(`a"b`))
	f.Add([]byte(`"a"b`))
	var sp csvSplitter
	f.Fuzz(func(t *testing.T, in []byte) {
		// encoding/csv reads records from lines: compare on one record
		// without a line terminator or CR (csv drops CR before LF).
		if bytes.IndexByte(in, '\r') >= 0 || len(in) == 0 || in[0] == '\n' || in[len(in)-1] == '\n' {
			return
		}
		fields, err := sp.split(in)
		r := csv.NewReader(bytes.NewReader(in))
		r.FieldsPerRecord = -1
		want, werr := r.Read()
		if werr == nil {
			if _, err := r.Read(); err != io.EOF {
				return // more than one record: line breaks outside quotes
			}
		}
		if (err != nil) != (werr != nil) {
			t.Fatalf("%q: split error %v, encoding/csv error %v", in, err, werr)
		}
		if err != nil {
			return
		}
		var got []string
		for _, f := range fields {
			got = append(got, string(f))
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("%q: split %q, encoding/csv %q", in, got, want)
		}
	})
}

func FuzzDecodeEventsJSON(f *testing.F) {
	var arr []byte
	for _, ev := range []attribution.Event{codecImpression(), codecBid(), codecClick(), codecConversion()} {
		f.Add(AppendEventJSON(nil, &ev))
		arr = append(append(arr, ','), AppendEventJSON(nil, &ev)...)
	}
	arr[0] = '['
	f.Add(append(arr, ']'))
	f.Add([]byte(codecClickJSON + "\n\n" + codecConvJSON + "\n{\"type\":\n"))
	f.Add([]byte(`[1,"a",{"type":"bid","auction_details":null},{"type":null}]`))
	fuzzSeeds(f, "events")
	f.Fuzz(func(t *testing.T, in []byte) {
		events, rejected, err := DecodeEventsJSON(in, nil)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v is not ErrMalformed", err)
			}
			if json.Valid(in) && bytes.HasPrefix(bytes.TrimLeft(in, " \t\r\n"), []byte("[")) && !strings.Contains(err.Error(), "nested too deeply") {
				t.Fatalf("valid JSON array refused: %v: %q", err, in)
			}
			return
		}
		// Every element is an event or a rejection: the indexes rejected
		// are distinct and below the number of elements.
		prev := -1
		for _, r := range rejected {
			if r.Index <= prev || r.Index >= len(events)+len(rejected) || r.Error == "" || len(r.Raw) == 0 {
				t.Fatalf("rejections %v of %d elements", rejected, len(events)+len(rejected))
			}
			prev = r.Index
		}
		var body []byte
		for i := range events {
			checkAccepted(t, &events[i], in)
			body = AppendEventJSON(body, &events[i])
			body = append(body, '\n')
		}
		if len(events) == 0 {
			return
		}
		again, rej, err := DecodeEventsJSON(body, nil)
		if err != nil || len(rej) > 0 || !reflect.DeepEqual(again, events) {
			t.Fatalf("round trip: %v %v\n%s", err, rej, body)
		}
	})
}
