package attribution

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"sync"
)

// The checkpoint format of a user's state.
//
//	state   = version:byte section*
//	section = tag:uvarint length:uvarint payload
//
// Version 1 has the sections below. The rules that keep old checkpoints
// readable and let an older binary read a newer one:
//
//   - A reader skips sections whose tag it does not know, so a new kind of
//     data is added as a new section and older readers ignore it.
//   - The payload of a known tag never changes meaning; a change that an
//     older reader would misread bumps the version, and a reader refuses a
//     version newer than its own (ErrStateVersion) rather than guess.
//   - A reader accepts every version it has ever written.
//
// Compactness matters (a checkpoint carries every dirty user, and Redis
// memory is per byte): repeated strings (creatives, campaigns, websites,
// currencies) go into a table and are referenced by index, times are deltas,
// and ids that are UUIDs or lower-case hex are stored as raw bytes.
const (
	stateVersion = 1

	secHeader      = 1 // latest:varint
	secStrings     = 2 // count, then count length-prefixed strings
	secWindows     = 3 // count, then count uvarint windows in ms
	secTouches     = 4
	secBids        = 5
	secConversions = 6
	secForgotten   = 7 // count, then count (key:8 bytes LE, expiry-latest:varint)
)

// ErrStateVersion is returned for a checkpoint written by a newer lookback.
var ErrStateVersion = errors.New("state written by a newer version")

// ErrCorruptState is matched by every error decoding a malformed state.
var ErrCorruptState = errors.New("corrupt state")

func corrupt(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrCorruptState}, args...)...)
}

// MarshalBinary encodes the state in the checkpoint format.
func (s *State) MarshalBinary() ([]byte, error) { return s.AppendBinary(nil) }

// AppendBinary appends the state's checkpoint encoding to b.
func (s *State) AppendBinary(b []byte) ([]byte, error) {
	e := encoders.Get().(*encoder)
	defer e.release()

	// Records are encoded first, into e.body, because doing so fills the
	// string and window tables, which a reader needs first.
	if len(s.touches) > 0 {
		p := binary.AppendUvarint(e.tmp[:0], uint64(len(s.touches)))
		prev := s.latest
		for i := range s.touches {
			p = e.touch(p, &s.touches[i], prev)
			prev = s.touches[i].Time
		}
		e.body, e.tmp = appendSection(e.body, secTouches, p), p
	}
	if len(s.bids) > 0 {
		p := binary.AppendUvarint(e.tmp[:0], uint64(len(s.bids)))
		prev := s.latest
		for i := range s.bids {
			p = e.bid(p, &s.bids[i], prev)
			prev = s.bids[i].Time
		}
		e.body, e.tmp = appendSection(e.body, secBids, p), p
	}
	if len(s.convs) > 0 {
		p := binary.AppendUvarint(e.tmp[:0], uint64(len(s.convs)))
		prev := s.latest
		for i := range s.convs {
			p = e.conversion(p, &s.convs[i], prev)
			prev = s.convs[i].Time
		}
		e.body, e.tmp = appendSection(e.body, secConversions, p), p
	}

	if len(s.forgotten) > 0 {
		p := binary.AppendUvarint(e.tmp[:0], uint64(len(s.forgotten)))
		for _, f := range s.forgotten {
			p = binary.LittleEndian.AppendUint64(p, f.key)
			p = binary.AppendVarint(p, f.expiry-s.latest)
		}
		e.body, e.tmp = appendSection(e.body, secForgotten, p), p
	}

	b = append(b, stateVersion)
	b = appendSection(b, secHeader, binary.AppendVarint(e.tmp[:0], s.latest))
	if len(e.strList) > 0 {
		p := binary.AppendUvarint(e.tmp[:0], uint64(len(e.strList)))
		for _, str := range e.strList {
			p = appendString(p, str)
		}
		b, e.tmp = appendSection(b, secStrings, p), p
	}
	if len(e.winList) > 0 {
		p := binary.AppendUvarint(e.tmp[:0], uint64(len(e.winList)))
		for _, w := range e.winList {
			p = binary.AppendUvarint(p, uint64(w))
		}
		b, e.tmp = appendSection(b, secWindows, p), p
	}
	return append(b, e.body...), nil
}

