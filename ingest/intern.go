package ingest

import (
	"hash/maphash"
	"strings"
)

// internSlots is the size of a decoder's intern table. A direct-mapped
// table of this many strings costs 64 KiB per decoder; it holds the
// low-cardinality strings of a stream (creatives, campaigns, websites,
// currencies, conversion types, targeting criteria).
const (
	internSlots  = 4096
	internMaxLen = 64 // longer strings are not interned
)

// internTable turns byte slices into strings, returning the same string for
// the same bytes while it stays in the table, so that repeated values cost no
// allocation and events share one copy. It is direct-mapped: a colliding new
// value replaces the old one, so its size is fixed and it adapts when the set
// of values changes. The zero value is ready to use (the table is allocated
// on first use). Not safe for concurrent use.
type internTable struct {
	seed  maphash.Seed
	slots *[internSlots]string
	off   bool // interning disabled: every call allocates (for measurements)
}

// str returns string(b), interned when short.
func (t *internTable) str(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	if t.off || len(b) > internMaxLen {
		return string(b)
	}
	if t.slots == nil {
		t.slots = new([internSlots]string)
		t.seed = maphash.MakeSeed()
	}
	i := maphash.Bytes(t.seed, b) % internSlots
	if s := t.slots[i]; s == string(b) {
		return s
	}
	s := string(b)
	t.slots[i] = s
	return s
}

// strs is str for a string that may share a larger buffer (hamba/avro
// decodes strings into a slab shared by many records): the result never
// refers to s's memory, so it does not keep that buffer alive.
func (t *internTable) strs(s string) string {
	if len(s) == 0 {
		return ""
	}
	if t.off || len(s) > internMaxLen {
		return strings.Clone(s)
	}
	if t.slots == nil {
		t.slots = new([internSlots]string)
		t.seed = maphash.MakeSeed()
	}
	i := maphash.String(t.seed, s) % internSlots
	if v := t.slots[i]; v == s {
		return v
	}
	v := strings.Clone(s)
	t.slots[i] = v
	return v
}
