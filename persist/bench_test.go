package persist_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/lookback-dev/lookback/attribution"
	"github.com/lookback-dev/lookback/persist"
	"github.com/lookback-dev/lookback/persist/persisttest"
)

// benchCheckpoints returns one checkpoint per partition of users states of
// size bytes each.
func benchCheckpoints(partitions, users, size int, o persist.Owner) []persist.PartitionCheckpoint {
	rng := rand.New(rand.NewPCG(1, 1))
	cps := make([]persist.PartitionCheckpoint, partitions)
	for p := range cps {
		states := make([]persist.UserState, users)
		for u := range states {
			st := make([]byte, size)
			for i := range st {
				st[i] = byte(rng.IntN(256))
			}
			states[u] = persist.UserState{UserID: fmt.Sprintf("user-%d-%d", p, u), State: st}
		}
		cps[p] = persist.PartitionCheckpoint{Partition: int32(p), Owner: o, States: states,
			Offsets: map[string]int64{"ad_impressions": 1, "bid_requests": 2, "clicks": 3, "conversions": 4}}
	}
	return cps
}

func benchCommit(b *testing.B, s persist.CheckpointStore, partitions int) {
	ctx := context.Background()
	o := persist.Owner{Node: "bench", Generation: 1}
	for p := range partitions {
		if _, err := s.Claim(ctx, int32(p), o); err != nil {
			b.Fatal(err)
		}
	}
	cps := benchCheckpoints(partitions, 1000, 300, o)
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; i++ {
		for _, err := range s.Commit(ctx, cps) {
			if err != nil {
				b.Fatal(err)
			}
		}
	}
	b.ReportMetric(float64(b.N*partitions*1000)/time.Since(start).Seconds(), "states/s")
}

// BenchmarkRedisStoreCommit: one checkpoint cycle of 12 partitions of
// 1,000 users of 300 B each.
func BenchmarkRedisStoreCommit(b *testing.B) {
	client, prefix := persist.RedisTestClient(b)
	cfg := persist.DefaultRedisStoreConfig()
	cfg.KeyPrefix = prefix
	s, err := persist.NewRedisStore(client, cfg)
	if err != nil {
		b.Fatal(err)
	}
	benchCommit(b, s, 12)
}

// BenchmarkFileStoreCommit: a commit of 1,000 users of 300 B (one fsync).
func BenchmarkFileStoreCommit(b *testing.B) {
	s, err := persist.NewFileStore(persist.FileStoreConfig{Dir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	benchCommit(b, s, 1)
}

// benchWrite writes 10,000 new mixed facts per op (4,000 impressions,
// 4,000 clicks, 2,000 conversions) and reports warehouse rows per second.
func benchWrite(b *testing.B, sink persist.FactSink) {
	benchWriteFacts(b, sink, func(g *persisttest.Gen) *attribution.Facts { return g.Facts(4000, 4000, 2000) })
}

// benchWriteFacts writes a batch of facts per op and reports warehouse
// rows per second.
func benchWriteFacts(b *testing.B, sink persist.FactSink, facts func(*persisttest.Gen) *attribution.Facts) {
	ctx := context.Background()
	g := persisttest.NewGen(1, "bench-")
	var rows int
	var elapsed time.Duration
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		f := facts(g)
		rows += persisttest.Rows(f)
		b.StartTimer()
		start := time.Now()
		if err := sink.Write(ctx, f); err != nil {
			b.Fatal(err)
		}
		elapsed += time.Since(start)
	}
	b.ReportMetric(float64(rows)/elapsed.Seconds(), "rows/s")
	b.ReportMetric(float64(rows)/float64(b.N), "rows/op")
}

func BenchmarkPostgresSinkWrite(b *testing.B) {
	pool, _ := persist.PGTestSchema(b, pgx.QueryExecModeCacheStatement)
	if err := persist.Migrate(context.Background(), pool, persist.Postgres); err != nil {
		b.Fatal(err)
	}
	benchWrite(b, persist.NewPostgresSink(pool))
}

// BenchmarkPostgresSinkWriteLarge writes batches of new facts in a
// catch-up's mix (60% impressions, 30% clicks, 10% attribution rows) in
// one transaction and in two concurrent ones, at sizes around the split
// threshold (defaultMinPartRows) and at the engine's largest Write.
func BenchmarkPostgresSinkWriteLarge(b *testing.B) {
	for _, rows := range []int{10_000, 20_000, 50_000, 200_000} {
		for _, par := range []int{1, 2} {
			b.Run(fmt.Sprintf("rows=%d/parallelism=%d", rows, par), func(b *testing.B) {
				pool, _ := persist.PGTestSchema(b, pgx.QueryExecModeCacheStatement)
				if err := persist.Migrate(context.Background(), pool, persist.Postgres); err != nil {
					b.Fatal(err)
				}
				// Split whatever the size: this measures the threshold.
				sink := persist.PostgresTestSink(pool, par, 1)
				// A conversion makes 4.65 rows on average.
				benchWriteFacts(b, sink, func(g *persisttest.Gen) *attribution.Facts {
					return g.Facts(rows*6/10, rows*3/10, rows/10*100/465)
				})
			})
		}
	}
}

// BenchmarkRedshiftSinkWrite runs the Redshift dialect against PostgreSQL:
// it measures our side (statement building, multi-row INSERT, merge), not
// Redshift.
func BenchmarkRedshiftSinkWrite(b *testing.B) {
	pool, _ := persist.PGTestSchema(b, pgx.QueryExecModeExec)
	if err := persist.Migrate(context.Background(), pool, persist.Postgres); err != nil {
		b.Fatal(err)
	}
	s, err := persist.NewRedshiftSink(pool, persist.DefaultRedshiftConfig())
	if err != nil {
		b.Fatal(err)
	}
	benchWrite(b, s)
}

func BenchmarkFileSinkWrite(b *testing.B) {
	s, err := persist.NewFileSink(persist.FileSinkConfig{Dir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	benchWrite(b, s)
}
