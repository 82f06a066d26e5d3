package ingest_test

// Integration tests of the consumer group: records of every format are
// produced to an embedded broker (kfake, one per test) and read back by
// real consumer group members whose Handler records every call.
//
// The helpers in this file (checkFor, testKafka, recHandler, ...) are
// shared by the other integration tests of the package (deadletter,
// csvload, spool, balancer, kafka, consume_bench).

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/lookback-dev/lookback/attribution"
	"github.com/lookback-dev/lookback/ingest"
	"github.com/lookback-dev/lookback/internal/testenv"
)

// testKafka is an embedded broker with lookback's topics.
type testKafka struct {
	t      testing.TB
	broker *ingest.EmbeddedBroker
	addrs  []string
	topics ingest.Topics
	n      int32
}

func newTestKafka(t testing.TB, partitions int32) *testKafka {
	t.Helper()
	b, err := ingest.StartBroker("127.0.0.1:0", t.TempDir()+"/kafka", partitions, testenv.Logger())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	topics := ingest.DefaultTopics()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	n, err := ingest.EnsureTopics(ctx, b.Addrs(), topics, partitions, 1)
	if err != nil {
		t.Fatal(err)
	}
	if n != partitions {
		t.Fatalf("EnsureTopics: %d partitions, want %d", n, partitions)
	}
	return &testKafka{t: t, broker: b, addrs: b.Addrs(), topics: topics, n: n}
}

func (k *testKafka) cluster() *kfake.Cluster { return k.broker.Cluster() }

// producer returns a Producer writing bids with enc, closed at the end of
// the test.
func (k *testKafka) producer(enc ingest.BidEncoder) *ingest.Producer {
	k.t.Helper()
	cfg := ingest.DefaultProducerConfig()
	cfg.Brokers, cfg.Topics, cfg.Bid = k.addrs, k.topics, enc
	p, err := ingest.NewProducer(cfg, testenv.Logger())
	if err != nil {
		k.t.Fatal(err)
	}
	k.t.Cleanup(p.Close)
	return p
}

// produce sends events through p and fails unless Kafka acknowledged all.
func (k *testKafka) produce(p *ingest.Producer, events []attribution.Event) {
	k.t.Helper()
	for i, err := range p.Produce(context.Background(), events) {
		if err != nil {
			k.t.Fatalf("producing event %d (%s %s): %v", i, events[i].Type, events[i].ID, err)
		}
	}
}

// rawClient is a plain client that produces to the partition a record
// names.
func (k *testKafka) rawClient(opts ...kgo.Opt) *kgo.Client {
	k.t.Helper()
	cl, err := kgo.NewClient(append([]kgo.Opt{
		kgo.SeedBrokers(k.addrs...),
		kgo.RecordPartitioner(kgo.ManualPartitioner()),
		kgo.ProducerLinger(0),
	}, opts...)...)
	if err != nil {
		k.t.Fatal(err)
	}
	k.t.Cleanup(cl.Close)
	return cl
}

// produceRaw writes one record to topic/partition and returns its offset.
func (k *testKafka) produceRaw(cl *kgo.Client, topic string, partition int32, key, value []byte) int64 {
	k.t.Helper()
	r := cl.ProduceSync(context.Background(), &kgo.Record{Topic: topic, Partition: partition, Key: key, Value: value})
	rec, err := r.First()
	if err != nil {
		k.t.Fatalf("producing a raw record to %s/%d: %v", topic, partition, err)
	}
	return rec.Offset
}

// topicSize is the number of records in a topic (sum of its high
// watermarks).
func (k *testKafka) topicSize(topic string) int64 {
	k.t.Helper()
	var n int64
	for _, info := range k.cluster().PartitionInfos(topic) {
		n += info.HighWatermark
	}
	return n
}

// readTopic reads a whole topic with a plain client and fails unless it
// holds exactly want records.
func (k *testKafka) readTopic(topic string, want int) []*kgo.Record {
	k.t.Helper()
	cl, err := kgo.NewClient(
		kgo.SeedBrokers(k.addrs...),
		kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.FetchMaxWait(100*time.Millisecond),
	)
	if err != nil {
		k.t.Fatal(err)
	}
	defer cl.Close()
	var recs []*kgo.Record
	testenv.CheckFor(k.t, 20*time.Second, time.Millisecond, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		fs := cl.PollFetches(ctx)
		fs.EachRecord(func(r *kgo.Record) { recs = append(recs, r) })
		if len(recs) < want {
			return fmt.Errorf("%s: read %d records, want %d", topic, len(recs), want)
		}
		return nil
	})
	if n := k.topicSize(topic); len(recs) != want || n != int64(want) {
		k.t.Fatalf("%s: read %d records, the topic holds %d, want %d", topic, len(recs), n, want)
	}
	sort.Slice(recs, func(i, j int) bool {
		if recs[i].Partition != recs[j].Partition {
			return recs[i].Partition < recs[j].Partition
		}
		return recs[i].Offset < recs[j].Offset
	})
	return recs
}

// header returns the value of a record's header, and whether it has it
// exactly once.
func header(r *kgo.Record, key string) (string, bool) {
	var v string
	n := 0
	for _, h := range r.Headers {
		if h.Key == key {
			v = string(h.Value)
			n++
		}
	}
	return v, n == 1
}

// consumerConfig is the default configuration, made quick for tests.
func (k *testKafka) consumerConfig(group string) ingest.ConsumerConfig {
	cfg := ingest.DefaultConsumerConfig()
	cfg.Brokers, cfg.Topics, cfg.Partitions = k.addrs, k.topics, k.n
	cfg.Group = group
	cfg.FetchMaxWait = 100 * time.Millisecond
	cfg.SessionTimeout = 6 * time.Second
	return cfg
}

// runningConsumer is a consumer whose Run is going.
type runningConsumer struct {
	t        testing.TB
	c        *ingest.Consumer
	reg      *prometheus.Registry
	cancel   context.CancelFunc
	done     chan error
	stopOnce sync.Once
}

// newConsumer is ingest.NewConsumer, failing the test on error.
func (k *testKafka) newConsumer(cfg ingest.ConsumerConfig, h ingest.Handler, reg prometheus.Registerer) *ingest.Consumer {
	k.t.Helper()
	c, err := ingest.NewConsumer(cfg, h, testenv.Logger(), reg)
	if err != nil {
		k.t.Fatal(err)
	}
	return c
}

func (k *testKafka) startConsumer(cfg ingest.ConsumerConfig, h ingest.Handler) *runningConsumer {
	k.t.Helper()
	reg := prometheus.NewRegistry()
	c := k.newConsumer(cfg, h, reg)
	ctx, cancel := context.WithCancel(context.Background())
	rc := &runningConsumer{t: k.t, c: c, reg: reg, cancel: cancel, done: make(chan error, 1)}
	go func() { rc.done <- c.Run(ctx) }()
	k.t.Cleanup(rc.stop)
	return rc
}

// stop ends Run, leaves the group (the last Revoke) and fails the test if
// Run failed.
func (rc *runningConsumer) stop() {
	rc.stopOnce.Do(func() {
		rc.cancel()
		select {
		case err := <-rc.done:
			if err != nil {
				rc.t.Errorf("Run: %v", err)
			}
		case <-time.After(30 * time.Second):
			rc.t.Errorf("Run did not return 30 s after its context ended")
		}
		rc.c.Close()
	})
}

// metric sums the samples of a metric whose labels include the given
// ones.
func metric(t testing.TB, g prometheus.Gatherer, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			have := map[string]string{}
			for _, lp := range m.GetLabel() {
				have[lp.GetName()] = lp.GetValue()
			}
			for k, v := range labels {
				if have[k] != v {
					continue next
				}
			}
			switch {
			case m.Counter != nil:
				sum += m.Counter.GetValue()
			case m.Gauge != nil:
				sum += m.Gauge.GetValue()
			}
		}
	}
	return sum
}

