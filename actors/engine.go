package actors

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/lookback-dev/lookback/attribution"
	"github.com/lookback-dev/lookback/ingest"
	"github.com/lookback-dev/lookback/persist"
)

// Config configures the engine.
type Config struct {
	// NodeID names this node in logs, metrics and claims.
	NodeID string
	// Partitions is the input topics' partition count.
	Partitions int32
	Topics     ingest.Topics
	Rules      *attribution.Rules
	Watermark  attribution.WatermarkConfig
	// CheckpointInterval is the checkpoint and warehouse micro-batch cadence.
	CheckpointInterval time.Duration
	// PassivateAfter: a user idle this long leaves memory (its state stays
	// in the checkpoint store).
	PassivateAfter time.Duration
	// TickInterval is how often partitions advance their watermark by the
	// wall clock and re-evaluate pauses.
	TickInterval time.Duration
	// MaxBufferedRecords bounds a partition's event-time buffer: past it,
	// every input but the slowest is paused.
	MaxBufferedRecords int
	// LookupTimeout bounds a lookup.
	LookupTimeout time.Duration
	// CheckpointTimeout: a partition that cannot produce its part of a
	// checkpoint in this time is stuck, and the engine stops (a restart
	// recovers from the last checkpoint).
	CheckpointTimeout time.Duration
	// ClaimTimeout bounds the retries of a partition claim while the group
	// waits.
	ClaimTimeout time.Duration
	// DependencyTimeout bounds one call to the warehouse or the store; a
	// call that hangs is abandoned and retried like one that failed.
	DependencyTimeout time.Duration
	// MaxWriteRows bounds one warehouse write: a checkpoint with more rows
	// writes them in several (in order, each idempotent), and consumption
	// pauses meanwhile, so that the intake never outruns the warehouse and
	// no write grows past what the dependency timeout allows.
	MaxWriteRows int
}

// GCPercent is the garbage collector's target that lookback serve sets
// when GOGC is not set. Most of the engine's heap is long-lived (user
// states, buffered records), so the default of 100 collects it often for
// little: in the drain benchmark, 200 cut CPU by about a fifth and raised
// throughput by a quarter or more, for a heap that may grow to about
// three times the live data instead of two.
const GCPercent = 200

// DefaultConfig returns the defaults (Rules must still be set).
func DefaultConfig() Config {
	return Config{
		Topics:             ingest.DefaultTopics(),
		Watermark:          attribution.DefaultWatermarkConfig(),
		CheckpointInterval: time.Second,
		PassivateAfter:     10 * time.Minute,
		TickInterval:       100 * time.Millisecond,
		MaxBufferedRecords: 200_000,
		LookupTimeout:      5 * time.Second,
		CheckpointTimeout:  2 * time.Minute,
		ClaimTimeout:       20 * time.Second,
		DependencyTimeout:  30 * time.Second,
		MaxWriteRows:       200_000,
	}
}

// Validate reports the first problem with the configuration.
func (c *Config) Validate() error {
	switch {
	case c.NodeID == "":
		return errors.New("node id must be set")
	case c.Partitions < 1:
		return errors.New("partition count must be positive")
	case c.Rules == nil:
		return errors.New("attribution rules must be set")
	case c.CheckpointInterval <= 0, c.TickInterval <= 0, c.PassivateAfter <= 0:
		return errors.New("checkpoint interval, tick interval and passivation delay must be positive")
	case c.MaxBufferedRecords < 1, c.MaxWriteRows < 1:
		return errors.New("max buffered records and max write rows must be positive")
	case c.LookupTimeout <= 0, c.CheckpointTimeout <= 0, c.ClaimTimeout <= 0, c.DependencyTimeout <= 0:
		return errors.New("timeouts must be positive")
	}
	if err := c.Watermark.Validate(); err != nil {
		return err
	}
	return c.Topics.Validate()
}

// Kafka is what the engine needs of the consumer: pausing inputs, the
// logs' end offsets, and reporting offsets for lag tools.
type Kafka interface {
	SetPaused(partition int32, input int, paused bool)
	EndOffsets(ctx context.Context) (map[int32][ingest.NumInputs]int64, error)
	CommitOffsets(ctx context.Context, offsets map[int32][ingest.NumInputs]int64)
}

