package persist

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/lookback-dev/lookback/attribution"
)

// WarehouseSink is a fact sink on a SQL warehouse (PostgresSink or
// RedshiftSink).
type WarehouseSink interface {
	FactSink
	SnapshotReader
	// Dialect is the sink's SQL dialect.
	Dialect() Dialect
	// Pool is the sink's connection pool (for Migrate and for queries).
	Pool() *pgxpool.Pool
}

// SinkConfig configures OpenSink.
type SinkConfig struct {
	// MaxConns bounds the pool. A Write takes one connection, or up to
	// WriteParallelism on PostgreSQL; Snapshot and Migrate take one more.
	// So MaxConns must exceed WriteParallelism: when it does not, the
	// parallelism is lowered to MaxConns-1 (at least 1). Default 4.
	MaxConns int32
	// MaxConnLifetime closes connections older than this. Default 1h.
	MaxConnLifetime time.Duration
	// ConnectTimeout bounds establishing one connection when the DSN sets
	// none. Default 10s.
	ConnectTimeout time.Duration
	// WriteParallelism is the concurrent transactions of one large
	// PostgreSQL Write, each on its own connection, so that PostgreSQL
	// merges it on as many cores (a backend uses one). A batch is split
	// only into parts of at least 10k rows. Redshift ignores it: its Write
	// is always one transaction. Default 2.
	WriteParallelism int
	// Redshift tunes the Redshift dialect.
	Redshift RedshiftConfig
}

// DefaultSinkConfig returns the defaults.
func DefaultSinkConfig() SinkConfig {
	return SinkConfig{
		MaxConns:         4,
		MaxConnLifetime:  time.Hour,
		ConnectTimeout:   10 * time.Second,
		WriteParallelism: 2,
		Redshift:         DefaultRedshiftConfig(),
	}
}

// withDefaults fills zero fields with their defaults.
func (c SinkConfig) withDefaults() SinkConfig {
	d := DefaultSinkConfig()
	if c.MaxConns == 0 {
		c.MaxConns = d.MaxConns
	}
	if c.MaxConnLifetime == 0 {
		c.MaxConnLifetime = d.MaxConnLifetime
	}
	if c.ConnectTimeout == 0 {
		c.ConnectTimeout = d.ConnectTimeout
	}
	if c.WriteParallelism == 0 {
		c.WriteParallelism = d.WriteParallelism
	}
	c.Redshift = c.Redshift.withDefaults()
	return c
}

// Validate reports the first invalid field (zero fields take defaults).
func (c SinkConfig) Validate() error {
	c = c.withDefaults()
	if c.MaxConns < 1 {
		return fmt.Errorf("sink max conns %d: want at least 1", c.MaxConns)
	}
	if c.MaxConnLifetime < 0 {
		return fmt.Errorf("sink max conn lifetime %v: want positive", c.MaxConnLifetime)
	}
	if c.ConnectTimeout < 0 {
		return fmt.Errorf("sink connect timeout %v: want positive", c.ConnectTimeout)
	}
	if c.WriteParallelism < 1 {
		return fmt.Errorf("sink write parallelism %d: want at least 1", c.WriteParallelism)
	}
	return c.Redshift.Validate()
}

// OpenSink connects to the warehouse of dsn (see ParseWarehouseDSN) and
// returns its sink: a PostgresSink or a RedshiftSink, which owns the pool
// (Close closes it). It does not migrate: call Migrate(ctx, s.Pool(),
// s.Dialect()) for that. It pings the database so that a wrong DSN fails
// here rather than at the first checkpoint.
func OpenSink(ctx context.Context, dsn string, cfg SinkConfig) (WarehouseSink, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	connString, dialect, err := ParseWarehouseDSN(dsn)
	if err != nil {
		return nil, err
	}
	pcfg, err := pgxpool.ParseConfig(connString)
	if err != nil {
		return nil, fmt.Errorf("parsing the warehouse DSN: %w", err)
	}
	pcfg.MaxConns = cfg.MaxConns
	pcfg.MaxConnLifetime = cfg.MaxConnLifetime
	if pcfg.ConnConfig.ConnectTimeout == 0 {
		pcfg.ConnConfig.ConnectTimeout = cfg.ConnectTimeout
	}
	if dialect == Redshift {
		// No server-side prepared statements: see redshift.md (staging
		// tables are dropped and recreated, which invalidates cached plans,
		// and the simple protocol with arguments is refused by pgx there).
		pcfg.ConnConfig.DefaultQueryExecMode = pgx.QueryExecModeExec
	}
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		return nil, fmt.Errorf("connecting to the warehouse: %w", err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("connecting to the warehouse: %w", err)
	}
	if dialect == Redshift {
		s, err := NewRedshiftSink(pool, cfg.Redshift)
		if err != nil {
			pool.Close()
			return nil, err
		}
		s.ownsPool = true
		return s, nil
	}
	s := newPostgresSink(pool, cfg.WriteParallelism)
	s.ownsPool = true
	return s, nil
}

