package ingest

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hamba/avro/v2"

	"github.com/lookback-dev/lookback/attribution"
)

var codecUpdate = flag.Bool("update", false, "rewrite the golden files under testdata/golden")

const goldenDir = "testdata/golden"

// goldenResult is one decoded record or row, as the .want.json files hold
// it.
type goldenResult struct {
	Line   int                `json:"line,omitempty"`
	Index  *int               `json:"index,omitempty"`
	Raw    string             `json:"raw,omitempty"`
	Type   string             `json:"type,omitempty"`
	Time   string             `json:"time,omitempty"`
	Event  *attribution.Event `json:"event,omitempty"`
	Error  string             `json:"error,omitempty"`
	Reason string             `json:"reason,omitempty"` // malformed or invalid
}

func goldenOf(ev *attribution.Event, err error) goldenResult {
	if err != nil {
		r := goldenResult{Error: err.Error(), Reason: "other"}
		switch {
		case errors.Is(err, ErrMalformed):
			r.Reason = "malformed"
		case errors.Is(err, attribution.ErrInvalidEvent):
			r.Reason = "invalid"
		}
		return r
	}
	e := *ev
	return goldenResult{Type: e.Type.String(), Time: attribution.FormatTime(e.Time), Event: &e}
}

// goldenInputs writes the binary inputs, which come from the encoders.
func goldenInputs(t *testing.T) {
	bid := codecBid()
	plain, err := BidEncoder{}.Append(nil, &bid)
	if err != nil {
		t.Fatal(err)
	}
	framed, err := BidEncoder{Framed: true, SchemaID: 42}.Append(nil, &bid)
	if err != nil {
		t.Fatal(err)
	}
	// hamba's default encoding: arrays with block byte sizes; and the
	// fields Event drops, set.
	f := codecFullBidOf(&bid)
	country, device := "US", "mobile"
	f.UserInfo.Country, f.UserInfo.DeviceType, f.UserInfo.Segments = &country, &device, []string{"s1", "s2"}
	hamba, err := avro.Marshal(bidSchema, f)
	if err != nil {
		t.Fatal(err)
	}
	otherID, _ := BidEncoder{Framed: true, SchemaID: 7}.Append(nil, &bid)
	for name, b := range map[string][]byte{
		"bid_plain.bin":           plain,
		"bid_framed.bin":          framed,
		"bid_hamba_blocks.bin":    hamba,
		"bid_truncated.bin":       plain[:len(plain)-3],
		"bid_trailing_data.bin":   append(append([]byte(nil), plain...), 0, 1),
		"bid_other_schema_id.bin": otherID,
	} {
		if err := os.WriteFile(filepath.Join(goldenDir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// TestGolden decodes every input under testdata/golden with the decoder
// its name calls for and compares the results with NAME.want.json. Run
// with -update to rewrite those (and the .bin inputs) after a deliberate
// change, and review the diff.
func TestGolden(t *testing.T) {
	if *codecUpdate {
		goldenInputs(t)
	}
	entries, err := os.ReadDir(goldenDir)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range entries {
		name := e.Name()
		if strings.HasSuffix(name, ".want.json") {
			continue
		}
		n++
		t.Run(name, func(t *testing.T) {
			in, err := os.ReadFile(filepath.Join(goldenDir, name))
			if err != nil {
				t.Fatal(err)
			}
			got := goldenDecode(t, name, in)
			out, err := json.MarshalIndent(got, "", "  ")
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, '\n')
			wantPath := filepath.Join(goldenDir, name+".want.json")
			if *codecUpdate {
				if err := os.WriteFile(wantPath, out, 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(wantPath)
			if err != nil {
				t.Fatalf("%v (run go test -run TestGolden -update to create it)", err)
			}
			if !bytes.Equal(out, want) {
				t.Errorf("%s differs from %s (run with -update after a deliberate change):\n%s", name, wantPath, out)
			}
		})
	}
	if n < 20 {
		t.Errorf("only %d golden inputs", n)
	}
}

func goldenDecode(t *testing.T, name string, in []byte) []goldenResult {
	one := func(decode codecDecodeFunc) []goldenResult {
		var ev attribution.Event
		err := decode(in, &ev)
		return []goldenResult{goldenOf(&ev, err)}
	}
	switch {
	case strings.HasPrefix(name, "impression_"):
		return one(NewImpressionDecoder().Decode)
	case strings.HasPrefix(name, "bid_"):
		return one(NewBidDecoder([]int32{42}).Decode)
	case strings.HasPrefix(name, "click_"):
		return one(NewClickRowDecoder().Decode)
	case strings.HasPrefix(name, "conversion_"):
		return one(NewConversionRowDecoder().Decode)
	case strings.HasPrefix(name, "file_"):
		rd, err := NewCSVFileReader(bytes.NewReader(in), attribution.TypeNone)
		if err != nil {
			return []goldenResult{goldenOf(nil, err)}
		}
		var out []goldenResult
		for {
			ev, line, raw, err := rd.Next()
			if err == io.EOF {
				return out
			}
			r := goldenOf(&ev, err)
			r.Line, r.Raw = line, string(raw)
			out = append(out, r)
		}
	case strings.HasPrefix(name, "events"):
		events, rejected, err := DecodeEventsJSON(in, nil)
		if err != nil {
			return []goldenResult{goldenOf(nil, err)}
		}
		var out []goldenResult
		for i := range events {
			out = append(out, goldenOf(&events[i], nil))
		}
		for _, r := range rejected {
			out = append(out, goldenResult{Index: &r.Index, Error: r.Error})
		}
		return out
	}
	t.Fatalf("no decoder for %s", name)
	return nil
}
