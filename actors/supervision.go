package actors

import (
	"context"
	"fmt"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/lookback-dev/lookback/ingest"
)

// failStrategy supervises partition and user actors. protoactor's default
// restarts a failed actor, which would silently reset a partition's buffer
// or a user's state; lookback instead stops the engine, and the node's
// restart recovers everything from the last checkpoint (crash-only). Panics
// while applying a record never get here: the user actor dead-letters the
// record and keeps its state.
func (e *Engine) failStrategy() actor.SupervisorStrategy { return failStrategy{e} }

type failStrategy struct{ e *Engine }

func (s failStrategy) HandleFailure(_ *actor.ActorSystem, sup actor.Supervisor, child *actor.PID, _ *actor.RestartStatistics, reason, message any) {
	s.e.fail(fmt.Errorf("actor %s failed on %T: %v", child.Id, message, reason))
	sup.StopChildren(child)
}

// dlqFor is the dead-letter writer actors use, or one that only logs when
// the engine has none (tests of the engine alone).
func (e *Engine) dlqFor() deadLetters {
	if e.dlq != nil {
		return e.dlq
	}
	return logDeadLetters{e}
}

type logDeadLetters struct{ e *Engine }

func (l logDeadLetters) Send(_ context.Context, letters []ingest.DeadLetter) error {
	for _, dl := range letters {
		l.e.log.Error("dead letter (no dead-letter topic configured)", "topic", dl.Topic, "partition", dl.Partition, "offset", dl.Offset, "err", dl.Err)
	}
	return nil
}
