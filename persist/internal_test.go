package persist

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/lookback-dev/lookback/attribution"
)

// TestMigrateRedshiftLocking runs Redshift's migration locking (CREATE
// outside, LOCK of the migrations table inside the transaction) against
// PostgreSQL, with PostgreSQL's DDL, eight runs at once.
func TestMigrateRedshiftLocking(t *testing.T) {
	ctx := context.Background()
	pool, _ := PGTestSchema(t, pgx.QueryExecModeExec)
	var wg sync.WaitGroup
	errs := make([]error, 8)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = runMigrations(ctx, pool, Redshift, Postgres, migrations())
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	var n int
	if err := pool.QueryRow(ctx, "SELECT count(*) FROM "+tableMigrations).Scan(&n); err != nil || n != 1 {
		t.Fatalf("%d migration rows, %v", n, err)
	}
	// A second migration step is applied once, after the first.
	more := append(migrations(), migration{version: 2, name: "test step", stmts: func(Dialect) []string {
		return []string{"CREATE TABLE step_two (x INTEGER)"}
	}})
	for range 2 {
		if err := runMigrations(ctx, pool, Redshift, Postgres, more); err != nil {
			t.Fatal(err)
		}
	}
	if err := pool.QueryRow(ctx, "SELECT count(*) FROM "+tableMigrations).Scan(&n); err != nil || n != 2 {
		t.Fatalf("%d migration rows, %v", n, err)
	}
}

// TestRedisStoreNoScript runs Claim and Commit with scripts Redis has
// never seen (as after a restart or SCRIPT FLUSH): EVALSHA fails with
// NOSCRIPT, and the store loads the script and runs it.
func TestRedisStoreNoScript(t *testing.T) {
	ctx := context.Background()
	client, prefix := RedisTestClient(t)
	cfg := DefaultRedisStoreConfig()
	cfg.KeyPrefix = prefix
	s, err := NewRedisStore(client, cfg)
	if err != nil {
		t.Fatal(err)
	}
	// A unique comment makes a script whose SHA no server has cached.
	s.claim = redis.NewScript(claimScript + "\n-- " + prefix)
	s.commit = redis.NewScript(commitScript + "\n-- " + prefix)
	if exists, err := s.commit.Exists(ctx, client).Result(); err != nil || exists[0] {
		t.Fatalf("script already cached: %v, %v", exists, err)
	}
	o := Owner{Node: "n", Generation: 1}
	if _, err := s.Claim(ctx, 1, o); err != nil {
		t.Fatal(err)
	}
	cps := []PartitionCheckpoint{
		{Partition: 1, Owner: o, States: []UserState{{UserID: "u", State: []byte("v")}}, Offsets: map[string]int64{"t": 3}},
		{Partition: 2, Owner: o}, // fenced: never claimed
	}
	errs := s.Commit(ctx, cps)
	if errs[0] != nil || !errors.Is(errs[1], ErrFenced) {
		t.Fatalf("Commit after NOSCRIPT: %v", errs)
	}
	got, err := s.LoadStates(ctx, 1, []string{"u"})
	if err != nil || string(got[0]) != "v" {
		t.Fatalf("state %q, %v", got, err)
	}
}

