package persist

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/lookback-dev/lookback/attribution"
)

// RedshiftConfig tunes the Redshift dialect's writes.
type RedshiftConfig struct {
	// MaxParams bounds the bind parameters of one INSERT statement.
	// Redshift allows $1..$32767. Default 32767.
	MaxParams int
	// MaxStatementBytes bounds one INSERT's estimated size (its text plus
	// its parameter values): Redshift refuses statements over 16 MB.
	// Default 15 MiB, leaving room for the estimate's error.
	MaxStatementBytes int
	// MaxAttempts is how often Write tries the merge transaction when
	// Redshift aborts it for a serializable isolation conflict. Default 4.
	MaxAttempts int
}

// DefaultRedshiftConfig returns the defaults.
func DefaultRedshiftConfig() RedshiftConfig {
	return RedshiftConfig{MaxParams: 32767, MaxStatementBytes: 15 << 20, MaxAttempts: 4}
}

func (c RedshiftConfig) withDefaults() RedshiftConfig {
	d := DefaultRedshiftConfig()
	if c.MaxParams == 0 {
		c.MaxParams = d.MaxParams
	}
	if c.MaxStatementBytes == 0 {
		c.MaxStatementBytes = d.MaxStatementBytes
	}
	if c.MaxAttempts == 0 {
		c.MaxAttempts = d.MaxAttempts
	}
	return c
}

// Validate reports the first invalid field (zero fields take defaults).
func (c RedshiftConfig) Validate() error {
	c = c.withDefaults()
	if c.MaxParams < 14 || c.MaxParams > 32767 {
		return fmt.Errorf("redshift max params %d: want 14 (one row) to 32767", c.MaxParams)
	}
	if c.MaxStatementBytes < 1<<16 || c.MaxStatementBytes > 16<<20 {
		return fmt.Errorf("redshift max statement bytes %d: want 64 KiB to 16 MiB", c.MaxStatementBytes)
	}
	if c.MaxAttempts < 1 {
		return fmt.Errorf("redshift max attempts %d: want at least 1", c.MaxAttempts)
	}
	return nil
}

// RedshiftSink writes facts in Redshift's dialect. Redshift has no COPY
// FROM STDIN and no ON CONFLICT, so a Write
//
//  1. recreates session-private staging tables (CREATE TEMP TABLE .. (LIKE
//     target), which inherits the target's DISTKEY and SORTKEY) and fills
//     them with multi-row INSERTs, each bounded by 32767 parameters and
//     16 MB, outside any transaction (staging locks nothing others use);
//  2. in one transaction, deletes the target rows whose keys are staged
//     (DELETE .. USING) and inserts the stage (INSERT .. SELECT);
//  3. retries step 2 alone when Redshift aborts it with a serializable
//     isolation violation: the stage is intact, and this retry is the
//     dialect's own business, not the caller's backoff.
//
// Every statement runs in pgx's exec mode (unnamed statements, text
// format): no prepared statement cache to go stale when the staging tables
// are recreated.
//
// Unlike PostgresSink, a Write is never split into concurrent
// transactions (SinkConfig.WriteParallelism does not apply): Redshift's
// INSERT and DELETE take a write lock on the whole table, so concurrent
// writers to one table wait for each other (parts would gain nothing), and
// they risk serializable isolation violations (or, under snapshot
// isolation, deadlocks) besides.
//
// The same DML runs on PostgreSQL, which is how it is tested.
type RedshiftSink struct {
	pool     *pgxpool.Pool
	cfg      RedshiftConfig
	ownsPool bool
}

// NewRedshiftSink returns a sink writing through pool, which it does not
// close. The schema must have been migrated (Migrate).
func NewRedshiftSink(pool *pgxpool.Pool, cfg RedshiftConfig) (*RedshiftSink, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &RedshiftSink{pool: pool, cfg: cfg.withDefaults()}, nil
}

// Dialect returns Redshift.
func (s *RedshiftSink) Dialect() Dialect { return Redshift }

// Pool returns the sink's pool.
func (s *RedshiftSink) Pool() *pgxpool.Pool { return s.pool }

