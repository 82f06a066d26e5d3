package actors

import (
	"github.com/asynkron/protoactor-go/actor"

	"github.com/lookback-dev/lookback/attribution"
	"github.com/lookback-dev/lookback/ingest"
	"github.com/lookback-dev/lookback/persist"
)

// partitionActor owns one partition on this node: its event-time order,
// its active users, and its part of every checkpoint.
type partitionActor struct {
	env     *partitionEnv
	engine  *Engine
	seq     *attribution.Sequencer
	next    [ingest.NumInputs]int64 // next offset to read, per input
	paused  [ingest.NumInputs]bool
	users   map[string]*userEntry
	loading map[string]*loadingUser
	// waiting counts the records in loading, within the memory bound.
	waiting int
	loader  *actor.PID
	ckpt    *pendingCheckpoint
	stats   applyStats
	// userProps spawns every user actor of the partition, each from
	// nextUser: one Props per partition rather than one per user.
	userProps *actor.Props
	nextUser  *userActor
	// routed collects a release's records for active users, in release
	// order; routedTo is each one's user, and routedUsers the users, each
	// once. New chunks per release: the users' actors read them.
	routed      recordChunks
	routedTo    []*userEntry
	routedUsers []*userEntry
	toLoad      []string
}

type userEntry struct {
	pid        *actor.PID
	lastActive int64 // wall clock, ms
	// dirty: records were sent since the user's last flush.
	dirty bool
	// flushedSeq is the checkpoint that last flushed the user, until it is
	// committed (then 0): the user may not be passivated before that.
	flushedSeq uint64
	// routed counts the user's records in the release being routed; at
	// dispatch, start is where its indices begin.
	routed, start int32
}

// loadingUser is a user whose stored state is being loaded: records and
// lookups wait here, in order, until it arrives.
type loadingUser struct {
	records []ingest.Record
	lookups []*actor.PID
}

type pendingCheckpoint struct {
	seq     uint64
	replyTo *actor.PID
	waiting int
	result  *partitionCheckpoint
}

func newPartitionActor(e *Engine, env *partitionEnv, resume [ingest.NumInputs]int64) *partitionActor {
	return &partitionActor{
		env:     env,
		engine:  e,
		seq:     attribution.NewSequencer(ingest.NumInputs, e.cfg.Watermark, e.now().UnixMilli()),
		next:    resume,
		users:   map[string]*userEntry{},
		loading: map[string]*loadingUser{},
	}
}

func (p *partitionActor) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *actor.Started:
		// A lock-free, linked mailbox: the default one keeps a ring buffer
		// per actor, about 200 bytes of every idle user.
		p.userProps = actor.PropsFromProducer(func() actor.Actor { return p.nextUser },
			actor.WithMailbox(actor.UnboundedLockfree()))
		p.loader = ctx.Spawn(actor.PropsFromProducer(func() actor.Actor {
			return &loaderActor{engine: p.engine, partition: p.env.partition}
		}))
	case *batchMsg:
		p.onBatch(ctx, &m.batch)
	case tickMsg:
		p.onTick(ctx)
	case sweepMsg:
		p.sweep(ctx)
	case endOffsetsMsg:
		now := p.engine.now().UnixMilli()
		for i, end := range m.ends {
			if end > max(p.next[i], 0) {
				p.seq.Watermark.Active(i, now)
			}
		}
	case *checkpointRequest:
		p.ckpt = &pendingCheckpoint{seq: m.seq, replyTo: ctx.Sender()}
		p.startCheckpoint(ctx)
	case *flushReply:
		p.onFlushReply(ctx, m)
	case *committedMsg:
		for _, u := range p.users {
			if u.flushedSeq != 0 && u.flushedSeq <= m.seq {
				u.flushedSeq = 0
			}
		}
	case *lookupRequest:
		p.onLookup(ctx, m.userID, ctx.Sender())
	case *loadedMsg:
		p.onLoaded(ctx, m)
	}
}

func (p *partitionActor) onBatch(ctx actor.Context, b *ingest.PartitionBatch) {
	now := p.engine.now().UnixMilli()
	wm := p.seq.Watermark
	for i := range b.Next {
		if b.Next[i] >= 0 {
			p.next[i] = b.Next[i]
		}
		if b.Lagging[i] {
			wm.Active(i, now)
		}
	}
	for i := range b.Records {
		rec := &b.Records[i]
		if p.seq.Add(rec.Input, rec.Offset, &rec.Event, now) {
			p.stats.late++
			p.route(rec.Input, rec.Offset, &rec.Event)
		}
	}
	p.release(ctx, now)
}

func (p *partitionActor) onTick(ctx actor.Context) {
	now := p.engine.now().UnixMilli()
	// An input we paused is not silent: it must not count as idle, or the
	// watermark would run past records still waiting in Kafka.
	for i, paused := range p.paused {
		if paused {
			p.seq.Watermark.Active(i, now)
		}
	}
	p.release(ctx, now)
	p.engine.metrics.observePartition(p.env.partition, p.seq, now)
}

