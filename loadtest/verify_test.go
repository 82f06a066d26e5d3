package loadtest

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lookback-dev/lookback/attribution"
	"github.com/lookback-dev/lookback/persist"
	"github.com/lookback-dev/lookback/persist/persisttest"
)

// expectedOf is the oracle's answer for a small generated stream, all
// models on (several rows per conversion).
func expectedOf(t *testing.T, events int) (*Stream, *Expected) {
	t.Helper()
	s := Generate(testGenConfig(events))
	cfg := attribution.DefaultConfig()
	cfg.Models = attribution.AllModels
	return s, Expect(cfg, s.Events)
}

// cloneSnapshot deep-copies what Compare looks at.
func cloneSnapshot(s *persist.Snapshot) *persist.Snapshot {
	c := &persist.Snapshot{Impressions: slices.Clone(s.Impressions), Clicks: slices.Clone(s.Clicks), Attributions: slices.Clone(s.Attributions)}
	for i := range c.Impressions {
		if b := c.Impressions[i].Bid; b != nil {
			cp := *b
			cp.Criteria = slices.Clone(b.Criteria)
			c.Impressions[i].Bid = &cp
		}
	}
	return c
}

func TestCompareDetects(t *testing.T) {
	_, exp := expectedOf(t, 3000)
	want := exp.Want()
	if d := Compare(cloneSnapshot(want), want); !d.Equal() {
		t.Fatalf("a snapshot differs from itself:\n%s", d)
	}
	type edit struct {
		name                      string
		table                     int
		missing, extra, different int
		change                    func(s *persist.Snapshot)
	}
	for _, e := range []edit{
		{"impression missing", 0, 1, 0, 0, func(s *persist.Snapshot) { s.Impressions = s.Impressions[1:] }},
		{"impression extra", 0, 0, 1, 0, func(s *persist.Snapshot) {
			x := s.Impressions[0]
			x.ImpressionID = "not-in-the-stream"
			s.Impressions = append(s.Impressions, x)
		}},
		{"impression bid changed", 0, 0, 0, 1, func(s *persist.Snapshot) {
			for i := range s.Impressions {
				if b := s.Impressions[i].Bid; b != nil {
					b.BidPrice += 0.01
					return
				}
			}
		}},
		{"impression unjoined", 0, 0, 0, 1, func(s *persist.Snapshot) {
			for i := range s.Impressions {
				if s.Impressions[i].Bid != nil {
					s.Impressions[i].Bid = nil
					return
				}
			}
		}},
		{"click missing", 1, 1, 0, 0, func(s *persist.Snapshot) { s.Clicks = s.Clicks[:len(s.Clicks)-1] }},
		{"click joined elsewhere", 1, 0, 0, 1, func(s *persist.Snapshot) { s.Clicks[3].SinceImpression++ }},
		{"click twice", 1, 0, 1, 0, func(s *persist.Snapshot) { s.Clicks = append(s.Clicks, s.Clicks[0]) }},
		{"row missing", 2, 1, 0, 0, func(s *persist.Snapshot) { s.Attributions = s.Attributions[1:] }},
		{"row extra", 2, 0, 1, 0, func(s *persist.Snapshot) {
			r := s.Attributions[0]
			r.TouchID = "another-touch"
			s.Attributions = append(s.Attributions, r)
		}},
		{"row credit changed", 2, 0, 0, 1, func(s *persist.Snapshot) { s.Attributions[5].Credit += 1e-6 }},
		{"row currency changed", 2, 0, 0, 1, func(s *persist.Snapshot) { s.Attributions[7].Currency = "JPY" }},
		{"row credited to another touch", 2, 1, 1, 0, func(s *persist.Snapshot) { s.Attributions[2].TouchID += "x" }},
	} {
		t.Run(e.name, func(t *testing.T) {
			got := cloneSnapshot(want)
			e.change(got)
			got.Normalize()
			d := Compare(got, want)
			if d.Equal() {
				t.Fatal("not detected")
			}
			for i, tab := range d.Tables {
				wm, we, wd := 0, 0, 0
				if i == e.table {
					wm, we, wd = e.missing, e.extra, e.different
				}
				if tab.Missing != wm || tab.Extra != we || tab.Different != wd {
					t.Fatalf("%s: %d missing, %d extra, %d different; want %d, %d, %d\n%s", tab.Table, tab.Missing, tab.Extra, tab.Different, wm, we, wd, d)
				}
				if !tab.Equal() && len(tab.Examples) == 0 {
					t.Fatalf("%s: no example", tab.Table)
				}
			}
			if s := d.String(); !strings.Contains(s, d.Tables[e.table].Table) {
				t.Fatalf("report does not name the table:\n%s", s)
			}
		})
	}
}

