package attribution

import (
	"fmt"
	"math/rand/v2"
	"sort"
	"strconv"
	"testing"
)

type bufRec struct {
	input int
	pos   int64
	ev    Event
}

// bufRecLess is Less made total by input and position, which are unique.
func bufRecLess(a, b *bufRec) bool {
	if Less(&a.ev, &b.ev) || Less(&b.ev, &a.ev) {
		return Less(&a.ev, &b.ev)
	}
	if a.input != b.input {
		return a.input < b.input
	}
	return a.pos < b.pos
}

// randomBufferID draws IDs from a tiny alphabet that includes the zero
// byte, so that IDs often share their first seven bytes, differ only
// past them, or are prefixes of each other.
func randomBufferID(rng *rand.Rand) string {
	const alphabet = "\x00ab\xff"
	b := make([]byte, rng.IntN(11))
	for i := range b {
		b[i] = alphabet[rng.IntN(len(alphabet))]
	}
	return string(b)
}

// TestBufferAgainstSort pushes random, nearly sorted records with many
// ties and releases them at random watermarks, bursts included, checking
// every release, Len, PeekTime, Earliest and Each against a plain list of
// what is held, sorted with sort.Slice.
func TestBufferAgainstSort(t *testing.T) {
	for _, c := range []struct {
		inputs          int
		jitter, spread  int64 // disorder, and how far a time step goes
		ops, burstEvery int
	}{
		{1, 0, 1, 3000, 0},
		{4, 5, 1, 20_000, 4000},
		{4, 50, 3, 20_000, 2500},
		{2, 1000, 10, 10_000, 3000},
	} {
		t.Run(fmt.Sprintf("inputs=%d/jitter=%d", c.inputs, c.jitter), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(uint64(c.inputs), uint64(c.jitter)))
			b := NewBuffer(c.inputs)
			var held []bufRec
			pos := make([]int64, c.inputs)
			clock, serial, movedShrinks := int64(1000), 0, 0

			check := func(op string) {
				t.Helper()
				if b.Len() != len(held) {
					t.Fatalf("%s: Len %d, want %d", op, b.Len(), len(held))
				}
				minTime, ok := int64(0), len(held) > 0
				earliest := make([]int64, c.inputs)
				for i := range earliest {
					earliest[i] = -1
				}
				for k, r := range held {
					if k == 0 || r.ev.Time < minTime {
						minTime = r.ev.Time
					}
					if earliest[r.input] < 0 || r.pos < earliest[r.input] {
						earliest[r.input] = r.pos
					}
				}
				if pt, pok := b.PeekTime(); pok != ok || pt != minTime {
					t.Fatalf("%s: PeekTime %d %v, want %d %v", op, pt, pok, minTime, ok)
				}
				for i, want := range earliest {
					if p, pok := b.Earliest(i); pok != (want >= 0) || (pok && p != want) {
						t.Fatalf("%s: Earliest(%d) = %d, %v; want %d", op, i, p, pok, want)
					}
				}
			}
			checkEach := func() {
				t.Helper()
				want := make(map[string]Event, len(held))
				for _, r := range held {
					want[r.ev.UserID] = r.ev
				}
				n := 0
				b.Each(func(ev *Event) {
					n++
					if w, ok := want[ev.UserID]; !ok || w != *ev {
						t.Fatalf("Each visited %+v, not held", *ev)
					}
				})
				if n != len(held) {
					t.Fatalf("Each visited %d, %d held", n, len(held))
				}
			}
			push := func() {
				in := rng.IntN(c.inputs)
				pos[in] += 1 + rng.Int64N(3)
				serial++
				ev := Event{
					Type: Type(rng.IntN(5)), ID: randomBufferID(rng), Time: clock - rng.Int64N(c.jitter+1),
					UserID: "u" + strconv.Itoa(serial), Value: float64(serial),
				}
				held = append(held, bufRec{in, pos[in], ev})
				b.Push(in, pos[in], &ev)
				ev.ID = "changed after Push" // the buffer keeps its own copy
			}
			pop := func(watermark int64) {
				t.Helper()
				chunks := len(b.slab.chunks)
				var got []bufRec
				n := b.PopUntil(watermark, func(input int, pos int64, ev *Event) {
					got = append(got, bufRec{input, pos, *ev})
				})
				var want, rest []bufRec
				for _, r := range held {
					if r.ev.Time <= watermark {
						want = append(want, r)
					} else {
						rest = append(rest, r)
					}
				}
				held = rest
				sort.Slice(want, func(i, j int) bool { return bufRecLess(&want[i], &want[j]) })
				if n != len(got) || n != len(want) {
					t.Fatalf("PopUntil(%d) returned %d, called fn %d times, want %d", watermark, n, len(got), len(want))
				}
				for k := 1; k < len(got); k++ {
					if Less(&got[k].ev, &got[k-1].ev) {
						t.Fatalf("released %+v after %+v", got[k].ev, got[k-1].ev)
					}
				}
				// Equal keys may come out in any order: compare as sorted.
				sort.Slice(got, func(i, j int) bool { return bufRecLess(&got[i], &got[j]) })
				for k := range want {
					if got[k] != want[k] {
						t.Fatalf("release %d: %+v, want %+v", k, got[k], want[k])
					}
				}
				if len(b.slab.chunks) < chunks && b.Len() > 0 {
					movedShrinks++
				}
				check("PopUntil")
			}

			for op := 0; op < c.ops; op++ {
				switch k := rng.IntN(100); {
				case c.burstEvery > 0 && op%c.burstEvery == c.burstEvery-1:
					for range 1000 + rng.IntN(3000) {
						clock += rng.Int64N(c.spread + 1)
						push()
					}
					check("burst")
					// Drain to a few, or nothing.
					pop(clock - c.jitter - rng.Int64N(2))
				case k < 60:
					clock += rng.Int64N(c.spread + 1)
					push()
					check("Push")
				case k < 95:
					pop(clock - c.jitter - 10 - rng.Int64N(20))
				default:
					pop(clock - rng.Int64N(3*c.jitter+30)) // may go back
				}
				if op%500 == 0 {
					checkEach()
				}
			}
			pop(clock)
			if b.Len() != 0 || len(b.slab.chunks) > 1 {
				t.Fatalf("drained: %d held, %d chunks", b.Len(), len(b.slab.chunks))
			}
			for i := range b.queues {
				if n := len(b.queues[i].pos); n > 2*minPosRing {
					t.Fatalf("drained: input %d keeps a ring of %d", i, n)
				}
			}
			if c.burstEvery > 0 && movedShrinks == 0 {
				t.Fatal("the slab never shrank under held records")
			}
		})
	}
}