// TestRedisStoreSplitFencedMidway: a split checkpoint whose claim is taken
// between its calls writes no offsets (the last call never runs or is
// refused) and reports ErrFenced.
func TestRedisStoreSplitFencedMidway(t *testing.T) {
	ctx := context.Background()
	client, prefix := RedisTestClient(t)
	cfg := DefaultRedisStoreConfig()
	cfg.KeyPrefix = prefix
	cfg.MaxCallBytes = 100
	s, _ := NewRedisStore(client, cfg)
	a, b := Owner{Node: "a", Generation: 1}, Owner{Node: "b", Generation: 2}
	if _, err := s.Claim(ctx, 0, a); err != nil {
		t.Fatal(err)
	}
	var states []UserState
	for i := range 50 {
		states = append(states, UserState{UserID: "u" + strconv.Itoa(i), State: []byte("0123456789012345678901234567890123456789")})
	}
	cp := &PartitionCheckpoint{Partition: 0, Owner: a, States: states, Offsets: map[string]int64{"t": 9}}
	calls := s.commitCalls(0, cp)
	if len(calls) < 10 {
		t.Fatalf("%d calls, want the checkpoint split", len(calls))
	}
	// Run the first half, then b takes over, then the rest.
	errs := make([]error, 1)
	s.runCommits(ctx, []PartitionCheckpoint{*cp}, calls[:len(calls)/2], errs)
	if errs[0] != nil {
		t.Fatal(errs[0])
	}
	if _, err := s.Claim(ctx, 0, b); err != nil {
		t.Fatal(err)
	}
	s.runCommits(ctx, []PartitionCheckpoint{*cp}, calls[len(calls)/2:], errs)
	if !errors.Is(errs[0], ErrFenced) {
		t.Fatalf("rest of the split commit: %v, want ErrFenced", errs[0])
	}
	if offs, err := s.Claim(ctx, 0, b); err != nil || len(offs) != 0 {
		t.Fatalf("offsets %v, %v; want none", offs, err)
	}
}

func TestPrepareBatch(t *testing.T) {
	imp := func(id string, site string) attribution.ImpressionFact {
		return attribution.ImpressionFact{ImpressionID: id, Website: site}
	}
	conv := func(id string, models []attribution.Model, path int) attribution.ConversionFact {
		f := attribution.ConversionFact{Conversion: attribution.Conversion{ID: id, Value: 10}, Models: models}
		for i := 0; i < path; i++ {
			f.Path = append(f.Path, attribution.PathTouch{Type: attribution.TypeClick, ID: "k" + strconv.Itoa(i)})
		}
		n := max(path, 1)
		for range models {
			for i := 0; i < n; i++ {
				f.Credits = append(f.Credits, 1/float64(n))
			}
		}
		return f
	}
	b := prepareBatch(&attribution.Facts{
		Impressions: []attribution.ImpressionFact{imp("a", "1"), imp("b", "1"), imp("a", "2")},
		Conversions: []attribution.ConversionFact{
			conv("c", []attribution.Model{attribution.LastTouch, attribution.Linear}, 2),
			conv("c", []attribution.Model{attribution.Linear}, 3),
		},
	})
	if len(b.impressions) != 2 || b.impressions[0].Website != "2" || b.impressions[1].ImpressionID != "b" {
		t.Fatalf("impressions %+v", b.impressions)
	}
	// last_touch from the first fact (2 rows), linear from the second (3).
	if len(b.groups) != 2 || len(b.rows) != 5 {
		t.Fatalf("groups %+v, %d rows", b.groups, len(b.rows))
	}
	for _, g := range b.groups {
		want := map[attribution.Model]int{attribution.LastTouch: 2, attribution.Linear: 3}[g.key.Model]
		if g.end-g.start != want {
			t.Fatalf("group %+v has %d rows, want %d", g.key, g.end-g.start, want)
		}
	}
	// A touch named twice in a path is folded into one row.
	dup := conv("d", []attribution.Model{attribution.Linear}, 2)
	dup.Path[1] = dup.Path[0]
	b = prepareBatch(&attribution.Facts{Conversions: []attribution.ConversionFact{dup}})
	if len(b.rows) != 1 || b.rows[0].Credit != 1 || b.rows[0].CreditedValue != 10 {
		t.Fatalf("rows %+v", b.rows)
	}
	if !prepareBatch(nil).empty() || !prepareBatch(&attribution.Facts{}).empty() {
		t.Fatal("empty batch not empty")
	}
}

