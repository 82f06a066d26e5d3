// Package persist owns what lookback keeps outside its memory: the
// checkpoint store (per partition, the users' encoded states and the
// offsets they cover, written atomically under a fenced claim) and the fact
// sinks (the warehouse tables, written in idempotent micro-batches), with
// the warehouse schema and its migrations.
//
// Implementations: a Redis checkpoint store and a local-file one for the
// embedded default; PostgreSQL and Redshift fact sinks (one pgx
// implementation, two dialects) and a local-file one. Every store passes
// the same conformance suite (persisttest.TestCheckpointStore), and every
// sink the same sink suite (persisttest.TestFactSink).
//
// Nothing here retries: a failed call returns its error and the caller (the
// checkpoint cycle in package actors) retries with backoff, so that there
// is one place that decides about backpressure.
package persist

import (
	"cmp"
	"context"
	"errors"
	"slices"
	"time"

	"github.com/lookback-dev/lookback/attribution"
)

// ErrFenced is returned when a claim or a commit is refused because
// another owner holds the partition's claim. The refused owner must drop
// the partition.
var ErrFenced = errors.New("partition claimed by another owner")

// Owner identifies who holds a partition's claim.
type Owner struct {
	// Node is unique per process: the node id plus an incarnation, so a
	// restarted process is a new owner.
	Node string
	// Generation is the consumer group's generation when the partition was
	// claimed (not the current one, which rises on every cooperative
	// rebalance).
	Generation int64
}

// PartitionCheckpoint is what one checkpoint writes for one partition.
type PartitionCheckpoint struct {
	Partition int32
	Owner     Owner
	// States are the users whose state changed since the last checkpoint.
	States []UserState
	// Offsets are, per topic, the next offset to consume on restart.
	Offsets map[string]int64
}

// UserState is one user's encoded attribution.State; a nil State deletes
// the user's entry.
type UserState struct {
	UserID string
	State  []byte
}

// CheckpointStore keeps each partition's claim, offsets and user states.
//
// Claim rules, for a stored claim S (absent before the first claim):
// Claim(p, o) is granted when there is no S, or o.Generation > S.Generation,
// or o equals S (a re-claim by the same owner), or S was last renewed
// (claimed or committed) longer than the store's claim TTL ago (a group that
// was recreated with generations starting over); otherwise ErrFenced. A
// granted claim replaces S and renews it.
//
// Commit(cp) is one compare-and-set: it is applied only when the stored
// claim equals cp.Owner, and then it writes the states, the offsets and
// renews the claim, all or nothing; otherwise ErrFenced and nothing is
// written.
type CheckpointStore interface {
	// Claim takes the partition for owner and returns its stored offsets
	// (empty when it was never checkpointed).
	Claim(ctx context.Context, partition int32, owner Owner) (map[string]int64, error)
	// LoadStates returns, for each user, its encoded state in the
	// partition, or nil when it has none.
	LoadStates(ctx context.Context, partition int32, users []string) ([][]byte, error)
	// Commit writes checkpoints of several partitions (pipelined where the
	// store can); each is atomic on its own. It returns one error per
	// checkpoint, in order: nil, ErrFenced, or a failure to retry.
	Commit(ctx context.Context, cps []PartitionCheckpoint) []error
	Close() error
}

// FactSink writes facts to the warehouse.
//
// Write is durable when it returns nil, and idempotent: impressions and
// clicks are upserted by id (the last fact of an id in a batch wins); a
// conversion's rows are replaced as a whole, per (conversion id, model).
// Writing the same facts again, in the same or other batches, leaves one
// copy. A Write is all or nothing per key: a failed Write may have written
// some of its facts (PostgresSink writes a large batch as concurrent
// transactions), but never part of an impression, a click or a
// conversion's rows, and retrying it completes it.
type FactSink interface {
	Write(ctx context.Context, facts *attribution.Facts) error
	Close() error
}

// Snapshot is the whole content of a sink, for tests and for the load
// generator's verification. Rows are in no particular order.
type Snapshot struct {
	Impressions  []attribution.ImpressionFact
	Clicks       []attribution.ClickFact
	Attributions []attribution.AttributionRow
}

// Normalize sorts a snapshot by key (impression id, click id, and
// conversion, model, touch type and touch id) and makes equal what the sink
// contract does not tell apart: empty and nil targeting criteria, and the
// SinceImpression of a click that joined no impression. Two normalized
// snapshots of equal content are deeply equal.
func (s *Snapshot) Normalize() {
	for i := range s.Impressions {
		if b := s.Impressions[i].Bid; b != nil {
			c := *b
			if len(c.Criteria) == 0 {
				c.Criteria = nil
			}
			s.Impressions[i].Bid = &c
		}
	}
	for i := range s.Clicks {
		if !s.Clicks[i].Joined {
			s.Clicks[i].SinceImpression = 0
		}
	}
	slices.SortFunc(s.Impressions, func(a, b attribution.ImpressionFact) int { return cmp.Compare(a.ImpressionID, b.ImpressionID) })
	slices.SortFunc(s.Clicks, func(a, b attribution.ClickFact) int { return cmp.Compare(a.ClickID, b.ClickID) })
	slices.SortFunc(s.Attributions, func(a, b attribution.AttributionRow) int {
		return cmp.Or(cmp.Compare(a.ConversionID, b.ConversionID), cmp.Compare(a.Model, b.Model),
			cmp.Compare(a.TouchType, b.TouchType), cmp.Compare(a.TouchID, b.TouchID))
	})
}

// SnapshotReader is implemented by sinks that can read back what they hold.
type SnapshotReader interface {
	Snapshot(ctx context.Context) (*Snapshot, error)
}

// DefaultClaimTTL is how long an unrenewed claim protects a partition
// against a claimant with a lower generation.
const DefaultClaimTTL = 30 * time.Second
