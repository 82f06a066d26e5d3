package ingest_test

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/lookback-dev/lookback/attribution"
	"github.com/lookback-dev/lookback/ingest"
	"github.com/lookback-dev/lookback/internal/testenv"
)

// partitionKeys are 2,000 keys: user ids as lookback sees them, and
// random ones of every length 1 to 40 (all tails of the 4-byte hash
// loop), with multi-byte UTF-8 and high bytes (sign extension in Java's
// murmur2).
func partitionKeys() []string {
	r := rand.New(rand.NewPCG(7, 11))
	var keys []string
	seen := map[string]bool{}
	for i := range 1000 {
		keys = append(keys, fmt.Sprintf("user-%d", i))
		seen[keys[i]] = true
	}
	pieces := []string{"a", "Z", "0", "-", "é", "日本", "🙂", "\xff", "\x80", "\x7f", " "}
	for len(keys) < 2000 {
		n := 1 + r.IntN(40)
		b := make([]byte, 0, n)
		for len(b) < n {
			if r.IntN(3) == 0 {
				b = append(b, pieces[r.IntN(len(pieces))]...)
			} else {
				b = append(b, byte(r.IntN(256)))
			}
		}
		if k := string(b[:n]); !seen[k] {
			seen[k] = true
			keys = append(keys, k)
		}
	}
	return keys
}

