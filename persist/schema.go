package persist

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Dialect is the SQL flavour of a warehouse reached over the PostgreSQL
// wire protocol.
type Dialect int

const (
	// Postgres is PostgreSQL: COPY FROM STDIN, ON CONFLICT, enforced keys.
	Postgres Dialect = iota + 1
	// Redshift is Amazon Redshift: no COPY FROM STDIN, no ON CONFLICT,
	// informational keys, DISTKEY/SORTKEY, VARCHAR lengths in bytes.
	Redshift
)

func (d Dialect) String() string {
	switch d {
	case Postgres:
		return "postgres"
	case Redshift:
		return "redshift"
	}
	return fmt.Sprintf("dialect(%d)", int(d))
}

// DefaultRedshiftPort is used for a redshift:// DSN without a port.
const DefaultRedshiftPort = "5439"

// ParseWarehouseDSN reads a warehouse DSN: postgres:// or postgresql://
// is PostgreSQL, used as it is; redshift:// is Redshift, rewritten to a
// postgres:// connection string for pgx, on port 5439 when none is given.
func ParseWarehouseDSN(dsn string) (connString string, dialect Dialect, err error) {
	scheme, _, ok := strings.Cut(dsn, "://")
	if !ok {
		return "", 0, errors.New("warehouse DSN is not a URL (want postgres://, postgresql:// or redshift://)")
	}
	switch strings.ToLower(scheme) {
	case "postgres", "postgresql":
		return dsn, Postgres, nil
	case "redshift":
		u, err := url.Parse(dsn)
		if err != nil {
			return "", 0, fmt.Errorf("parsing the warehouse DSN: %w", err)
		}
		u.Scheme = "postgres"
		if u.Host == "" {
			return "", 0, errors.New("redshift DSN has no host")
		}
		if u.Port() == "" {
			u.Host = net.JoinHostPort(u.Hostname(), DefaultRedshiftPort)
		}
		return u.String(), Redshift, nil
	}
	return "", 0, fmt.Errorf("unsupported warehouse DSN scheme %q (want postgres://, postgresql:// or redshift://)", scheme)
}

// column is one column of a warehouse table.
type column struct {
	name    string
	typ     string
	notNull bool
}

// tableSpec describes a warehouse table once, for both dialects' DDL.
type tableSpec struct {
	name    string
	columns []column
	key     []string // primary key
	time    string   // leading sort key column on Redshift
}

func (t *tableSpec) columnNames() []string {
	names := make([]string, len(t.columns))
	for i, c := range t.columns {
		names[i] = c.name
	}
	return names
}

const (
	typeID       = "VARCHAR(256)"   // every event string is at most 256 bytes (attribution.MaxFieldLen)
	typeString   = "VARCHAR(256)"   //
	typeCriteria = "VARCHAR(65535)" // a JSON array of up to 64 criteria of 256 bytes
	typeTime     = "TIMESTAMPTZ"
	typeNumber   = "DOUBLE PRECISION"
)

// impressionsSpec and the two below are the warehouse tables of
// shared/spec/interfaces.md. Their column order is the order in which the
// sinks write values (see impressionValues and the others).
func impressionsSpec() tableSpec {
	return tableSpec{
		name: tableImpressions,
		columns: []column{
			{"impression_id", typeID, true},
			{"user_id", typeID, true},
			{"event_time", typeTime, true},
			{"ad_creative_id", typeString, false},
			{"campaign_id", typeString, false},
			{"website", typeString, false},
			{"auction_id", typeString, false},
			{"bid_price", typeNumber, false}, // NULL: no bid joined
			{"floor_price", typeNumber, false},
			{"bid_currency", typeString, false},
			{"exchange", typeString, false},
			{"targeting_criteria", typeCriteria, false},
		},
		key:  []string{"impression_id"},
		time: "event_time",
	}
}