// ownership tracks which member owns each partition number across the
// handlers of one group, and the violations of the handoff contract seen
// in their callbacks.
type ownership struct {
	mu         sync.Mutex
	owner      map[int32]string
	log        []string
	violations []string
}

func newOwnership() *ownership { return &ownership{owner: map[int32]string{}} }

func (o *ownership) errs() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if len(o.violations) > 0 {
		return fmt.Errorf("%d handoff violations: %s\ncallbacks:\n%s", len(o.violations), strings.Join(o.violations, "; "), strings.Join(o.log, "\n"))
	}
	return nil
}

type assignCall struct {
	gen   int32
	parts []int32
}

// recHandler is a Handler that records every call.
type recHandler struct {
	name string
	own  *ownership
	// resume is what Assign returns (nil: every partition from the start).
	resume func(parts []int32) map[int32][ingest.NumInputs]int64

	mu      sync.Mutex
	assigns []assignCall
	revokes [][]int32
	loses   [][]int32
	polls   [][]ingest.PartitionBatch
	owned   map[int32]bool
	nrec    int
	bad     []string
}

func newRecHandler(name string, own *ownership) *recHandler {
	if own == nil {
		own = newOwnership()
	}
	return &recHandler{name: name, own: own, owned: map[int32]bool{}}
}

func (h *recHandler) Assign(_ context.Context, gen int32, parts []int32) (map[int32][ingest.NumInputs]int64, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.own.mu.Lock()
	defer h.own.mu.Unlock()
	h.own.log = append(h.own.log, fmt.Sprintf("%s: Assign(gen %d, %v)", h.name, gen, parts))
	if !slices.IsSorted(parts) {
		h.bad = append(h.bad, fmt.Sprintf("Assign partitions not sorted: %v", parts))
	}
	if len(parts) == 0 {
		h.bad = append(h.bad, "Assign with no partitions")
	}
	for _, p := range parts {
		if h.owned[p] {
			h.bad = append(h.bad, fmt.Sprintf("partition %d assigned twice without a revoke", p))
		}
		if cur, ok := h.own.owner[p]; ok && cur != h.name {
			h.own.violations = append(h.own.violations, fmt.Sprintf("partition %d assigned to %s while %s still owns it", p, h.name, cur))
		}
		h.own.owner[p] = h.name
		h.owned[p] = true
	}
	h.assigns = append(h.assigns, assignCall{gen, slices.Clone(parts)})
	if h.resume == nil {
		return nil, nil
	}
	return h.resume(parts), nil
}

func (h *recHandler) release(what string, parts []int32) {
	h.own.log = append(h.own.log, fmt.Sprintf("%s: %s(%v)", h.name, what, parts))
	for _, p := range parts {
		if !h.owned[p] {
			h.bad = append(h.bad, fmt.Sprintf("%s of partition %d, which it does not own", what, p))
		}
		delete(h.owned, p)
		if h.own.owner[p] == h.name {
			delete(h.own.owner, p)
		}
	}
}

func (h *recHandler) Revoke(_ context.Context, parts []int32) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.own.mu.Lock()
	defer h.own.mu.Unlock()
	h.release("Revoke", parts)
	h.revokes = append(h.revokes, slices.Clone(parts))
}

func (h *recHandler) Lose(_ context.Context, parts []int32) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.own.mu.Lock()
	defer h.own.mu.Unlock()
	h.release("Lose", parts)
	h.loses = append(h.loses, slices.Clone(parts))
}

func (h *recHandler) Handle(_ context.Context, batches []ingest.PartitionBatch) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.own.mu.Lock()
	defer h.own.mu.Unlock()
	poll := make([]ingest.PartitionBatch, len(batches))
	for i, b := range batches {
		if !h.owned[b.Partition] {
			h.own.violations = append(h.own.violations, fmt.Sprintf("%s handed records of partition %d, which it does not own (owner %q)", h.name, b.Partition, h.own.owner[b.Partition]))
		}
		b.Records = slices.Clone(b.Records)
		poll[i] = b
		h.nrec += len(b.Records)
	}
	h.polls = append(h.polls, poll)
	return nil
}

func (h *recHandler) count() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.nrec
}

func (h *recHandler) ownedNow() []int32 {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []int32
	for p := range h.owned {
		out = append(out, p)
	}
	slices.Sort(out)
	return out
}

func (h *recHandler) snapshot() (assigns []assignCall, revokes, loses [][]int32, polls [][]ingest.PartitionBatch) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.assigns), slices.Clone(h.revokes), slices.Clone(h.loses), slices.Clone(h.polls)
}

// errs reports the contract violations seen by the handler, and by the
// other members of its group.
func (h *recHandler) errs() error {
	h.mu.Lock()
	bad := slices.Clone(h.bad)
	h.mu.Unlock()
	if err := h.own.errs(); err != nil {
		bad = append(bad, err.Error())
	}
	if len(bad) > 0 {
		return fmt.Errorf("%s: %s", h.name, strings.Join(bad, "; "))
	}
	return nil
}

// waitRecords waits until the handler has been handed n records.
func (h *recHandler) waitRecords(t testing.TB, n int) {
	t.Helper()
	testenv.CheckFor(t, 30*time.Second, 10*time.Millisecond, func() error {
		if got := h.count(); got < n {
			return fmt.Errorf("%s: %d records handled, want %d", h.name, got, n)
		}
		return nil
	})
}

// ---- events ----

type eventKey struct {
	typ attribution.Type
	id  string
}

func keyOfEvent(ev *attribution.Event) eventKey { return eventKey{ev.Type, ev.ID} }

// testUsers returns users covering every one of n partitions.
func testUsers(t testing.TB, prefix string, count int, n int32) []string {
	t.Helper()
	var users []string
	seen := map[int32]bool{}
	for i := 0; i < count; i++ {
		u := fmt.Sprintf("%s-%03d", prefix, i)
		users = append(users, u)
		seen[ingest.PartitionOf(u, int(n))] = true
	}
	if len(seen) != int(n) {
		t.Fatalf("users %s-* cover %d of %d partitions", prefix, len(seen), n)
	}
	return users
}

// baseTime is two hours ago, in whole milliseconds.
func baseTime() int64 { return time.Now().Add(-2 * time.Hour).UnixMilli() }

func bidEvent(user, id string, at int64) attribution.Event {
	return attribution.Event{
		Type: attribution.TypeBid, UserID: user, ID: id, Time: at,
		CreativeID: "cr-1042", CampaignID: "camp-77", Website: "news.example.com",
		Bid: &attribution.Bid{FloorPrice: 0.35, BidPrice: 1.25, Currency: "USD", Exchange: "adx",
			Criteria: []string{"sports", "age:25-34", "geo:US"}},
	}
}

func impressionEvent(user, id, auction string, at int64) attribution.Event {
	return attribution.Event{
		Type: attribution.TypeImpression, UserID: user, ID: id, Time: at,
		CreativeID: "cr-1042", CampaignID: "camp-77", Website: "news.example.com", AuctionID: auction,
	}
}

func clickEvent(user, id, imp string, at int64) attribution.Event {
	return attribution.Event{
		Type: attribution.TypeClick, UserID: user, ID: id, Time: at,
		CreativeID: "cr-1042", CampaignID: "camp-77", ImpressionID: imp,
	}
}

func conversionEvent(user, id string, at int64, value float64) attribution.Event {
	return attribution.Event{
		Type: attribution.TypeConversion, UserID: user, ID: id, Time: at,
		ConversionType: "purchase", Value: value, Currency: "EUR",
	}
}