// release hands every record the watermark has passed to its user, then
// re-evaluates which inputs to pause.
func (p *partitionActor) release(ctx actor.Context, now int64) {
	p.seq.Release(now, p.route)
	p.dispatch(ctx, now)
	p.updatePauses(now)
}

// route queues a record for its user: to the user's actor, or behind the
// load of its state.
func (p *partitionActor) route(input int, pos int64, ev *attribution.Event) {
	user := ev.UserID
	if u, ok := p.users[user]; ok {
		*p.routed.next() = ingest.Record{Input: input, Offset: pos, Event: *ev}
		p.routedTo = append(p.routedTo, u)
		if u.routed == 0 {
			p.routedUsers = append(p.routedUsers, u)
		}
		u.routed++
		return
	}
	p.waiting++
	rec := ingest.Record{Input: input, Offset: pos, Event: *ev}
	if l, ok := p.loading[user]; ok {
		l.records = append(l.records, rec)
		return
	}
	p.loading[user] = &loadingUser{records: []ingest.Record{rec}}
	p.toLoad = append(p.toLoad, user)
}

// dispatch sends each user its routed records in one message, and asks
// the loader for the users it must load first. The users of one release
// share its records and one array of indices: a few allocations per
// release, not one per user, and each record copied once.
func (p *partitionActor) dispatch(ctx actor.Context, now int64) {
	if len(p.routedTo) > 0 {
		order := make([]int32, len(p.routedTo))
		next := int32(0)
		for _, u := range p.routedUsers {
			u.start, next = next, next+u.routed
			u.routed = 0
		}
		for i, u := range p.routedTo {
			order[u.start+u.routed] = int32(i)
			u.routed++
		}
		for _, u := range p.routedUsers {
			ctx.Send(u.pid, &applyMsg{chunks: p.routed, order: order[u.start : u.start+u.routed : u.start+u.routed]})
			u.routed = 0
			u.dirty = true
			u.lastActive = now
		}
		p.routed = nil
		clear(p.routedTo)
		p.routedTo = p.routedTo[:0]
		clear(p.routedUsers)
		p.routedUsers = p.routedUsers[:0]
	}
	if len(p.toLoad) > 0 {
		ctx.Request(p.loader, &loadRequest{users: p.toLoad})
		p.toLoad = nil
	}
}

// recordChunks holds a release's records in chunks of a fixed size, so
// that a large release (all that a backlog's watermark passes at once)
// grows without copying the records it holds.
type recordChunks [][]ingest.Record

const recordChunk = 256

// next appends a zero record and returns it.
func (c *recordChunks) next() *ingest.Record {
	if n := len(*c); n == 0 || len((*c)[n-1]) == recordChunk {
		*c = append(*c, make([]ingest.Record, 0, recordChunk))
	}
	last := &(*c)[len(*c)-1]
	*last = append(*last, ingest.Record{})
	return &(*last)[len(*last)-1]
}

// at returns the i-th record.
func (c recordChunks) at(i int32) *ingest.Record { return &c[i/recordChunk][i%recordChunk] }

// updatePauses pauses an input that runs more than the max skew ahead
// (watermark alignment); every input under backpressure or while too many
// records wait for their users' states to load; and, when the buffer is
// over its bound, every input but the slowest (which must go on for the
// watermark to move).
func (p *partitionActor) updatePauses(now int64) {
	wm := p.seq.Watermark
	backpressure := p.engine.backpressure.Load() > 0 || p.waiting > p.engine.cfg.MaxBufferedRecords
	over := p.seq.Buffer.Len() > p.engine.cfg.MaxBufferedRecords
	slowest := int64(1<<63 - 1)
	if over {
		for i := 0; i < wm.Inputs(); i++ {
			if n := wm.Newest(i); n != attribution.NoWatermark {
				slowest = min(slowest, n)
			}
		}
	}
	for i := range p.paused {
		want := backpressure || wm.Ahead(i) || over && wm.Newest(i) > slowest
		if want != p.paused[i] {
			p.paused[i] = want
			if want {
				wm.Active(i, now)
			}
			p.engine.setPaused(p.env.partition, i, want)
		}
	}
}

func (p *partitionActor) startCheckpoint(ctx actor.Context) {
	c := p.ckpt
	c.result = &partitionCheckpoint{partition: p.env.partition, stats: p.stats}
	p.stats = applyStats{}
	// Offsets stop before the earliest record not yet in any user's state
	// (still buffered, or waiting for its user's state to load): a restart
	// must read it again. Records re-read that were applied are duplicates
	// to the restored states.
	c.result.offsets = p.next
	for i := range c.result.offsets {
		if pos, ok := p.seq.Buffer.Earliest(i); ok {
			c.result.offsets[i] = pos
		}
	}
	for _, l := range p.loading {
		for _, rec := range l.records {
			if at := &c.result.offsets[rec.Input]; rec.Offset < *at {
				*at = rec.Offset
			}
		}
	}
	for _, u := range p.users {
		if !u.dirty {
			continue
		}
		ctx.Request(u.pid, &flushRequest{seq: c.seq})
		u.dirty = false
		u.flushedSeq = c.seq
		c.waiting++
	}
	if c.waiting == 0 {
		p.finishCheckpoint(ctx)
	}
}