func TestCompareTolerance(t *testing.T) {
	_, exp := expectedOf(t, 500)
	want := exp.Want()
	got := cloneSnapshot(want)
	for i := range got.Attributions {
		got.Attributions[i].Credit += 1e-12
		got.Attributions[i].CreditedValue *= 1 + 1e-13
	}
	if d := Compare(got, want); !d.Equal() {
		t.Fatalf("last-bit differences in credits count as differences:\n%s", d)
	}
}

func TestCompareExamplesBounded(t *testing.T) {
	_, exp := expectedOf(t, 2000)
	want := exp.Want()
	d := Compare(&persist.Snapshot{}, want)
	for _, tab := range d.Tables {
		if tab.Missing != tab.Want || len(tab.Examples) != maxExamples {
			t.Fatalf("%s: %d missing of %d, %d examples", tab.Table, tab.Missing, tab.Want, len(tab.Examples))
		}
	}
}

func TestFilter(t *testing.T) {
	s, exp := expectedOf(t, 2000)
	all := exp.Want()
	n := len(all.Impressions) + len(all.Clicks) + len(all.Attributions)
	users := s.UserSet()
	if dropped := Filter(all, users); dropped != 0 {
		t.Fatalf("dropped %d rows of the stream's own users", dropped)
	}
	other := &persist.Snapshot{Clicks: []attribution.ClickFact{{ClickID: "k", UserID: "someone else"}}}
	if dropped := Filter(other, users); dropped != 1 || len(other.Clicks) != 0 {
		t.Fatalf("kept another user's click")
	}
	if dropped := Filter(all, map[string]bool{}); dropped != n {
		t.Fatalf("dropped %d of %d rows with no user", dropped, n)
	}
}

// fakeWarehouse serves a sequence of snapshots, the last one for ever.
type fakeWarehouse struct {
	mu    sync.Mutex
	snaps []*persist.Snapshot
	errs  []error
	reads int
}

func (f *fakeWarehouse) Snapshot(ctx context.Context) (*persist.Snapshot, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	i := min(f.reads, len(f.snaps)-1)
	f.reads++
	if i < len(f.errs) && f.errs[i] != nil {
		return nil, f.errs[i]
	}
	return cloneSnapshot(f.snaps[i]), nil
}

func fastWait() WaitConfig {
	return WaitConfig{Poll: time.Millisecond, Stable: 30 * time.Millisecond, Timeout: 2 * time.Second}
}

