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