func appendSection(b []byte, tag uint64, payload []byte) []byte {
	b = binary.AppendUvarint(b, tag)
	b = binary.AppendUvarint(b, uint64(len(payload)))
	return append(b, payload...)
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// encoder holds the scratch space of one encoding; encoders are pooled so
// that checkpointing thousands of users does not allocate per user.
type encoder struct {
	strList []string
	strs    map[string]uint64 // index of strList, built once it grows past linearLimit
	winList []int64
	body    []byte
	tmp     []byte
}

// linearLimit: up to this many table entries a linear scan beats a map.
const linearLimit = 16

var encoders = sync.Pool{New: func() any { return new(encoder) }}

func (e *encoder) release() {
	if cap(e.body) > 1<<20 || cap(e.tmp) > 1<<20 || len(e.strList) > 1<<12 {
		return // let an outsized encoder go
	}
	clear(e.strList)
	e.strList, e.winList, e.body, e.tmp = e.strList[:0], e.winList[:0], e.body[:0], e.tmp[:0]
	e.strs = nil
	encoders.Put(e)
}

func (e *encoder) str(b []byte, s string) []byte {
	if e.strs == nil {
		for i, v := range e.strList {
			if v == s {
				return binary.AppendUvarint(b, uint64(i))
			}
		}
		e.strList = append(e.strList, s)
		if len(e.strList) > linearLimit {
			e.strs = make(map[string]uint64, 2*len(e.strList))
			for i, v := range e.strList {
				e.strs[v] = uint64(i)
			}
		}
		return binary.AppendUvarint(b, uint64(len(e.strList)-1))
	}
	i, ok := e.strs[s]
	if !ok {
		i = uint64(len(e.strList))
		e.strs[s] = i
		e.strList = append(e.strList, s)
	}
	return binary.AppendUvarint(b, i)
}

func (e *encoder) win(b []byte, w int64) []byte {
	for i, v := range e.winList {
		if v == w {
			return binary.AppendUvarint(b, uint64(i))
		}
	}
	e.winList = append(e.winList, w)
	return binary.AppendUvarint(b, uint64(len(e.winList)-1))
}

// Touch flags.
const (
	tfClick     = 1 << 0 // else impression
	tfImpID     = 1 << 1 // an impression id follows
	tfPending   = 1 << 2 // a pending bid join follows
	bfDetails   = 1 << 0 // bid details follow
	ptClick     = 1 << 0 // path touch is a click
	maxDecoded  = 1 << 20
	idKindRaw   = 0
	idKindUUID  = 1
	idKindHex   = 2
	idKindShift = 2
)

func (e *encoder) touch(b []byte, t *Touch, prev int64) []byte {
	var flags byte
	if t.Type == TypeClick {
		flags |= tfClick
	}
	if t.ImpressionID != "" {
		flags |= tfImpID
	}
	if t.pending != nil {
		flags |= tfPending
	}
	b = append(b, flags)
	b = appendID(b, t.ID)
	b = binary.AppendVarint(b, t.Time-prev)
	b = e.str(b, t.CreativeID)
	b = e.str(b, t.CampaignID)
	b = e.win(b, t.expiry-t.Time)
	if t.ImpressionID != "" {
		b = appendID(b, t.ImpressionID)
	}
	if t.pending != nil {
		b = appendID(b, t.pending.AuctionID)
		b = e.str(b, t.pending.Website)
	}
	return b
}

func (e *encoder) bid(b []byte, r *bidRecord, prev int64) []byte {
	var flags byte
	if r.Bid != nil {
		flags |= bfDetails
	}
	b = append(b, flags)
	b = appendID(b, r.ID)
	b = binary.AppendVarint(b, r.Time-prev)
	if d := r.Bid; d != nil {
		b = binary.LittleEndian.AppendUint64(b, math.Float64bits(d.FloorPrice))
		b = binary.LittleEndian.AppendUint64(b, math.Float64bits(d.BidPrice))
		b = e.str(b, d.Currency)
		b = e.str(b, d.Exchange)
		b = binary.AppendUvarint(b, uint64(len(d.Criteria)))
		for _, c := range d.Criteria {
			b = e.str(b, c)
		}
	}
	return b
}

func (e *encoder) conversion(b []byte, c *Conversion, prev int64) []byte {
	b = appendID(b, c.ID)
	b = binary.AppendVarint(b, c.Time-prev)
	b = e.str(b, c.ConversionType)
	b = binary.LittleEndian.AppendUint64(b, math.Float64bits(c.Value))
	b = e.str(b, c.Currency)
	b = binary.AppendUvarint(b, uint64(len(c.Path)))
	for i := range c.Path {
		t := &c.Path[i]
		var flags byte
		if t.Type == TypeClick {
			flags |= ptClick
		}
		b = append(b, flags)
		b = appendID(b, t.ID)
		b = binary.AppendVarint(b, c.Time-t.Time)
		b = e.str(b, t.CreativeID)
		b = e.str(b, t.CampaignID)
	}
	return b
}

// appendID writes an id as uvarint(length<<2 | kind) and its bytes, with
// canonical UUIDs and lower-case hex stored as raw bytes.
func appendID(b []byte, id string) []byte {
	if len(id) == 36 {
		if raw, ok := parseUUID(id); ok {
			b = append(b, 16<<idKindShift|idKindUUID)
			return append(b, raw[:]...)
		}
	}
	if n := len(id); n > 0 && n%2 == 0 && n <= 128 {
		var raw [64]byte
		if decodeHex(raw[:n/2], id) {
			b = binary.AppendUvarint(b, uint64(n/2)<<idKindShift|idKindHex)
			return append(b, raw[:n/2]...)
		}
	}
	b = binary.AppendUvarint(b, uint64(len(id))<<idKindShift|idKindRaw)
	return append(b, id...)
}

// hexVal maps a lower-case hex digit to its value, anything else to 0xff.
var hexVal = func() (t [256]byte) {
	for i := range t {
		t[i] = 0xff
	}
	for c := '0'; c <= '9'; c++ {
		t[c] = byte(c - '0')
	}
	for c := 'a'; c <= 'f'; c++ {
		t[c] = byte(c - 'a' + 10)
	}
	return t
}()

// decodeHex decodes lower-case hex s into dst (len(s) == 2*len(dst)) and
// reports whether s was lower-case hex.
func decodeHex(dst []byte, s string) bool {
	var bad byte
	for i := range dst {
		hi, lo := hexVal[s[2*i]], hexVal[s[2*i+1]]
		bad |= hi | lo
		dst[i] = hi<<4 | lo
	}
	return bad&0xf0 == 0
}

// parseUUID decodes a canonical lower-case UUID (8-4-4-4-12).
func parseUUID(s string) (raw [16]byte, ok bool) {
	if s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-' {
		return raw, false
	}
	ok = decodeHex(raw[0:4], s[0:8]) && decodeHex(raw[4:6], s[9:13]) &&
		decodeHex(raw[6:8], s[14:18]) && decodeHex(raw[8:10], s[19:23]) &&
		decodeHex(raw[10:16], s[24:36])
	return raw, ok
}

