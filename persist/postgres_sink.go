package persist

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/sync/errgroup"

	"github.com/lookback-dev/lookback/attribution"
)

// PostgresSink writes facts to PostgreSQL. A Write is one transaction:
// COPY into per-connection temporary staging tables, then an upsert per
// table, so it is all or nothing and replays are idempotent.
//
// COPY then upsert was measured at 91-97k rows/s per connection, against
// 70-73k for multi-row INSERT (research/dependencies.md), and it keeps one
// PostgreSQL backend, so one core, busy. So a large Write is split by a
// hash of the key into up to parallelism parts of at least minPartRows
// rows, each such a transaction on its own connection, run concurrently.
// The parts touch disjoint rows: no deadlock, no lost update between them.
// A failed Write may then have committed some parts (never part of a key's
// rows), which the caller's retry of the whole Write rewrites idempotently.
type PostgresSink struct {
	pool *pgxpool.Pool
	// parallelism bounds the concurrent transactions of one Write.
	parallelism int
	// minPartRows is the fewest rows a part may have: smaller batches are
	// not split, as another transaction costs more than it saves there.
	minPartRows int
	ownsPool    bool
}

// defaultMinPartRows was measured with BenchmarkPostgresSinkWriteLarge on
// two cores: two transactions wrote 20k rows (10k each) and more 10-25%
// faster than one on a quiet machine; 10k rows (5k each) gained up to 15%,
// or nothing when the machine was busy.
const defaultMinPartRows = 10_000

// NewPostgresSink returns a sink writing through pool, which it does not
// close, with the default write parallelism (SinkConfig). The schema must
// have been migrated (Migrate).
func NewPostgresSink(pool *pgxpool.Pool) *PostgresSink {
	return newPostgresSink(pool, DefaultSinkConfig().WriteParallelism)
}

// newPostgresSink leaves one of the pool's connections to Snapshot and
// Migrate: parallelism is lowered to the pool's MaxConns-1 (at least 1).
func newPostgresSink(pool *pgxpool.Pool, parallelism int) *PostgresSink {
	parallelism = max(1, min(parallelism, int(pool.Config().MaxConns)-1))
	return &PostgresSink{pool: pool, parallelism: parallelism, minPartRows: defaultMinPartRows}
}

// Dialect returns Postgres.
func (s *PostgresSink) Dialect() Dialect { return Postgres }

// Pool returns the sink's pool.
func (s *PostgresSink) Pool() *pgxpool.Pool { return s.pool }

// Close closes the pool when OpenSink opened it.
func (s *PostgresSink) Close() error {
	if s.ownsPool {
		s.pool.Close()
	}
	return nil
}

// Snapshot reads all facts back.
func (s *PostgresSink) Snapshot(ctx context.Context) (*Snapshot, error) {
	return readSnapshot(ctx, s.pool)
}

func stageName(table string) string { return "lookback_stage_" + table }

// pgStageDDL creates the staging tables once per connection: ON COMMIT
// DELETE ROWS empties them at each commit (a rolled-back Write's rows go
// with the rollback), so they are reused without creating and dropping
// catalog entries on every Write.
func pgStageDDL(tables []tableSpec) string {
	var sb strings.Builder
	for _, t := range tables {
		fmt.Fprintf(&sb, "CREATE TEMP TABLE IF NOT EXISTS %s (LIKE %s) ON COMMIT DELETE ROWS;\n", stageName(t.name), t.name)
	}
	return sb.String()
}

// pgUpsertSQL is INSERT .. SELECT .. ON CONFLICT DO UPDATE for impressions
// and clicks. The WHERE skips rows that are already identical, so that a
// replay rewrites nothing (no dead tuples, no WAL). ORDER BY the key makes
// concurrent Writes lock rows in one order (fewer deadlocks).
func pgUpsertSQL(t tableSpec) string {
	cols := t.columnNames()
	key := t.key[0]
	var set, old, exc []string
	for _, c := range cols {
		if c == key {
			continue
		}
		set = append(set, c+" = EXCLUDED."+c)
		old = append(old, t.name+"."+c)
		exc = append(exc, "EXCLUDED."+c)
	}
	list := strings.Join(cols, ", ")
	return fmt.Sprintf("INSERT INTO %s (%s) SELECT %s FROM %s ORDER BY %s\nON CONFLICT (%s) DO UPDATE SET %s\nWHERE (%s) IS DISTINCT FROM (%s)",
		t.name, list, list, stageName(t.name), key, key, strings.Join(set, ", "),
		strings.Join(old, ", "), strings.Join(exc, ", "))
}

