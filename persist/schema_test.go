package persist_test

import (
	"context"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/lookback-dev/lookback/persist"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

func TestParseWarehouseDSN(t *testing.T) {
	for _, tc := range []struct {
		dsn, want string
		dialect   persist.Dialect
	}{
		{"postgres://u:p@h:5432/db?sslmode=disable", "postgres://u:p@h:5432/db?sslmode=disable", persist.Postgres},
		{"postgresql://h/db", "postgresql://h/db", persist.Postgres},
		{"redshift://u:p@cluster.example.com/dev?sslmode=verify-full", "postgres://u:p@cluster.example.com:5439/dev?sslmode=verify-full", persist.Redshift},
		{"redshift://u@cluster.example.com:5440/dev", "postgres://u@cluster.example.com:5440/dev", persist.Redshift},
		{"REDSHIFT://h/dev", "postgres://h:5439/dev", persist.Redshift},
		{"redshift://[::1]/dev", "postgres://[::1]:5439/dev", persist.Redshift},
	} {
		got, d, err := persist.ParseWarehouseDSN(tc.dsn)
		if err != nil || got != tc.want || d != tc.dialect {
			t.Errorf("ParseWarehouseDSN(%q) = %q, %v, %v; want %q, %v", tc.dsn, got, d, err, tc.want, tc.dialect)
		}
	}
	for _, bad := range []string{"", "host=h dbname=d", "mysql://h/db", "redshift:///db", "file:///tmp/x"} {
		if _, _, err := persist.ParseWarehouseDSN(bad); err == nil {
			t.Errorf("ParseWarehouseDSN(%q) accepted", bad)
		}
	}
}

// TestSchemaDDLGolden pins the generated DDL of both dialects. Redshift's
// cannot run on PostgreSQL, so this is its test: review a change of the
// golden file as a schema change (go test -run Golden -update).
func TestSchemaDDLGolden(t *testing.T) {
	for _, d := range []persist.Dialect{persist.Postgres, persist.Redshift} {
		got := strings.Join(persist.SchemaDDL(d), ";\n\n") + ";\n"
		path := filepath.Join("testdata", d.String()+"_schema.golden.sql")
		if *update {
			if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		want, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if got != string(want) {
			t.Errorf("%s DDL differs from %s (rerun with -update if intended):\n%s", d, path, got)
		}
	}
	rs := strings.Join(persist.SchemaDDL(persist.Redshift), "\n")
	for _, must := range []string{"DISTSTYLE KEY DISTKEY (user_id) COMPOUND SORTKEY (event_time, user_id)",
		"COMPOUND SORTKEY (conversion_time, user_id)", "VARCHAR(65535)"} {
		if !strings.Contains(rs, must) {
			t.Errorf("Redshift DDL lacks %q", must)
		}
	}
	for _, mustNot := range []string{"SERIAL", "ON CONFLICT", "INDEX", "TEXT", "JSON"} {
		if strings.Contains(rs, mustNot) {
			t.Errorf("Redshift DDL has %q", mustNot)
		}
	}
}

// TestMigrate: twice in a row and eight at once on a fresh schema; one
// version row, the tables and the index exist.
func TestMigrate(t *testing.T) {
	ctx := context.Background()
	pool, schema := persist.PGTestSchema(t, pgx.QueryExecModeCacheStatement)
	var wg sync.WaitGroup
	errs := make([]error, 8)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = persist.Migrate(ctx, pool, persist.Postgres)
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := persist.Migrate(ctx, pool, persist.Postgres); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := pool.QueryRow(ctx, "SELECT count(*) FROM lookback_schema_migrations").Scan(&n); err != nil || n != 1 {
		t.Fatalf("%d migration rows, %v; want 1", n, err)
	}
	var tables []string
	rows, _ := pool.Query(ctx, "SELECT table_name FROM information_schema.tables WHERE table_schema = $1 ORDER BY 1", schema)
	tables, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(tables, ",") != "ad_clicks,ad_impressions,conversion_attributions,lookback_schema_migrations" {
		t.Fatalf("tables %v", tables)
	}
	// Only the primary keys are indexed, and ids compare in byte order.
	var idx int
	if err := pool.QueryRow(ctx, "SELECT count(*) FROM pg_indexes WHERE schemaname = $1 AND tablename <> 'lookback_schema_migrations'", schema).Scan(&idx); err != nil || idx != 3 {
		t.Fatalf("%d indexes on the fact tables, %v; want 3 (the primary keys)", idx, err)
	}
	var coll string
	if err := pool.QueryRow(ctx, "SELECT collation_name FROM information_schema.columns WHERE table_schema = $1 AND table_name = 'ad_impressions' AND column_name = 'impression_id'", schema).Scan(&coll); err != nil || coll != "C" {
		t.Fatalf("impression_id collation %q, %v; want C", coll, err)
	}
}
