package persist

// Test environment shared by the package's internal and external tests
// (exported here, in a _test file, for persist_test), on top of
// internal/testenv: a PostgreSQL schema and a Redis key prefix per test.

import (
	"context"
	"net/url"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"

	"github.com/lookback-dev/lookback/internal/testenv"
)

// PGTestDSN is the PostgreSQL the tests use (they fail, not skip, when it
// is unreachable).
func PGTestDSN() string { return testenv.PostgresDSN() }

// RedisTestAddr is the Redis the tests use.
func RedisTestAddr() string { return testenv.RedisAddr() }

// PGTestSchema creates a fresh schema, dropped when the test ends, and
// returns a pool whose search_path is that schema, in the given exec mode
// (exec for the Redshift dialect, the default otherwise), and the schema.
func PGTestSchema(t testing.TB, mode pgx.QueryExecMode) (*pgxpool.Pool, string) {
	t.Helper()
	dsn := testenv.PostgresSchema(t)
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	schema := u.Query().Get("search_path")
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	cfg.ConnConfig.DefaultQueryExecMode = mode
	cfg.MaxConns = 4
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatalf("connecting to PostgreSQL: %v", err)
	}
	t.Cleanup(pool.Close) // runs before the schema is dropped (LIFO)
	return pool, schema
}

// RedisTestClient returns a client and a key prefix of this test's own;
// the prefix's keys are deleted when the test ends.
func RedisTestClient(t testing.TB) (*redis.Client, string) {
	t.Helper()
	return testenv.Redis(t)
}

// PostgresTestSink returns a PostgresSink that splits a Write into up to
// parallelism transactions of at least minPartRows rows each (whatever the
// pool's size).
func PostgresTestSink(pool *pgxpool.Pool, parallelism, minPartRows int) *PostgresSink {
	s := NewPostgresSink(pool)
	s.parallelism, s.minPartRows = parallelism, minPartRows
	return s
}
