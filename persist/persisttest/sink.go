package persisttest

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lookback-dev/lookback/attribution"
	"github.com/lookback-dev/lookback/persist"
)

// Reference is the fact sink contract in memory: impressions and clicks
// upserted by id (the last fact wins), a conversion's rows replaced per
// (conversion id, model) by those of the last fact carrying the model. The
// suite compares every sink's snapshot with it.
type Reference struct {
	imp  map[string]attribution.ImpressionFact
	clk  map[string]attribution.ClickFact
	conv map[convKey][]attribution.AttributionRow
}

type convKey struct {
	id    string
	model attribution.Model
}

// NewReference returns an empty reference.
func NewReference() *Reference {
	return &Reference{
		imp:  make(map[string]attribution.ImpressionFact),
		clk:  make(map[string]attribution.ClickFact),
		conv: make(map[convKey][]attribution.AttributionRow),
	}
}

// Apply writes facts to the reference.
func (r *Reference) Apply(f *attribution.Facts) {
	if f == nil {
		return
	}
	for _, x := range f.Impressions {
		r.imp[x.ImpressionID] = x
	}
	for _, x := range f.Clicks {
		r.clk[x.ClickID] = x
	}
	for i := range f.Conversions {
		c := &f.Conversions[i]
		rows := c.AppendRows(nil)
		for _, m := range c.Models {
			var mine []attribution.AttributionRow
			for _, row := range rows {
				if row.Model == m {
					mine = append(mine, row)
				}
			}
			if len(mine) > 0 {
				r.conv[convKey{c.ID, m}] = mine
			}
		}
	}
}

// Snapshot returns the reference's content, normalized like
// Snapshot.Normalize.
func (r *Reference) Snapshot() *persist.Snapshot {
	s := &persist.Snapshot{}
	for _, x := range r.imp {
		s.Impressions = append(s.Impressions, x)
	}
	for _, x := range r.clk {
		s.Clicks = append(s.Clicks, x)
	}
	for _, rows := range r.conv {
		s.Attributions = append(s.Attributions, rows...)
	}
	s.Normalize()
	return s
}

// DiffSnapshots describes how got differs from want (both normalized), or
// returns "" when they are equal. It names at most a few differences.
func DiffSnapshots(got, want *persist.Snapshot) string {
	var d []string
	add := func(format string, args ...any) {
		if len(d) < 8 {
			d = append(d, fmt.Sprintf(format, args...))
		}
	}
	if len(got.Impressions) != len(want.Impressions) {
		add("%d impressions, want %d", len(got.Impressions), len(want.Impressions))
	}
	gi := make(map[string]attribution.ImpressionFact)
	for _, x := range got.Impressions {
		gi[x.ImpressionID] = x
	}
	for _, w := range want.Impressions {
		g, ok := gi[w.ImpressionID]
		if !ok {
			add("impression %q missing", w.ImpressionID)
		} else if !reflect.DeepEqual(g, w) {
			add("impression %q:\n  got  %s\n  want %s", w.ImpressionID, fmtImp(g), fmtImp(w))
		}
	}
	if len(got.Clicks) != len(want.Clicks) {
		add("%d clicks, want %d", len(got.Clicks), len(want.Clicks))
	}
	gc := make(map[string]attribution.ClickFact)
	for _, x := range got.Clicks {
		gc[x.ClickID] = x
	}
	for _, w := range want.Clicks {
		g, ok := gc[w.ClickID]
		if !ok {
			add("click %q missing", w.ClickID)
		} else if g != w {
			add("click %q:\n  got  %+v\n  want %+v", w.ClickID, g, w)
		}
	}
	if len(got.Attributions) != len(want.Attributions) {
		add("%d attribution rows, want %d", len(got.Attributions), len(want.Attributions))
	}
	type rk struct {
		id    string
		model attribution.Model
		tt    attribution.Type
		touch string
	}
	ga := make(map[rk]attribution.AttributionRow)
	for _, x := range got.Attributions {
		ga[rk{x.ConversionID, x.Model, x.TouchType, x.TouchID}] = x
	}
	for _, w := range want.Attributions {
		g, ok := ga[rk{w.ConversionID, w.Model, w.TouchType, w.TouchID}]
		if !ok {
			add("attribution row %s/%s/%s/%q missing", w.ConversionID, w.Model, w.TouchType, w.TouchID)
		} else if g != w {
			add("attribution row %s/%s/%s/%q:\n  got  %+v\n  want %+v", w.ConversionID, w.Model, w.TouchType, w.TouchID, g, w)
		}
	}
	return strings.Join(d, "\n")
}