// Engine runs the partitions this node owns and their checkpoints. It is
// the consumer's ingest.Handler.
type Engine struct {
	cfg     Config
	log     *slog.Logger
	store   persist.CheckpointStore
	sink    persist.FactSink
	dlq     deadLetters
	kafka   Kafka
	metrics *metrics
	system  *actor.ActorSystem
	now     func() time.Time
	owner   string // node id and incarnation

	// ctx lives as long as the engine; fail cancels it with the cause.
	ctx    context.Context
	cancel context.CancelCauseFunc

	// backpressure counts the retry loops now failing (checkpoint phases,
	// loaders): consumption pauses while it is above zero.
	backpressure atomic.Int32

	mu         sync.Mutex
	partitions map[int32]*partitionHandle
	ready      bool

	// cycle serializes checkpoints (the periodic one and those of revoked
	// partitions).
	cycle sync.Mutex
	// inFlight counts the checkpoints the periodic pipeline has collected
	// and not yet committed or abandoned: a checkpoint of its own (a
	// revocation, the final one) waits for them.
	inFlight sync.WaitGroup
	seq      uint64
}

type partitionHandle struct {
	pid   *actor.PID
	owner persist.Owner
}

// NewEngine builds an engine. Attach the consumer before it consumes.
func NewEngine(cfg Config, store persist.CheckpointStore, sink persist.FactSink, dlq deadLetters, log *slog.Logger, reg prometheus.Registerer) (*Engine, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, err
	}
	var inc [4]byte
	if _, err := rand.Read(inc[:]); err != nil {
		return nil, fmt.Errorf("making an incarnation id: %w", err)
	}
	e := &Engine{
		cfg: cfg, log: log, store: store, sink: sink, dlq: dlq, metrics: m,
		now:        time.Now,
		owner:      cfg.NodeID + "/" + hex.EncodeToString(inc[:]),
		partitions: map[int32]*partitionHandle{},
	}
	e.ctx, e.cancel = context.WithCancelCause(context.Background())
	e.system = actor.NewActorSystem(actor.WithLoggerFactory(func(*actor.ActorSystem) *slog.Logger {
		return log.With("component", "actors")
	}))
	return e, nil
}

// Attach gives the engine the consumer it pauses and reports offsets to.
func (e *Engine) Attach(k Kafka) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.kafka = k
}

func (e *Engine) consumer() Kafka {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.kafka
}

func (e *Engine) setPaused(p int32, input int, paused bool) {
	if k := e.consumer(); k != nil {
		k.SetPaused(p, input, paused)
	}
}

// Ready reports whether the engine has claimed what it was assigned at
// least once (a node with no partitions yet is not ready).
func (e *Engine) Ready() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.ready
}

// Owned returns the partitions this node owns, in order.
func (e *Engine) Owned() []int32 {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make([]int32, 0, len(e.partitions))
	for p := range e.partitions {
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

// Run ticks the partitions and runs the checkpoint cycle until ctx ends,
// then writes a final checkpoint of every partition it still owns. It
// returns an error when the engine failed (a stuck partition, a panic in a
// partition actor).
func (e *Engine) Run(ctx context.Context) error {
	// Checkpoints run beside the ticks: a slow checkpoint must not stop
	// the watermark's clock, the probes that keep inputs with unread
	// records from counting as idle, or the pauses' re-evaluation.
	loops, stop := context.WithCancel(ctx)
	defer stop()
	var g errgroup.Group
	g.Go(func() error {
		defer stop()
		return e.tickLoop(loops)
	})
	g.Go(func() error {
		defer stop()
		return e.checkpointLoop(loops)
	})
	if err := g.Wait(); err != nil {
		return err
	}
	return e.shutdown()
}

// tickLoop advances the partitions by the wall clock, probes the logs'
// ends and sweeps idle users until ctx ends or the engine fails.
func (e *Engine) tickLoop(ctx context.Context) error {
	tick := time.NewTicker(e.cfg.TickInterval)
	defer tick.Stop()
	sweepEvery := max(e.cfg.PassivateAfter/10, time.Second)
	sweep := time.NewTicker(sweepEvery)
	defer sweep.Stop()
	// Probe the logs' ends well within the idle timeout: an input with
	// unread records must never count as idle.
	probeEvery := max(e.cfg.Watermark.IdleTimeout/3, 10*time.Millisecond)
	probe := time.NewTicker(probeEvery)
	defer probe.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-e.ctx.Done():
			return context.Cause(e.ctx)
		case <-probe.C:
			e.probeEnds(ctx, probeEvery)
		case <-tick.C:
			e.broadcast(tickMsg{})
		case <-sweep.C:
			e.broadcast(sweepMsg{})
		}
	}
}