// userEvents is a user's journey: a bid, two impressions, a click, a
// conversion; tag makes the ids unique.
func userEvents(user, tag string, at int64, i int) []attribution.Event {
	a := fmt.Sprintf("auc-%s-%s", tag, user)
	i1 := fmt.Sprintf("imp1-%s-%s", tag, user)
	return []attribution.Event{
		bidEvent(user, a, at),
		impressionEvent(user, i1, a, at+100),
		impressionEvent(user, fmt.Sprintf("imp2-%s-%s", tag, user), "", at+2000),
		clickEvent(user, fmt.Sprintf("clk-%s-%s", tag, user), i1, at+5000),
		conversionEvent(user, fmt.Sprintf("conv-%s-%s", tag, user), at+60_000, float64(i)+0.25),
	}
}

// sent is what a test produced, to check deliveries against.
type sent struct {
	n      int32
	events map[eventKey]attribution.Event
	order  map[string][]attribution.Event // per user, in production order
	// log is, per partition and input, the records in the log (valid or
	// not).
	log map[int32]*[ingest.NumInputs]int64
}

func newSent(n int32) *sent {
	return &sent{n: n, events: map[eventKey]attribution.Event{}, order: map[string][]attribution.Event{}, log: map[int32]*[ingest.NumInputs]int64{}}
}

func (s *sent) logAt(p int32) *[ingest.NumInputs]int64 {
	if s.log[p] == nil {
		s.log[p] = &[ingest.NumInputs]int64{}
	}
	return s.log[p]
}

func (s *sent) add(evs ...attribution.Event) {
	for _, ev := range evs {
		s.events[keyOfEvent(&ev)] = ev
		s.order[ev.UserID] = append(s.order[ev.UserID], ev)
		s.logAt(ingest.PartitionOf(ev.UserID, int(s.n)))[ingest.InputOf(ev.Type)]++
	}
}

// delivered is one record as a handler got it.
type delivered struct {
	member    string
	poll      int
	partition int32
	rec       ingest.Record
}

// pollCheck says what checkPolls may assume.
type pollCheck struct {
	// gaps: offsets may skip records (dead letters, resumed partitions).
	gaps bool
	// static: everything was produced before consuming started, so the
	// log's end is known and Lagging can be checked.
	static bool
}

// checkPolls checks the polls of one member against what was sent:
// grouping by partition, decoding, offsets, Next and Lagging. next holds
// the offset each (partition, input) is expected to continue from and is
// updated; a partition missing from it starts at 0. It returns the
// records.
func checkPolls(t testing.TB, member string, s *sent, polls [][]ingest.PartitionBatch, next map[int32]*[ingest.NumInputs]int64, opt pollCheck) []delivered {
	t.Helper()
	gaps := opt.gaps
	var out []delivered
	for pi, poll := range polls {
		for bi, b := range poll {
			if bi > 0 && poll[bi-1].Partition >= b.Partition {
				t.Errorf("%s poll %d: batches not sorted by partition or partition %d twice", member, pi, b.Partition)
			}
			exp := next[b.Partition]
			if exp == nil {
				exp = &[ingest.NumInputs]int64{}
				next[b.Partition] = exp
			}
			last := [ingest.NumInputs]int64{-1, -1, -1, -1}
			for _, r := range b.Records {
				ev := r.Event
				if r.Input != ingest.InputOf(ev.Type) {
					t.Errorf("%s: %s %s has input %d, want %d", member, ev.Type, ev.ID, r.Input, ingest.InputOf(ev.Type))
					continue
				}
				if want := ingest.PartitionOf(ev.UserID, int(s.n)); want != b.Partition {
					t.Errorf("%s: user %s's %s %s in the batch of partition %d, want %d", member, ev.UserID, ev.Type, ev.ID, b.Partition, want)
				}
				if want, ok := s.events[keyOfEvent(&ev)]; !ok {
					t.Errorf("%s: unexpected %s %s", member, ev.Type, ev.ID)
				} else if !reflect.DeepEqual(ev, want) {
					t.Errorf("%s: %s %s decoded as\n%+v (bid %+v), produced\n%+v (bid %+v)", member, ev.Type, ev.ID, ev, ev.Bid, want, want.Bid)
				}
				i := r.Input
				switch {
				case last[i] >= 0 && r.Offset <= last[i]:
					t.Errorf("%s: partition %d input %d: offset %d after %d in one batch", member, b.Partition, i, r.Offset, last[i])
				case !gaps && r.Offset != exp[i]:
					t.Errorf("%s: partition %d input %d: offset %d, want %d (no gaps, no repeats)", member, b.Partition, i, r.Offset, exp[i])
				case gaps && r.Offset < exp[i]:
					t.Errorf("%s: partition %d input %d: offset %d repeated or moved back (expected from %d)", member, b.Partition, i, r.Offset, exp[i])
				}
				last[i] = r.Offset
				exp[i] = r.Offset + 1
				out = append(out, delivered{member, pi, b.Partition, r})
			}
			logged := s.logAt(b.Partition)
			for i := range ingest.NumInputs {
				switch {
				case b.Next[i] < 0 && last[i] >= 0:
					t.Errorf("%s poll %d partition %d input %d: records read but Next is %d", member, pi, b.Partition, i, b.Next[i])
				case b.Next[i] < 0:
				case b.Next[i] <= last[i] || (!gaps && b.Next[i] != last[i]+1):
					t.Errorf("%s poll %d partition %d input %d: Next %d after offset %d", member, pi, b.Partition, i, b.Next[i], last[i])
				case b.Next[i] > logged[i]:
					t.Errorf("%s poll %d partition %d input %d: Next %d past the log's end %d", member, pi, b.Partition, i, b.Next[i], logged[i])
				default:
					exp[i] = b.Next[i]
					if want := b.Next[i] < logged[i]; opt.static && b.Lagging[i] != want {
						t.Errorf("%s poll %d partition %d input %d: Lagging %v with Next %d and %d records in the log", member, pi, b.Partition, i, b.Lagging[i], b.Next[i], logged[i])
					}
				}
			}
		}
	}
	return out
}

// checkAllOnce checks that the deliveries hold every sent event exactly
// once, and every user's events in production order.
func checkAllOnce(t testing.TB, s *sent, got []delivered) {
	t.Helper()
	// Log order: by partition, input and offset.
	got = slices.Clone(got)
	slices.SortStableFunc(got, func(a, b delivered) int {
		if a.partition != b.partition {
			return int(a.partition - b.partition)
		}
		if a.rec.Input != b.rec.Input {
			return a.rec.Input - b.rec.Input
		}
		return int(a.rec.Offset - b.rec.Offset)
	})
	seen := map[eventKey]int{}
	byUser := map[string][]attribution.Event{}
	for _, d := range got {
		seen[keyOfEvent(&d.rec.Event)]++
		byUser[d.rec.Event.UserID] = append(byUser[d.rec.Event.UserID], d.rec.Event)
	}
	for k := range s.events {
		if seen[k] != 1 {
			t.Errorf("%s %s delivered %d times, want once", k.typ, k.id, seen[k])
		}
	}
	if len(seen) != len(s.events) {
		t.Errorf("%d distinct events delivered, %d sent", len(seen), len(s.events))
	}
	// Grouping a partition's records by user gives each user's events, in
	// the order they were produced within each input.
	for user, want := range s.order {
		have := byUser[user]
		for typ := attribution.TypeBid; typ <= attribution.TypeConversion; typ++ {
			w := filterType(want, typ)
			h := filterType(have, typ)
			if !reflect.DeepEqual(ids(h), ids(w)) {
				t.Errorf("user %s's %ss: got %v, produced %v", user, typ, ids(h), ids(w))
			}
		}
	}
}

func filterType(evs []attribution.Event, typ attribution.Type) []attribution.Event {
	var out []attribution.Event
	for _, ev := range evs {
		if ev.Type == typ {
			out = append(out, ev)
		}
	}
	return out
}

func ids(evs []attribution.Event) []string {
	out := []string{}
	for _, ev := range evs {
		out = append(out, ev.ID)
	}
	return out
}

func allPartitions(n int32) []int32 {
	out := make([]int32, n)
	for i := range out {
		out[i] = int32(i)
	}
	return out
}

