package loadtest

import (
	"context"
	"io"
	"log/slog"
	"reflect"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/lookback-dev/lookback/attribution"
	"github.com/lookback-dev/lookback/ingest"
)

// TestProduce produces a stream to an in-process broker and reads it
// back: every record arrives once, decodes to the generated event, lands
// in its user's partition number on every topic, and each partition holds
// its records in the stream's order.
func TestProduce(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	broker, err := ingest.StartBroker("127.0.0.1:0", t.TempDir(), 4, log)
	if err != nil {
		t.Fatal(err)
	}
	defer broker.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	topics := ingest.DefaultTopics()
	if _, err := ingest.EnsureTopics(ctx, broker.Addrs(), topics, 4, 1); err != nil {
		t.Fatal(err)
	}
	pcfg := ingest.DefaultProducerConfig()
	pcfg.Brokers, pcfg.Topics = broker.Addrs(), topics
	p, err := ingest.NewProducer(pcfg, log)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()

	cfg := testGenConfig(3000)
	cfg.Users = 40
	s := Generate(cfg)
	res, err := Produce(ctx, p, s, ProduceConfig{Rate: 20_000})
	if err != nil {
		t.Fatal(err)
	}
	if res.Records != s.Records() || res.Failed != 0 {
		t.Fatalf("result %+v for %d records", res, s.Records())
	}
	if min := time.Duration(float64(s.Records()-64) / 20_000 * float64(time.Second)); res.Elapsed < min {
		t.Fatalf("produced at %v records/s, above the target", res.Rate())
	}

	cl, err := kgo.NewClient(kgo.SeedBrokers(broker.Addrs()...), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.ConsumeTopics(topics.Bids, topics.Impressions, topics.Clicks, topics.Conversions))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	type key struct {
		topic     string
		partition int32
	}
	got := map[key][]attribution.Event{}
	dec := ingest.NewValueDecoder(nil)
	userPartition := map[string]int32{}
	for n := 0; n < s.Records(); {
		fs := cl.PollFetches(ctx)
		if err := fs.Err0(); err != nil {
			t.Fatalf("after %d records: %v", n, err)
		}
		fs.EachRecord(func(r *kgo.Record) {
			n++
			typ := attribution.Type(topics.Input(r.Topic) + 1)
			var ev attribution.Event
			if err := dec.Decode(typ, r.Value, &ev); err != nil {
				t.Fatalf("%s: %v", r.Topic, err)
			}
			if string(r.Key) != ev.UserID {
				t.Fatalf("record keyed %q for user %q", r.Key, ev.UserID)
			}
			if p, ok := userPartition[ev.UserID]; ok && p != r.Partition {
				t.Fatalf("user %s in partitions %d and %d: topics not co-partitioned", ev.UserID, p, r.Partition)
			}
			userPartition[ev.UserID] = r.Partition
			got[key{r.Topic, r.Partition}] = append(got[key{r.Topic, r.Partition}], ev)
		})
	}
	for typ := attribution.TypeBid; typ <= attribution.TypeConversion; typ++ {
		topic := topics.TopicOf(typ)
		want := map[int32][]attribution.Event{}
		for _, e := range s.Topic(typ) {
			p := userPartition[e.UserID]
			want[p] = append(want[p], *e)
		}
		for p, w := range want {
			g := got[key{topic, p}]
			if len(g) != len(w) {
				t.Fatalf("%s/%d: %d records, want %d", topic, p, len(g), len(w))
			}
			for i := range w {
				if !reflect.DeepEqual(g[i], w[i]) {
					t.Fatalf("%s/%d record %d:\n got  %+v\n want %+v", topic, p, i, g[i], w[i])
				}
			}
		}
	}
}