// checkpointLoop runs the checkpoint cycle every interval (or right
// after the previous collect, when the pipeline is busy) until ctx ends or
// a checkpoint fails. The cycle is a pipeline of three stages, each in
// checkpoint order: the next checkpoint is collected while the warehouse
// takes the facts of the previous one and the store the states of the one
// before, since each stage waits on a different resource. A checkpoint in
// flight when ctx ends still becomes durable (within the checkpoint
// timeout): its users' facts are nowhere else, and the final checkpoint
// must not commit offsets past them. If one fails, the engine stops
// without a final checkpoint, and a restart replays from the last durable
// one.
func (e *Engine) checkpointLoop(ctx context.Context) error {
	// A failed stage cancels the others at once; a stop leaves those in
	// flight the checkpoint timeout to finish.
	pipe, failed := context.WithCancelCause(e.ctx)
	defer failed(nil)
	defer context.AfterFunc(ctx, func() {
		time.AfterFunc(e.cfg.CheckpointTimeout, func() { failed(errors.New("checkpoints in flight outlasted the checkpoint timeout after stop")) })
	})()
	var g errgroup.Group
	toWrite, toCommit := make(chan *checkpointBatch), make(chan *checkpointBatch)
	g.Go(func() error {
		defer close(toWrite)
		tick := time.NewTicker(e.cfg.CheckpointInterval)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return nil
			case <-pipe.Done():
				return nil // a stage failed: its error is the group's
			case <-tick.C:
			}
			e.cycle.Lock()
			b, err := e.collect(nil)
			if b != nil {
				e.inFlight.Add(1)
			}
			e.cycle.Unlock()
			if err != nil {
				failed(err)
				return err
			}
			if b == nil {
				continue
			}
			select {
			case toWrite <- b:
			case <-pipe.Done():
				e.inFlight.Done()
				return nil
			}
		}
	})
	g.Go(func() error { return e.checkpointStage(pipe, failed, toWrite, toCommit, e.writeFacts) })
	g.Go(func() error { return e.checkpointStage(pipe, failed, toCommit, nil, e.commit) })
	err := g.Wait()
	if err != nil && ctx.Err() != nil {
		return fmt.Errorf("a checkpoint in flight at stop did not complete: %w", err)
	}
	return err
}

// checkpointStage runs do on each checkpoint from in, in order, and hands
// it to out (nil: the last stage, where its flight ends). After a failure
// it goes on draining in, ending each checkpoint's flight (abandoned: the
// engine stops), so that the stage before never blocks.
func (e *Engine) checkpointStage(pipe context.Context, failed context.CancelCauseFunc, in <-chan *checkpointBatch, out chan<- *checkpointBatch, do func(context.Context, *checkpointBatch) error) error {
	if out != nil {
		defer close(out)
	}
	var err error
	for b := range in {
		if err == nil {
			if err = do(pipe, b); err != nil {
				failed(err)
			}
		}
		if err != nil || out == nil {
			e.inFlight.Done()
			continue
		}
		select {
		case out <- b:
		case <-pipe.Done():
			e.inFlight.Done()
		}
	}
	return err
}

// shutdown writes a final checkpoint of every owned partition and stops
// the actors.
func (e *Engine) shutdown() error {
	ctx, cancel := context.WithTimeout(e.ctx, e.cfg.CheckpointTimeout)
	defer cancel()
	err := e.checkpoint(ctx, nil)
	e.mu.Lock()
	for p, h := range e.partitions {
		e.system.Root.Stop(h.pid)
		delete(e.partitions, p)
	}
	e.mu.Unlock()
	e.cancel(errors.New("engine stopped"))
	if err != nil {
		return fmt.Errorf("final checkpoint: %w", err)
	}
	return nil
}