// produceJourneys produces the journeys of users, every even user's bid
// framed (schema id 7) and every odd user's plain, interleaving users so
// that each partition's inputs interleave too.
func produceJourneys(k *testKafka, s *sent, plain, framed *ingest.Producer, users []string, tag string) []attribution.Event {
	k.t.Helper()
	at := baseTime()
	var bidsPlain, bidsFramed, rest, all []attribution.Event
	for i, u := range users {
		evs := userEvents(u, tag, at+int64(i), i)
		s.add(evs...)
		all = append(all, evs...)
		if i%2 == 0 {
			bidsFramed = append(bidsFramed, evs[0])
		} else {
			bidsPlain = append(bidsPlain, evs[0])
		}
		rest = append(rest, evs[1:]...)
	}
	k.produce(framed, bidsFramed)
	k.produce(plain, bidsPlain)
	k.produce(plain, rest)
	return all
}

// TestConsumerEndToEnd produces every format with ingest.Producer and reads
// it back through a consumer group: every record decoded and equal to what
// was produced, in the batch of its user's partition, the four inputs of a
// partition in one batch, offsets, Next and Lagging right.
func TestConsumerEndToEnd(t *testing.T) {
	t.Parallel()
	k := newTestKafka(t, 6)
	users := testUsers(t, "user", 40, k.n)
	s := newSent(k.n)
	plain := k.producer(ingest.BidEncoder{})
	framed := k.producer(ingest.BidEncoder{Framed: true, SchemaID: 7})
	produceJourneys(k, s, plain, framed, users, "e2e")
	total := len(s.events)

	// The bids really are in both framings.
	var nFramed, nPlain int
	for _, r := range k.readTopic(k.topics.Bids, len(users)) {
		if len(r.Value) > 5 && r.Value[0] == 0 && bytes.Equal(r.Value[1:5], []byte{0, 0, 0, 7}) {
			nFramed++
		} else {
			nPlain++
		}
		if string(r.Key) == "" {
			t.Errorf("bid at %d/%d has no key", r.Partition, r.Offset)
		}
	}
	if nFramed != len(users)/2 || nPlain != len(users)/2 {
		t.Fatalf("bids: %d framed, %d plain; want %d of each", nFramed, nPlain, len(users)/2)
	}

	for _, tc := range []struct {
		name     string
		maxPoll  int
		together bool // expect a batch holding all four inputs of a partition
		lagging  bool // expect a batch with a lagging input
	}{
		{"one poll", 10_000, true, false},
		{"small polls", 7, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := k.consumerConfig("e2e-" + strconv.Itoa(tc.maxPoll))
			cfg.MaxPollRecords = tc.maxPoll
			cfg.BidSchemaIDs = []int32{1, 7}
			h := newRecHandler("member", nil)
			rc := k.startConsumer(cfg, h)
			h.waitRecords(t, total)
			ends, err := rc.c.EndOffsets(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			for p := range k.n {
				if ends[p] != *s.logAt(p) {
					t.Errorf("EndOffsets of partition %d: %v, the log ends at %v", p, ends[p], *s.logAt(p))
				}
			}
			if len(ends) != int(k.n) {
				t.Errorf("EndOffsets of %d partitions, want %d", len(ends), k.n)
			}
			if lag := metric(t, rc.reg, "lookback_consumer_lag_records", nil); lag != 0 {
				t.Errorf("lookback_consumer_lag_records sums to %v after reading everything", lag)
			}
			rc.stop()
			for event, want := range map[string]float64{"assigned": float64(k.n), "revoked": float64(k.n), "lost": 0} {
				if n := metric(t, rc.reg, "lookback_consumer_partitions_total", map[string]string{"event": event}); n != want {
					t.Errorf("lookback_consumer_partitions_total{event=%q} = %v, want %v", event, n, want)
				}
			}

			assigns, revokes, loses, polls := h.snapshot()
			if len(assigns) != 1 || !slices.Equal(assigns[0].parts, allPartitions(k.n)) || assigns[0].gen < 1 {
				t.Errorf("Assign calls %+v, want one with every partition and a generation", assigns)
			}
			// Leaving the group revokes everything.
			if len(revokes) != 1 || !slices.Equal(revokes[0], allPartitions(k.n)) {
				t.Errorf("Revoke calls %v after Close, want one with every partition", revokes)
			}
			if len(loses) != 0 {
				t.Errorf("Lose calls %v", loses)
			}
			if err := h.errs(); err != nil {
				t.Error(err)
			}
			got := checkPolls(t, "member", s, polls, map[int32]*[ingest.NumInputs]int64{}, pollCheck{static: true})
			checkAllOnce(t, s, got)
			if len(got) != total {
				t.Errorf("%d records handed over, %d produced", len(got), total)
			}

			together, lagging := false, false
			for _, poll := range polls {
				for _, b := range poll {
					inputs := map[int]bool{}
					for _, r := range b.Records {
						inputs[r.Input] = true
					}
					together = together || len(inputs) == ingest.NumInputs
					lagging = lagging || slices.Contains(b.Lagging[:], true)
				}
			}
			if tc.together && !together {
				t.Errorf("no batch held records of all four inputs of a partition (%d polls)", len(polls))
			}
			if tc.lagging && !lagging {
				t.Errorf("no batch had a lagging input with MaxPollRecords %d", tc.maxPoll)
			}
			if n := metric(t, rc.reg, "lookback_ingest_records_total", map[string]string{"outcome": "ok"}); n != float64(total) {
				t.Errorf("lookback_ingest_records_total{outcome=ok} = %v, want %d", n, total)
			}
		})
	}
}

// TestConsumerAssignOffsets checks that the offsets Assign returns are
// where each partition and input resumes (from the start when negative or
// absent), whatever the group committed to Kafka.
func TestConsumerAssignOffsets(t *testing.T) {
	t.Parallel()
	k := newTestKafka(t, 3)
	users := testUsers(t, "resume", 12, k.n)
	s := newSent(k.n)
	plain := k.producer(ingest.BidEncoder{})
	for round := range 3 {
		produceJourneys(k, s, plain, plain, users, "r"+strconv.Itoa(round))
	}
	total := len(s.events)

	// A first member reads everything and reports its offsets to Kafka.
	cfg := k.consumerConfig("resume")
	first := newRecHandler("first", nil)
	rc := k.startConsumer(cfg, first)
	first.waitRecords(t, total)
	end := map[int32][ingest.NumInputs]int64{}
	for p := range k.n {
		end[p] = *s.logAt(p)
	}
	rc.c.CommitOffsets(context.Background(), end)
	testenv.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		g := k.cluster().GroupInfo("resume")
		if g == nil {
			return errors.New("no group")
		}
		for p, at := range end {
			for i, topic := range k.topics.Inputs() {
				if c, ok := g.Commits[topic][p]; !ok || c.Offset != at[i] {
					return fmt.Errorf("commit of %s/%d: %+v, want offset %d", topic, p, c, at[i])
				}
			}
		}
		return nil
	})
	rc.stop()

	// The next member of the group resumes from its own offsets: partition
	// 0 from a mix of offsets, partition 1 from negative ones (the start),
	// partition 2 absent from the answer (the start too).
	resume := map[int32][ingest.NumInputs]int64{
		0: {2, -1, 1, s.logAt(0)[3]},
		1: {-1, -1, -1, -1},
	}
	var asked [][]int32
	second := newRecHandler("second", nil)
	second.resume = func(parts []int32) map[int32][ingest.NumInputs]int64 {
		asked = append(asked, parts)
		return resume
	}
	want := 0
	start := map[int32]*[ingest.NumInputs]int64{}
	for p := range k.n {
		at := [ingest.NumInputs]int64{}
		if r, ok := resume[p]; ok {
			for i := range at {
				at[i] = max(r[i], 0)
			}
		}
		start[p] = &at
		for i := range at {
			want += int(s.logAt(p)[i] - at[i])
		}
	}
	rc = k.startConsumer(cfg, second)
	second.waitRecords(t, want)
	// Give a wrongly resumed partition the chance to deliver more.
	time.Sleep(300 * time.Millisecond)
	rc.stop()
	if len(asked) != 1 || !slices.Equal(asked[0], allPartitions(k.n)) {
		t.Errorf("Assign asked for %v, want every partition once", asked)
	}
	_, _, _, polls := second.snapshot()
	got := checkPolls(t, "second", s, polls, start, pollCheck{static: true})
	if len(got) != want {
		t.Errorf("%d records after resuming, want %d", len(got), want)
	}
	for p := range k.n {
		if *start[p] != *s.logAt(p) {
			t.Errorf("partition %d read up to %v, the log ends at %v", p, *start[p], *s.logAt(p))
		}
	}
}