func fmtImp(f attribution.ImpressionFact) string {
	s := fmt.Sprintf("%+v", f)
	if f.Bid != nil {
		s += fmt.Sprintf(" bid=%+v", *f.Bid)
	}
	return s
}

// snapshotOf reads a sink's normalized snapshot.
func snapshotOf(t *testing.T, sink persist.FactSink) *persist.Snapshot {
	t.Helper()
	r, ok := sink.(persist.SnapshotReader)
	if !ok {
		t.Fatalf("%T does not implement persist.SnapshotReader", sink)
	}
	s, err := r.Snapshot(context.Background())
	if err != nil {
		t.Fatalf("Snapshot: %v", err)
	}
	s.Normalize()
	return s
}

// expectSnapshot fails unless the sink holds exactly what ref does.
func expectSnapshot(t *testing.T, sink persist.FactSink, ref *Reference) {
	t.Helper()
	if d := DiffSnapshots(snapshotOf(t, sink), ref.Snapshot()); d != "" {
		t.Fatalf("sink content differs from the reference:\n%s", d)
	}
}

func write(t *testing.T, sink persist.FactSink, ref *Reference, f *attribution.Facts) {
	t.Helper()
	if err := sink.Write(context.Background(), f); err != nil {
		t.Fatalf("Write: %v", err)
	}
	if ref != nil {
		ref.Apply(f)
	}
}