func (p *partitionActor) onFlushReply(ctx actor.Context, r *flushReply) {
	c := p.ckpt
	if c == nil || r.seq != c.seq {
		return // cannot happen: one checkpoint at a time, answered in order
	}
	if r.facts.Len() > 0 {
		c.result.facts = append(c.result.facts, r.facts)
	}
	c.result.states = append(c.result.states, persist.UserState{UserID: r.userID, State: r.state})
	c.result.stats.add(&r.stats)
	if c.waiting--; c.waiting == 0 {
		p.finishCheckpoint(ctx)
	}
}

func (p *partitionActor) finishCheckpoint(ctx actor.Context) {
	ctx.Send(p.ckpt.replyTo, p.ckpt.result)
	p.ckpt = nil
}

// sweep passivates users idle longer than the passivation delay whose
// state is durable; they come back from the store when needed.
func (p *partitionActor) sweep(ctx actor.Context) {
	cutoff := p.engine.now().Add(-p.engine.cfg.PassivateAfter).UnixMilli()
	n := 0
	for user, u := range p.users {
		if !u.dirty && u.flushedSeq == 0 && u.lastActive < cutoff {
			ctx.Poison(u.pid)
			delete(p.users, user)
			n++
		}
	}
	p.engine.metrics.passivated.Add(float64(n))
	p.engine.metrics.activeUsers.WithLabelValues(p.env.partitionLabel()).Set(float64(len(p.users)))
}

func (p *partitionActor) onLookup(ctx actor.Context, user string, replyTo *actor.PID) {
	if u, ok := p.users[user]; ok {
		u.lastActive = p.engine.now().UnixMilli()
		ctx.Send(u.pid, &userLookup{pending: p.pendingOf(user), replyTo: replyTo})
		return
	}
	if l, ok := p.loading[user]; ok {
		l.lookups = append(l.lookups, replyTo)
		return
	}
	p.loading[user] = &loadingUser{lookups: []*actor.PID{replyTo}}
	ctx.Request(p.loader, &loadRequest{users: []string{user}})
}

// pendingOf copies the user's records still in the buffer.
func (p *partitionActor) pendingOf(user string) []attribution.Event {
	var out []attribution.Event
	p.seq.Buffer.Each(func(ev *attribution.Event) {
		if ev.UserID == user {
			out = append(out, *ev)
		}
	})
	return out
}

func (p *partitionActor) onLoaded(ctx actor.Context, m *loadedMsg) {
	now := p.engine.now().UnixMilli()
	for i, user := range m.users {
		l := p.loading[user]
		delete(p.loading, user)
		if l == nil {
			continue
		}
		p.waiting -= len(l.records)
		var state attribution.State
		if data := m.states[i]; data != nil {
			if err := state.UnmarshalBinary(data); err != nil {
				// The stored state is unreadable: go on from an empty
				// one rather than stop the partition, and say so loudly.
				p.engine.metrics.stateErrors.Inc()
				p.env.log.Error("stored user state is unreadable; starting the user afresh", "user", user, "partition", p.env.partition, "err", err)
				state = attribution.State{}
			}
		}
		if state.Empty() && len(l.records) == 0 && len(p.pendingOf(user)) == 0 {
			// Only lookups, of a user never seen: no actor for it, so that
			// lookups of made-up ids cannot fill memory.
			for _, to := range l.lookups {
				ctx.Send(to, ErrUserNotFound)
			}
			continue
		}
		// Otherwise the user becomes active, even when only a lookup
		// loaded it: its buffered records will need it, and its next
		// lookups must not depend on the store.
		u := &userEntry{lastActive: now, dirty: len(l.records) > 0}
		cold := m.states[i]
		if cold == nil || state.Empty() {
			cold = nil // a new user, or one whose stored state was unreadable
		}
		// A user loaded from the store starts cold, on its stored bytes.
		// Spawn calls the producer before it returns.
		p.nextUser = &userActor{userID: user, cold: cold, env: p.env}
		u.pid = ctx.Spawn(p.userProps)
		p.nextUser = nil
		p.users[user] = u
		if len(l.records) > 0 {
			ctx.Send(u.pid, &applyMsg{records: l.records})
		}
		for _, to := range l.lookups {
			ctx.Send(u.pid, &userLookup{pending: p.pendingOf(user), replyTo: to})
		}
	}
	p.engine.metrics.activeUsers.WithLabelValues(p.env.partitionLabel()).Set(float64(len(p.users)))
}