// pgReplaceSQL replaces conversions' rows as a whole per (conversion_id,
// model): it deletes what the target holds for every key in the stage,
// then inserts the stage.
func pgReplaceSQL(t tableSpec) (del, ins string) {
	st := stageName(t.name)
	list := strings.Join(t.columnNames(), ", ")
	del = fmt.Sprintf("DELETE FROM %s t USING (SELECT DISTINCT conversion_id, model FROM %s) s WHERE t.conversion_id = s.conversion_id AND t.model = s.model", t.name, st)
	ins = fmt.Sprintf("INSERT INTO %s (%s) SELECT %s FROM %s ORDER BY conversion_id, model, touch_type, touch_id", t.name, list, list, st)
	return del, ins
}

// Write stages and merges facts in one transaction, or a large batch in
// concurrent parts. See PostgresSink and FactSink.
func (s *PostgresSink) Write(ctx context.Context, facts *attribution.Facts) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("writing facts: %w", err)
	}
	b := prepareBatch(facts)
	n := min(s.parallelism, b.rowCount()/s.minPartRows)
	if n < 2 {
		return s.writeTx(ctx, b)
	}
	// The first failure cancels the other parts: the caller retries the
	// whole Write anyway.
	g, gctx := errgroup.WithContext(ctx)
	for i, part := range b.split(n) {
		g.Go(func() error {
			if err := s.writeTx(gctx, part); err != nil {
				return fmt.Errorf("writing facts part %d of %d: %w", i+1, n, err)
			}
			return nil
		})
	}
	return g.Wait()
}

// writeTx stages and merges b in one transaction.
func (s *PostgresSink) writeTx(ctx context.Context, b *factBatch) (err error) {
	if b.empty() {
		return nil
	}
	imp, clk, att := impressionsSpec(), clicksSpec(), attributionsSpec()
	var used []tableSpec
	if len(b.impressions) > 0 {
		used = append(used, imp)
	}
	if len(b.clicks) > 0 {
		used = append(used, clk)
	}
	if len(b.rows) > 0 {
		used = append(used, att)
	}

	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("beginning the fact transaction: %w", err)
	}
	defer func() {
		if err != nil {
			_ = tx.Rollback(context.WithoutCancel(ctx))
		}
	}()
	// Zero arguments: one simple-protocol round trip for all three.
	if _, err := tx.Exec(ctx, pgStageDDL(used)); err != nil {
		return fmt.Errorf("creating the staging tables: %w", err)
	}

	if len(b.impressions) > 0 {
		src := pgx.CopyFromSlice(len(b.impressions), func(i int) ([]any, error) {
			return impressionValues(make([]any, 0, 12), b.impressions[i]), nil
		})
		if _, err := tx.CopyFrom(ctx, pgx.Identifier{stageName(imp.name)}, imp.columnNames(), src); err != nil {
			return fmt.Errorf("writing the impressions staging table: %w", err)
		}
	}
	if len(b.clicks) > 0 {
		src := pgx.CopyFromSlice(len(b.clicks), func(i int) ([]any, error) {
			return clickValues(make([]any, 0, 7), b.clicks[i]), nil
		})
		if _, err := tx.CopyFrom(ctx, pgx.Identifier{stageName(clk.name)}, clk.columnNames(), src); err != nil {
			return fmt.Errorf("writing the clicks staging table: %w", err)
		}
	}
	if len(b.rows) > 0 {
		src := pgx.CopyFromSlice(len(b.rows), func(i int) ([]any, error) {
			return attributionValues(make([]any, 0, 14), &b.rows[i]), nil
		})
		if _, err := tx.CopyFrom(ctx, pgx.Identifier{stageName(att.name)}, att.columnNames(), src); err != nil {
			return fmt.Errorf("writing the attributions staging table: %w", err)
		}
	}

	// The merge statements take no arguments: one simple-protocol round
	// trip, still inside the transaction.
	var merge strings.Builder
	if len(b.impressions) > 0 {
		merge.WriteString(pgUpsertSQL(imp) + ";\n")
	}
	if len(b.clicks) > 0 {
		merge.WriteString(pgUpsertSQL(clk) + ";\n")
	}
	if len(b.rows) > 0 {
		del, ins := pgReplaceSQL(att)
		merge.WriteString(del + ";\n" + ins + ";\n")
	}
	if _, err := tx.Exec(ctx, merge.String()); err != nil {
		return fmt.Errorf("merging staged facts: %w", err)
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("committing facts: %w", err)
	}
	return nil
}