// TestFactSink is the fact sink conformance suite. Floats are compared
// exactly: a sink must round-trip every float64 bit for bit, and times to
// the millisecond. newSink returns a new,
// empty sink (its own schema or directory), closed by the test's cleanup
// or by newSink's; it must implement persist.SnapshotReader.
func TestFactSink(t *testing.T, newSink func(t *testing.T) persist.FactSink) {
	t.Run("RoundTrip", func(t *testing.T) {
		t.Parallel()
		sink := newSink(t)
		ref := NewReference()
		write(t, sink, ref, NewGen(1, "rt-").Facts(200, 200, 200))
		expectSnapshot(t, sink, ref)
	})

	t.Run("EdgeValues", func(t *testing.T) {
		t.Parallel()
		sink := newSink(t)
		ref := NewReference()
		write(t, sink, ref, edgeFacts())
		expectSnapshot(t, sink, ref)
	})

	t.Run("EmptyBatch", func(t *testing.T) {
		t.Parallel()
		sink := newSink(t)
		ref := NewReference()
		write(t, sink, ref, &attribution.Facts{})
		write(t, sink, ref, nil)
		expectSnapshot(t, sink, ref)
		write(t, sink, ref, NewGen(2, "eb-").Facts(3, 3, 3))
		write(t, sink, ref, &attribution.Facts{})
		expectSnapshot(t, sink, ref)
	})

	t.Run("SameBatchTwice", func(t *testing.T) {
		t.Parallel()
		sink := newSink(t)
		ref := NewReference()
		f := NewGen(3, "tw-").Facts(100, 100, 100)
		write(t, sink, ref, f)
		write(t, sink, ref, f)
		expectSnapshot(t, sink, ref)
	})

	t.Run("ReplaySplitDifferently", func(t *testing.T) {
		t.Parallel()
		sink := newSink(t)
		ref := NewReference()
		f := NewGen(4, "sp-").Facts(90, 90, 90)
		write(t, sink, ref, f)
		// Replay as three uneven batches, then as single facts.
		for _, part := range split(f, 7, 50) {
			write(t, sink, ref, part)
		}
		for _, part := range split(f, 1, 1) {
			write(t, sink, ref, part)
		}
		expectSnapshot(t, sink, ref)
	})

	t.Run("OverlappingBatches", func(t *testing.T) {
		t.Parallel()
		sink := newSink(t)
		ref := NewReference()
		f := NewGen(5, "ov-").Facts(60, 60, 60)
		a, b := slice(f, 0, 40), slice(f, 20, 60)
		write(t, sink, ref, a)
		write(t, sink, ref, b)
		write(t, sink, ref, a)
		expectSnapshot(t, sink, ref)
	})

	t.Run("DuplicatesInOneBatch", func(t *testing.T) {
		t.Parallel()
		sink := newSink(t)
		ref := NewReference()
		g := NewGen(6, "dup-")
		imp := g.Impression()
		imp.Bid = nil
		joined := imp
		joined.Bid = g.Bid()
		clk := g.Click()
		clk2 := clk
		clk2.Joined, clk2.SinceImpression = true, 1234
		conv := g.Conversion()
		f := &attribution.Facts{
			Impressions: []attribution.ImpressionFact{imp, joined, imp, joined},
			Clicks:      []attribution.ClickFact{clk, clk2},
			Conversions: []attribution.ConversionFact{conv, conv},
		}
		write(t, sink, ref, f)
		expectSnapshot(t, sink, ref)
		if got := snapshotOf(t, sink).Impressions[0].Bid; got == nil {
			t.Fatal("the impression's last fact (with its bid) did not win")
		}
	})

	t.Run("LaterImpressionReplaces", func(t *testing.T) {
		t.Parallel()
		sink := newSink(t)
		ref := NewReference()
		g := NewGen(7, "bj-")
		imp := g.Impression()
		imp.Bid = nil
		write(t, sink, ref, &attribution.Facts{Impressions: []attribution.ImpressionFact{imp}})
		expectSnapshot(t, sink, ref)
		// The bid arrives later: the impression is rewritten joined.
		imp.Bid = g.Bid()
		imp.Bid.Criteria = []string{"a", "b"}
		write(t, sink, ref, &attribution.Facts{Impressions: []attribution.ImpressionFact{imp}})
		expectSnapshot(t, sink, ref)
		// And a click is joined later too.
		clk := g.Click()
		clk.Joined = false
		write(t, sink, ref, &attribution.Facts{Clicks: []attribution.ClickFact{clk}})
		clk.Joined, clk.SinceImpression = true, 0
		write(t, sink, ref, &attribution.Facts{Clicks: []attribution.ClickFact{clk}})
		expectSnapshot(t, sink, ref)
	})

	t.Run("ConversionReplacedAsWhole", func(t *testing.T) {
		t.Parallel()
		sink := newSink(t)
		ref := NewReference()
		g := NewGen(8, "cw-")
		conv := g.Conversion()
		for len(conv.Path) < 3 {
			conv = g.Conversion()
		}
		g.setModels(&conv, attribution.AllModels)
		write(t, sink, ref, &attribution.Facts{Conversions: []attribution.ConversionFact{conv}})
		// A replay with the same rows.
		write(t, sink, ref, &attribution.Facts{Conversions: []attribution.ConversionFact{conv}})
		expectSnapshot(t, sink, ref)
		// The same conversion, re-attributed with a shorter path: its rows
		// are replaced, not merged.
		shorter := conv
		shorter.Path = conv.Path[1:2]
		g.setModels(&shorter, attribution.AllModels)
		write(t, sink, ref, &attribution.Facts{Conversions: []attribution.ConversionFact{shorter}})
		expectSnapshot(t, sink, ref)
		if n := len(snapshotOf(t, sink).Attributions); n != len(attribution.AllModels) {
			t.Fatalf("%d rows after replacing with a one-touch path, want %d", n, len(attribution.AllModels))
		}
		// Now organic, under one model only: that model's rows are
		// replaced, the others' stay.
		organic := conv
		organic.Path = nil
		g.setModels(&organic, []attribution.Model{attribution.Linear})
		write(t, sink, ref, &attribution.Facts{Conversions: []attribution.ConversionFact{organic}})
		expectSnapshot(t, sink, ref)
	})

	t.Run("LargeBatch", func(t *testing.T) {
		t.Parallel()
		sink := newSink(t)
		ref := NewReference()
		f := NewGen(9, "lg-").Facts(20000, 20000, 10000)
		start := time.Now()
		write(t, sink, ref, f)
		t.Logf("wrote %d facts (%d rows) in %v", f.Len(), Rows(f), time.Since(start))
		expectSnapshot(t, sink, ref)
	})

	t.Run("CancelledWrite", func(t *testing.T) {
		t.Parallel()
		sink := newSink(t)
		ref := NewReference()
		g := NewGen(10, "cx-")
		base := g.Facts(10, 10, 10)
		write(t, sink, ref, base)
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		err := sink.Write(ctx, g.Facts(10, 10, 10))
		if err == nil {
			t.Fatal("Write with a cancelled context succeeded")
		}
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Write with a cancelled context: %v, want an error matching context.Canceled", err)
		}
		expectSnapshot(t, sink, ref)

		// Cancelled while it runs: all or nothing per key.
		for _, d := range []time.Duration{time.Millisecond, 5 * time.Millisecond, 20 * time.Millisecond, 80 * time.Millisecond, 160 * time.Millisecond, 320 * time.Millisecond} {
			f := g.Facts(2000, 2000, 1000)
			// Rewrite stored keys too: each must end old or new.
			re := rewrite(g, base)
			f.Impressions = append(f.Impressions, re.Impressions...)
			f.Conversions = append(f.Conversions, re.Conversions...)
			ctx, cancel := context.WithTimeout(context.Background(), d)
			err := sink.Write(ctx, f)
			cancel()
			t.Logf("Write cancelled after %v: %v", d, err)
			got := settledSnapshot(t, sink, err != nil)
			if err == nil {
				ref.Apply(f)
				if diff := DiffSnapshots(got, ref.Snapshot()); diff != "" {
					t.Fatalf("Write succeeded but the sink differs:\n%s", diff)
				}
				continue
			}
			// Some keys may have landed (a commit whose reply was lost, or
			// some parts of a split Write), each as a whole.
			var diff string
			if ref, diff = AppliedKeys(ref, f, got); diff != "" {
				t.Fatalf("a failed Write (%v) left part of a key:\n%s", err, diff)
			}
		}
	})
}

