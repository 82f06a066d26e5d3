package actors

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"sync"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/lookback-dev/lookback/attribution"
	"github.com/lookback-dev/lookback/ingest"
)

// userActor owns one user's attribution state.
//
// Between a checkpoint and the user's next records the state is kept
// encoded (cold): the encoding is what the checkpoint just stored, a
// fraction of the decoded state's memory, and most active users sit idle
// for most checkpoint intervals. Records decode it again (hot). A cold
// actor is small: its hot part is allocated only while hot.
type userActor struct {
	userID string
	env    *partitionEnv
	cold   []byte    // the encoded state while cold
	hot    *hotState // while hot
}

type hotState struct {
	state attribution.State
	facts attribution.Facts // produced since the last flush
	stats applyStats
}

// warm makes the actor hot, decoding its cold state.
func (u *userActor) warm() *hotState {
	if u.hot != nil {
		return u.hot
	}
	u.hot = &hotState{}
	if u.cold != nil {
		u.hot.state = u.decodeCold()
		u.cold = nil
	}
	return u.hot
}

func (u *userActor) decodeCold() attribution.State {
	var s attribution.State
	if err := s.UnmarshalBinary(u.cold); err != nil {
		// The bytes are the actor's own encoding: failing to read them is
		// a bug, and the node restarts from its checkpoint.
		panic(fmt.Sprintf("decoding the state of user %q: %v", u.userID, err))
	}
	return s
}

// encodeScratch holds buffers to encode states into before they are
// copied at their exact size: growing each encoding from nothing cost more
// than encoding.
var encodeScratch = sync.Pool{New: func() any { b := make([]byte, 0, 4096); return &b }}

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
		h := u.warm()
		for i := range m.records {
			u.apply(h, &m.records[i])
		}
		for _, i := range m.order {
			u.apply(h, m.chunks.at(i))
		}
	case *flushRequest:
		reply := &flushReply{userID: u.userID, seq: m.seq, state: u.cold}
		if h := u.hot; h != nil {
			scratch := encodeScratch.Get().(*[]byte)
			enc, err := h.state.AppendBinary((*scratch)[:0])
			if err != nil {
				// Encoding a valid state cannot fail; if it ever does,
				// the checkpoint must not silently drop this user.
				panic(fmt.Sprintf("encoding the state of user %q: %v", u.userID, err))
			}
			// Exactly sized: it stays in memory as the cold copy.
			reply.state = bytes.Clone(enc)
			*scratch = enc
			encodeScratch.Put(scratch)
			reply.facts, reply.stats = h.facts, h.stats
		}
		ctx.Respond(reply)
		// The checkpoint holds the bytes read-only; the actor keeps them.
		u.cold, u.hot = reply.state, nil
	case *userLookup:
		var s attribution.State
		if u.hot != nil {
			s = u.hot.state
		} else if u.cold != nil {
			s = u.decodeCold()
		}
		ctx.Send(m.replyTo, buildView(u.userID, u.env.rules, &s, m.pending))
	}
}

// apply applies one record. A record that makes Apply panic is
// dead-lettered with the reason and the user's state is kept: one bad
// record must not take a user's history with it.
func (u *userActor) apply(h *hotState, rec *ingest.Record) {
	defer func() {
		if r := recover(); r != nil {
			h.stats.panics++
			u.env.log.Error("applying a record panicked; dead-lettering it", "user", u.userID,
				"topic", u.env.topics[rec.Input], "partition", u.env.partition, "offset", rec.Offset, "panic", r)
			u.deadLetter(rec, fmt.Errorf("panic while applying: %v", r))
		}
	}()
	// Records come from the decoders, which validated them.
	o := u.env.rules.ApplyValid(&h.state, &rec.Event, &h.facts)
	if o.Duplicate {
		h.stats.duplicates++
	} else {
		h.stats.applied[rec.Event.Type]++
		if rec.Event.Type == attribution.TypeConversion {
			if c := &h.facts.Conversions[len(h.facts.Conversions)-1]; len(c.Path) == 0 {
				h.stats.organic++
			}
		}
	}
	h.stats.evicted += uint64(o.Evicted)
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