func TestWait(t *testing.T) {
	s, exp := expectedOf(t, 2000)
	want := exp.Want()
	users := s.UserSet()
	partial := cloneSnapshot(want)
	partial.Attributions = partial.Attributions[:len(partial.Attributions)/2]
	wrong := cloneSnapshot(want)
	wrong.Clicks[0].CampaignID = "wrong"
	withOthers := cloneSnapshot(want)
	withOthers.Clicks = append(withOthers.Clicks, attribution.ClickFact{ClickID: "x", UserID: "not-a-stream-user"})

	t.Run("fills up, then matches", func(t *testing.T) {
		w := &fakeWarehouse{snaps: []*persist.Snapshot{{}, partial, partial, withOthers},
			errs: []error{errors.New("relation does not exist")}}
		v, err := Wait(context.Background(), w, want, users, fastWait())
		if err != nil || !v.Equal() || v.Ignored != 1 {
			t.Fatalf("err %v, equal %v, ignored %d", err, v != nil && v.Equal(), v.Ignored)
		}
	})
	t.Run("settles on a complete but wrong warehouse", func(t *testing.T) {
		w := &fakeWarehouse{snaps: []*persist.Snapshot{partial, wrong}}
		v, err := Wait(context.Background(), w, want, users, fastWait())
		if err != nil || v.Equal() || v.Diff.Tables[1].Different != 1 {
			t.Fatalf("err %v, diff %v", err, v.Diff)
		}
	})
	t.Run("times out on an incomplete warehouse", func(t *testing.T) {
		w := &fakeWarehouse{snaps: []*persist.Snapshot{partial}}
		cfg := fastWait()
		cfg.Timeout = 100 * time.Millisecond
		v, err := Wait(context.Background(), w, want, users, cfg)
		if !errors.Is(err, ErrWaitTimeout) || v == nil || v.Diff.Tables[2].Missing == 0 {
			t.Fatalf("err %v, verification %+v", err, v)
		}
	})
	t.Run("reports a failing warehouse", func(t *testing.T) {
		boom := errors.New("connection refused")
		w := &fakeWarehouse{snaps: []*persist.Snapshot{nil}, errs: []error{boom}}
		cfg := fastWait()
		cfg.Timeout = 50 * time.Millisecond
		if _, err := Wait(context.Background(), w, want, users, cfg); !errors.Is(err, ErrWaitTimeout) || !errors.Is(err, boom) {
			t.Fatalf("err %v", err)
		}
	})
}

// TestFactsDirWhileOpen reads a FileSink's directory while the sink holds
// it open (as a running serve does) and gets the sink's own snapshot.
func TestFactsDirWhileOpen(t *testing.T) {
	dir := t.TempDir()
	sink, err := persist.NewFileSink(persist.FileSinkConfig{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	ctx := context.Background()
	wh, err := OpenWarehouse(ctx, WarehouseConfig{FactsDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer wh.Close()
	empty, err := wh.Snapshot(ctx)
	if err != nil || len(empty.Impressions)+len(empty.Clicks)+len(empty.Attributions) != 0 {
		t.Fatalf("empty sink: %v, %+v", err, empty)
	}
	g := persisttest.NewGen(5, "fd-")
	f1 := g.Facts(200, 200, 100)
	if err := sink.Write(ctx, f1); err != nil {
		t.Fatal(err)
	}
	// Rewrite some: the last fact of a key wins.
	if err := sink.Write(ctx, &attribution.Facts{Impressions: f1.Impressions[:10], Conversions: g.Facts(0, 0, 20).Conversions}); err != nil {
		t.Fatal(err)
	}
	got, err := wh.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want, err := sink.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got.Normalize()
	want.Normalize()
	if d := Compare(got, want); !d.Equal() {
		t.Fatalf("facts directory read differs from the sink's snapshot:\n%s", d)
	}
	if err := sink.Write(ctx, g.Facts(1, 1, 1)); err != nil {
		t.Fatalf("the sink cannot write after the read: %v", err)
	}
}

func TestWarehouseConfigValidate(t *testing.T) {
	for _, c := range []WarehouseConfig{{}, {DSN: "postgres://x/y", FactsDir: "d"}, {DSN: "mysql://x"}} {
		if c.Validate() == nil {
			t.Errorf("%+v accepted", c)
		}
	}
	for _, c := range []WarehouseConfig{{FactsDir: "d"}, {DSN: "postgres://h/db"}, {DSN: "redshift://h/db"}} {
		if err := c.Validate(); err != nil {
			t.Errorf("%+v: %v", c, err)
		}
	}
}
