// Package attribution owns lookback's domain: the four event types and
// their validation, one user's attribution state, the rules that credit a
// conversion to the touches that led to it, the event-time ordering that
// makes those rules give the same answer however records arrive, the facts
// the rules produce, and the checkpoint encoding of a user's state.
//
// It is pure Go with no I/O: no clock it is not handed, no randomness, no
// goroutines. Everything else in lookback (Kafka, actors, Redis, the
// warehouse) is plumbing around it.
//
// # Events
//
// An Event is an impression, a bid request, a click or a conversion of one
// user, with an id and an event time in Unix milliseconds (UTC). Decoders
// fill one, call Normalize (which gives an event without an id a
// deterministic one, a hash of its fields, so a re-sent record dedupes),
// then Validate, whose errors name the field and the problem.
//
// # Touches, windows and paths
//
// Impressions (views) and clicks are touches. A touch is eligible for a
// conversion of the same user when it is not after the conversion and the
// conversion falls within the touch's window: by default 7 days for a
// click, 24 hours for an impression, both inclusive, and both can be
// overridden per campaign (Config.CampaignWindows).
//
// Clicks beat views: a conversion's path is its eligible clicks, and only
// when it has none its eligible impressions. A path is ordered by time,
// then by event id in byte order (of two clicks at the same millisecond,
// the one with the larger id is the later). A conversion with no eligible
// touch is organic: it is still a fact, with touch type "none".
//
// # Models
//
// Each enabled model splits a conversion's credit over its path t1..tn,
// oldest first; the credits of one conversion and model sum to 1, and the
// credited value is the conversion's value times the credit.
//
//	last_touch      tn gets 1
//	first_touch     t1 gets 1
//	linear          each gets 1/n
//	time_decay      weight 2^(-age/half_life), age = conversion time - touch
//	                time, half life 7 days by default; credit = weight / sum
//	position_based  n=1: 1; n=2: 0.5 each; n>=3: 0.4 to t1 and tn, the
//	                remaining 0.2 shared evenly by the middle
//
// # Joins
//
// An impression that names an auction_id is joined to the bid request of
// that auction, whichever of the two comes first, when they are within the
// impression's view window of each other: its fact carries the bid's price,
// floor and targeting. If the bid comes second the impression's fact is
// produced again, joined; sinks key impressions by id, so the later fact
// replaces the earlier. A bid stays joinable for the longest view window
// (every impression naming it joins it), at most MaxTouchesPerUser bids per
// user. A click is joined to the impression it names; a
// click that names none is joined to the user's latest kept impression of
// the same creative within the click window. Joins look only at what the
// state keeps when the later event is applied (impressions for their view
// window, bids for the longest view window), so they never depend on which
// other events happened in between.
//
// # Dedupe and state bounds
//
// A State is one user's memory. An event whose (type, id) the state has
// already seen is a duplicate: it changes nothing and produces no fact.
// A touch is kept until the time of the latest record applied to the user,
// minus the touch's window, has passed the touch's time: so a conversion
// that is not late finds every touch it is eligible for, window edges
// included. At most Config.MaxTouchesPerUser touches are kept (200 by
// default; the oldest are evicted first, and counted). Conversions are kept
// for the longest window, for dedupe and lookups. What the caps evict is
// still remembered, as a 64-bit hash of its type and id, until its window
// passes (up to 4 x MaxTouchesPerUser, at least 256, per user), so that its
// duplicates stay duplicates: a replay after a crash re-reads records the
// state already applied.
//
// # Event time
//
// Records must be applied to a user in event-time order, ties broken by
// type (bid, impression, click, conversion) then id: otherwise the answer
// depends on arrival order, and a replay after a crash, a backlog, or
// topics consumed at different speeds would all give different facts.
//
// A Sequencer does this for one partition. Its Watermark follows the
// partition's inputs (one per topic): it is the minimum over inputs that
// are not idle of the newest event time seen, minus the allowed lateness
// (10 s by default). An input silent for the idle timeout (5 s) stops
// holding it back; when every input is idle it follows the wall clock. Its
// Buffer holds each record until the watermark passes its time, then
// releases it in order. A record arriving after the watermark passed it is
// late: it is applied at once and counted. An input whose newest event runs
// more than the max skew (5 min) ahead of the watermark should be paused by
// the caller (Watermark.Ahead), which keeps the buffer bounded in a backlog.
// Because a conversion is only applied once the watermark passes it, a
// lookup shows it pending until then.
//
// # Facts
//
// Rules.Apply appends Facts: one ImpressionFact per impression (joined with
// its bid), one ClickFact per click (joined with its impression), and one
// ConversionFact per conversion with the credits of every model, which
// AppendRows expands into conversion_attributions rows.
//
// # Checkpoints
//
// State.MarshalBinary and UnmarshalBinary are the checkpoint format: a
// version byte and tagged, length-prefixed sections. Readers skip unknown
// sections and refuse newer versions; see codec.go for the rules.
package attribution
