package actors

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/lookback-dev/lookback/attribution"
	"github.com/lookback-dev/lookback/ingest"
	"github.com/lookback-dev/lookback/internal/testenv"
	"github.com/lookback-dev/lookback/persist"
	"github.com/lookback-dev/lookback/persist/persisttest"
)

// nopKafka stands in for the consumer when a test drives an engine by
// hand (Assign, Handle).
type nopKafka struct{}

func (nopKafka) SetPaused(int32, int, bool) {}
func (nopKafka) EndOffsets(context.Context) (map[int32][ingest.NumInputs]int64, error) {
	return nil, nil
}
func (nopKafka) CommitOffsets(context.Context, map[int32][ingest.NumInputs]int64) {}

// gatedSink blocks Write while closed: a stalled node.
type gatedSink struct {
	persist.FactSink
	mu      sync.Mutex
	gate    chan struct{} // nil: open
	blocked chan int      // reports a Write waiting at the gate, with its facts
}

func (g *gatedSink) close() {
	g.mu.Lock()
	g.gate = make(chan struct{})
	g.mu.Unlock()
}

func (g *gatedSink) open() {
	g.mu.Lock()
	close(g.gate)
	g.gate = nil
	g.mu.Unlock()
}

func (g *gatedSink) Write(ctx context.Context, f *attribution.Facts) error {
	g.mu.Lock()
	gate := g.gate
	g.mu.Unlock()
	if gate != nil {
		select {
		case g.blocked <- f.Len():
		default:
		}
		select {
		case <-gate:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return g.FactSink.Write(ctx, f)
}

// streamBatches turns events into the consumer's batches for partition 0,
// one input offset sequence per topic, batchSize records at a time.
type streamBatches struct {
	next [ingest.NumInputs]int64
}

func (s *streamBatches) batches(events []attribution.Event, batchSize int, last bool) []ingest.PartitionBatch {
	var out []ingest.PartitionBatch
	for start := 0; start < len(events); start += batchSize {
		end := min(start+batchSize, len(events))
		b := ingest.PartitionBatch{Next: [ingest.NumInputs]int64{-1, -1, -1, -1}}
		for _, ev := range events[start:end] {
			in := ingest.InputOf(ev.Type)
			b.Records = append(b.Records, ingest.Record{Input: in, Offset: s.next[in], Event: ev})
			s.next[in]++
			b.Next[in] = s.next[in]
		}
		for i := range b.Lagging {
			b.Lagging[i] = b.Next[i] >= 0 && !(last && end == len(events))
		}
		out = append(out, b)
	}
	return out
}

// fencingStream returns a seeded stream of one partition's users: clicks
// and impressions followed by conversions, with duplicates, in an arrival
// order that is event-time order with jitter under the lateness.
func fencingStream(seed uint64, n int, base int64) []attribution.Event {
	rng := rand.New(rand.NewPCG(seed, seed))
	var evs []attribution.Event
	for i := 0; i < n; i++ {
		user := fmt.Sprintf("u%d", rng.IntN(40))
		t := base + int64(i)*1000
		ev := attribution.Event{UserID: user, Time: t, CreativeID: fmt.Sprintf("cr%d", rng.IntN(3)), CampaignID: "ca"}
		switch r := rng.IntN(10); {
		case r < 4:
			ev.Type, ev.ID = attribution.TypeImpression, fmt.Sprintf("i%d", i)
		case r < 8:
			ev.Type, ev.ID = attribution.TypeClick, fmt.Sprintf("k%d", i)
		default:
			ev = attribution.Event{Type: attribution.TypeConversion, UserID: user, ID: fmt.Sprintf("v%d", i), Time: t,
				ConversionType: "purchase", Value: float64(1 + rng.IntN(100)), Currency: "USD"}
		}
		evs = append(evs, ev)
		if rng.IntN(20) == 0 {
			evs = append(evs, ev) // a duplicate
		}
	}
	// Jitter within the lateness (5 s here): swap neighbours now and then.
	for i := 1; i < len(evs); i++ {
		if rng.IntN(4) == 0 && evs[i].Time-evs[i-1].Time < 5000 {
			evs[i], evs[i-1] = evs[i-1], evs[i]
		}
	}
	return evs
}

// referenceFacts applies events in event-time order, one state per user:
// what a single, uninterrupted owner must write.
func referenceFacts(t testing.TB, rules *attribution.Rules, events []attribution.Event) *persist.Snapshot {
	sorted := append([]attribution.Event(nil), events...)
	sort.SliceStable(sorted, func(i, j int) bool { return attribution.Less(&sorted[i], &sorted[j]) })
	states := map[string]*attribution.State{}
	var facts attribution.Facts
	for i := range sorted {
		s := states[sorted[i].UserID]
		if s == nil {
			s = &attribution.State{}
			states[sorted[i].UserID] = s
		}
		if _, err := rules.Apply(s, &sorted[i], &facts); err != nil {
			t.Fatal(err)
		}
	}
	ref := persisttest.NewReference()
	ref.Apply(&facts)
	return ref.Snapshot()
}

// TestFencing has two owners of one partition: A stalls in the middle of a
// checkpoint (its warehouse write hangs), B claims the partition with a
// newer generation and goes on from A's last checkpoint. When A wakes, its
// checkpoint is refused and A drops the partition; B's later checkpoints
// succeed, and the warehouse holds exactly the facts of one uninterrupted
// owner: A's late facts were the same facts, written idempotently.
func TestFencing(t *testing.T) {
	ctx := context.Background()
	rules := allModels(t)
	client, prefix := testenv.Redis(t)
	storeCfg := persist.DefaultRedisStoreConfig()
	storeCfg.KeyPrefix = prefix
	newStore := func() persist.CheckpointStore {
		s, err := persist.NewRedisStore(client, storeCfg)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	dsn := testenv.PostgresSchema(t)
	sink, err := persist.OpenSink(ctx, dsn, persist.DefaultSinkConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	if err := persist.Migrate(ctx, sink.Pool(), sink.Dialect()); err != nil {
		t.Fatal(err)
	}

	base := time.Now().Add(-2 * time.Hour).UnixMilli()
	stream := fencingStream(1, 600, base)
	part1, part2, part3 := stream[:200], stream[200:400], stream[400:]

	newEngine := func(node string, s persist.FactSink) (*Engine, *prometheus.Registry, context.CancelFunc, chan error) {
		cfg := DefaultConfig()
		cfg.NodeID, cfg.Partitions, cfg.Rules = node, 1, rules
		cfg.CheckpointInterval = 100 * time.Millisecond
		cfg.Watermark.AllowedLateness = 5 * time.Second
		cfg.Watermark.IdleTimeout = 300 * time.Millisecond
		reg := prometheus.NewRegistry()
		e, err := NewEngine(cfg, newStore(), s, nil, testenv.Logger(), reg)
		if err != nil {
			t.Fatal(err)
		}
		e.Attach(nopKafka{})
		runCtx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- e.Run(runCtx) }()
		t.Cleanup(func() { cancel(); <-done; e.Close() })
		return e, reg, cancel, done
	}
	handle := func(e *Engine, batches []ingest.PartitionBatch) {
		if err := e.Handle(ctx, batches); err != nil {
			t.Fatal(err)
		}
	}
	// A owns the partition (generation 1) and checkpoints part 1.
	gated := &gatedSink{FactSink: sink, blocked: make(chan int, 16)}
	a, regA, _, _ := newEngine("node-a", gated)
	if _, err := a.Assign(ctx, 1, []int32{0}); err != nil {
		t.Fatal(err)
	}
	var inA streamBatches
	handle(a, inA.batches(part1, 50, true))
	want1 := referenceFacts(t, rules, part1)
	testenv.CheckFor(t, 20*time.Second, 50*time.Millisecond, func() error {
		return snapshotMatches(ctx, sink, want1)
	})

	// A stalls: its next checkpoint hangs at the warehouse with part 2's
	// facts.
	gated.close()
	part2Start := inA.next
	resumeB := part2Start
	for i := range resumeB {
		if resumeB[i] == 0 {
			resumeB[i] = -1 // never read: from the start
		}
	}
	handle(a, inA.batches(part2, 50, true))
	select {
	case n := <-gated.blocked:
		if n == 0 {
			t.Fatal("A blocked with no facts")
		}
	case <-time.After(20 * time.Second):
		t.Fatal("A never reached its warehouse write")
	}

	// B takes the partition with a newer generation and resumes from A's
	// last checkpoint: the offsets after part 1.
	b, _, _, _ := newEngine("node-b", sink)
	resume, err := b.Assign(ctx, 2, []int32{0})
	if err != nil {
		t.Fatal(err)
	}
	if got := resume[0]; got != resumeB {
		t.Fatalf("B resumes at %v, want A's last checkpoint %v", got, resumeB)
	}
	inB := streamBatches{next: part2Start}
	handle(b, inB.batches(append(append([]attribution.Event(nil), part2...), part3...), 50, true))
	want := referenceFacts(t, rules, stream)
	testenv.CheckFor(t, 20*time.Second, 50*time.Millisecond, func() error {
		return snapshotMatches(ctx, sink, want)
	})

	// A wakes: its warehouse write goes through (the same facts), its
	// checkpoint is refused, and it drops the partition.
	gated.open()
	testenv.CheckFor(t, 20*time.Second, 50*time.Millisecond, func() error {
		if got := testutilGauge(t, regA, "lookback_checkpoint_fenced_total"); got != 1 {
			return fmt.Errorf("A fenced %v times", got)
		}
		if owned := a.Owned(); len(owned) != 0 {
			return fmt.Errorf("A still owns %v", owned)
		}
		return nil
	})
	if err := snapshotMatches(ctx, sink, want); err != nil {
		t.Fatalf("after A's stale checkpoint: %v", err)
	}

	// B goes on checkpointing: more records, more facts, all exact.
	more := fencingStream(2, 100, base+int64(len(stream))*1000+10_000)
	handle(b, inB.batches(more, 50, true))
	wantAll := referenceFacts(t, rules, append(append([]attribution.Event(nil), stream...), more...))
	testenv.CheckFor(t, 20*time.Second, 50*time.Millisecond, func() error {
		return snapshotMatches(ctx, sink, wantAll)
	})
}

func snapshotMatches(ctx context.Context, r persist.SnapshotReader, want *persist.Snapshot) error {
	got, err := r.Snapshot(ctx)
	if err != nil {
		return err
	}
	got.Normalize()
	if d := persisttest.DiffSnapshots(got, want); d != "" {
		return fmt.Errorf("warehouse differs from the reference: %s", d)
	}
	return nil
}

// gatedEngine is a one-partition engine on Redis and PostgreSQL whose
// warehouse writes pass through a gate, with its partition assigned.
type gatedEngine struct {
	*Engine
	cfg   Config
	rules *attribution.Rules
	store persist.CheckpointStore
	sink  persist.WarehouseSink
	gated *gatedSink
	reg   *prometheus.Registry
}

func newGatedEngine(t *testing.T) *gatedEngine {
	ctx := context.Background()
	g := &gatedEngine{rules: allModels(t)}
	client, prefix := testenv.Redis(t)
	storeCfg := persist.DefaultRedisStoreConfig()
	storeCfg.KeyPrefix = prefix
	var err error
	if g.store, err = persist.NewRedisStore(client, storeCfg); err != nil {
		t.Fatal(err)
	}
	if g.sink, err = persist.OpenSink(ctx, testenv.PostgresSchema(t), persist.DefaultSinkConfig()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.sink.Close() })
	if err := persist.Migrate(ctx, g.sink.Pool(), g.sink.Dialect()); err != nil {
		t.Fatal(err)
	}
	g.cfg = DefaultConfig()
	g.cfg.NodeID, g.cfg.Partitions, g.cfg.Rules = "node-a", 1, g.rules
	g.cfg.CheckpointInterval = 100 * time.Millisecond
	g.cfg.Watermark.AllowedLateness = 5 * time.Second
	g.cfg.Watermark.IdleTimeout = 300 * time.Millisecond
	g.gated = &gatedSink{FactSink: g.sink, blocked: make(chan int, 16)}
	g.reg = prometheus.NewRegistry()
	if g.Engine, err = NewEngine(g.cfg, g.store, g.gated, nil, testenv.Logger(), g.reg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(g.Close)
	g.Attach(nopKafka{})
	if _, err := g.Assign(ctx, 1, []int32{0}); err != nil {
		t.Fatal(err)
	}
	return g
}

// feedBlocked closes the gate, feeds stream, and waits until a checkpoint
// with facts waits at the gate.
func (g *gatedEngine) feedBlocked(t *testing.T, stream []attribution.Event) *streamBatches {
	g.gated.close()
	var in streamBatches
	if err := g.Handle(context.Background(), in.batches(stream, 50, true)); err != nil {
		t.Fatal(err)
	}
	select {
	case n := <-g.gated.blocked:
		if n == 0 {
			t.Fatal("the checkpoint blocked with no facts")
		}
	case <-time.After(20 * time.Second):
		t.Fatal("no checkpoint reached the warehouse")
	}
	// Then the inputs go idle and the watermark releases every record: the
	// next checkpoint covers the whole stream.
	testenv.CheckFor(t, 20*time.Second, 20*time.Millisecond, func() error {
		lag := testutilGauge(t, g.reg, "lookback_watermark_lag_seconds")
		if buffered := testutilGauge(t, g.reg, "lookback_buffered_records"); lag == 0 || lag > 60 || buffered > 0 {
			return fmt.Errorf("watermark lag %vs, %v records buffered", lag, buffered)
		}
		return nil
	})
	return &in
}

// checkDurable checks that the warehouse holds stream's facts exactly and
// that the stored offsets are past all of in.
func (g *gatedEngine) checkDurable(t *testing.T, stream []attribution.Event, in *streamBatches) {
	ctx := context.Background()
	if err := snapshotMatches(ctx, g.sink, referenceFacts(t, g.rules, stream)); err != nil {
		t.Fatal(err)
	}
	stored, err := g.store.Claim(ctx, 0, persist.Owner{Node: "node-b", Generation: 2})
	if err != nil {
		t.Fatal(err)
	}
	for i, next := range in.next {
		if got := stored[g.cfg.Topics.Inputs()[i]]; next > 0 && got != next {
			t.Errorf("input %d: stored offset %d, want %d (the end of the stream)", i, got, next)
		}
	}
}

// TestStopDuringCheckpoint stops an engine while a checkpoint waits at the
// warehouse: that checkpoint has taken its users' facts, so it must still
// become durable before the final one commits offsets past them.
func TestStopDuringCheckpoint(t *testing.T) {
	g := newGatedEngine(t)
	runCtx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- g.Run(runCtx) }()

	stream := fencingStream(3, 300, time.Now().Add(-2*time.Hour).UnixMilli())
	in := g.feedBlocked(t, stream)
	stop()
	// The stop must wait for the blocked checkpoint rather than abandon it.
	select {
	case err := <-done:
		t.Fatalf("Run returned while a checkpoint was in progress: %v", err)
	case <-time.After(200 * time.Millisecond):
	}
	g.gated.open()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	g.checkDurable(t, stream, in)
}

// TestRevokeDuringCheckpoint revokes the partition while checkpoints of it
// are in flight: the revocation's own checkpoint waits for them, so the
// handoff is durable and in order when the partition leaves.
func TestRevokeDuringCheckpoint(t *testing.T) {
	g := newGatedEngine(t)
	runCtx, stop := context.WithCancel(context.Background())
	defer stop()
	go func() { _ = g.Run(runCtx) }()

	stream := fencingStream(4, 300, time.Now().Add(-2*time.Hour).UnixMilli())
	in := g.feedBlocked(t, stream)
	revoked := make(chan struct{})
	go func() {
		g.Revoke(context.Background(), []int32{0})
		close(revoked)
	}()
	select {
	case <-revoked:
		t.Fatal("Revoke returned while a checkpoint of the partition was in flight")
	case <-time.After(200 * time.Millisecond):
	}
	g.gated.open()
	select {
	case <-revoked:
	case <-time.After(20 * time.Second):
		t.Fatal("Revoke did not return")
	}
	if owned := g.Owned(); len(owned) != 0 {
		t.Fatalf("still owns %v after Revoke", owned)
	}
	g.checkDurable(t, stream, in)
}
