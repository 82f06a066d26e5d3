package actors

import (
	"context"
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/lookback-dev/lookback/attribution"
	"github.com/lookback-dev/lookback/ingest"
	"github.com/lookback-dev/lookback/internal/testenv"
	"github.com/lookback-dev/lookback/persist"
)

// discardSink accepts facts and keeps nothing, so that memory measured
// after a checkpoint is the users' alone.
type discardSink struct{}

func (discardSink) Write(context.Context, *attribution.Facts) error { return nil }
func (discardSink) Close() error                                    { return nil }

// BenchmarkUserMemory measures the memory of an active user holding ten
// touches: its actor, its mailbox, its state and its entry in the
// partition, after the records are applied and checkpointed. Ids are
// UUIDs; creatives and campaigns are shared strings, as the decoders'
// interning makes them.
func BenchmarkUserMemory(b *testing.B) {
	const users, touches = 50_000, 10
	creatives := make([]string, 50)
	for i := range creatives {
		creatives[i] = fmt.Sprintf("creative-%02d", i)
	}
	base := time.Now().Add(-time.Hour).UnixMilli()
	var stream []attribution.Event
	for t := 0; t < touches; t++ {
		for u := 0; u < users; u++ {
			typ := attribution.TypeImpression
			if t%3 == 2 {
				typ = attribution.TypeClick
			}
			stream = append(stream, attribution.Event{
				Type: typ, UserID: fmt.Sprintf("user-%07d", u), ID: uuidOf(t*users + u),
				Time: base + int64(t)*60_000 + int64(u%1000), CreativeID: creatives[u%50], CampaignID: creatives[(u+t)%50],
			})
		}
	}
	// Redis, as in production: a file store keeps an index in the
	// process, which is the store's memory, not the users'.
	client, prefix := testenv.Redis(b)
	storeCfg := persist.DefaultRedisStoreConfig()
	storeCfg.KeyPrefix = prefix
	store, err := persist.NewRedisStore(client, storeCfg)
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		b.StopTimer()
		runtime.GC()
		var before runtime.MemStats
		runtime.ReadMemStats(&before)

		cfg := DefaultConfig()
		cfg.NodeID, cfg.Partitions, cfg.Rules = "mem", 1, allModels(b)
		cfg.CheckpointInterval = 100 * time.Millisecond
		cfg.Watermark.IdleTimeout = 100 * time.Millisecond
		reg := prometheus.NewRegistry()
		e, err := NewEngine(cfg, store, discardSink{}, nil, testenv.Logger(), reg)
		if err != nil {
			b.Fatal(err)
		}
		e.Attach(nopKafka{})
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- e.Run(ctx) }()
		if _, err := e.Assign(ctx, int32(time.Now().Unix()), []int32{0}); err != nil {
			b.Fatal(err)
		}
		var in streamBatches
		for _, batch := range in.batches(stream, 10_000, true) {
			if err := e.Handle(ctx, []ingest.PartitionBatch{batch}); err != nil {
				b.Fatal(err)
			}
		}
		testenv.CheckFor(b, 5*time.Minute, 50*time.Millisecond, func() error {
			if got := testutilGauge(b, reg, "lookback_events_applied_total"); got < float64(len(stream)) {
				return fmt.Errorf("%v of %d applied and checkpointed", got, len(stream))
			}
			return nil
		})
		// Let two more checkpoints finish, so that none holds the states
		// it committed when the heap is read.
		cycles := histCount(b, reg, "lookback_checkpoint_duration_seconds")
		testenv.CheckFor(b, time.Minute, 20*time.Millisecond, func() error {
			if got := histCount(b, reg, "lookback_checkpoint_duration_seconds"); got < cycles+2 {
				return fmt.Errorf("%v checkpoints", got)
			}
			return nil
		})
		runtime.GC()
		runtime.GC()
		var after runtime.MemStats
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/users, "bytes/user")
		if got := testutilGauge(b, reg, "lookback_active_users"); got != users {
			b.Fatalf("%v active users, want %d", got, users)
		}
		cancel()
		<-done
		e.Close()
		b.StartTimer()
	}
}

// uuidOf returns a canonical UUID-shaped id.
func uuidOf(n int) string {
	return fmt.Sprintf("%08x-%04x-4%03x-8%03x-%012x", uint32(n*2654435761), n&0xffff, n&0xfff, (n>>12)&0xfff, n)
}

// histCount is a histogram's number of observations (over all labels).
func histCount(t testing.TB, reg *prometheus.Registry, name string) uint64 {
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var n uint64
	for _, mf := range mfs {
		if mf.GetName() == name {
			for _, m := range mf.GetMetric() {
				n += m.GetHistogram().GetSampleCount()
			}
		}
	}
	return n
}
