package persist_test

import (
	"bytes"
	"context"
	"errors"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/lookback-dev/lookback/attribution"
	"github.com/lookback-dev/lookback/persist"
	"github.com/lookback-dev/lookback/persist/persisttest"
)

func newPostgresSink(t *testing.T) *persist.PostgresSink {
	t.Helper()
	pool, _ := persist.PGTestSchema(t, pgx.QueryExecModeCacheStatement)
	if err := persist.Migrate(context.Background(), pool, persist.Postgres); err != nil {
		t.Fatal(err)
	}
	s := persist.NewPostgresSink(pool)
	t.Cleanup(func() { s.Close() })
	return s
}

// newRedshiftSink runs the Redshift dialect's DML on PostgreSQL: the
// tables come from the PostgreSQL DDL (Redshift's cannot run there), the
// connection is in exec mode as on Redshift.
func newRedshiftSink(t *testing.T, cfg persist.RedshiftConfig) *persist.RedshiftSink {
	t.Helper()
	pool, _ := persist.PGTestSchema(t, pgx.QueryExecModeExec)
	if err := persist.Migrate(context.Background(), pool, persist.Postgres); err != nil {
		t.Fatal(err)
	}
	s, err := persist.NewRedshiftSink(pool, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestPostgresSink(t *testing.T) {
	persisttest.TestFactSink(t, func(t *testing.T) persist.FactSink { return newPostgresSink(t) })
}

func TestRedshiftSink(t *testing.T) {
	persisttest.TestFactSink(t, func(t *testing.T) persist.FactSink {
		return newRedshiftSink(t, persist.DefaultRedshiftConfig())
	})
}

// TestRedshiftSinkSmallStatements runs the suite with INSERTs cut small
// by both limits, parameters and bytes.
func TestRedshiftSinkSmallStatements(t *testing.T) {
	persisttest.TestFactSink(t, func(t *testing.T) persist.FactSink {
		return newRedshiftSink(t, persist.RedshiftConfig{MaxParams: 100, MaxStatementBytes: 64 << 10})
	})
}

func newFileSink(t *testing.T, dir string) *persist.FileSink {
	t.Helper()
	s, err := persist.NewFileSink(persist.FileSinkConfig{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestFileSink(t *testing.T) {
	persisttest.TestFactSink(t, func(t *testing.T) persist.FactSink { return newFileSink(t, t.TempDir()) })
}

// TestFileSinkReopen: a restart loses nothing and doubles nothing;
// superseded rows go at the next open; a replay after reopening appends
// nothing; an uncommitted tail (a crash mid-Write) is cut.
func TestFileSinkReopen(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	ref := persisttest.NewReference()
	g := persisttest.NewGen(1, "fs-")
	f1 := g.Facts(50, 50, 50)
	s := newFileSink(t, dir)
	if err := s.Write(ctx, f1); err != nil {
		t.Fatal(err)
	}
	ref.Apply(f1)
	// Change every impression (a bid joins): the file now holds both
	// versions.
	f2 := &attribution.Facts{Impressions: append([]attribution.ImpressionFact(nil), f1.Impressions...)}
	for i := range f2.Impressions {
		f2.Impressions[i].Bid = g.Bid()
	}
	// And every conversion, re-attributed under one model.
	for _, c := range f1.Conversions {
		c.Path = nil
		c.Models = []attribution.Model{attribution.LastTouch}
		c.Credits = []float64{1}
		f2.Conversions = append(f2.Conversions, c)
	}
	if err := s.Write(ctx, f2); err != nil {
		t.Fatal(err)
	}
	ref.Apply(f2)
	if n := lines(t, filepath.Join(dir, "impressions.ndjson")); n != 100 {
		t.Fatalf("impressions.ndjson has %d lines before compaction, want 100", n)
	}
	s.Close()

	s = newFileSink(t, dir)
	check(t, s, ref)
	if n := lines(t, filepath.Join(dir, "impressions.ndjson")); n != 50 {
		t.Fatalf("impressions.ndjson has %d lines after compaction, want 50", n)
	}
	// A replay of what is stored appends nothing: f2 in full, and f1's
	// clicks (f2 did not change them).
	sizes := fileSizes(t, dir)
	for _, f := range []*attribution.Facts{f2, {Clicks: f1.Clicks}} {
		if err := s.Write(ctx, f); err != nil {
			t.Fatal(err)
		}
		ref.Apply(f)
	}
	if got := fileSizes(t, dir); got != sizes {
		t.Fatalf("replaying stored facts changed the files: %v -> %v", sizes, got)
	}
	check(t, s, ref)
	s.Close()

	// A crash in the middle of a Write: rows appended but not committed.
	path := filepath.Join(dir, "clicks.ndjson")
	fh, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	fh.WriteString(`{"click_id":"uncommitted","user_id":"u","event_time":"2026-11-28T10:00:00.000Z"}` + "\n" + `{"click_id":"torn`)
	fh.Close()
	s = newFileSink(t, dir)
	check(t, s, ref)

	// The directory is in use while open.
	if _, err := persist.NewFileSink(persist.FileSinkConfig{Dir: dir}); err == nil {
		t.Fatal("a second FileSink opened a directory in use")
	}
}

func lines(t *testing.T, path string) int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return bytes.Count(b, []byte("\n"))
}

func fileSizes(t *testing.T, dir string) [3]int64 {
	t.Helper()
	var out [3]int64
	for i, name := range []string{"impressions.ndjson", "clicks.ndjson", "conversion_attributions.ndjson"} {
		st, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		out[i] = st.Size()
	}
	return out
}

func check(t *testing.T, s persist.SnapshotReader, ref *persisttest.Reference) {
	t.Helper()
	got, err := s.Snapshot(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	got.Normalize()
	if d := persisttest.DiffSnapshots(got, ref.Snapshot()); d != "" {
		t.Fatal(d)
	}
}

// TestRedshiftSinkRetriesSerializationConflicts makes the merge fail
// twice with Redshift's serializable isolation error (raised by a trigger,
// as PostgreSQL never raises it) and checks that Write retries it.
func TestRedshiftSinkRetriesSerializationConflicts(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		attempts int
		fail     int
		wantErr  bool
	}{{4, 2, false}, {2, 2, true}} {
		pool, _ := persist.PGTestSchema(t, pgx.QueryExecModeExec)
		if err := persist.Migrate(ctx, pool, persist.Postgres); err != nil {
			t.Fatal(err)
		}
		_, err := pool.Exec(ctx, `
CREATE SEQUENCE conflicts;
CREATE FUNCTION fail_first() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF nextval('conflicts') <= `+string(rune('0'+tc.fail))+` THEN
    RAISE EXCEPTION '1023' USING ERRCODE = 'XX000', DETAIL = 'Serializable isolation violation on table - 100, transactions forming the cycle are: 1, 2';
  END IF;
  RETURN NULL;
END $$;
CREATE TRIGGER fail_first AFTER INSERT ON conversion_attributions FOR EACH STATEMENT EXECUTE FUNCTION fail_first();`)
		if err != nil {
			t.Fatal(err)
		}
		s, err := persist.NewRedshiftSink(pool, persist.RedshiftConfig{MaxAttempts: tc.attempts})
		if err != nil {
			t.Fatal(err)
		}
		f := persisttest.NewGen(1, "rs-").Facts(5, 5, 5)
		err = s.Write(ctx, f)
		if tc.wantErr {
			if err == nil || !strings.Contains(err.Error(), "1023") {
				t.Fatalf("%d attempts, %d conflicts: %v, want the conflict", tc.attempts, tc.fail, err)
			}
			ref := persisttest.NewReference()
			check(t, s, ref) // nothing written
			continue
		}
		if err != nil {
			t.Fatalf("%d attempts, %d conflicts: %v", tc.attempts, tc.fail, err)
		}
		ref := persisttest.NewReference()
		ref.Apply(f)
		check(t, s, ref)
	}
}

func TestOpenSink(t *testing.T) {
	ctx := context.Background()
	_, schema := persist.PGTestSchema(t, pgx.QueryExecModeExec)
	u, err := url.Parse(persist.PGTestDSN())
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()

	pgDSN := u.String()
	s, err := persist.OpenSink(ctx, pgDSN, persist.SinkConfig{})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := s.(*persist.PostgresSink); !ok || s.Dialect() != persist.Postgres {
		t.Fatalf("OpenSink(postgres://) = %T", s)
	}
	if err := persist.Migrate(ctx, s.Pool(), s.Dialect()); err != nil {
		t.Fatal(err)
	}
	f := persisttest.NewGen(1, "os-").Facts(10, 10, 10)
	if err := s.Write(ctx, f); err != nil {
		t.Fatal(err)
	}
	s.Close()

	// redshift:// with an explicit port reaches the same PostgreSQL with
	// the Redshift dialect.
	u.Scheme = "redshift"
	rs, err := persist.OpenSink(ctx, u.String(), persist.SinkConfig{MaxConns: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer rs.Close()
	if _, ok := rs.(*persist.RedshiftSink); !ok || rs.Dialect() != persist.Redshift {
		t.Fatalf("OpenSink(redshift://) = %T", rs)
	}
	if mode := rs.Pool().Config().ConnConfig.DefaultQueryExecMode; mode != pgx.QueryExecModeExec {
		t.Fatalf("redshift pool in mode %v, want exec", mode)
	}
	if err := rs.Write(ctx, f); err != nil {
		t.Fatal(err)
	}
	ref := persisttest.NewReference()
	ref.Apply(f)
	check(t, rs, ref)

	if _, err := persist.OpenSink(ctx, "mysql://x", persist.SinkConfig{}); err == nil {
		t.Fatal("OpenSink accepted mysql://")
	}
	if _, err := persist.OpenSink(ctx, pgDSN, persist.SinkConfig{MaxConns: -1}); err == nil {
		t.Fatal("OpenSink accepted MaxConns -1")
	}
}

func TestSinkConfigValidate(t *testing.T) {
	if err := (persist.SinkConfig{}).Validate(); err != nil {
		t.Fatal(err)
	}
	if err := persist.DefaultSinkConfig().Validate(); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []persist.SinkConfig{
		{MaxConns: -1},
		{WriteParallelism: -1},
		{Redshift: persist.RedshiftConfig{MaxParams: 40000}},
		{Redshift: persist.RedshiftConfig{MaxParams: 5}},
		{Redshift: persist.RedshiftConfig{MaxStatementBytes: 32 << 20}},
		{Redshift: persist.RedshiftConfig{MaxAttempts: -1}},
	} {
		if bad.Validate() == nil {
			t.Errorf("%+v validated", bad)
		}
	}
	if (persist.FileSinkConfig{}).Validate() == nil {
		t.Error("FileSinkConfig without Dir validated")
	}
}

// TestPostgresSinkSplit runs the suite with every batch of three rows or
// more split into three concurrent transactions.
func TestPostgresSinkSplit(t *testing.T) {
	persisttest.TestFactSink(t, func(t *testing.T) persist.FactSink {
		pool, _ := persist.PGTestSchema(t, pgx.QueryExecModeCacheStatement)
		if err := persist.Migrate(context.Background(), pool, persist.Postgres); err != nil {
			t.Fatal(err)
		}
		return persist.PostgresTestSink(pool, 3, 1)
	})
}

// rowVersions describes which transaction wrote each row of a table
// (xmin), and how many transactions wrote its rows.
func rowVersions(t *testing.T, pool *pgxpool.Pool, table, key string) (versions string, txs int) {
	t.Helper()
	err := pool.QueryRow(context.Background(),
		"SELECT coalesce(md5(string_agg("+key+" || ':' || xmin::text, ',' ORDER BY "+key+")), ''), count(DISTINCT xmin::text) FROM "+table).
		Scan(&versions, &txs)
	if err != nil {
		t.Fatal(err)
	}
	return versions, txs
}

// TestPostgresSinkLargeBatch: with the default configuration, a batch of
// two parts' rows (10k each at least) is written in two transactions,
// exactly; writing it again rewrites no impression or click.
func TestPostgresSinkLargeBatch(t *testing.T) {
	ctx := context.Background()
	pool, _ := persist.PGTestSchema(t, pgx.QueryExecModeCacheStatement)
	if err := persist.Migrate(ctx, pool, persist.Postgres); err != nil {
		t.Fatal(err)
	}
	s := persist.NewPostgresSink(pool)
	ref := persisttest.NewReference()
	f := persisttest.NewGen(12, "big-").Facts(15000, 8000, 2000)
	if n := persisttest.Rows(f); n < 2*10000 {
		t.Fatalf("%d rows: too few to be split", n)
	}
	if err := s.Write(ctx, f); err != nil {
		t.Fatal(err)
	}
	ref.Apply(f)
	check(t, s, ref)
	tables := [][2]string{{"ad_impressions", "impression_id"}, {"ad_clicks", "click_id"},
		{"conversion_attributions", "conversion_id || model || touch_type || touch_id"}}
	var before [2]string
	for i, tk := range tables {
		v, txs := rowVersions(t, pool, tk[0], tk[1])
		if txs != 2 {
			t.Errorf("%s written by %d transactions, want 2", tk[0], txs)
		}
		if i < 2 {
			before[i] = v
		}
	}
	if err := s.Write(ctx, f); err != nil {
		t.Fatal(err)
	}
	check(t, s, ref)
	for i, tk := range tables[:2] {
		if v, _ := rowVersions(t, pool, tk[0], tk[1]); v != before[i] {
			t.Errorf("writing the same batch again rewrote rows of %s", tk[0])
		}
	}
}

// TestPostgresSinkPartFailure fails one part of a split Write (a trigger
// raises for the part that stages a poisoned click) while the other parts
// wait on a lock the test holds: Write must return the failure without
// waiting for them (the failure cancels them), nothing may be committed,
// and a retry must write the batch exactly.
func TestPostgresSinkPartFailure(t *testing.T) {
	ctx := context.Background()
	pool, schema := persist.PGTestSchema(t, pgx.QueryExecModeCacheStatement)
	if err := persist.Migrate(ctx, pool, persist.Postgres); err != nil {
		t.Fatal(err)
	}
	s := persist.PostgresTestSink(pool, 3, 100)
	ref := persisttest.NewReference()
	g := persisttest.NewGen(13, "pf-")
	base := g.Facts(300, 300, 100)
	if err := s.Write(ctx, base); err != nil {
		t.Fatal(err)
	}
	ref.Apply(base)

	// The next batch has new facts and changes stored ones.
	f := g.Facts(1000, 1000, 300)
	for _, x := range base.Impressions {
		x.Bid = g.Bid()
		f.Impressions = append(f.Impressions, x)
	}
	for _, c := range base.Conversions {
		c.Path, c.Models, c.Credits = nil, []attribution.Model{attribution.Linear}, []float64{1}
		f.Conversions = append(f.Conversions, c)
	}
	poison := f.Clicks[len(f.Clicks)/2].ClickID
	_, err := pool.Exec(ctx, `
CREATE FUNCTION fail_part() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF EXISTS (SELECT 1 FROM lookback_stage_ad_clicks WHERE click_id = '`+poison+`') THEN
    RAISE EXCEPTION 'injected failure';
  END IF;
  PERFORM pg_advisory_xact_lock_shared(hashtext(current_schema())::bigint);
  RETURN NULL;
END $$;
CREATE TRIGGER fail_part BEFORE INSERT ON ad_clicks FOR EACH STATEMENT EXECUTE FUNCTION fail_part();`)
	if err != nil {
		t.Fatal(err)
	}
	holder, err := pgx.Connect(ctx, persist.PGTestDSN())
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close(ctx)
	if _, err := holder.Exec(ctx, "SELECT pg_advisory_lock(hashtext($1)::bigint)", schema); err != nil {
		t.Fatal(err)
	}

	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	start := time.Now()
	err = s.Write(wctx, f)
	elapsed := time.Since(start)
	cancel()
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Message != "injected failure" || !strings.Contains(err.Error(), "writing facts part ") ||
		!strings.Contains(err.Error(), " of 3: ") {
		t.Fatalf("Write with a failing part: %v, want the injected failure of a part of 3", err)
	}
	t.Logf("failed in %v: %v", elapsed, err)
	if elapsed > 15*time.Second {
		t.Errorf("the failure took %v: the other parts were not cancelled", elapsed)
	}
	check(t, s, ref) // every part rolled back

	if _, err := holder.Exec(ctx, "SELECT pg_advisory_unlock(hashtext($1)::bigint)", schema); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, "DROP TRIGGER fail_part ON ad_clicks"); err != nil {
		t.Fatal(err)
	}
	if err := s.Write(ctx, f); err != nil {
		t.Fatalf("retry: %v", err)
	}
	ref.Apply(f)
	check(t, s, ref)
}