// settledSnapshot reads a sink's normalized snapshot. After a failed
// Write (failed true) it reads until two reads 100ms apart agree: a commit
// whose reply was lost may become visible a moment after Write returned.
func settledSnapshot(t *testing.T, sink persist.FactSink, failed bool) *persist.Snapshot {
	t.Helper()
	got := snapshotOf(t, sink)
	for i := 0; failed && i < 50; i++ {
		time.Sleep(100 * time.Millisecond)
		next := snapshotOf(t, sink)
		if DiffSnapshots(next, got) == "" {
			return next
		}
		got = next
	}
	if failed {
		t.Fatal("the sink's content still changed 5s after a failed Write")
	}
	return got
}

// AppliedKeys explains got, a sink's normalized snapshot after a failed
// Write of f on top of ref: it returns ref with the keys of f that got
// holds applied (an impression or click id, or a conversion id with all
// its models), or a description of how got differs from every such
// reference (part of a key written, or something f does not hold). ref is
// not changed.
func AppliedKeys(ref *Reference, f *attribution.Facts, got *persist.Snapshot) (*Reference, string) {
	after := cloneRef(ref)
	after.Apply(f)
	want := after.Snapshot()
	impID := func(x attribution.ImpressionFact) string { return x.ImpressionID }
	clkID := func(x attribution.ClickFact) string { return x.ClickID }
	wantImp, gotImp := byKey(want.Impressions, impID), byKey(got.Impressions, impID)
	wantClk, gotClk := byKey(want.Clicks, clkID), byKey(got.Clicks, clkID)
	rowsOf := func(rows []attribution.AttributionRow) map[string][]attribution.AttributionRow {
		m := make(map[string][]attribution.AttributionRow)
		for _, r := range rows {
			m[r.ConversionID] = append(m[r.ConversionID], r)
		}
		return m
	}
	wantConv, gotConv := rowsOf(want.Attributions), rowsOf(got.Attributions)

	// A key counts as written when got holds its new content; every fact
	// of the key is applied then, in order, so the last still wins.
	sub := &attribution.Facts{}
	for _, x := range f.Impressions {
		if g, ok := gotImp[x.ImpressionID]; ok && reflect.DeepEqual(g, wantImp[x.ImpressionID]) {
			sub.Impressions = append(sub.Impressions, x)
		}
	}
	for _, x := range f.Clicks {
		if g, ok := gotClk[x.ClickID]; ok && g == wantClk[x.ClickID] {
			sub.Clicks = append(sub.Clicks, x)
		}
	}
	for _, x := range f.Conversions {
		if slices.Equal(gotConv[x.ID], wantConv[x.ID]) {
			sub.Conversions = append(sub.Conversions, x)
		}
	}
	out := cloneRef(ref)
	out.Apply(sub)
	return out, DiffSnapshots(got, out.Snapshot())
}

// rewrite returns base's impressions with new bids and its conversions
// attributed anew, under every model and with the path's last touch only.
func rewrite(g *Gen, base *attribution.Facts) *attribution.Facts {
	out := &attribution.Facts{}
	for _, x := range base.Impressions {
		x.Bid = g.Bid()
		out.Impressions = append(out.Impressions, x)
	}
	for _, c := range base.Conversions {
		if len(c.Path) > 0 {
			c.Path = c.Path[len(c.Path)-1:]
		}
		g.setModels(&c, attribution.AllModels)
		out.Conversions = append(out.Conversions, c)
	}
	return out
}

// byKey indexes xs by key, the last of a key winning.
func byKey[T any](xs []T, key func(T) string) map[string]T {
	m := make(map[string]T, len(xs))
	for _, x := range xs {
		m[key(x)] = x
	}
	return m
}