// Close closes the pool when OpenSink opened it.
func (s *RedshiftSink) Close() error {
	if s.ownsPool {
		s.pool.Close()
	}
	return nil
}

// Snapshot reads all facts back.
func (s *RedshiftSink) Snapshot(ctx context.Context) (*Snapshot, error) {
	return readSnapshot(ctx, s.pool)
}

// stagedTable is one table's part of a Write.
type stagedTable struct {
	spec tableSpec
	n    int                          // rows
	row  func(dst []any, i int) []any // appends row i's values
	size func(i int) int              // estimates row i's bytes as bound text
}

// Write stages and merges facts. See FactSink and RedshiftSink.
func (s *RedshiftSink) Write(ctx context.Context, facts *attribution.Facts) (err error) {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("writing facts: %w", err)
	}
	b := prepareBatch(facts)
	if b.empty() {
		return nil
	}
	var tables []stagedTable
	if n := len(b.impressions); n > 0 {
		tables = append(tables, stagedTable{impressionsSpec(), n,
			func(dst []any, i int) []any { return impressionValues(dst, b.impressions[i]) },
			func(i int) int { return impressionSize(b.impressions[i]) }})
	}
	if n := len(b.clicks); n > 0 {
		tables = append(tables, stagedTable{clicksSpec(), n,
			func(dst []any, i int) []any { return clickValues(dst, b.clicks[i]) },
			func(i int) int { return clickSize(b.clicks[i]) }})
	}
	if n := len(b.rows); n > 0 {
		tables = append(tables, stagedTable{attributionsSpec(), n,
			func(dst []any, i int) []any { return attributionValues(dst, &b.rows[i]) },
			func(i int) int { return attributionSize(&b.rows[i]) }})
	}

	// Temp tables belong to a session: the whole Write uses one connection.
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("connecting to the warehouse: %w", err)
	}
	defer conn.Release()
	c := conn.Conn()

	for _, t := range tables {
		if err := s.stage(ctx, c, t); err != nil {
			return err
		}
	}
	for attempt := 1; ; attempt++ {
		err = s.merge(ctx, c, tables)
		if err == nil {
			break
		}
		if attempt >= s.cfg.MaxAttempts || !isRedshiftConflict(err) {
			return err
		}
		if err := sleepCtx(ctx, backoff(attempt)); err != nil {
			return fmt.Errorf("writing facts: %w", err)
		}
	}
	// Drop the stage now rather than at the next Write, to free its space
	// (Redshift temp tables hold disk until the session ends). A failure
	// here changes nothing: the next Write drops them first anyway.
	names := make([]string, len(tables))
	for i, t := range tables {
		names[i] = stageName(t.spec.name)
	}
	_, _ = c.Exec(ctx, "DROP TABLE IF EXISTS "+strings.Join(names, ", "))
	return nil
}

// stage recreates t's staging table and fills it with multi-row INSERTs.
func (s *RedshiftSink) stage(ctx context.Context, c *pgx.Conn, t stagedTable) error {
	st := stageName(t.spec.name)
	if _, err := c.Exec(ctx, "DROP TABLE IF EXISTS "+st); err != nil {
		return fmt.Errorf("dropping the %s staging table: %w", t.spec.name, err)
	}
	if _, err := c.Exec(ctx, "CREATE TEMP TABLE "+st+" (LIKE "+t.spec.name+")"); err != nil {
		return fmt.Errorf("creating the %s staging table: %w", t.spec.name, err)
	}
	ncol := len(t.spec.columns)
	maxRows := s.cfg.MaxParams / ncol
	head := "INSERT INTO " + st + " (" + strings.Join(t.spec.columnNames(), ", ") + ") VALUES "
	// args[0] selects exec mode whatever the pool's default is.
	args := make([]any, 1, 1+min(t.n, maxRows)*ncol)
	args[0] = pgx.QueryExecModeExec
	var sql strings.Builder
	for start := 0; start < t.n; {
		// Take rows while both limits hold (at least one row).
		end, bytes := start, len(head)
		for end < t.n && end-start < maxRows {
			rb := t.size(end) + ncol*8 // values plus "($n, ...)," text
			if end > start && bytes+rb > s.cfg.MaxStatementBytes {
				break
			}
			bytes += rb
			end++
		}
		args = args[:1]
		sql.Reset()
		sql.WriteString(head)
		p := 1
		for i := start; i < end; i++ {
			if i > start {
				sql.WriteByte(',')
			}
			sql.WriteByte('(')
			for j := 0; j < ncol; j++ {
				if j > 0 {
					sql.WriteByte(',')
				}
				sql.WriteByte('$')
				sql.WriteString(strconv.Itoa(p))
				p++
			}
			sql.WriteByte(')')
			args = t.row(args, i)
		}
		if _, err := c.Exec(ctx, sql.String(), args...); err != nil {
			return fmt.Errorf("writing the %s staging table: %w", t.spec.name, err)
		}
		start = end
	}
	return nil
}