// probeEnds tells every partition where its inputs' logs end.
func (e *Engine) probeEnds(ctx context.Context, timeout time.Duration) {
	k := e.consumer()
	if k == nil {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	ends, err := k.EndOffsets(ctx)
	if err != nil {
		e.log.Debug("probing end offsets failed", "err", err)
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	for p, h := range e.partitions {
		if end, ok := ends[p]; ok {
			e.system.Root.Send(h.pid, endOffsetsMsg{ends: end})
		}
	}
}

func (e *Engine) fail(err error) {
	e.log.Error("engine failed", "err", err)
	e.cancel(err)
}

func (e *Engine) broadcast(msg any) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, h := range e.partitions {
		e.system.Root.Send(h.pid, msg)
	}
}

// Assign claims newly assigned partitions in the checkpoint store with the
// group generation of this moment and starts their actors; it returns the
// offsets to resume from.
func (e *Engine) Assign(ctx context.Context, generation int32, parts []int32) (map[int32][ingest.NumInputs]int64, error) {
	resume := make(map[int32][ingest.NumInputs]int64, len(parts))
	inputs := e.cfg.Topics.Inputs()
	for _, p := range parts {
		owner := persist.Owner{Node: e.owner, Generation: int64(generation)}
		var offsets map[string]int64
		err := e.retry(ctx, e.cfg.ClaimTimeout, "claim", func(ctx context.Context) error {
			var err error
			offsets, err = e.store.Claim(ctx, p, owner)
			return err
		})
		if err != nil {
			return nil, fmt.Errorf("claiming partition %d: %w", p, err)
		}
		var at [ingest.NumInputs]int64
		for i, topic := range inputs {
			at[i] = -1
			if off, ok := offsets[topic]; ok {
				at[i] = off
			}
		}
		resume[p] = at
		e.startPartition(p, owner, at)
	}
	e.mu.Lock()
	e.ready = true
	e.mu.Unlock()
	return resume, nil
}

func (e *Engine) startPartition(p int32, owner persist.Owner, resume [ingest.NumInputs]int64) {
	env := &partitionEnv{
		partition: p, rules: e.cfg.Rules, topics: e.cfg.Topics.Inputs(),
		deadLetters: e.dlqFor(), log: e.log, ctx: e.ctx,
	}
	props := actor.PropsFromProducer(func() actor.Actor { return newPartitionActor(e, env, resume) },
		actor.WithSupervisor(e.failStrategy()), actor.WithGuardian(e.failStrategy()))
	pid := e.system.Root.Spawn(props)
	e.mu.Lock()
	if old := e.partitions[p]; old != nil {
		e.system.Root.Stop(old.pid)
	}
	e.partitions[p] = &partitionHandle{pid: pid, owner: owner}
	e.mu.Unlock()
	e.metrics.owned.Set(float64(len(e.Owned())))
}

// Revoke writes a final checkpoint of partitions that move to another
// node, then stops them.
func (e *Engine) Revoke(_ context.Context, parts []int32) {
	// The callback's context ends with the rebalance; the handoff must be
	// written regardless, within the checkpoint timeout.
	ctx, cancel := context.WithTimeout(e.ctx, e.cfg.CheckpointTimeout)
	defer cancel()
	if err := e.checkpoint(ctx, parts); err != nil {
		e.log.Warn("final checkpoint of revoked partitions failed; the next owner replays from the previous one", "partitions", parts, "err", err)
	}
	e.drop(parts)
}

// Lose stops partitions without a checkpoint: another node owns them.
func (e *Engine) Lose(_ context.Context, parts []int32) { e.drop(parts) }

func (e *Engine) drop(parts []int32) {
	e.mu.Lock()
	for _, p := range parts {
		if h := e.partitions[p]; h != nil {
			e.system.Root.Stop(h.pid)
			delete(e.partitions, p)
		}
	}
	n := len(e.partitions)
	e.mu.Unlock()
	e.metrics.owned.Set(float64(n))
}

// Handle passes a poll's batches to their partitions.
func (e *Engine) Handle(_ context.Context, batches []ingest.PartitionBatch) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	for i := range batches {
		h := e.partitions[batches[i].Partition]
		if h == nil {
			continue // revoked while the poll was in flight; the new owner reads it
		}
		e.system.Root.Send(h.pid, &batchMsg{batch: batches[i]})
	}
	return context.Cause(e.ctx)
}

// checkpointBatch is one checkpoint: what its partitions handed over at
// one cut, made durable facts first, then states and offsets.
type checkpointBatch struct {
	seq     uint64
	start   time.Time
	facts   attribution.Facts
	stats   applyStats
	cps     []persist.PartitionCheckpoint
	offsets map[int32][ingest.NumInputs]int64
}