// TestConsumerRebalance runs two members of a group, then a third joins
// and one leaves: partition numbers are owned by one member for all four
// topics, together covering all; a partition is revoked before it moves
// and never owned twice; records produced after each rebalance reach the
// new owners.
func TestConsumerRebalance(t *testing.T) {
	t.Parallel()
	k := newTestKafka(t, 12)
	const group = "rebalance"
	users := testUsers(t, "reb", 60, k.n)
	s := newSent(k.n)
	plain := k.producer(ingest.BidEncoder{})
	own := newOwnership()
	// The members checkpoint to a shared store: a partition moves on from
	// where its last owner stopped, so every record is handled once.
	progress := &sync.Map{}
	handlers := map[string]*recHandler{}
	all := map[string]*recHandler{}
	running := map[string]*runningConsumer{}
	start := func(name string) {
		h := newTrackingHandler(name, own, progress)
		cfg := k.consumerConfig(group)
		cfg.ClientID = name
		handlers[name], all[name] = h.recHandler, h.recHandler
		running[name] = k.startConsumer(cfg, h)
	}

	// settled waits until the members named own all partitions between
	// them, balanced, each partition number for all four topics, as both
	// the broker and the handlers see it.
	settled := func(names ...string) map[int32]string {
		t.Helper()
		owners := map[int32]string{}
		testenv.CheckFor(t, 45*time.Second, 50*time.Millisecond, func() error {
			g := k.cluster().GroupInfo(group)
			if g == nil || g.State != "Stable" || len(g.Members) != len(names) {
				return fmt.Errorf("group not stable with %d members: %+v", len(names), g)
			}
			clear(owners)
			byClient := map[string][]int32{}
			for _, m := range g.Members {
				var parts []int32
				for i, topic := range k.topics.Inputs() {
					ps := slices.Clone(m.Assignment[topic])
					slices.Sort(ps)
					if i == 0 {
						parts = ps
					} else if !slices.Equal(ps, parts) {
						return fmt.Errorf("member %s is assigned %v of %s but %v of %s: not co-partitioned", m.ClientID, ps, topic, parts, k.topics.Inputs()[0])
					}
				}
				byClient[m.ClientID] = parts
			}
			lo, hi := int(k.n), 0
			for _, name := range names {
				parts, ok := byClient[name]
				if !ok {
					return fmt.Errorf("%s not in the group", name)
				}
				if h := handlers[name].ownedNow(); !slices.Equal(h, parts) {
					return fmt.Errorf("%s owns %v, the broker assigned it %v", name, h, parts)
				}
				for _, p := range parts {
					if o, dup := owners[p]; dup {
						return fmt.Errorf("partition %d assigned to %s and %s", p, o, name)
					}
					owners[p] = name
				}
				lo, hi = min(lo, len(parts)), max(hi, len(parts))
			}
			if len(owners) != int(k.n) {
				return fmt.Errorf("%d of %d partitions assigned: %v", len(owners), k.n, byClient)
			}
			if hi-lo > 1 {
				return fmt.Errorf("unbalanced: %v", byClient)
			}
			return nil
		})
		if err := own.errs(); err != nil {
			t.Fatal(err)
		}
		return owners
	}

	// round produces a round of journeys and checks that every record is
	// handed, exactly once, to the member owning its partition.
	round := func(tag string, owners map[int32]string) {
		t.Helper()
		before := map[string]int{}
		for name, h := range handlers {
			before[name] = len(h.pollsNow())
		}
		rs := newSent(k.n)
		s.add(produceJourneys(k, rs, plain, plain, users, tag)...)
		testenv.CheckFor(t, 20*time.Second, 20*time.Millisecond, func() error {
			n := 0
			for name, h := range handlers {
				for _, poll := range h.pollsNow()[before[name]:] {
					for _, b := range poll {
						for _, r := range b.Records {
							if _, ok := rs.events[keyOfEvent(&r.Event)]; ok {
								n++
							}
						}
					}
				}
			}
			if n < len(rs.events) {
				return fmt.Errorf("round %s: %d of %d records handled", tag, n, len(rs.events))
			}
			return nil
		})
		seen := map[eventKey]bool{}
		for name, h := range handlers {
			for _, poll := range h.pollsNow()[before[name]:] {
				for _, b := range poll {
					for _, r := range b.Records {
						if _, ok := rs.events[keyOfEvent(&r.Event)]; !ok {
							continue
						}
						if owners[b.Partition] != name {
							t.Errorf("round %s: record of partition %d went to %s, owner %s", tag, b.Partition, name, owners[b.Partition])
						}
						if seen[keyOfEvent(&r.Event)] {
							t.Errorf("round %s: %s %s handed twice", tag, r.Event.Type, r.Event.ID)
						}
						seen[keyOfEvent(&r.Event)] = true
					}
				}
			}
		}
	}

	start("a")
	start("b")
	owners := settled("a", "b")
	round("two", owners)

	// A third member joins: it takes partitions from both, which revoke
	// them before it is assigned them (checked in the callbacks).
	revokedBefore := map[string]int{}
	for _, name := range []string{"a", "b"} {
		_, revokes, _, _ := handlers[name].snapshot()
		revokedBefore[name] = len(revokes)
	}
	start("c")
	owners3 := settled("a", "b", "c")
	for _, name := range []string{"a", "b"} {
		kept := 0
		for p, o := range owners3 {
			if o == name && owners[p] == name {
				kept++
			}
		}
		if kept != 4 {
			t.Errorf("%s kept %d of its partitions, want 4 (sticky)", name, kept)
		}
	}
	for _, name := range []string{"a", "b"} {
		_, revokes, _, _ := handlers[name].snapshot()
		var moved []int32
		for p, o := range owners {
			if o == name && owners3[p] != name {
				moved = append(moved, p)
			}
		}
		slices.Sort(moved)
		var revoked []int32
		for _, r := range revokes[revokedBefore[name]:] {
			revoked = append(revoked, r...)
		}
		slices.Sort(revoked)
		if !slices.Equal(revoked, moved) {
			t.Errorf("%s revoked %v, moved away %v; callbacks:\n%s", name, revoked, moved, strings.Join(own.log, "\n"))
		}
	}
	round("three", owners3)

	// A member leaves: it revokes everything, the others take its share.
	aOwned := handlers["a"].ownedNow()
	running["a"].stop()
	delete(handlers, "a")
	if _, revokes, _, _ := all["a"].snapshot(); len(revokes) == 0 || !slices.Equal(revokes[len(revokes)-1], aOwned) {
		t.Errorf("a left owning %v; its Revoke calls: %v", aOwned, revokes)
	}
	owners2 := settled("b", "c")
	round("after-leave", owners2)
	for p, o := range owners3 {
		if o != "a" && owners2[p] != o {
			t.Errorf("partition %d moved from %s to %s when a left (not sticky)", p, o, owners2[p])
		}
	}

	// Across all the handoffs, every record was handled exactly once.
	var got []delivered
	for name, h := range all {
		_, _, _, polls := h.snapshot()
		got = append(got, checkPolls(t, name, s, polls, map[int32]*[ingest.NumInputs]int64{}, pollCheck{gaps: true})...)
	}
	checkAllOnce(t, s, got)

	for name, h := range all {
		if err := h.errs(); err != nil {
			t.Error(err)
		}
		assigns, _, loses, _ := h.snapshot()
		if len(loses) > 0 {
			t.Errorf("%s lost partitions %v in clean rebalances", name, loses)
		}
		for i := 1; i < len(assigns); i++ {
			if assigns[i].gen <= assigns[i-1].gen {
				t.Errorf("%s: Assign generations %d then %d", name, assigns[i-1].gen, assigns[i].gen)
			}
		}
	}
	if err := own.errs(); err != nil {
		t.Error(err)
	}
}

