package actors

import (
	"context"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/lookback-dev/lookback/persist"
)

// loaderActor reads users' states from the checkpoint store for its
// partition, so that the partition actor never blocks on I/O: lookups of
// active users go on while the store is slow or down. It retries a failed
// load with backoff until it succeeds or the engine stops.
type loaderActor struct {
	ctx       context.Context
	store     persist.CheckpointStore
	partition int32
	metrics   *metrics
	env       *partitionEnv
	timeout   time.Duration // per load
}

func (l *loaderActor) Receive(ctx actor.Context) {
	m, ok := ctx.Message().(*loadRequest)
	if !ok {
		return
	}
	pause := 50 * time.Millisecond
	for {
		start := time.Now()
		ctx2, cancel := context.WithTimeout(l.ctx, l.timeout)
		states, err := l.store.LoadStates(ctx2, l.partition, m.users)
		cancel()
		if err == nil {
			l.metrics.loadSeconds.Observe(time.Since(start).Seconds())
			l.metrics.usersLoaded.Add(float64(len(m.users)))
			ctx.Respond(&loadedMsg{users: m.users, states: states})
			return
		}
		l.metrics.storeErrors.WithLabelValues("load").Inc()
		if l.ctx.Err() != nil {
			return // shutting down: the partition goes with us
		}
		l.env.log.Warn("loading user states failed; retrying", "partition", l.partition, "users", len(m.users), "retry_in", pause, "err", err)
		select {
		case <-l.ctx.Done():
			return
		case <-time.After(pause):
		}
		pause = min(2*pause, 5*time.Second)
	}
}