// merge replaces the targets' staged keys in one transaction. Impressions
// and clicks are keyed by id; conversion rows by (conversion_id, model),
// so a conversion's rows are replaced as a whole. Redshift's DELETE allows
// no alias for its target.
func (s *RedshiftSink) merge(ctx context.Context, c *pgx.Conn, tables []stagedTable) (err error) {
	tx, err := c.Begin(ctx)
	if err != nil {
		return fmt.Errorf("beginning the fact transaction: %w", err)
	}
	defer func() {
		if err != nil {
			_ = tx.Rollback(context.WithoutCancel(ctx))
		}
	}()
	for _, t := range tables {
		name, st := t.spec.name, stageName(t.spec.name)
		keys := t.spec.key[:1]
		if name == tableAttributions {
			keys = []string{"conversion_id", "model"}
		}
		var on []string
		for _, k := range keys {
			on = append(on, name+"."+k+" = "+st+"."+k)
		}
		if _, err := tx.Exec(ctx, "DELETE FROM "+name+" USING "+st+" WHERE "+strings.Join(on, " AND ")); err != nil {
			return fmt.Errorf("deleting replaced %s rows: %w", name, err)
		}
		list := strings.Join(t.spec.columnNames(), ", ")
		if _, err := tx.Exec(ctx, "INSERT INTO "+name+" ("+list+") SELECT "+list+" FROM "+st); err != nil {
			return fmt.Errorf("inserting staged %s rows: %w", name, err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("committing facts: %w", err)
	}
	return nil
}

// Size estimates: the text of each bound value. A timestamp is at most 32
// bytes of text, a double is measured (pgx sends the shortest exact
// decimal, which is long for huge values), and strings are sent as they
// are. The estimate is an upper bound.
const timeTextBytes = 32

func floatSize(v float64) int {
	var buf [32]byte
	return len(strconv.AppendFloat(buf[:0], v, 'f', -1, 64))
}

func impressionSize(f *attribution.ImpressionFact) int {
	n := len(f.ImpressionID) + len(f.UserID) + timeTextBytes + len(f.CreativeID) + len(f.CampaignID) +
		len(f.Website) + len(f.AuctionID)
	if f.Bid != nil {
		n += floatSize(f.Bid.BidPrice) + floatSize(f.Bid.FloorPrice) + len(f.Bid.Currency) + len(f.Bid.Exchange) + 2
		for _, c := range f.Bid.Criteria {
			n += 2*len(c) + 3 // quoted, every byte escaped at worst
		}
	}
	return n
}

func clickSize(f *attribution.ClickFact) int {
	return len(f.ClickID) + len(f.UserID) + timeTextBytes + len(f.CreativeID) + len(f.CampaignID) +
		len(f.ImpressionID) + floatSize(float64(f.SinceImpression)/1000)
}

func attributionSize(r *attribution.AttributionRow) int {
	return len(r.ConversionID) + len(r.UserID) + 16 + 12 + len(r.TouchID) + len(r.CreativeID) +
		len(r.CampaignID) + 2*timeTextBytes + len(r.ConversionType) + len(r.Currency) +
		floatSize(r.Value) + floatSize(r.Credit) + floatSize(r.CreditedValue)
}