// checkpoint runs one checkpoint cycle over parts (all owned partitions
// when nil): collect, facts to the warehouse, states and offsets to the
// store, offsets to Kafka. Failures are retried with backoff under
// backpressure until they succeed or ctx ends.
func (e *Engine) checkpoint(ctx context.Context, parts []int32) error {
	e.cycle.Lock()
	defer e.cycle.Unlock()
	e.inFlight.Wait() // the periodic pipeline's, first
	b, err := e.collect(parts)
	if err != nil || b == nil {
		return err
	}
	if err := e.writeFacts(ctx, b); err != nil {
		return err
	}
	return e.commit(ctx, b)
}

// collect asks every partition of parts (all owned ones when nil) for
// its part of the next checkpoint, at one cut. It returns nil when the
// engine owns none of them.
func (e *Engine) collect(parts []int32) (*checkpointBatch, error) {
	start := e.now()
	e.mu.Lock()
	if parts == nil {
		for p := range e.partitions {
			parts = append(parts, p)
		}
	}
	type target struct {
		p int32
		h partitionHandle
	}
	var targets []target
	for _, p := range parts {
		if h := e.partitions[p]; h != nil {
			targets = append(targets, target{p, *h})
		}
	}
	e.mu.Unlock()
	if len(targets) == 0 {
		return nil, nil
	}
	e.seq++
	b := &checkpointBatch{seq: e.seq, start: start, offsets: make(map[int32][ingest.NumInputs]int64, len(targets))}

	futures := make([]actor.Future, len(targets))
	for i, t := range targets {
		futures[i] = e.system.Root.RequestFuture(t.h.pid, &checkpointRequest{seq: b.seq}, e.cfg.CheckpointTimeout)
	}
	var userFacts []attribution.Facts
	b.cps = make([]persist.PartitionCheckpoint, 0, len(targets))
	inputs := e.cfg.Topics.Inputs()
	for i, f := range futures {
		res, err := f.Result()
		if err != nil {
			// A partition that took its users' facts and cannot hand them
			// over would lose them: stop, and replay after a restart.
			err = fmt.Errorf("partition %d did not answer its checkpoint: %w", targets[i].p, err)
			e.fail(err)
			return nil, err
		}
		pc := res.(*partitionCheckpoint)
		userFacts = append(userFacts, pc.facts...)
		b.stats.add(&pc.stats)
		cp := persist.PartitionCheckpoint{Partition: pc.partition, Owner: targets[i].h.owner, States: pc.states, Offsets: map[string]int64{}}
		for j, off := range pc.offsets {
			if off >= 0 {
				cp.Offsets[inputs[j]] = off
			}
		}
		b.cps = append(b.cps, cp)
		b.offsets[pc.partition] = pc.offsets
	}
	b.facts = concatFacts(userFacts)
	e.metrics.phaseSeconds.WithLabelValues("collect").Observe(e.now().Sub(start).Seconds())
	return b, nil
}

// writeFacts writes a checkpoint's facts to the warehouse: facts before
// offsets.
func (e *Engine) writeFacts(ctx context.Context, b *checkpointBatch) error {
	e.dropDisowned(b)
	if b.facts.Len() == 0 {
		return nil
	}
	t := e.now()
	chunks := splitFacts(&b.facts, e.cfg.MaxWriteRows)
	if len(chunks) > 1 {
		e.setBackpressure("large checkpoint", true)
		defer e.setBackpressure("large checkpoint", false)
	}
	for i := range chunks {
		err := e.retry(ctx, 0, "warehouse", func(ctx context.Context) error { return e.sink.Write(ctx, &chunks[i]) })
		if err != nil {
			return fmt.Errorf("writing facts: %w", err)
		}
	}
	e.metrics.phaseSeconds.WithLabelValues("warehouse").Observe(e.now().Sub(t).Seconds())
	e.metrics.recordFacts(&b.facts)
	b.facts = attribution.Facts{}
	return nil
}

