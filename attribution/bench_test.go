package attribution

import (
	"fmt"
	"math/rand/v2"
	"runtime"
	"strconv"
	"testing"
	"time"
)

// benchUUID returns a canonical UUID-shaped id, as ad servers send.
func benchUUID(n int) string {
	return fmt.Sprintf("%08x-%04x-4%03x-8%03x-%012x", n*2654435761&0xffffffff, n&0xffff, n&0xfff, (n>>12)&0xfff, n)
}

var benchStart = time.Date(2026, 11, 28, 0, 0, 0, 0, time.UTC).UnixMilli()

// benchTouches returns n touches of one user, a minute apart.
func benchTouches(typ Type, n int) []Event {
	evs := make([]Event, n)
	for i := range evs {
		evs[i] = Event{
			Type: typ, UserID: "user-42", ID: benchUUID(i + int(typ)*1_000_000), Time: benchStart + int64(i)*60_000,
			CreativeID: fmt.Sprintf("cr-%d", i%5), CampaignID: fmt.Sprintf("camp-%d", i%3), Website: "news.example.com",
		}
	}
	return evs
}

// benchApplyTouch measures applying one touch to a user that keeps about
// ten touches: the steady state of an active user.
func benchApplyTouch(b *testing.B, typ Type) {
	r := allModelsRules(b)
	evs := benchTouches(typ, 4096)
	var s State
	var out Facts
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		ev := &evs[i%len(evs)]
		if i%len(evs) == 0 {
			s = State{}
		}
		if _, err := r.Apply(&s, ev, &out); err != nil {
			b.Fatal(err)
		}
		if len(s.touches) > 10 {
			s.touches = dropFront(s.touches, 1)
		}
		out.Reset()
	}
}

func BenchmarkApplyImpression(b *testing.B) { benchApplyTouch(b, TypeImpression) }
func BenchmarkApplyClick(b *testing.B)      { benchApplyTouch(b, TypeClick) }

// BenchmarkApplyConversion measures a conversion attributed with all five
// models over a 20-click path.
func BenchmarkApplyConversion(b *testing.B) {
	r := allModelsRules(b)
	var base State
	var out Facts
	for _, ev := range benchTouches(TypeClick, 20) {
		if _, err := r.Apply(&base, &ev, &out); err != nil {
			b.Fatal(err)
		}
	}
	conv := Event{Type: TypeConversion, UserID: "user-42", ID: "conv-1", Time: benchStart + 20*60_000,
		ConversionType: "purchase", Value: 99.5, Currency: "USD"}
	s := base
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		s.convs = s.convs[:0]
		out.Reset()
		o, err := r.Apply(&s, &conv, &out)
		if err != nil || o.Duplicate || len(out.Conversions[0].Path) != 20 {
			b.Fatal(err, o)
		}
	}
}

func benchState(b *testing.B) State {
	r := allModelsRules(b)
	var s State
	var out Facts
	for _, ev := range benchTouches(TypeImpression, 6) {
		r.Apply(&s, &ev, &out)
	}
	for _, ev := range benchTouches(TypeClick, 4) {
		ev.Time += 30_000
		r.Apply(&s, &ev, &out)
	}
	if len(s.touches) != 10 {
		b.Fatalf("%d touches", len(s.touches))
	}
	return s
}

// BenchmarkStateEncode encodes a user with ten touches (the size target is
// reported as bytes/state).
func BenchmarkStateEncode(b *testing.B) {
	s := benchState(b)
	var buf []byte
	b.ReportAllocs()
	for b.Loop() {
		var err error
		buf, err = s.AppendBinary(buf[:0])
		if err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(len(buf)), "bytes/state")
}

func BenchmarkStateDecode(b *testing.B) {
	s := benchState(b)
	data, _ := s.MarshalBinary()
	b.ReportAllocs()
	for b.Loop() {
		var d State
		if err := d.UnmarshalBinary(data); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSequencer measures holding and releasing records in order.
func BenchmarkSequencer(b *testing.B) {
	evs := benchTouches(TypeImpression, 4096)
	seq := NewSequencer(4, DefaultWatermarkConfig(), benchStart)
	b.ReportAllocs()
	n := 0
	for i := 0; b.Loop(); i++ {
		ev := &evs[i%len(evs)]
		ev.Time = benchStart + int64(i)
		seq.Add(i%4, int64(i), ev, benchStart)
		seq.Release(benchStart, func(int, int64, *Event) { n++ })
	}
}

// benchStream returns n records of the four inputs interleaved, about ten
// per millisecond, each input in time order but for up to jitter ms of
// disorder: what a partition reads from Kafka.
func benchStream(n int, jitter int64) (inputs []int, evs []Event) {
	rng := rand.New(rand.NewPCG(7, 8))
	inputs, evs = make([]int, n), make([]Event, n)
	for i := range evs {
		in := rng.IntN(4)
		inputs[i] = in
		evs[i] = Event{
			Type: Type(in + 1), UserID: "user-" + strconv.Itoa(rng.IntN(100_000)), ID: benchUUID(i),
			Time:       benchStart + int64(i)/10 - rng.Int64N(jitter+1),
			CreativeID: "cr-" + strconv.Itoa(i%50), CampaignID: "camp-" + strconv.Itoa(i%7), Website: "news.example.com",
		}
	}
	return inputs, evs
}

// BenchmarkBufferPushPop measures one record pushed and one released by a
// buffer in its steady state, records released every batch pushes as the
// watermark (lateness behind the latest time) passes them. held is about
// ten records per millisecond of lateness plus half the jitter; a large
// batch is a watermark that moves in steps (a slow input, a tick).
func BenchmarkBufferPushPop(b *testing.B) {
	for _, c := range []struct {
		name                    string
		lateness, jitter, batch int64
	}{
		{"held=10k", 1000, 300, 100},
		{"held=100k", 10_000, 3000, 100},
		{"held=100k/step=1s", 10_000, 3000, 10_000},
	} {
		b.Run(c.name, func(b *testing.B) {
			inputs, evs := benchStream(1<<18, c.jitter)
			span := int64(len(evs)) / 10
			buf := NewBuffer(4)
			var pos [4]int64
			latest := int64(0)
			push := func(i int64) {
				k := i % int64(len(evs))
				ev := evs[k]
				ev.Time += i / int64(len(evs)) * span
				latest = max(latest, ev.Time)
				in := inputs[k]
				pos[in]++
				buf.Push(in, pos[in], &ev)
				if i%c.batch == c.batch-1 {
					buf.PopUntil(latest-c.lateness, func(int, int64, *Event) {})
				}
			}
			// Fill to the steady state first.
			i := int64(0)
			for ; i < int64(len(evs)); i++ {
				push(i)
			}
			held := 0
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			mallocs := ms.Mallocs
			b.ReportAllocs()
			for b.Loop() {
				push(i)
				i++
				held += buf.Len()
			}
			b.ReportMetric(float64(held)/float64(b.N), "held")
			// allocs/op rounds down, and the buffer allocates less than
			// once a record.
			runtime.ReadMemStats(&ms)
			b.ReportMetric(float64(ms.Mallocs-mallocs)*1000/float64(b.N), "allocs/1k-op")
		})
	}
}