func clicksSpec() tableSpec {
	return tableSpec{
		name: tableClicks,
		columns: []column{
			{"click_id", typeID, true},
			{"user_id", typeID, true},
			{"event_time", typeTime, true},
			{"ad_creative_id", typeString, false},
			{"campaign_id", typeString, false},
			{"impression_id", typeString, false},
			{"seconds_since_impression", typeNumber, false}, // NULL: not joined
		},
		key:  []string{"click_id"},
		time: "event_time",
	}
}

func attributionsSpec() tableSpec {
	return tableSpec{
		name: tableAttributions,
		columns: []column{
			{"conversion_id", typeID, true},
			{"user_id", typeID, true},
			{"model", "VARCHAR(32)", true},
			{"touch_type", "VARCHAR(16)", true},
			{"touch_id", typeID, true}, // '' for an organic conversion: part of the key
			{"ad_creative_id", typeString, false},
			{"campaign_id", typeString, false},
			{"touch_time", typeTime, false}, // NULL for an organic conversion
			{"conversion_time", typeTime, true},
			{"conversion_type", typeString, false},
			{"value", typeNumber, true},
			{"currency", typeString, false},
			{"credit", typeNumber, true},
			{"credited_value", typeNumber, true},
		},
		key:  []string{"conversion_id", "model", "touch_type", "touch_id"},
		time: "conversion_time",
	}
}

func warehouseTables() []tableSpec {
	return []tableSpec{impressionsSpec(), clicksSpec(), attributionsSpec()}
}

// createTableDDL renders one table's CREATE TABLE. Redshift distributes on
// user_id (one user's facts on one slice, so per-user joins stay local)
// and sorts on time then user (range scans by time are the common query),
// and has no indexes. PostgreSQL has only the primary key: every secondary
// index cost about a fifth of the ingest rate (measured), and text compares
// in byte order (COLLATE "C"): the spec's order for ids, and about 1.5x
// faster to index than a locale's collation.
func createTableDDL(t tableSpec, d Dialect) []string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "CREATE TABLE IF NOT EXISTS %s (\n", t.name)
	for _, c := range t.columns {
		fmt.Fprintf(&sb, "    %s %s", c.name, c.typ)
		if d == Postgres && strings.HasPrefix(c.typ, "VARCHAR") {
			sb.WriteString(` COLLATE "C"`)
		}
		if c.notNull {
			sb.WriteString(" NOT NULL")
		}
		sb.WriteString(",\n")
	}
	fmt.Fprintf(&sb, "    PRIMARY KEY (%s)\n)", strings.Join(t.key, ", "))
	if d == Redshift {
		fmt.Fprintf(&sb, "\nDISTSTYLE KEY DISTKEY (user_id) COMPOUND SORTKEY (%s, user_id)", t.time)
	}
	return []string{sb.String()}
}

// migration is one versioned step of the warehouse schema. Steps are
// append-only: a released step is never edited, a change is a new step.
type migration struct {
	version int
	name    string
	stmts   func(Dialect) []string
}

func migrations() []migration {
	return []migration{
		{
			version: 1,
			name:    "create fact tables",
			stmts: func(d Dialect) []string {
				var out []string
				for _, t := range warehouseTables() {
					out = append(out, createTableDDL(t, d)...)
				}
				return out
			},
		},
	}
}

// SchemaDDL returns every migration's statements for the dialect, in
// order, for review and for running by hand.
func SchemaDDL(d Dialect) []string {
	var out []string
	for _, m := range migrations() {
		out = append(out, m.stmts(d)...)
	}
	return out
}

// Migrate brings the warehouse schema of the pool's database (its
// search_path's first schema) to the latest version. Applied versions are
// recorded in lookback_schema_migrations; running it again does nothing,
// and concurrent runs serialize: on PostgreSQL on an advisory transaction
// lock (per schema), on Redshift, which has no advisory locks, on LOCK of
// the migrations table inside the transaction.
func Migrate(ctx context.Context, pool *pgxpool.Pool, dialect Dialect) error {
	return runMigrations(ctx, pool, dialect, dialect, migrations())
}