func (h *recHandler) pollsNow() [][]ingest.PartitionBatch {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.polls)
}

// TestConsumerLose makes the coordinator forget the member's generation:
// the member loses its partitions (Lose, not Revoke), rejoins, is assigned
// them again and resumes from the offsets Assign returns.
func TestConsumerLose(t *testing.T) {
	t.Parallel()
	k := newTestKafka(t, 3)
	users := testUsers(t, "lose", 15, k.n)
	s := newSent(k.n)
	plain := k.producer(ingest.BidEncoder{})
	produceJourneys(k, s, plain, plain, users, "before")

	track := newTrackingHandler("member", nil, &sync.Map{})
	h := track.recHandler
	rc := k.startConsumer(k.consumerConfig("lose"), track)
	h.waitRecords(t, len(s.events))

	fault := k.cluster().Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Heartbeat}, Group: "lose", TopLevel: true, Err: kerr.IllegalGeneration})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := fault.Wait(ctx, 1); err != nil {
		t.Fatalf("no heartbeat faulted: %v", err)
	}
	testenv.CheckFor(t, 20*time.Second, 20*time.Millisecond, func() error {
		assigns, _, loses, _ := h.snapshot()
		if len(loses) != 1 || len(assigns) != 2 {
			return fmt.Errorf("Lose calls %v, Assign calls %v; want one Lose and a second Assign", loses, assigns)
		}
		return nil
	})
	produceJourneys(k, s, plain, plain, users, "after")
	h.waitRecords(t, len(s.events))
	time.Sleep(200 * time.Millisecond) // room for a repeat to show
	rc.stop()

	assigns, revokes, loses, polls := h.snapshot()
	if !slices.Equal(loses[0], allPartitions(k.n)) || !slices.Equal(assigns[1].parts, allPartitions(k.n)) {
		t.Errorf("lost %v and reassigned %v, want every partition", loses[0], assigns[1].parts)
	}
	if len(revokes) != 1 {
		t.Errorf("Revoke calls %v, want only the last one at Close", revokes)
	}
	if assigns[1].gen <= assigns[0].gen {
		t.Errorf("generation after rejoining %d, before %d", assigns[1].gen, assigns[0].gen)
	}
	if err := h.errs(); err != nil {
		t.Error(err)
	}
	got := checkPolls(t, "member", s, polls, map[int32]*[ingest.NumInputs]int64{}, pollCheck{})
	checkAllOnce(t, s, got)
}

// trackingHandler records, per partition, the offsets handled so far in
// progress, as a checkpointing handler would, and resumes from them.
type trackingHandler struct {
	*recHandler
	progress *sync.Map // partition -> [NumInputs]int64
}

func newTrackingHandler(name string, own *ownership, progress *sync.Map) *trackingHandler {
	h := newRecHandler(name, own)
	h.resume = func(parts []int32) map[int32][ingest.NumInputs]int64 {
		out := map[int32][ingest.NumInputs]int64{}
		for _, p := range parts {
			if v, ok := progress.Load(p); ok {
				out[p] = v.([ingest.NumInputs]int64)
			}
		}
		return out
	}
	return &trackingHandler{recHandler: h, progress: progress}
}

func (h *trackingHandler) Handle(ctx context.Context, batches []ingest.PartitionBatch) error {
	for _, b := range batches {
		at := [ingest.NumInputs]int64{-1, -1, -1, -1}
		if v, ok := h.progress.Load(b.Partition); ok {
			at = v.([ingest.NumInputs]int64)
		}
		for i, n := range b.Next {
			if n >= 0 {
				at[i] = n
			}
		}
		h.progress.Store(b.Partition, at)
	}
	return h.recHandler.Handle(ctx, batches)
}

// TestConsumerHandlerError: Run returns the handler's error.
func TestConsumerHandlerError(t *testing.T) {
	t.Parallel()
	k := newTestKafka(t, 2)
	users := testUsers(t, "err", 4, k.n)
	s := newSent(k.n)
	plain := k.producer(ingest.BidEncoder{})
	produceJourneys(k, s, plain, plain, users, "x")
	boom := errors.New("boom")
	c := k.newConsumer(k.consumerConfig("err"), failingHandler{newRecHandler("h", nil), boom}, prometheus.NewRegistry())
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := c.Run(ctx); !errors.Is(err, boom) {
		t.Fatalf("Run returned %v, want the handler's error", err)
	}
}

type failingHandler struct {
	*recHandler
	err error
}

func (h failingHandler) Handle(context.Context, []ingest.PartitionBatch) error { return h.err }

// TestConsumerConfigValidate: NewConsumer refuses a bad configuration.
func TestConsumerConfigValidate(t *testing.T) {
	good := ingest.DefaultConsumerConfig()
	good.Brokers, good.Partitions = []string{"127.0.0.1:1"}, 4
	for name, mod := range map[string]func(*ingest.ConsumerConfig){
		"no brokers":      func(c *ingest.ConsumerConfig) { c.Brokers = nil },
		"no group":        func(c *ingest.ConsumerConfig) { c.Group = "" },
		"no partitions":   func(c *ingest.ConsumerConfig) { c.Partitions = 0 },
		"no poll records": func(c *ingest.ConsumerConfig) { c.MaxPollRecords = 0 },
		"no fetch wait":   func(c *ingest.ConsumerConfig) { c.FetchMaxWait = 0 },
		"no future skew":  func(c *ingest.ConsumerConfig) { c.MaxFutureSkew = 0 },
		"no session":      func(c *ingest.ConsumerConfig) { c.SessionTimeout = 0 },
		"no rebalance":    func(c *ingest.ConsumerConfig) { c.RebalanceTimeout = 0 },
		"topic twice":     func(c *ingest.ConsumerConfig) { c.Topics.Clicks = c.Topics.Bids },
		"empty topic":     func(c *ingest.ConsumerConfig) { c.Topics.DeadLetter = " " },
	} {
		cfg := good
		mod(&cfg)
		if _, err := ingest.NewConsumer(cfg, newRecHandler("h", nil), testenv.Logger(), prometheus.NewRegistry()); err == nil {
			t.Errorf("%s: NewConsumer accepted %+v", name, cfg)
		}
	}
	c, err := ingest.NewConsumer(good, newRecHandler("h", nil), testenv.Logger(), prometheus.NewRegistry())
	if err != nil {
		t.Fatalf("NewConsumer refused the defaults: %v", err)
	}
	c.Close()
}

// badRecord is a malformed record a test produced, and what its dead
// letter must say.
type badRecord struct {
	name      string
	topic     string
	partition int32
	offset    int64
	key       []byte
	value     []byte
	reason    string // the metric label
	errHas    string // in the error header
}

