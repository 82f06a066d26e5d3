package attribution

// Buffer holds a partition's records until the watermark passes them, and
// releases them in application order: (time, type, id). It also knows, per
// input, the position (Kafka offset) of the earliest record it still holds,
// so that a checkpoint can store offsets that stop before it.
//
// It holds 10k to 200k records, and every record goes through it, so it is
// built not to allocate per record nor to chase pointers when it compares:
// records live in a slab of fixed-size chunks, and the heap that orders
// them holds small entries that carry the sort key.
type Buffer struct {
	heap   []heapEntry // 4-ary min-heap: half as deep as a binary one
	slab   slab
	queues []posQueue
	// popping is the depth of PopUntil calls: the slab must not move
	// records while fn may hold one.
	popping int
}

// heapEntry is a held record's place in the heap. Its key decides nearly
// every compare without reading the record: the ID is read only when time,
// type and the ID's first seven bytes all tie.
type heapEntry struct {
	time int64
	key  uint64 // type<<56 | the ID's first 7 bytes, zero-padded
	idx  uint32 // the record's slot
}

// entryKey is monotone in (type, id): a smaller key means a smaller pair,
// and an equal key leaves the full IDs to decide.
func entryKey(t Type, id string) uint64 {
	k := uint64(t) << 56
	if len(id) >= 7 {
		return k | uint64(id[0])<<48 | uint64(id[1])<<40 | uint64(id[2])<<32 |
			uint64(id[3])<<24 | uint64(id[4])<<16 | uint64(id[5])<<8 | uint64(id[6])
	}
	for i := 0; i < len(id); i++ {
		k |= uint64(id[i]) << (48 - 8*i)
	}
	return k
}

type slot struct {
	input int
	pos   int64
	seq   int64 // index of this record in its input's posQueue
	ev    Event
}

// Slots come in chunks so that growing never copies held records and a
// released record's slot is reused without allocating.
const (
	chunkShift = 8
	chunkSize  = 1 << chunkShift
)

type slab struct {
	chunks []*[chunkSize]slot
	free   []uint32 // indices of unused slots
}

func (s *slab) at(i uint32) *slot { return &s.chunks[i>>chunkShift][i&(chunkSize-1)] }

func (s *slab) alloc() uint32 {
	if len(s.free) == 0 {
		base := uint32(len(s.chunks)) << chunkShift
		s.chunks = append(s.chunks, new([chunkSize]slot))
		for i := uint32(chunkSize); i > 0; i-- {
			s.free = append(s.free, base+i-1)
		}
	}
	i := s.free[len(s.free)-1]
	s.free = s.free[:len(s.free)-1]
	return i
}

// posQueue lists an input's buffered positions in arrival order; released
// ones are marked done and trimmed from the front. It is a ring that
// doubles when full and halves when under a quarter full, so that memory
// follows what is held and the steady state does not allocate. Releases
// come in time order, not arrival order: they only set a bit, as the
// bits of a large buffer stay in cache where its positions do not.
type posQueue struct {
	base int64 // sequence number of the oldest entry
	head int   // ring index of the oldest entry
	n    int
	pos  []int64  // length a power of two
	done []uint64 // a bit per entry of pos
}

const minPosRing = 64

// NewBuffer returns an empty buffer for a partition with n inputs.
func NewBuffer(n int) *Buffer { return &Buffer{queues: make([]posQueue, n)} }

// Len is the number of records held.
func (b *Buffer) Len() int { return len(b.heap) }

// Push holds a record that arrived on input at position pos.
func (b *Buffer) Push(input int, pos int64, ev *Event) {
	q := &b.queues[input]
	idx := b.slab.alloc()
	s := b.slab.at(idx)
	s.ev, s.input, s.pos, s.seq = *ev, input, pos, q.push(pos)
	b.heap = append(b.heap, heapEntry{})
	b.up(len(b.heap)-1, heapEntry{time: ev.Time, key: entryKey(ev.Type, ev.ID), idx: idx})
}

// PeekTime is the time of the next record to release; ok is false when
// the buffer is empty.
func (b *Buffer) PeekTime() (t int64, ok bool) {
	if len(b.heap) == 0 {
		return 0, false
	}
	return b.heap[0].time, true
}

// PopUntil releases, in application order, every record with a time at or
// before watermark, calling fn with each one's input, position and event.
// The event is only valid during the call.
func (b *Buffer) PopUntil(watermark int64, fn func(input int, pos int64, ev *Event)) int {
	b.popping++
	defer b.donePopping()
	n := 0
	for len(b.heap) > 0 && b.heap[0].time <= watermark {
		idx := b.popMin()
		s := b.slab.at(idx)
		b.queues[s.input].release(s.seq)
		fn(s.input, s.pos, &s.ev)
		s.ev = Event{} // let the collector have its strings
		b.slab.free = append(b.slab.free, idx)
		n++
	}
	return n
}