// querier is what snapshot reading needs of a pool or a connection.
type querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// readSnapshot reads the three tables back into facts. It runs in exec
// mode (text results), which both dialects accept.
func readSnapshot(ctx context.Context, q querier) (*Snapshot, error) {
	s := &Snapshot{}
	sel := func(t tableSpec) string {
		return "SELECT " + strings.Join(t.columnNames(), ", ") + " FROM " + t.name
	}

	rows, err := q.Query(ctx, sel(impressionsSpec()), pgx.QueryExecModeExec)
	if err != nil {
		return nil, fmt.Errorf("reading impressions: %w", err)
	}
	s.Impressions, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (attribution.ImpressionFact, error) {
		var (
			f                                    attribution.ImpressionFact
			t                                    time.Time
			creative, campaign, website, auction *string
			bidPrice, floor                      *float64
			currency, exchange, criteria         *string
		)
		if err := r.Scan(&f.ImpressionID, &f.UserID, &t, &creative, &campaign, &website, &auction,
			&bidPrice, &floor, &currency, &exchange, &criteria); err != nil {
			return f, err
		}
		f.Time = t.UnixMilli()
		f.CreativeID, f.CampaignID, f.Website, f.AuctionID = deref(creative), deref(campaign), deref(website), deref(auction)
		if bidPrice != nil {
			c, err := parseCriteria(deref(criteria))
			if err != nil {
				return f, err
			}
			f.Bid = &attribution.Bid{BidPrice: *bidPrice, FloorPrice: derefF(floor),
				Currency: deref(currency), Exchange: deref(exchange), Criteria: c}
		}
		return f, nil
	})
	if err != nil {
		return nil, fmt.Errorf("reading impressions: %w", err)
	}

	rows, err = q.Query(ctx, sel(clicksSpec()), pgx.QueryExecModeExec)
	if err != nil {
		return nil, fmt.Errorf("reading clicks: %w", err)
	}
	s.Clicks, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (attribution.ClickFact, error) {
		var (
			f                         attribution.ClickFact
			t                         time.Time
			creative, campaign, impID *string
			since                     *float64
		)
		if err := r.Scan(&f.ClickID, &f.UserID, &t, &creative, &campaign, &impID, &since); err != nil {
			return f, err
		}
		f.Time = t.UnixMilli()
		f.CreativeID, f.CampaignID, f.ImpressionID = deref(creative), deref(campaign), deref(impID)
		if since != nil {
			f.Joined, f.SinceImpression = true, sinceFromSeconds(*since)
		}
		return f, nil
	})
	if err != nil {
		return nil, fmt.Errorf("reading clicks: %w", err)
	}

	rows, err = q.Query(ctx, sel(attributionsSpec()), pgx.QueryExecModeExec)
	if err != nil {
		return nil, fmt.Errorf("reading conversion attributions: %w", err)
	}
	s.Attributions, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (attribution.AttributionRow, error) {
		var (
			a                                  attribution.AttributionRow
			model, touchType                   string
			creative, campaign, convType, curr *string
			touchTime                          *time.Time
			convTime                           time.Time
		)
		if err := r.Scan(&a.ConversionID, &a.UserID, &model, &touchType, &a.TouchID, &creative, &campaign,
			&touchTime, &convTime, &convType, &a.Value, &curr, &a.Credit, &a.CreditedValue); err != nil {
			return a, err
		}
		var err error
		if a.Model, err = attribution.ParseModel(model); err != nil {
			return a, err
		}
		if a.TouchType, err = parseTouchType(touchType); err != nil {
			return a, err
		}
		a.CreativeID, a.CampaignID = deref(creative), deref(campaign)
		if touchTime != nil {
			a.TouchTime = touchTime.UnixMilli()
		}
		a.ConversionTime = convTime.UnixMilli()
		a.ConversionType, a.Currency = deref(convType), deref(curr)
		return a, nil
	})
	if err != nil {
		return nil, fmt.Errorf("reading conversion attributions: %w", err)
	}
	sortSnapshot(s)
	return s, nil
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

func derefF(f *float64) float64 {
	if f == nil {
		return 0
	}
	return *f
}

// isRedshiftConflict reports Redshift's serializable isolation errors,
// which it raises as SQLSTATE XX000 (not 40001) with error 1023, and its
// "conflict with concurrent transaction". 40001 is accepted too.
func isRedshiftConflict(err error) bool {
	var pe *pgconn.PgError
	if !errors.As(err, &pe) {
		return false
	}
	if pe.Code == "40001" {
		return true
	}
	if pe.Code != "XX000" {
		return false
	}
	text := pe.Message + " " + pe.Detail
	return strings.Contains(text, "1023") ||
		strings.Contains(text, "Serializable isolation violation") ||
		strings.Contains(text, "conflict with concurrent transaction")
}