// runMigrations applies ms with the locking of lockDialect and the DDL of
// ddlDialect. They differ only in tests, which run Redshift's locking
// against PostgreSQL with PostgreSQL's DDL.
func runMigrations(ctx context.Context, pool *pgxpool.Pool, lockDialect, ddlDialect Dialect, ms []migration) error {
	if lockDialect != Postgres && lockDialect != Redshift {
		return fmt.Errorf("migrating: unknown dialect %v", lockDialect)
	}
	createLog := fmt.Sprintf(`CREATE TABLE IF NOT EXISTS %s (
    version INTEGER NOT NULL,
    name VARCHAR(256) NOT NULL,
    applied_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (version)
)`, tableMigrations)
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("connecting to migrate: %w", err)
	}
	defer conn.Release()

	if lockDialect == Redshift {
		// The table to LOCK must exist before the transaction. Two
		// concurrent first runs may both try to create it; the loser's
		// error is retried once, when the table exists.
		if _, err := conn.Exec(ctx, createLog); err != nil {
			if _, err2 := conn.Exec(ctx, createLog); err2 != nil {
				return fmt.Errorf("creating the migrations table: %w", errors.Join(err, err2))
			}
		}
	}
	const attempts = 4
	for attempt := 1; ; attempt++ {
		err = migrateOnce(ctx, conn.Conn(), lockDialect, ddlDialect, createLog, ms)
		if err == nil || lockDialect != Redshift || attempt == attempts || !isRedshiftConflict(err) {
			return err
		}
		if err := sleepCtx(ctx, backoff(attempt)); err != nil {
			return err
		}
	}
}

func migrateOnce(ctx context.Context, conn *pgx.Conn, lockDialect, ddlDialect Dialect, createLog string, ms []migration) (err error) {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return fmt.Errorf("beginning the migration: %w", err)
	}
	defer func() {
		if err != nil {
			_ = tx.Rollback(context.WithoutCancel(ctx))
		}
	}()
	if lockDialect == Postgres {
		// Lock first, then create: two first runs must not race on the
		// CREATE TABLE IF NOT EXISTS (it can fail on a catalog unique index).
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock(hashtext($1), hashtext(current_schema()))",
			pgx.QueryExecModeExec, tableMigrations); err != nil {
			return fmt.Errorf("taking the migration lock: %w", err)
		}
		if _, err := tx.Exec(ctx, createLog); err != nil {
			return fmt.Errorf("creating the migrations table: %w", err)
		}
	} else {
		if _, err := tx.Exec(ctx, "LOCK "+tableMigrations); err != nil {
			return fmt.Errorf("taking the migration lock: %w", err)
		}
	}
	rows, err := tx.Query(ctx, "SELECT version FROM "+tableMigrations, pgx.QueryExecModeExec)
	if err != nil {
		return fmt.Errorf("reading applied migrations: %w", err)
	}
	applied, err := pgx.CollectRows(rows, pgx.RowTo[int32])
	if err != nil {
		return fmt.Errorf("reading applied migrations: %w", err)
	}
	done := make(map[int]bool, len(applied))
	for _, v := range applied {
		done[int(v)] = true
	}
	for _, m := range ms {
		if done[m.version] {
			continue
		}
		for _, stmt := range m.stmts(ddlDialect) {
			if _, err := tx.Exec(ctx, stmt); err != nil {
				return fmt.Errorf("applying migration %d (%s): %w", m.version, m.name, err)
			}
		}
		if _, err := tx.Exec(ctx, "INSERT INTO "+tableMigrations+" (version, name, applied_at) VALUES ($1, $2, $3)",
			pgx.QueryExecModeExec, m.version, m.name, time.Now().UTC()); err != nil {
			return fmt.Errorf("recording migration %d: %w", m.version, err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("committing the migration: %w", err)
	}
	return nil
}

// backoff is the wait before retry attempt+1 of a Redshift transaction.
func backoff(attempt int) time.Duration {
	return time.Duration(50<<min(attempt, 6)) * time.Millisecond
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