// dropDisowned removes from a checkpoint in flight the partitions this
// owner no longer holds (fenced, revoked or lost since it was collected),
// with their facts: their new owner replays them, and a stale write could
// only undo its newer ones.
func (e *Engine) dropDisowned(b *checkpointBatch) {
	e.mu.Lock()
	var kept []persist.PartitionCheckpoint
	disowned := map[int32]bool{}
	for _, cp := range b.cps {
		if h := e.partitions[cp.Partition]; h != nil && h.owner == cp.Owner {
			kept = append(kept, cp)
		} else {
			disowned[cp.Partition] = true
		}
	}
	e.mu.Unlock()
	if len(disowned) == 0 {
		return
	}
	b.cps = kept
	for p := range disowned {
		delete(b.offsets, p)
	}
	n := int(e.cfg.Partitions)
	disownedUser := func(user string) bool { return disowned[ingest.PartitionOf(user, n)] }
	f := &b.facts
	f.Impressions = slices.DeleteFunc(f.Impressions, func(x attribution.ImpressionFact) bool { return disownedUser(x.UserID) })
	f.Clicks = slices.DeleteFunc(f.Clicks, func(x attribution.ClickFact) bool { return disownedUser(x.UserID) })
	f.Conversions = slices.DeleteFunc(f.Conversions, func(x attribution.ConversionFact) bool { return disownedUser(x.UserID) })
}

// commit writes a checkpoint's states and offsets, per partition
// atomically and fenced, then reports the offsets to Kafka for lag tools.
func (e *Engine) commit(ctx context.Context, b *checkpointBatch) error {
	t := e.now()
	e.dropDisowned(b)
	pending := b.cps
	err := e.retry(ctx, 0, "store", func(ctx context.Context) error {
		errs := e.store.Commit(ctx, pending)
		var retry []persist.PartitionCheckpoint
		var last error
		for i, err := range errs {
			switch {
			case err == nil:
				e.committed(pending[i].Partition, b.seq)
			case errors.Is(err, persist.ErrFenced):
				e.fenced(pending[i].Partition, err)
			default:
				retry, last = append(retry, pending[i]), err
			}
		}
		pending = retry
		return last
	})
	if err != nil {
		return fmt.Errorf("committing checkpoints: %w", err)
	}
	e.metrics.phaseSeconds.WithLabelValues("store").Observe(e.now().Sub(t).Seconds())
	// Counted once durable, so that the counts match what a restart keeps.
	e.metrics.recordStats(&b.stats)

	if k := e.consumer(); k != nil {
		k.CommitOffsets(ctx, b.offsets)
	}
	e.metrics.checkpointSeconds.Observe(e.now().Sub(b.start).Seconds())
	e.metrics.lastCheckpoint.SetToCurrentTime()
	return nil
}

func (e *Engine) committed(p int32, seq uint64) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if h := e.partitions[p]; h != nil {
		e.system.Root.Send(h.pid, &committedMsg{seq: seq})
	}
}

// fenced drops a partition whose claim another owner has taken: its
// checkpoint was refused, and the new owner replays from the last one.
func (e *Engine) fenced(p int32, err error) {
	e.log.Warn("checkpoint refused: another owner claimed the partition; dropping it", "partition", p, "err", err)
	e.metrics.fenced.Inc()
	e.drop([]int32{p})
}

// retry calls fn until it succeeds, each call bounded by the dependency
// timeout, with backoff, pausing consumption (backpressure) after the
// first failure and resuming it on success. A limit of 0 means until ctx
// ends.
func (e *Engine) retry(ctx context.Context, limit time.Duration, what string, fn func(context.Context) error) error {
	pause := 50 * time.Millisecond
	var deadline time.Time
	if limit > 0 {
		deadline = e.now().Add(limit)
	}
	for attempt := 0; ; attempt++ {
		attemptCtx, cancel := context.WithTimeout(ctx, e.cfg.DependencyTimeout)
		err := fn(attemptCtx)
		cancel()
		if err == nil {
			if attempt > 0 {
				e.setBackpressure(what, false)
				e.log.Info("dependency recovered", "what", what, "attempts", attempt+1)
			}
			return nil
		}
		e.metrics.storeErrors.WithLabelValues(what).Inc()
		if attempt == 0 {
			e.setBackpressure(what, true)
		}
		if ctx.Err() != nil || (!deadline.IsZero() && e.now().After(deadline)) {
			e.setBackpressure(what, false)
			return err
		}
		e.log.Warn("dependency failed; retrying with backoff", "what", what, "attempt", attempt+1, "retry_in", pause, "err", err)
		select {
		case <-ctx.Done():
			e.setBackpressure(what, false)
			return err
		case <-time.After(pause):
		}
		pause = min(2*pause, 5*time.Second)
	}
}