// TestSplitBatch: the parts of a batch partition its keys (a conversion's
// rows under every model in one part), keep every row and group, and are
// of about equal size.
func TestSplitBatch(t *testing.T) {
	f := &attribution.Facts{}
	for i := range 30000 {
		f.Impressions = append(f.Impressions, attribution.ImpressionFact{ImpressionID: "imp-" + strconv.Itoa(i)})
	}
	for i := range 15000 {
		f.Clicks = append(f.Clicks, attribution.ClickFact{ClickID: "clk-" + strconv.Itoa(i)})
	}
	for i := range 3000 {
		c := attribution.ConversionFact{Conversion: attribution.Conversion{ID: "conv-" + strconv.Itoa(i)},
			Models: []attribution.Model{attribution.LastTouch, attribution.Linear}}
		for j := range 1 + i%3 {
			c.Path = append(c.Path, attribution.PathTouch{Type: attribution.TypeClick, ID: "k" + strconv.Itoa(j)})
		}
		for range c.Models {
			for range c.Path {
				c.Credits = append(c.Credits, 1/float64(len(c.Path)))
			}
		}
		f.Conversions = append(f.Conversions, c)
	}
	b := prepareBatch(f)
	for _, n := range []int{1, 2, 3, 8} {
		parts := b.split(n)
		if len(parts) != n {
			t.Fatalf("split(%d): %d parts", n, len(parts))
		}
		imp, clk := map[string]int{}, map[string]int{}
		conv := map[string]int{}
		var rows, groups int
		for p, part := range parts {
			for _, x := range part.impressions {
				imp[x.ImpressionID]++
			}
			for _, x := range part.clicks {
				clk[x.ClickID]++
			}
			for _, g := range part.groups {
				for _, r := range part.rows[g.start:g.end] {
					if r.ConversionID != g.key.ID || r.Model != g.key.Model {
						t.Fatalf("split(%d): part %d: row %+v in group %+v", n, p, r, g.key)
					}
				}
				if q, ok := conv[g.key.ID]; ok && q != p {
					t.Fatalf("split(%d): conversion %s in parts %d and %d", n, g.key.ID, q, p)
				}
				conv[g.key.ID] = p
			}
			rows += len(part.rows)
			groups += len(part.groups)
			if got, want := part.rowCount(), b.rowCount()/n; got < want*9/10 || got > want*11/10 {
				t.Errorf("split(%d): part %d has %d rows, want about %d", n, p, got, want)
			}
		}
		if len(imp) != len(b.impressions) || len(clk) != len(b.clicks) || len(conv) != 3000 ||
			rows != len(b.rows) || groups != len(b.groups) {
			t.Fatalf("split(%d): %d impressions, %d clicks, %d conversions, %d rows, %d groups; want %d, %d, 3000, %d, %d",
				n, len(imp), len(clk), len(conv), rows, groups, len(b.impressions), len(b.clicks), len(b.rows), len(b.groups))
		}
		for id, k := range imp {
			if k != 1 {
				t.Fatalf("split(%d): impression %s in %d parts", n, id, k)
			}
		}
		for id, k := range clk {
			if k != 1 {
				t.Fatalf("split(%d): click %s in %d parts", n, id, k)
			}
		}
	}
}

// TestWriteParallelism: OpenSink passes WriteParallelism through, lowered
// so that one connection of the pool stays free for Snapshot and Migrate.
func TestWriteParallelism(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		cfg  SinkConfig
		want int
	}{
		{SinkConfig{}, 2},
		{DefaultSinkConfig(), 2},
		{SinkConfig{WriteParallelism: 1}, 1},
		{SinkConfig{WriteParallelism: 3, MaxConns: 8}, 3},
		{SinkConfig{WriteParallelism: 4}, 3},
		{SinkConfig{MaxConns: 2}, 1},
		{SinkConfig{MaxConns: 1}, 1},
	} {
		s, err := OpenSink(ctx, PGTestDSN(), tc.cfg)
		if err != nil {
			t.Fatal(err)
		}
		if got := s.(*PostgresSink).parallelism; got != tc.want {
			t.Errorf("%+v: parallelism %d, want %d", tc.cfg, got, tc.want)
		}
		s.Close()
	}
	pool, _ := PGTestSchema(t, pgx.QueryExecModeExec) // MaxConns 4
	if got := NewPostgresSink(pool).parallelism; got != 2 {
		t.Errorf("NewPostgresSink: parallelism %d, want 2", got)
	}
}
