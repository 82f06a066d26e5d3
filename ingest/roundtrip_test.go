package ingest

import (
	"bytes"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"

	"github.com/lookback-dev/lookback/attribution"
)

// TestRoundTrip checks Decode(Encode(ev)) == ev for random valid events of
// every type, in every format that carries them.
func TestRoundTrip(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	var (
		imp   ImpressionDecoder
		bid   = NewBidDecoder([]int32{7})
		click ClickRowDecoder
		conv  ConversionRowDecoder
		buf   []byte
	)
	check := func(what string, want, got attribution.Event, value []byte, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v\nvalue: %q\nevent: %+v", what, err, value, want)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("%s: round trip changed the event\nvalue: %q\nwant %+v\ngot  %+v", what, value, codecDump(want), codecDump(got))
		}
	}
	n := 1000
	if testing.Short() {
		n = 100
	}
	for range n {
		for _, typ := range codecTypes {
			ev := codecRandomEvent(t, r, typ)
			var got attribution.Event
			var err error
			switch typ {
			case attribution.TypeImpression:
				buf = AppendImpressionJSON(buf[:0], &ev)
				err = imp.Decode(buf, &got)
				check("impression JSON", ev, got, buf, err)
			case attribution.TypeBid:
				buf, err = BidEncoder{}.Append(buf[:0], &ev)
				if err == nil {
					err = bid.Decode(buf, &got)
				}
				check("bid Avro", ev, got, buf, err)
				buf, err = BidEncoder{Framed: true, SchemaID: 7}.Append(buf[:0], &ev)
				if err == nil {
					err = bid.Decode(buf, &got)
				}
				check("bid Avro framed", ev, got, buf, err)
			case attribution.TypeClick:
				buf = AppendClickCSV(buf[:0], &ev)
				err = click.Decode(buf, &got)
				check("click CSV", ev, got, buf, err)
				buf = append(buf, '\r', '\n')
				err = click.Decode(buf, &got)
				check("click CSV with CRLF", ev, got, buf, err)
			case attribution.TypeConversion:
				buf = AppendConversionCSV(buf[:0], &ev)
				err = conv.Decode(buf, &got)
				check("conversion CSV", ev, got, buf, err)
			}
			// The generic helpers agree.
			kind, value, err := EncodeValue(&ev)
			if err != nil || kind != typ {
				t.Fatalf("EncodeValue: %v, %v", kind, err)
			}
			dec := NewValueDecoder(nil)
			err = dec.Decode(kind, value, &got)
			check("ValueDecoder", ev, got, value, err)

			// HTTP: one element.
			body := AppendEventJSON(nil, &ev)
			evs, rej, err := DecodeEventsJSON(body, nil)
			if err != nil || len(rej) > 0 || len(evs) != 1 {
				t.Fatalf("DecodeEventsJSON(%s, nil): %v %v %d", body, err, rej, len(evs))
			}
			check("events JSON", ev, evs[0], body, nil)
		}
	}
}

// TestRoundTripBatches checks that HTTP bodies (array and NDJSON) and CSV
// files of many random events read back as the same events, in order.
func TestRoundTripBatches(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for round := range 50 {
		var all, clicks, convs []attribution.Event
		for range 40 {
			ev := codecRandomEvent(t, r, codecTypes[r.IntN(len(codecTypes))])
			all = append(all, ev)
			switch ev.Type {
			case attribution.TypeClick:
				clicks = append(clicks, ev)
			case attribution.TypeConversion:
				convs = append(convs, ev)
			}
		}
		arr := []byte{'['}
		var nd []byte
		for i := range all {
			if i > 0 {
				arr = append(arr, ",\n "...)
			}
			arr = AppendEventJSON(arr, &all[i])
			nd = AppendEventJSON(nd, &all[i])
			nd = append(nd, '\n')
		}
		arr = append(arr, ']')
		for _, body := range [][]byte{arr, nd} {
			evs, rej, err := DecodeEventsJSON(body, nil)
			if err != nil || len(rej) > 0 {
				t.Fatalf("round %d: %v %v", round, err, rej)
			}
			if !reflect.DeepEqual(evs, all) {
				t.Fatalf("round %d: events differ", round)
			}
		}

		// A CSV file with the columns in the topic order, and a combined
		// file with the columns shuffled.
		file := []byte(ClickCSVHeader + "\r\n")
		for i := range clicks {
			file = AppendClickCSV(file, &clicks[i])
			file = append(file, "\r\n"...)
		}
		codecReadAll(t, file, attribution.TypeNone, clicks)

		cols := strings.Split("event_type,"+ClickCSVHeader+",conversion_id,conversion_type,value,currency", ",")
		r.Shuffle(len(cols), func(i, j int) { cols[i], cols[j] = cols[j], cols[i] })
		file = append(file[:0], strings.Join(cols, ",")+"\n"...)
		var both []attribution.Event
		for i := range all {
			ev := &all[i]
			if ev.Type != attribution.TypeClick && ev.Type != attribution.TypeConversion {
				continue
			}
			both = append(both, *ev)
			// Encode as a row of the topic format, then move the fields
			// to the combined file's columns.
			var row []byte
			if ev.Type == attribution.TypeClick {
				row = AppendClickCSV(nil, ev)
			} else {
				row = AppendConversionCSV(nil, ev)
			}
			var sp csvSplitter
			fields, err := sp.split(row)
			if err != nil {
				t.Fatal(err)
			}
			names := strings.Split(ClickCSVHeader, ",")
			if ev.Type == attribution.TypeConversion {
				names = strings.Split(ConversionCSVHeader, ",")
			}
			byName := map[string][]byte{"event_type": []byte(ev.Type.String())}
			for i, name := range names {
				byName[name] = fields[i]
			}
			for i, col := range cols {
				if i > 0 {
					file = append(file, ',')
				}
				file = appendCSVField(file, string(byName[col]))
			}
			file = append(file, '\n')
		}
		codecReadAll(t, file, attribution.TypeNone, both)
	}
}

// codecReadAll reads a CSV file and checks it holds exactly want, with no
// bad rows.
func codecReadAll(t *testing.T, file []byte, typ attribution.Type, want []attribution.Event) {
	t.Helper()
	rd, err := NewCSVFileReader(bytes.NewReader(file), typ)
	if err != nil {
		t.Fatalf("%v\n%s", err, file)
	}
	var got []attribution.Event
	for {
		ev, line, _, err := rd.Next()
		if err != nil {
			if err.Error() == "EOF" {
				break
			}
			t.Fatalf("line %d: %v\n%s", line, err, file)
		}
		got = append(got, ev)
	}
	if len(got) != len(want) {
		t.Fatalf("read %d events, want %d\n%s", len(got), len(want), file)
	}
	for i := range want {
		if !reflect.DeepEqual(got[i], want[i]) {
			t.Fatalf("event %d: got %+v, want %+v\n%s", i, codecDump(got[i]), codecDump(want[i]), file)
		}
	}
}

// codecDump shows an event with its Bid.
func codecDump(ev attribution.Event) any {
	type view struct {
		attribution.Event
		Bid attribution.Bid
	}
	v := view{Event: ev}
	if ev.Bid != nil {
		v.Bid = *ev.Bid
	}
	return v
}
