package actors

import (
	"github.com/asynkron/protoactor-go/actor"

	"github.com/lookback-dev/lookback/attribution"
	"github.com/lookback-dev/lookback/ingest"
	"github.com/lookback-dev/lookback/persist"
)

// The messages actors exchange. They never leave the process (a lookup
// that crosses nodes goes through package cluster), so they are plain
// structs.

// partition actor inbox

type batchMsg struct{ batch ingest.PartitionBatch }

// tickMsg advances the watermark by the wall clock and re-evaluates pauses.
type tickMsg struct{}

// sweepMsg passivates idle users.
type sweepMsg struct{}

// endOffsetsMsg gives a partition its inputs' log ends: an input with
// records past what the partition has read is active, not idle.
type endOffsetsMsg struct{ ends [ingest.NumInputs]int64 }

// checkpointRequest asks a partition for everything its next checkpoint
// holds; it answers with a *partitionCheckpoint once its dirty users have
// flushed.
type checkpointRequest struct{ seq uint64 }

// committedMsg tells a partition that checkpoint seq is durable, so the
// users flushed in it may be passivated.
type committedMsg struct{ seq uint64 }

// lookupRequest asks for a user's view; the answer (a *UserView, or
// errUserNotFound) goes to the requester.
type lookupRequest struct{ userID string }

type partitionCheckpoint struct {
	partition int32
	facts     []attribution.Facts // per flushed user: joined once, by the engine
	states    []persist.UserState
	offsets   [ingest.NumInputs]int64
	stats     applyStats
}

// loadedMsg is the loader's answer: the stored states of users.
type loadedMsg struct {
	users  []string
	states [][]byte
}

// loader inbox

type loadRequest struct {
	users []string
}

// user actor inbox

// applyMsg carries records to apply: all of records, or those of chunks
// that order lists, in that order. Chunks are shared with other users'
// messages: read-only.
type applyMsg struct {
	records []ingest.Record
	chunks  recordChunks
	order   []int32
}

type flushRequest struct{ seq uint64 }

type flushReply struct {
	userID string
	seq    uint64
	state  []byte
	facts  attribution.Facts
	stats  applyStats
}

// userLookup carries the user's records still buffered in the partition,
// which the view shows as pending.
type userLookup struct {
	pending []attribution.Event
	replyTo *actor.PID
}

// applyStats counts what applying records did, summed per checkpoint
// rather than counted per record on shared metrics.
type applyStats struct {
	applied    [5]uint64 // by attribution.Type
	duplicates uint64
	evicted    uint64
	late       uint64
	panics     uint64
	organic    uint64 // conversions attributed to no touch
}

func (s *applyStats) add(o *applyStats) {
	for i := range s.applied {
		s.applied[i] += o.applied[i]
	}
	s.duplicates += o.duplicates
	s.evicted += o.evicted
	s.late += o.late
	s.panics += o.panics
	s.organic += o.organic
}