func (b *Buffer) donePopping() {
	b.popping--
	if b.popping == 0 {
		b.shrink()
	}
}

// Earliest returns the position of the earliest record of input that the
// buffer still holds; ok is false when it holds none.
func (b *Buffer) Earliest(input int) (pos int64, ok bool) {
	q := &b.queues[input]
	if q.n == 0 {
		return 0, false
	}
	return q.pos[q.head], true
}

// Each calls fn for every held record, in no particular order (for
// lookups of a user's pending records).
func (b *Buffer) Each(fn func(*Event)) {
	for _, e := range b.heap {
		fn(&b.slab.at(e.idx).ev)
	}
}

func (b *Buffer) less(x, y *heapEntry) bool {
	if x.time != y.time {
		return x.time < y.time
	}
	if x.key != y.key {
		return x.key < y.key
	}
	return b.slab.at(x.idx).ev.ID < b.slab.at(y.idx).ev.ID
}

// up puts x at i or above, moving parents down past it.
func (b *Buffer) up(i int, x heapEntry) {
	h := b.heap
	for i > 0 {
		p := (i - 1) >> 2
		if !b.less(&x, &h[p]) {
			break
		}
		h[i] = h[p]
		i = p
	}
	h[i] = x
}

// popMin removes the first entry and returns its slot. The last entry,
// which fills the gap, is usually among the latest records: the hole goes
// down to a leaf first, and the entry comes up from there, which costs
// fewer compares than sinking it from the root.
func (b *Buffer) popMin() uint32 {
	h := b.heap
	top := h[0].idx
	n := len(h) - 1
	x := h[n]
	h = h[:n]
	b.heap = h
	if n == 0 {
		return top
	}
	i := 0
	for {
		c := 4*i + 1
		if c >= n {
			break
		}
		m := c
		for j, end := c+1, min(c+4, n); j < end; j++ {
			if b.less(&h[j], &h[m]) {
				m = j
			}
		}
		h[i] = h[m]
		i = m
	}
	b.up(i, x)
	return top
}

// shrink gives memory back once the buffer holds under a quarter of its
// slots (after a burst, say): it keeps twice what is held, so that a
// buffer hovering around one size does not shrink and grow in turn, and
// moves the records in the chunks it drops into free slots of the others.
func (b *Buffer) shrink() {
	s := &b.slab
	if len(s.chunks) <= 1 || len(b.heap)*4 >= len(s.chunks)<<chunkShift {
		return
	}
	keep := max(1, (2*len(b.heap)+chunkSize-1)>>chunkShift)
	limit := uint32(keep) << chunkShift
	free := make([]uint32, 0, limit)
	for _, i := range s.free {
		if i < limit {
			free = append(free, i)
		}
	}
	for k := range b.heap {
		e := &b.heap[k]
		if e.idx < limit {
			continue
		}
		// At most half of the kept slots are held, so one is free.
		j := free[len(free)-1]
		free = free[:len(free)-1]
		*s.at(j) = *s.at(e.idx)
		e.idx = j
	}
	s.free = free
	clear(s.chunks[keep:])
	s.chunks = s.chunks[:keep]
	if cap(b.heap) > 4*len(b.heap) {
		b.heap = append(make([]heapEntry, 0, 2*len(b.heap)), b.heap...)
	}
}

// push appends pos and returns its sequence number.
func (q *posQueue) push(pos int64) int64 {
	if q.n == len(q.pos) {
		q.resize(max(minPosRing, 2*len(q.pos)))
	}
	q.pos[(q.head+q.n)&(len(q.pos)-1)] = pos
	q.n++
	return q.base + int64(q.n-1)
}

// release marks the entry of seq done and trims done entries from the
// front.
func (q *posQueue) release(seq int64) {
	mask := len(q.pos) - 1
	i := (q.head + int(seq-q.base)) & mask
	q.done[i>>6] |= 1 << (i & 63)
	for q.n > 0 && q.done[q.head>>6]&(1<<(q.head&63)) != 0 {
		q.done[q.head>>6] &^= 1 << (q.head & 63)
		q.head = (q.head + 1) & mask
		q.base++
		q.n--
	}
	if len(q.pos) > minPosRing && q.n*4 < len(q.pos) {
		q.resize(len(q.pos) / 2)
	}
}

func (q *posQueue) resize(size int) {
	pos, done := make([]int64, size), make([]uint64, size/64)
	for i := 0; i < q.n; i++ {
		j := (q.head + i) & (len(q.pos) - 1)
		pos[i] = q.pos[j]
		done[i>>6] |= (q.done[j>>6] >> (j & 63) & 1) << (i & 63)
	}
	q.pos, q.done, q.head = pos, done, 0
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
