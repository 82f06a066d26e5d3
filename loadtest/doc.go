// Package loadtest drives a running lookback from the outside and checks
// its answer: it generates traffic whose correct attribution is known,
// produces it to Kafka, waits for the engine to drain it, compares the
// warehouse's facts with an independent oracle row for row, and measures
// drain throughput and lookup latency.
//
// It talks to the engine only as users do: Kafka (ingest.Producer), HTTP
// (GET /v1/users/{id}, /metrics) and the warehouse (persist's snapshot
// readers). It imports attribution for its types and never the actors:
// a load test that shared the engine's code would share its bugs.
//
// The pieces, each usable alone:
//
//   - Generate (gen.go): a seeded, reproducible Stream of bids,
//     impressions, clicks and conversions, with re-sent duplicates and
//     bounded out-of-orderness.
//   - Placement (placement.go): where the stream's event times may lie for
//     the engine to apply them in event-time order: a backlog of hours for
//     an engine without a watermark yet, a few live seconds for one that
//     has been idle (its watermark then follows the wall clock).
//   - Expect (oracle.go): the facts the spec gives a set of events,
//     computed naively from the spec text. The attribution package's
//     property test checks the rules against it too.
//   - Produce (produce.go): the stream to Kafka, each topic in its order.
//   - Wait and Verify (verify.go): the warehouse against the oracle.
//   - WatchDrain and Lookups (measure.go): throughput and latency.
package loadtest