// UnmarshalBinary decodes a state written by AppendBinary, replacing s. On
// error s is left empty. Allocation is bounded by the input's length.
func (s *State) UnmarshalBinary(data []byte) error {
	*s = State{}
	if err := s.decode(data); err != nil {
		*s = State{}
		return err
	}
	return nil
}

func (s *State) decode(data []byte) error {
	if len(data) == 0 {
		return corrupt("empty")
	}
	if v := data[0]; v > stateVersion {
		return fmt.Errorf("%w: version %d, this build reads up to %d", ErrStateVersion, v, stateVersion)
	} else if v == 0 {
		return corrupt("version 0")
	}
	var d decoder
	r := reader{b: data[1:]}
	var touches, bids, convs, forgotten []byte
	for !r.done() {
		tag := r.uvarint()
		n := r.uvarint()
		payload := r.bytes(n)
		if r.err != nil {
			return r.err
		}
		switch tag {
		case secHeader:
			pr := reader{b: payload}
			s.latest = pr.varint()
			if pr.err != nil {
				return pr.err
			}
		case secStrings:
			if err := d.readStrings(payload); err != nil {
				return err
			}
		case secWindows:
			if err := d.readWindows(payload); err != nil {
				return err
			}
		case secTouches:
			touches = payload
		case secBids:
			bids = payload
		case secConversions:
			convs = payload
		case secForgotten:
			forgotten = payload
		default:
			// A section from a newer writer: skip it.
		}
	}
	// Records reference the tables, which may come in any order: decode
	// them once every section has been read.
	if err := d.readTouches(s, touches); err != nil {
		return err
	}
	if err := d.readBids(s, bids); err != nil {
		return err
	}
	if err := d.readConversions(s, convs); err != nil {
		return err
	}
	if err := readForgotten(s, forgotten); err != nil {
		return err
	}
	s.nextExpiry = 0
	for i := range s.touches {
		s.noteExpiry(s.touches[i].expiry)
	}
	// Bids and conversions record their own retention bound only through
	// rules; prune at the next advance by marking the earliest record.
	for i := range s.bids {
		s.noteExpiry(s.bids[i].Time)
	}
	for i := range s.convs {
		s.noteExpiry(s.convs[i].Time)
	}
	for _, f := range s.forgotten {
		s.noteExpiry(f.expiry)
	}
	return nil
}

