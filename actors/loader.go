package actors

import (
	"context"
	"time"

	"github.com/asynkron/protoactor-go/actor"
)

// loaderActor reads users' states from the checkpoint store for its
// partition, so that the partition actor never blocks on I/O: lookups of
// active users go on while the store is slow or down. A failed load is
// retried with backoff, under backpressure, until it succeeds or the
// engine stops.
type loaderActor struct {
	engine    *Engine
	partition int32
}

func (l *loaderActor) Receive(ctx actor.Context) {
	m, ok := ctx.Message().(*loadRequest)
	if !ok {
		return
	}
	e := l.engine
	var states [][]byte
	start := time.Now()
	err := e.retry(e.ctx, 0, "load", func(ctx context.Context) error {
		var err error
		states, err = e.store.LoadStates(ctx, l.partition, m.users)
		return err
	})
	if err != nil {
		return // the engine is stopping: the partition goes with it
	}
	e.metrics.loadSeconds.Observe(time.Since(start).Seconds())
	e.metrics.usersLoaded.Add(float64(len(m.users)))
	ctx.Respond(&loadedMsg{users: m.users, states: states})
}
