// Package actors owns lookback's running state: a PartitionActor per
// partition this node owns, with a UserActor child per active user, and
// the checkpoint cycle that makes them durable.
//
// A PartitionActor orders its partition's records in event time (an
// attribution.Sequencer over the four inputs), pauses an input that runs
// ahead of the watermark, and hands the released records to its users, one
// message per user per release. It passivates users idle for a while (a
// sweep, not a timer per user) and loads users back from the checkpoint
// store in batches, through a loader child, so it never blocks on I/O.
//
// A UserActor holds one user's attribution.State, applies the records it
// is sent, and keeps the facts they produce until the next checkpoint. A
// panic while applying a record dead-letters that record and keeps the
// user's state.
//
// The Engine runs the checkpoint cycle, every checkpoint interval:
//
//  1. each partition collects, at one cut, its dirty users' facts and
//     encoded states, and the offsets that cut covers (never past a record
//     still buffered);
//  2. all facts go to the warehouse in one micro-batch;
//  3. then states and offsets go to the checkpoint store, atomically per
//     partition under its fenced claim;
//  4. then the offsets are reported to Kafka, for lag tools only.
//
// The steps run as a pipeline, each in checkpoint order: while one
// checkpoint's states go to the store, the next one's facts go to the
// warehouse and a third is collected. Ticks, probes of the logs' ends and
// sweeps run beside it, so a slow checkpoint does not stop the watermark's
// clock.
//
// When the warehouse or the store fails, the cycle retries with backoff and
// pauses fetching (backpressure) until it succeeds: offsets never move past
// what is durable, and memory stays bounded. A crash replays from the last
// checkpoint into the state of that checkpoint; replayed records that the
// state already holds are duplicates, and facts are idempotent, so nothing
// is lost or doubled.
package actors