func readForgotten(s *State, p []byte) error {
	if p == nil {
		return nil
	}
	r := reader{b: p}
	n := r.count(9)
	s.forgotten = make([]forgotten, 0, n)
	for i := 0; i < n && r.err == nil; i++ {
		kb := r.bytes(8)
		if kb == nil {
			break
		}
		f := forgotten{key: binary.LittleEndian.Uint64(kb)}
		f.expiry = s.latest + r.varint()
		s.forgotten = append(s.forgotten, f)
	}
	return r.finish("forgotten")
}

type decoder struct {
	strs []string
	wins []int64
}

func (d *decoder) readStrings(p []byte) error {
	r := reader{b: p}
	n := r.count(1)
	d.strs = make([]string, 0, n)
	for i := 0; i < n && r.err == nil; i++ {
		d.strs = append(d.strs, string(r.bytes(r.uvarint())))
	}
	return r.finish("strings")
}

func (d *decoder) readWindows(p []byte) error {
	r := reader{b: p}
	n := r.count(1)
	d.wins = make([]int64, 0, n)
	for i := 0; i < n && r.err == nil; i++ {
		w := r.uvarint()
		if w > math.MaxInt64/4 {
			return corrupt("window out of range")
		}
		d.wins = append(d.wins, int64(w))
	}
	return r.finish("windows")
}

func (d *decoder) str(r *reader) string {
	i := r.uvarint()
	if r.err != nil {
		return ""
	}
	if i >= uint64(len(d.strs)) {
		r.fail("string index %d out of %d", i, len(d.strs))
		return ""
	}
	return d.strs[i]
}

func (d *decoder) readTouches(s *State, p []byte) error {
	if p == nil {
		return nil
	}
	r := reader{b: p}
	n := r.count(5)
	s.touches = make([]Touch, 0, n)
	prev := s.latest
	for i := 0; i < n && r.err == nil; i++ {
		flags := r.byte()
		t := Touch{Type: TypeImpression}
		if flags&tfClick != 0 {
			t.Type = TypeClick
		}
		t.ID = r.id()
		t.Time = prev + r.varint()
		prev = t.Time
		t.CreativeID = d.str(&r)
		t.CampaignID = d.str(&r)
		wi := r.uvarint()
		if r.err == nil && wi >= uint64(len(d.wins)) {
			r.fail("window index %d out of %d", wi, len(d.wins))
		}
		if r.err != nil {
			break
		}
		t.expiry = t.Time + d.wins[wi]
		if flags&tfImpID != 0 {
			t.ImpressionID = r.id()
		}
		if flags&tfPending != 0 {
			t.pending = &pendingJoin{AuctionID: r.id()}
			t.pending.Website = d.str(&r)
		}
		if r.err == nil && len(s.touches) > 0 && !touchLess(&s.touches[len(s.touches)-1], &t) {
			r.fail("touches out of order")
		}
		s.touches = append(s.touches, t)
	}
	return r.finish("touches")
}

func (d *decoder) readBids(s *State, p []byte) error {
	if p == nil {
		return nil
	}
	r := reader{b: p}
	n := r.count(3)
	s.bids = make([]bidRecord, 0, n)
	prev := s.latest
	for i := 0; i < n && r.err == nil; i++ {
		flags := r.byte()
		b := bidRecord{ID: r.id()}
		b.Time = prev + r.varint()
		prev = b.Time
		if flags&bfDetails != 0 {
			det := &Bid{}
			det.FloorPrice = r.float()
			det.BidPrice = r.float()
			det.Currency = d.str(&r)
			det.Exchange = d.str(&r)
			if c := r.count(1); c > 0 {
				det.Criteria = make([]string, 0, c)
				for j := 0; j < c && r.err == nil; j++ {
					det.Criteria = append(det.Criteria, d.str(&r))
				}
			}
			b.Bid = det
		}
		s.bids = append(s.bids, b)
	}
	return r.finish("bids")
}