// TestPartitionOfMatchesFranzGo produces 2,000 keyed records to a
// 12-partition topic with franz-go's default partitioner for keyed records
// (StickyKeyPartitioner(nil), murmur2 as in Kafka's Java client): each
// lands in the partition PartitionOf computes.
func TestPartitionOfMatchesFranzGo(t *testing.T) {
	t.Parallel()
	const n = 12
	b, err := ingest.StartBroker("127.0.0.1:0", t.TempDir()+"/kafka", n, testenv.Logger())
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if err := b.Cluster().CreateTopic("keys", n, nil); err != nil {
		t.Fatal(err)
	}
	cl, err := kgo.NewClient(
		kgo.SeedBrokers(b.Addrs()...),
		kgo.RecordPartitioner(kgo.StickyKeyPartitioner(nil)),
		kgo.ConsumeTopics("keys"),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.FetchMaxWait(100*time.Millisecond),
	)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()

	keys := partitionKeys()
	recs := make([]*kgo.Record, len(keys))
	for i, k := range keys {
		recs[i] = &kgo.Record{Topic: "keys", Key: []byte(k), Value: []byte(fmt.Sprint(i))}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := cl.ProduceSync(ctx, recs...).FirstErr(); err != nil {
		t.Fatal(err)
	}
	// Where the broker has them.
	stored := map[string]int32{}
	testenv.CheckFor(t, 20*time.Second, time.Millisecond, func() error {
		pctx, pcancel := context.WithTimeout(ctx, 200*time.Millisecond)
		defer pcancel()
		cl.PollFetches(pctx).EachRecord(func(r *kgo.Record) { stored[string(r.Key)] = r.Partition })
		if len(stored) < len(keys) {
			return fmt.Errorf("read back %d of %d keys", len(stored), len(keys))
		}
		return nil
	})
	used := map[int32]bool{}
	mismatches := 0
	for _, k := range keys {
		want := ingest.PartitionOf(k, n)
		used[want] = true
		if got := stored[k]; got != want {
			mismatches++
			if mismatches <= 10 {
				t.Errorf("key %q: franz-go put it in partition %d, PartitionOf says %d", k, got, want)
			}
		}
	}
	if mismatches > 0 {
		t.Errorf("%d of %d keys in another partition than PartitionOf's", mismatches, len(keys))
	}
	if len(used) != n {
		t.Errorf("the keys cover %d of %d partitions", len(used), n)
	}
}

// TestPartitionOfJava checks PartitionOf against the hashes of Kafka's own
// test of its Java client (UtilsTest.testMurmur2), and franz-go's
// partitioner for other partition counts, the empty key included.
func TestPartitionOfJava(t *testing.T) {
	for key, hash := range map[string]int32{
		"21":                         -973932308,
		"foobar":                     -790332482,
		"a-little-bit-long-string":   -985981536,
		"a-little-bit-longer-string": -1486304829,
		"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
		"abc": 479470107,
	} {
		// With n = MaxInt32 the partition is the masked hash itself.
		want := int32(uint32(hash) & 0x7fffffff)
		if got := ingest.PartitionOf(key, math.MaxInt32); got != want {
			t.Errorf("murmur2(%q) & 0x7fffffff = %d, Java's is %d", key, got, want)
		}
	}
	tp := kgo.StickyKeyPartitioner(nil).ForTopic("t")
	for _, n := range []int{1, 2, 3, 7, 12, 64, 1000} {
		for _, k := range append(partitionKeys()[:300], "") {
			want := tp.Partition(&kgo.Record{Key: []byte(k)}, n)
			if got := ingest.PartitionOf(k, n); int(got) != want {
				t.Errorf("key %q, %d partitions: PartitionOf %d, franz-go %d", k, n, got, want)
			}
		}
	}
}

// TestEnsureTopics creates the missing topics, keeps existing ones (and
// their partition count) and refuses input topics that are not
// co-partitioned.
func TestEnsureTopics(t *testing.T) {
	t.Parallel()
	b, err := ingest.StartBroker("127.0.0.1:0", t.TempDir()+"/kafka", 3, testenv.Logger())
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	topics := ingest.DefaultTopics()
	if err := b.Cluster().CreateTopic(topics.Clicks, 5, nil); err != nil {
		t.Fatal(err)
	}
	if n, err := ingest.EnsureTopics(ctx, b.Addrs(), topics, 4, 1); err == nil || !strings.Contains(err.Error(), "co-partitioned") {
		t.Errorf("EnsureTopics with clicks of 5 partitions and the others of 4: %d, %v; want a co-partitioning error", n, err)
	}

	other := topics
	other.Impressions, other.Bids, other.Clicks, other.Conversions, other.DeadLetter = "i2", "b2", "c2", "v2", "d2"
	n, err := ingest.EnsureTopics(ctx, b.Addrs(), other, 6, 1)
	if err != nil || n != 6 {
		t.Fatalf("EnsureTopics of new topics: %d, %v", n, err)
	}
	for _, topic := range other.All() {
		if got := len(b.Cluster().PartitionInfos(topic)); got != 6 {
			t.Errorf("%s has %d partitions, want 6", topic, got)
		}
	}
	// Existing topics keep their partition count, which is returned.
	if n, err := ingest.EnsureTopics(ctx, b.Addrs(), other, 12, 1); err != nil || n != 6 {
		t.Errorf("EnsureTopics of existing topics: %d, %v; want 6", n, err)
	}
}

// TestProducerKeys: the producer refuses an event without a user id and
// keys every other by its user, on the topic of its type.
func TestProducerKeys(t *testing.T) {
	t.Parallel()
	k := newTestKafka(t, 4)
	p := k.producer(ingest.BidEncoder{})
	at := baseTime()
	events := []attribution.Event{
		impressionEvent("u-1", "i-1", "", at),
		clickEvent("", "k-1", "", at),
		conversionEvent("u-2", "v-1", at, 5),
	}
	errs := p.Produce(context.Background(), events)
	if errs[0] != nil || errs[2] != nil || !errors.Is(errs[1], ingest.ErrNoUserID) {
		t.Fatalf("Produce errors %v, want only the event without a user refused (ErrNoUserID)", errs)
	}
	for _, ev := range []attribution.Event{events[0], events[2]} {
		recs := k.readTopic(k.topics.TopicOf(ev.Type), 1)
		if string(recs[0].Key) != ev.UserID || recs[0].Partition != ingest.PartitionOf(ev.UserID, int(k.n)) {
			t.Errorf("%s: key %q partition %d, want %q in %d", ev.ID, recs[0].Key, recs[0].Partition, ev.UserID, ingest.PartitionOf(ev.UserID, int(k.n)))
		}
	}
	if n := k.topicSize(k.topics.Clicks); n != 0 {
		t.Errorf("%d clicks produced", n)
	}
	if _, err := p.Record(&events[1]); !errors.Is(err, ingest.ErrNoUserID) {
		t.Errorf("Record of an event without a user: %v", err)
	}
}

// TestBrokerRestart: records the embedded broker acknowledged are there
// after it restarts on the same data directory.
func TestBrokerRestart(t *testing.T) {
	t.Parallel()
	dir := t.TempDir() + "/kafka"
	b, err := ingest.StartBroker("127.0.0.1:0", dir, 2, testenv.Logger())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	topics := ingest.DefaultTopics()
	if _, err := ingest.EnsureTopics(ctx, b.Addrs(), topics, 2, 1); err != nil {
		t.Fatal(err)
	}
	cfg := ingest.DefaultProducerConfig()
	cfg.Brokers = b.Addrs()
	p, err := ingest.NewProducer(cfg, testenv.Logger())
	if err != nil {
		t.Fatal(err)
	}
	var events []attribution.Event
	for i := range 50 {
		events = append(events, clickEvent(fmt.Sprintf("u-%d", i), fmt.Sprintf("k-%d", i), "", baseTime()))
	}
	for _, err := range p.Produce(ctx, events) {
		if err != nil {
			t.Fatal(err)
		}
	}
	p.Close()
	b.Close()

	b, err = ingest.StartBroker("127.0.0.1:0", dir, 2, testenv.Logger())
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	k := &testKafka{t: t, broker: b, addrs: b.Addrs(), topics: topics, n: 2}
	if n, err := ingest.EnsureTopics(ctx, b.Addrs(), topics, 2, 1); err != nil || n != 2 {
		t.Fatalf("EnsureTopics after the restart: %d, %v", n, err)
	}
	checkTopicEvents(t, k, topics.Clicks, events)
}