func cloneRef(r *Reference) *Reference {
	c := NewReference()
	maps.Copy(c.imp, r.imp)
	maps.Copy(c.clk, r.clk)
	maps.Copy(c.conv, r.conv)
	return c
}

// split cuts f into batches of a to b facts of each kind.
func split(f *attribution.Facts, a, b int) []*attribution.Facts {
	var out []*attribution.Facts
	n := max(len(f.Impressions), len(f.Clicks), len(f.Conversions))
	size := a
	for i := 0; i < n; {
		out = append(out, slice(f, i, i+size))
		i += size
		if size == a {
			size = b
		} else {
			size = a
		}
	}
	return out
}

// slice returns facts [i, j) of each kind.
func slice(f *attribution.Facts, i, j int) *attribution.Facts {
	cut := func(n int) (int, int) { return min(i, n), min(j, n) }
	out := &attribution.Facts{}
	a, b := cut(len(f.Impressions))
	out.Impressions = f.Impressions[a:b]
	a, b = cut(len(f.Clicks))
	out.Clicks = f.Clicks[a:b]
	a, b = cut(len(f.Conversions))
	out.Conversions = f.Conversions[a:b]
	return out
}

// edgeFacts are facts at the edges of what validation lets through.
func edgeFacts() *attribution.Facts {
	long := strings.Repeat("ü", 128) // 256 bytes
	g := NewGen(11, "edge-")
	f := &attribution.Facts{
		Impressions: []attribution.ImpressionFact{
			{ImpressionID: "edge-imp-empty", UserID: "u", Time: attribution.MinEventTime},
			{ImpressionID: "edge-imp-long-" + strings.Repeat("x", 242), UserID: long, Time: attribution.MaxEventTime - 1,
				CreativeID: long, CampaignID: `"';\` + "\t", Website: "https://example.com/?a=1&b=<2>", AuctionID: "a",
				Bid: &attribution.Bid{BidPrice: 0, FloorPrice: 0, Criteria: []string{}}},
			{ImpressionID: "edge-imp-bid", UserID: "u", Time: baseTime + 999,
				Bid: &attribution.Bid{BidPrice: 1e300, FloorPrice: 5e-324, Currency: "USD", Exchange: "x",
					Criteria: criteria64(long)}},
			{ImpressionID: "edge-imp-bid-criteria", UserID: "u", Time: baseTime + 1,
				Bid: &attribution.Bid{BidPrice: 0.1 + 0.2, FloorPrice: 1.0 / 3, Criteria: []string{"", `q"uote`, `b\s`, "ünï", "<>&", "\u2028"}}},
		},
		Clicks: []attribution.ClickFact{
			{ClickID: "edge-clk-unjoined", UserID: "u", Time: baseTime, ImpressionID: "named-but-not-found"},
			{ClickID: "edge-clk-joined-zero", UserID: "u", Time: baseTime, ImpressionID: "i", Joined: true, SinceImpression: 0},
			{ClickID: "edge-clk-joined", UserID: "u", Time: baseTime + 7*24*3600*1000 - 1, CreativeID: long, Joined: true, SinceImpression: 7*24*3600*1000 - 1},
			{ClickID: "edge-clk-ms", UserID: "u", Time: baseTime, Joined: true, SinceImpression: 1},
		},
	}
	organic := attribution.ConversionFact{UserID: "u", Conversion: attribution.Conversion{
		ID: "edge-conv-organic", Time: baseTime + 123, ConversionType: "purchase", Value: 99.99, Currency: "USD"}}
	g.setModels(&organic, attribution.AllModels)
	bare := attribution.ConversionFact{UserID: long, Conversion: attribution.Conversion{ID: "edge-conv-bare", Time: attribution.MinEventTime, Value: 0}}
	g.setModels(&bare, []attribution.Model{attribution.LastTouch})
	negative := attribution.ConversionFact{UserID: "u", Conversion: attribution.Conversion{
		ID: "edge-conv-refund", Time: baseTime, ConversionType: "refund", Value: -12.5, Currency: "EUR",
		Path: []attribution.PathTouch{
			{Type: attribution.TypeImpression, ID: "same-id", Time: baseTime - 1},
			{Type: attribution.TypeClick, ID: "same-id", Time: baseTime - 1, CreativeID: long, CampaignID: "c"},
			{Type: attribution.TypeClick, ID: "", Time: baseTime},
		}}}
	g.setModels(&negative, attribution.AllModels)
	f.Conversions = append(f.Conversions, organic, bare, negative)
	return f
}

func criteria64(s string) []string {
	c := make([]string, attribution.MaxCriteria)
	for i := range c {
		c[i] = s
	}
	return c
}
