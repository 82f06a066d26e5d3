package actors

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/lookback-dev/lookback/attribution"
	"github.com/lookback-dev/lookback/ingest"
)

// userActor owns one user's attribution state.
type userActor struct {
	userID string
	rules  *attribution.Rules
	state  attribution.State
	facts  attribution.Facts // produced since the last flush
	stats  applyStats
	env    *partitionEnv
}

// partitionEnv is what a partition's actors share: read-only after start.
type partitionEnv struct {
	partition int32
	rules     *attribution.Rules
	topics    [ingest.NumInputs]string
	deadLetters
	log *slog.Logger
	ctx context.Context // the engine's: ends when it stops
}

// deadLetters sends a record that could not be applied to the dead-letter
// topic.
type deadLetters interface {
	Send(ctx context.Context, letters []ingest.DeadLetter) error
}

func (u *userActor) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *applyMsg:
		for i := range m.records {
			u.apply(&m.records[i])
		}
	case *flushRequest:
		state, err := u.state.AppendBinary(nil)
		if err != nil {
			// Encoding a valid state cannot fail; if it ever does, the
			// checkpoint must not silently drop this user.
			panic(fmt.Sprintf("encoding the state of user %q: %v", u.userID, err))
		}
		ctx.Respond(&flushReply{userID: u.userID, seq: m.seq, state: state, facts: u.facts, stats: u.stats})
		u.facts = attribution.Facts{}
		u.stats = applyStats{}
	case *userLookup:
		ctx.Send(m.replyTo, buildView(u.userID, u.rules, &u.state, m.pending))
	}
}

// apply applies one record. A record that makes Apply panic is
// dead-lettered with the reason and the user's state is kept: one bad
// record must not take a user's history with it.
func (u *userActor) apply(rec *ingest.Record) {
	defer func() {
		if r := recover(); r != nil {
			u.stats.panics++
			u.env.log.Error("applying a record panicked; dead-lettering it", "user", u.userID,
				"topic", u.env.topics[rec.Input], "partition", u.env.partition, "offset", rec.Offset, "panic", r)
			u.deadLetter(rec, fmt.Errorf("panic while applying: %v", r))
		}
	}()
	o, err := u.rules.Apply(&u.state, &rec.Event, &u.facts)
	if err != nil {
		// Decoders validate every record, so this is a record that
		// changed meaning between versions: dead-letter it too.
		u.stats.invalid++
		u.deadLetter(rec, err)
		return
	}
	if o.Duplicate {
		u.stats.duplicates++
	} else {
		u.stats.applied[rec.Event.Type]++
		if rec.Event.Type == attribution.TypeConversion {
			if c := &u.facts.Conversions[len(u.facts.Conversions)-1]; len(c.Path) == 0 {
				u.stats.organic++
			}
		}
	}
	u.stats.evicted += uint64(o.Evicted)
}

func (u *userActor) deadLetter(rec *ingest.Record, cause error) {
	_, value, err := ingest.EncodeValue(&rec.Event)
	if err != nil {
		value = []byte(fmt.Sprintf("%+v", rec.Event)) // an event of no known type: keep what we have
	}
	letter := ingest.DeadLetter{
		Topic: u.env.topics[rec.Input], Partition: u.env.partition, Offset: rec.Offset,
		Key: []byte(rec.Event.UserID), Value: value, Err: cause,
	}
	// Send retries until Kafka has it; the flush that would checkpoint
	// past this record waits behind it in this actor's mailbox.
	if err := u.env.Send(u.env.ctx, []ingest.DeadLetter{letter}); err != nil {
		u.env.log.Error("dead-lettering a record failed", "err", err)
	}
}