// TestConsumerDeadLetters interleaves malformed records of every kind with
// good ones: the bad ones reach the dead-letter topic with their original
// bytes and headers naming where they came from and what is wrong, the
// good ones reach the handler, and Next moves past both.
func TestConsumerDeadLetters(t *testing.T) {
	t.Parallel()
	k := newTestKafka(t, 4)
	n := int(k.n)
	users := testUsers(t, "dl", 16, k.n)
	s := newSent(k.n)
	plain := k.producer(ingest.BidEncoder{})
	produceJourneys(k, s, plain, plain, users, "pre")

	raw := k.rawClient()
	var bad []badRecord
	addBad := func(b badRecord) {
		t.Helper()
		b.offset = k.produceRaw(raw, b.topic, b.partition, b.key, b.value)
		s.logAt(b.partition)[k.topics.Input(b.topic)]++
		bad = append(bad, b)
	}
	addGood := func(ev attribution.Event, value []byte) {
		t.Helper()
		p := ingest.PartitionOf(ev.UserID, n)
		k.produceRaw(raw, k.topics.TopicOf(ev.Type), p, []byte(ev.UserID), value)
		s.add(ev)
	}
	u := users[3]
	pu := ingest.PartitionOf(u, n)
	now := time.Now()
	at := baseTime()
	ts := attribution.FormatTime(at)

	bid := bidEvent(u, "auc-raw", at)
	bidAvro, err := ingest.BidEncoder{}.Append(nil, &bid)
	if err != nil {
		t.Fatal(err)
	}
	framed1, err := ingest.BidEncoder{Framed: true, SchemaID: 1}.Append(nil, &bid)
	if err != nil {
		t.Fatal(err)
	}
	framed99 := slices.Clone(framed1)
	framed99[4] = 99
	oversized := "v-big," + u + "," + ts + "," + strings.Repeat("x", 600<<10) + ",10,USD"
	future := impressionEvent(u, "imp-future", "", now.Add(time.Hour).UnixMilli())
	nearFuture := clickEvent(u, "clk-near-future", "", now.Add(time.Minute).UnixMilli())
	misplaced := impressionEvent(u, "imp-misplaced", "", at)

	addBad(badRecord{name: "bad JSON", topic: k.topics.Impressions, partition: pu, key: []byte(u),
		value: []byte(`{"impression_id":"bad-json","user_id":"` + u + `","timestamp":`), reason: "decode", errHas: "bad JSON"})
	addGood(bid, framed1) // Confluent framing, accepted schema id 1
	addBad(badRecord{name: "JSON array", topic: k.topics.Impressions, partition: pu, key: []byte(u),
		value: []byte(`[1,2]`), reason: "decode", errHas: "expected an object"})
	addBad(badRecord{name: "truncated Avro", topic: k.topics.Bids, partition: pu, key: []byte(u),
		value: bidAvro[:len(bidAvro)/2], reason: "decode", errHas: "truncated Avro"})
	addBad(badRecord{name: "schema id", topic: k.topics.Bids, partition: pu, key: []byte(u),
		value: framed99, reason: "decode", errHas: "schema id 99"})
	addBad(badRecord{name: "missing columns", topic: k.topics.Clicks, partition: pu, key: []byte(u),
		value: []byte("k-short," + u + "," + ts + ",cr-1"), reason: "decode", errHas: "4 columns, want 6"})
	addGood(nearFuture, ingest.AppendClickCSV(nil, &nearFuture)) // within MaxFutureSkew
	addBad(badRecord{name: "bad timestamp", topic: k.topics.Clicks, partition: pu, key: []byte(u),
		value: []byte("k-time," + u + ",yesterday,cr-1,camp-1,imp-1"), reason: "invalid", errHas: "timestamp"})
	addBad(badRecord{name: "empty user_id", topic: k.topics.Conversions, partition: 0,
		value: []byte("v-nouser,," + ts + ",purchase,10,USD"), reason: "invalid", errHas: "user_id"})
	addBad(badRecord{name: "future", topic: k.topics.Impressions, partition: pu, key: []byte(u),
		value: ingest.AppendImpressionJSON(nil, &future), reason: "future", errHas: "ahead of the clock"})
	addBad(badRecord{name: "wrong partition", topic: k.topics.Impressions, partition: (pu + 1) % k.n, key: []byte(u),
		value: ingest.AppendImpressionJSON(nil, &misplaced), reason: "partition", errHas: fmt.Sprintf("belongs in partition %d, not %d", pu, (pu+1)%k.n)})
	addBad(badRecord{name: "oversized", topic: k.topics.Conversions, partition: pu, key: []byte(u),
		value: []byte(oversized), reason: "invalid", errHas: "conversion_type"})

	produceJourneys(k, s, plain, plain, users, "post")
	// Bad records last in their partitions: Next must still move past them.
	addBad(badRecord{name: "trailing bad JSON", topic: k.topics.Impressions, partition: pu, key: []byte(u),
		value: []byte(`{`), reason: "decode", errHas: "bad JSON"})
	addBad(badRecord{name: "trailing bad row", topic: k.topics.Conversions, partition: pu, key: []byte(u),
		value: []byte(`"unterminated`), reason: "decode", errHas: "conversion"})

	h := newRecHandler("member", nil)
	rc := k.startConsumer(k.consumerConfig("deadletters"), h)
	h.waitRecords(t, len(s.events))
	letters := k.readTopic(k.topics.DeadLetter, len(bad))
	// Wait for the polls to be complete (Next past the trailing records).
	testenv.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		end := map[int32]*[ingest.NumInputs]int64{}
		for _, poll := range h.pollsNow() {
			for _, b := range poll {
				if end[b.Partition] == nil {
					end[b.Partition] = &[ingest.NumInputs]int64{}
				}
				for i, nx := range b.Next {
					end[b.Partition][i] = max(end[b.Partition][i], nx)
				}
			}
		}
		for p := range k.n {
			if end[p] == nil || *end[p] != *s.logAt(p) {
				return fmt.Errorf("partition %d: read up to %v, the log ends at %v", p, end[p], *s.logAt(p))
			}
		}
		return nil
	})
	rc.stop()

	// The good records, each once, and only them.
	_, _, _, polls := h.snapshot()
	next := map[int32]*[ingest.NumInputs]int64{}
	got := checkPolls(t, "member", s, polls, next, pollCheck{gaps: true, static: true})
	checkAllOnce(t, s, got)

	// The bad ones, each in the dead-letter topic once.
	byOrigin := map[string]*kgo.Record{}
	for _, r := range letters {
		topic, ok1 := header(r, "source-topic")
		part, ok2 := header(r, "source-partition")
		off, ok3 := header(r, "source-offset")
		if !ok1 || !ok2 || !ok3 {
			t.Errorf("dead letter %q without exactly one source-topic, source-partition and source-offset header: %v", trunc(r.Value), r.Headers)
			continue
		}
		origin := topic + "/" + part + "@" + off
		if byOrigin[origin] != nil {
			t.Errorf("two dead letters of %s", origin)
		}
		byOrigin[origin] = r
	}
	for _, b := range bad {
		origin := fmt.Sprintf("%s/%d@%d", b.topic, b.partition, b.offset)
		r := byOrigin[origin]
		if r == nil {
			t.Errorf("%s: no dead letter of %s", b.name, origin)
			continue
		}
		errMsg, ok := header(r, "error")
		if !ok || !strings.Contains(errMsg, b.errHas) {
			t.Errorf("%s: error header %q, want it to mention %q", b.name, errMsg, b.errHas)
		}
		if !bytes.Equal(r.Key, b.key) {
			t.Errorf("%s: dead letter key %q, want %q", b.name, r.Key, b.key)
		}
		if len(b.value) > ingest.MaxDeadLetterBytes {
			size, ok := header(r, "original-size")
			if !ok || size != strconv.Itoa(len(b.value)) {
				t.Errorf("%s: original-size header %q, want %d", b.name, size, len(b.value))
			}
			if !bytes.Equal(r.Value, b.value[:ingest.MaxDeadLetterBytes]) {
				t.Errorf("%s: dead letter value of %d bytes is not the first %d of the original", b.name, len(r.Value), ingest.MaxDeadLetterBytes)
			}
			continue
		}
		if _, has := header(r, "original-size"); has {
			t.Errorf("%s: original-size header on a value that was not truncated", b.name)
		}
		if !bytes.Equal(r.Value, b.value) {
			t.Errorf("%s: dead letter value %q, want the original %q", b.name, trunc(r.Value), trunc(b.value))
		}
	}

	reasons := map[string]int{}
	for _, b := range bad {
		reasons[b.reason]++
	}
	for reason, want := range reasons {
		if n := metric(t, rc.reg, "lookback_deadletter_records_total", map[string]string{"source": "kafka", "reason": reason}); n != float64(want) {
			t.Errorf("lookback_deadletter_records_total{reason=%q} = %v, want %d", reason, n, want)
		}
	}
	if n := metric(t, rc.reg, "lookback_ingest_records_total", map[string]string{"outcome": "dead_letter"}); n != float64(len(bad)) {
		t.Errorf("lookback_ingest_records_total{outcome=dead_letter} = %v, want %d", n, len(bad))
	}
}