// TestBufferReentrant checks that fn may push and release records itself
// while the event it was given stays intact, even when the inner release
// empties most of the buffer.
func TestBufferReentrant(t *testing.T) {
	b := NewBuffer(2)
	for i := range 3000 {
		ev := Event{Type: TypeClick, ID: "k" + strconv.Itoa(i), UserID: "u", Time: int64(i + 1)}
		b.Push(i%2, int64(i), &ev)
	}
	// Released first, from the last chunk.
	first := Event{Type: TypeClick, ID: "first", UserID: "u", Time: 0}
	b.Push(1, 3000, &first)
	released := map[string]int{}
	outer := 0
	b.PopUntil(3000, func(_ int, _ int64, ev *Event) {
		outer++
		released[ev.ID]++
		if outer > 1 {
			return
		}
		before := *ev
		more := Event{Type: TypeBid, ID: "late", Time: 5000}
		b.Push(0, 10_000, &more)
		if n := b.PopUntil(2990, func(_ int, _ int64, e *Event) { released[e.ID]++ }); n != 2990 {
			t.Fatalf("inner PopUntil released %d", n)
		}
		if *ev != before {
			t.Fatalf("event changed under fn: %+v, was %+v", *ev, before)
		}
	})
	if len(released) != 3001 || outer != 11 || b.Len() != 1 {
		t.Fatalf("released %d distinct, outer %d, %d held", len(released), outer, b.Len())
	}
	for id, n := range released {
		if n != 1 {
			t.Fatalf("%s released %d times", id, n)
		}
	}
	if pos, ok := b.Earliest(0); !ok || pos != 10_000 {
		t.Fatalf("Earliest(0) = %d, %v", pos, ok)
	}
	if _, ok := b.Earliest(1); ok {
		t.Fatal("Earliest(1) reports a record")
	}
	if len(b.slab.chunks) != 1 {
		t.Fatalf("%d chunks kept for one record", len(b.slab.chunks))
	}
	// The slots freed around the nested release are all usable.
	for i := range 2 * chunkSize {
		ev := Event{Type: TypeClick, ID: "again" + strconv.Itoa(i), Time: 6000}
		b.Push(1, int64(20_000+i), &ev)
	}
	if n := b.PopUntil(6000, func(int, int64, *Event) {}); n != 2*chunkSize+1 || b.Len() != 0 {
		t.Fatalf("released %d, %d held", n, b.Len())
	}
}

func TestEntryKeyMonotone(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for range 20_000 {
		ta, tb := Type(rng.IntN(5)), Type(rng.IntN(5))
		a, b := randomBufferID(rng), randomBufferID(rng)
		ka, kb := entryKey(ta, a), entryKey(tb, b)
		less := ta < tb || ta == tb && a < b
		if ka < kb && !less || ka > kb && less {
			t.Fatalf("(%d %q) key %x, (%d %q) key %x", ta, a, ka, tb, b, kb)
		}
	}
}