func (d *decoder) readConversions(s *State, p []byte) error {
	if p == nil {
		return nil
	}
	r := reader{b: p}
	n := r.count(12)
	s.convs = make([]Conversion, 0, n)
	prev := s.latest
	for i := 0; i < n && r.err == nil; i++ {
		c := Conversion{ID: r.id()}
		c.Time = prev + r.varint()
		prev = c.Time
		c.ConversionType = d.str(&r)
		c.Value = r.float()
		c.Currency = d.str(&r)
		if pn := r.count(5); pn > 0 {
			c.Path = make([]PathTouch, 0, pn)
			for j := 0; j < pn && r.err == nil; j++ {
				flags := r.byte()
				t := PathTouch{Type: TypeImpression}
				if flags&ptClick != 0 {
					t.Type = TypeClick
				}
				t.ID = r.id()
				t.Time = c.Time - r.varint()
				t.CreativeID = d.str(&r)
				t.CampaignID = d.str(&r)
				c.Path = append(c.Path, t)
			}
		}
		if r.err == nil && len(s.convs) > 0 && !convLess(&s.convs[len(s.convs)-1], &c) {
			r.fail("conversions out of order")
		}
		s.convs = append(s.convs, c)
	}
	return r.finish("conversions")
}

// reader reads a byte slice, remembering the first error; every read
// after an error returns zero values.
type reader struct {
	b   []byte
	err error
}

func (r *reader) done() bool { return r.err != nil || len(r.b) == 0 }

func (r *reader) fail(format string, args ...any) {
	if r.err == nil {
		r.err = corrupt(format, args...)
	}
	r.b = nil
}

func (r *reader) finish(what string) error {
	if r.err != nil {
		return fmt.Errorf("reading %s: %w", what, r.err)
	}
	if len(r.b) != 0 {
		return corrupt("%d trailing bytes in %s", len(r.b), what)
	}
	return nil
}

func (r *reader) byte() byte {
	if len(r.b) < 1 {
		r.fail("truncated")
		return 0
	}
	c := r.b[0]
	r.b = r.b[1:]
	return c
}

func (r *reader) uvarint() uint64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.fail("bad varint")
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) varint() int64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Varint(r.b)
	if n <= 0 {
		r.fail("bad varint")
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) bytes(n uint64) []byte {
	if r.err != nil {
		return nil
	}
	if n > uint64(len(r.b)) {
		r.fail("length %d past the end", n)
		return nil
	}
	p := r.b[:n]
	r.b = r.b[n:]
	return p
}

// count reads an element count and checks it against the bytes left, given
// the smallest encoding of one element, so that allocation stays bounded.
func (r *reader) count(minSize int) int {
	n := r.uvarint()
	if r.err == nil && (n > maxDecoded || n*uint64(minSize) > uint64(len(r.b))) {
		r.fail("count %d too large for %d bytes", n, len(r.b))
		return 0
	}
	return int(n)
}

func (r *reader) float() float64 {
	p := r.bytes(8)
	if p == nil {
		return 0
	}
	return math.Float64frombits(binary.LittleEndian.Uint64(p))
}

func (r *reader) id() string {
	h := r.uvarint()
	n := h >> idKindShift
	p := r.bytes(n)
	if r.err != nil {
		return ""
	}
	switch h & (1<<idKindShift - 1) {
	case idKindRaw:
		return string(p)
	case idKindUUID:
		if n != 16 {
			r.fail("uuid of %d bytes", n)
			return ""
		}
		var buf [36]byte
		hex.Encode(buf[0:8], p[0:4])
		buf[8] = '-'
		hex.Encode(buf[9:13], p[4:6])
		buf[13] = '-'
		hex.Encode(buf[14:18], p[6:8])
		buf[18] = '-'
		hex.Encode(buf[19:23], p[8:10])
		buf[23] = '-'
		hex.Encode(buf[24:36], p[10:16])
		return string(buf[:])
	case idKindHex:
		if n == 0 {
			r.fail("empty hex id")
			return ""
		}
		return hex.EncodeToString(p)
	default:
		r.fail("unknown id kind")
		return ""
	}
}