func trunc(b []byte) string {
	if len(b) > 80 {
		return string(b[:80]) + "..."
	}
	return string(b)
}

// TestConsumerClientRace: the group callbacks (Assign through
// adjustOffsets) must not depend on NewConsumer having returned. Run it
// with -race: NewConsumer sets c.cl after kgo.NewClient has started
// joining the group, and adjustOffsets reads c.cl from the client's group
// goroutine with nothing ordering the two.
func TestConsumerClientRace(t *testing.T) {
	t.Parallel()
	k := newTestKafka(t, 2)
	h := newRecHandler("member", nil)
	c, err := ingest.NewConsumer(k.consumerConfig("race"), h, testenv.Logger(), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// Not running Run: nothing the test does orders the client's
	// goroutine after NewConsumer's assignment.
	testenv.CheckFor(t, 20*time.Second, 10*time.Millisecond, func() error {
		if a, _, _, _ := h.snapshot(); len(a) == 0 {
			return errors.New("not assigned yet")
		}
		return nil
	})
}

// failFirstAssign fails the first Assign, as a handler whose checkpoint
// store is briefly unavailable would (after claiming some of the
// partitions, as actors.Engine may).
type failFirstAssign struct {
	*recHandler
	mu      sync.Mutex
	failed  []int32 // the partitions of the failed Assign, until released
	calls   []string
	release bool     // the failed claim was released (Lose or Revoke)
	early   []string // Assign calls before the release
}

func (h *failFirstAssign) Assign(ctx context.Context, gen int32, parts []int32) (map[int32][ingest.NumInputs]int64, error) {
	h.mu.Lock()
	h.calls = append(h.calls, fmt.Sprintf("Assign%v", parts))
	if len(h.calls) == 1 {
		h.failed = slices.Clone(parts)
		h.mu.Unlock()
		return nil, errors.New("checkpoint store unavailable")
	}
	if h.failed != nil {
		h.early = append(h.early, fmt.Sprintf("Assign of %v before the failed claim of %v was released", parts, h.failed))
	}
	h.mu.Unlock()
	return h.recHandler.Assign(ctx, gen, parts)
}

// releases reports whether parts release the failed claim, and forgets it.
func (h *failFirstAssign) releases(what string, parts []int32) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.calls = append(h.calls, fmt.Sprintf("%s%v", what, parts))
	if h.failed != nil && slices.Equal(parts, h.failed) {
		h.failed, h.release = nil, true
		return true
	}
	return false
}

func (h *failFirstAssign) Revoke(ctx context.Context, parts []int32) {
	if !h.releases("Revoke", parts) {
		h.recHandler.Revoke(ctx, parts)
	}
}

func (h *failFirstAssign) Lose(ctx context.Context, parts []int32) {
	if !h.releases("Lose", parts) {
		h.recHandler.Lose(ctx, parts)
	}
}

// TestConsumerAssignFails: when Assign fails, no record of those
// partitions is handed over; the consumer releases the failed claim (Lose
// or Revoke, which drops whatever the handler claimed before failing),
// tries again and, once Assign succeeds, reads everything once.
func TestConsumerAssignFails(t *testing.T) {
	t.Parallel()
	k := newTestKafka(t, 2)
	users := testUsers(t, "af", 6, k.n)
	s := newSent(k.n)
	plain := k.producer(ingest.BidEncoder{})
	produceJourneys(k, s, plain, plain, users, "x")
	h := &failFirstAssign{recHandler: newRecHandler("member", nil)}
	rc := k.startConsumer(k.consumerConfig("assign-fails"), h)
	h.waitRecords(t, len(s.events))
	rc.stop()
	h.mu.Lock()
	calls, released, early := slices.Clone(h.calls), h.release, h.early
	h.mu.Unlock()
	if !released || len(early) > 0 {
		t.Errorf("the failed claim was not released before the next Assign (%v); callbacks %v", early, calls)
	}
	if err := h.errs(); err != nil {
		t.Errorf("%v (callbacks %v)", err, calls)
	}
	_, _, _, polls := h.snapshot()
	checkAllOnce(t, s, checkPolls(t, "member", s, polls, map[int32]*[ingest.NumInputs]int64{}, pollCheck{static: true}))
}

// TestConsumerPause pauses one input of one partition: its new records
// wait while the others flow, and arrive once resumed. A pause ends with
// the partition (lost and assigned again, it is read unpaused).
func TestConsumerPause(t *testing.T) {
	t.Parallel()
	k := newTestKafka(t, 2)
	users := testUsers(t, "pause", 8, k.n)
	s := newSent(k.n)
	plain := k.producer(ingest.BidEncoder{})
	produceJourneys(k, s, plain, plain, users, "a")
	track := newTrackingHandler("member", nil, &sync.Map{})
	h := track.recHandler
	rc := k.startConsumer(k.consumerConfig("pause"), track)
	h.waitRecords(t, len(s.events))

	const p, bids = int32(0), 0
	isPausedBid := func(ev attribution.Event) bool {
		return ev.Type == attribution.TypeBid && ingest.PartitionOf(ev.UserID, int(k.n)) == p
	}
	rc.c.SetPaused(p, bids, true)
	rc.c.SetPaused(p, bids, true) // twice is once
	round := newSent(k.n)
	evs := produceJourneys(k, round, plain, plain, users, "b")
	s.add(evs...)
	held := 0
	for _, ev := range evs {
		if isPausedBid(ev) {
			held++
		}
	}
	if held == 0 {
		t.Fatal("no bid in the paused partition")
	}
	h.waitRecords(t, len(s.events)-held)
	// For half a second (several fetches), the paused input stays quiet.
	for end := time.Now().Add(500 * time.Millisecond); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		if n := h.count(); n != len(s.events)-held {
			t.Fatalf("%d records handled while %d bids of partition %d are paused, want %d", n, held, p, len(s.events)-held)
		}
	}
	rc.c.SetPaused(p, bids, false)
	h.waitRecords(t, len(s.events))

	// Pause again, then lose the partitions: they come back unpaused.
	rc.c.SetPaused(p, bids, true)
	fault := k.cluster().Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Heartbeat}, Group: "pause", TopLevel: true, Err: kerr.IllegalGeneration})
	testenv.CheckFor(t, 20*time.Second, 20*time.Millisecond, func() error {
		assigns, _, loses, _ := h.snapshot()
		if fault.Hits() == 0 || len(loses) != 1 || len(assigns) != 2 {
			return fmt.Errorf("Lose calls %v, Assign calls %v; want one Lose and a second Assign", loses, assigns)
		}
		return nil
	})
	s.add(produceJourneys(k, newSent(k.n), plain, plain, users, "c")...)
	h.waitRecords(t, len(s.events))
	rc.stop()
	if err := h.errs(); err != nil {
		t.Error(err)
	}
	_, _, _, polls := h.snapshot()
	checkAllOnce(t, s, checkPolls(t, "member", s, polls, map[int32]*[ingest.NumInputs]int64{}, pollCheck{}))
}