// setBackpressure adds (on) or removes a failing retry loop; consumption
// pauses while any is failing.
func (e *Engine) setBackpressure(what string, on bool) {
	var n int32
	if on {
		if n = e.backpressure.Add(1); n != 1 {
			return
		}
		e.log.Warn("backpressure: pausing consumption", "cause", what)
		e.metrics.backpressure.Set(1)
	} else {
		if n = e.backpressure.Add(-1); n != 0 {
			return
		}
		e.log.Info("backpressure released: resuming consumption")
		e.metrics.backpressure.Set(0)
	}
	e.broadcast(tickMsg{}) // apply the pause now, not at the next tick
}

// Lookup returns the live view of a user, from the actor that owns it.
func (e *Engine) Lookup(ctx context.Context, userID string) (*UserView, error) {
	p := ingest.PartitionOf(userID, int(e.cfg.Partitions))
	e.mu.Lock()
	h := e.partitions[p]
	e.mu.Unlock()
	if h == nil {
		return nil, ErrNotOwned
	}
	timeout := e.cfg.LookupTimeout
	if d, ok := ctx.Deadline(); ok {
		timeout = min(timeout, time.Until(d))
	}
	res, err := e.system.Root.RequestFuture(h.pid, &lookupRequest{userID: userID}, timeout).Result()
	if err != nil {
		return nil, fmt.Errorf("looking up user %q in partition %d: %w", userID, p, err)
	}
	switch v := res.(type) {
	case *UserView:
		return v, nil
	case error:
		return nil, v
	}
	return nil, fmt.Errorf("unexpected lookup answer %T", res)
}

// PartitionOf is the partition that owns a user.
func (e *Engine) PartitionOf(userID string) int32 {
	return ingest.PartitionOf(userID, int(e.cfg.Partitions))
}

// Close stops the actor system.
func (e *Engine) Close() {
	e.cancel(errors.New("engine closed"))
	e.system.Shutdown()
}

func (env *partitionEnv) partitionLabel() string { return strconv.Itoa(int(env.partition)) }

// concatFacts joins facts, in order, into arrays of their exact sizes.
func concatFacts(parts []attribution.Facts) attribution.Facts {
	var ni, nc, nv int
	for i := range parts {
		ni, nc, nv = ni+len(parts[i].Impressions), nc+len(parts[i].Clicks), nv+len(parts[i].Conversions)
	}
	out := attribution.Facts{
		Impressions: make([]attribution.ImpressionFact, 0, ni),
		Clicks:      make([]attribution.ClickFact, 0, nc),
		Conversions: make([]attribution.ConversionFact, 0, nv),
	}
	for i := range parts {
		out.Append(&parts[i])
	}
	return out
}

// splitFacts cuts facts into batches of at most about maxRows warehouse
// rows each (a conversion is never cut), keeping their order: a later
// fact of an id (an impression joined to a late bid) stays later. The
// batches share f's arrays.
func splitFacts(f *attribution.Facts, maxRows int) []attribution.Facts {
	if rows := factRows(f); rows <= maxRows {
		return []attribution.Facts{*f}
	}
	var out []attribution.Facts
	var i, j, k int    // the next impression, click and conversion
	var si, sj, sk int // where the current batch starts
	n := 0             // its rows
	cut := func() {
		if n > 0 {
			out = append(out, attribution.Facts{Impressions: f.Impressions[si:i:i], Clicks: f.Clicks[sj:j:j], Conversions: f.Conversions[sk:k:k]})
		}
		si, sj, sk, n = i, j, k, 0
	}
	for ; i < len(f.Impressions); i++ {
		if n >= maxRows {
			cut()
		}
		n++
	}
	for ; j < len(f.Clicks); j++ {
		if n >= maxRows {
			cut()
		}
		n++
	}
	for ; k < len(f.Conversions); k++ {
		if n >= maxRows {
			cut()
		}
		n += len(f.Conversions[k].Models) * max(1, len(f.Conversions[k].Path))
	}
	cut()
	return out
}

// factRows is an upper bound of the warehouse rows of facts.
func factRows(f *attribution.Facts) int {
	n := len(f.Impressions) + len(f.Clicks)
	for i := range f.Conversions {
		n += len(f.Conversions[i].Models) * max(1, len(f.Conversions[i].Path))
	}
	return n
}
