package attribution

import "container/heap"

// Buffer holds a partition's records until the watermark passes them, and
// releases them in application order: (time, type, id). It also knows, per
// input, the position (Kafka offset) of the earliest record it still holds,
// so that a checkpoint can store offsets that stop before it.
type Buffer struct {
	h      itemHeap
	queues []posQueue
	free   []*bufItem
}

type bufItem struct {
	ev    Event
	input int
	seq   int64 // index of this record in its input's posQueue
}

// posQueue lists an input's buffered positions in arrival order; released
// ones are marked done and trimmed from the front.
type posQueue struct {
	base    int64 // sequence number of entries[0]
	entries []posEntry
}

type posEntry struct {
	pos  int64
	done bool
}

// NewBuffer returns an empty buffer for a partition with n inputs.
func NewBuffer(n int) *Buffer { return &Buffer{queues: make([]posQueue, n)} }

// Len is the number of records held.
func (b *Buffer) Len() int { return len(b.h) }

// Push holds a record that arrived on input at position pos.
func (b *Buffer) Push(input int, pos int64, ev *Event) {
	q := &b.queues[input]
	it := b.alloc()
	it.ev, it.input, it.seq = *ev, input, q.base+int64(len(q.entries))
	q.entries = append(q.entries, posEntry{pos: pos})
	heap.Push(&b.h, it)
}

// PeekTime is the time of the next record to release; ok is false when
// the buffer is empty.
func (b *Buffer) PeekTime() (t int64, ok bool) {
	if len(b.h) == 0 {
		return 0, false
	}
	return b.h[0].ev.Time, true
}

// PopUntil releases, in application order, every record with a time at or
// before watermark, calling fn with each one's input, position and event.
// The event is only valid during the call.
func (b *Buffer) PopUntil(watermark int64, fn func(input int, pos int64, ev *Event)) int {
	n := 0
	for len(b.h) > 0 && b.h[0].ev.Time <= watermark {
		it := heap.Pop(&b.h).(*bufItem)
		q := &b.queues[it.input]
		pos := q.entries[it.seq-q.base].pos
		q.release(it.seq)
		fn(it.input, pos, &it.ev)
		b.release(it)
		n++
	}
	return n
}

// Earliest returns the position of the earliest record of input that the
// buffer still holds; ok is false when it holds none.
func (b *Buffer) Earliest(input int) (pos int64, ok bool) {
	q := &b.queues[input]
	if len(q.entries) == 0 {
		return 0, false
	}
	return q.entries[0].pos, true
}

// Each calls fn for every held record, in no particular order (for
// lookups of a user's pending records).
func (b *Buffer) Each(fn func(*Event)) {
	for _, it := range b.h {
		fn(&it.ev)
	}
}

func (q *posQueue) release(seq int64) {
	q.entries[seq-q.base].done = true
	i := 0
	for i < len(q.entries) && q.entries[i].done {
		i++
	}
	if i == 0 {
		return
	}
	// Slicing off the released prefix lets append's next reallocation copy
	// only live entries, so memory follows what is held.
	q.base += int64(i)
	if i == len(q.entries) {
		q.entries = q.entries[:0]
		return
	}
	q.entries = q.entries[i:]
}

func (b *Buffer) alloc() *bufItem {
	if n := len(b.free); n > 0 {
		it := b.free[n-1]
		b.free = b.free[:n-1]
		return it
	}
	return new(bufItem)
}

func (b *Buffer) release(it *bufItem) {
	it.ev = Event{}
	if len(b.free) < 4096 {
		b.free = append(b.free, it)
	}
}

type itemHeap []*bufItem

func (h itemHeap) Len() int           { return len(h) }
func (h itemHeap) Less(i, j int) bool { return Less(&h[i].ev, &h[j].ev) }
func (h itemHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *itemHeap) Push(x any)        { *h = append(*h, x.(*bufItem)) }
func (h *itemHeap) Pop() any {
	old := *h
	it := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	return it
}

// Sequencer puts one partition's records into application order: it
// feeds the watermark, holds records in the buffer until the watermark
// passes them, and hands late records straight back.
type Sequencer struct {
	Watermark *Watermark
	Buffer    *Buffer
	// Late counts records that arrived after the watermark passed them.
	Late uint64
}

// NewSequencer returns the sequencer of a partition with n inputs.
func NewSequencer(n int, cfg WatermarkConfig, now int64) *Sequencer {
	return &Sequencer{Watermark: NewWatermark(n, cfg, now), Buffer: NewBuffer(n)}
}

// Add offers a record read from input at position pos. It returns true
// when the record is late: the caller applies it at once. Otherwise the
// record is held until Release hands it out.
func (s *Sequencer) Add(input int, pos int64, ev *Event, now int64) (late bool) {
	s.Watermark.Observe(input, ev.Time, now)
	if s.Watermark.Late(ev.Time) {
		s.Late++
		return true
	}
	s.Buffer.Push(input, pos, ev)
	return false
}

// Release advances the watermark and hands out, in application order,
// every held record it has passed (see Buffer.PopUntil). It returns the
// number released.
func (s *Sequencer) Release(now int64, fn func(input int, pos int64, ev *Event)) int {
	return s.Buffer.PopUntil(s.Watermark.Advance(now), fn)
}
