package ingest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/lookback-dev/lookback/attribution"
)

// ProducerConfig configures a Producer.
type ProducerConfig struct {
	Brokers []string
	Topics  Topics
	// Bid sets how bid requests are written: plain Avro by default, or in
	// the Confluent wire format with a schema id.
	Bid BidEncoder
	// MaxBufferedRecords bounds the records in flight; ProduceAsync blocks
	// beyond it (backpressure on a fast reader of a large file).
	MaxBufferedRecords int
	// Linger lets the client batch records for a little while.
	Linger   time.Duration
	ClientID string
}

// DefaultProducerConfig returns the defaults.
func DefaultProducerConfig() ProducerConfig {
	return ProducerConfig{Topics: DefaultTopics(), MaxBufferedRecords: 100_000, Linger: 5 * time.Millisecond, ClientID: "lookback-producer"}
}

// Validate reports the first problem with the configuration.
func (c *ProducerConfig) Validate() error {
	if len(c.Brokers) == 0 {
		return errors.New("no Kafka brokers")
	}
	if c.MaxBufferedRecords < 1 {
		return errors.New("max buffered records must be positive")
	}
	return c.Topics.Validate()
}

// ErrNoUserID is returned for an event without a user id: it would have to
// be sent with a null key, which scatters a user's events over partitions.
var ErrNoUserID = errors.New("event has no user_id: refusing to produce it without a key")

// Producer writes events to their topics in their wire formats, keyed by
// user id with Kafka's default (murmur2) partitioner, so that all of a
// user's events land in the same partition number of every topic. It is
// safe for concurrent use.
type Producer struct {
	cl     *kgo.Client
	topics Topics
	enc    ValueEncoder
}

// NewProducer connects a producer.
func NewProducer(cfg ProducerConfig, log *slog.Logger) (*Producer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cl, err := kgo.NewClient(
		kgo.SeedBrokers(cfg.Brokers...),
		kgo.ClientID(cfg.ClientID),
		kgo.RecordPartitioner(kgo.StickyKeyPartitioner(nil)),
		kgo.MaxBufferedRecords(cfg.MaxBufferedRecords),
		kgo.ProducerLinger(cfg.Linger),
		kgo.ProducerBatchCompression(kgo.SnappyCompression()),
		kgo.WithLogger(newKafkaLogger(log)),
	)
	if err != nil {
		return nil, fmt.Errorf("creating the Kafka producer: %w", err)
	}
	return &Producer{cl: cl, topics: cfg.Topics, enc: ValueEncoder{Bid: cfg.Bid}}, nil
}

// Client is the underlying Kafka client.
func (p *Producer) Client() *kgo.Client { return p.cl }

// Record encodes an event as the Kafka record lookback expects.
func (p *Producer) Record(ev *attribution.Event) (*kgo.Record, error) {
	if ev.UserID == "" {
		return nil, ErrNoUserID
	}
	value, err := p.enc.Append(nil, ev)
	if err != nil {
		return nil, err
	}
	return &kgo.Record{Topic: p.topics.TopicOf(ev.Type), Key: []byte(ev.UserID), Value: value}, nil
}

// Produce sends events and waits until Kafka acknowledged each. It returns
// one error per event, nil for those acknowledged.
func (p *Producer) Produce(ctx context.Context, events []attribution.Event) []error {
	errs := make([]error, len(events))
	done := make(chan struct{}, len(events))
	sent := 0
	for i := range events {
		rec, err := p.Record(&events[i])
		if err != nil {
			errs[i] = err
			continue
		}
		sent++
		p.cl.Produce(ctx, rec, func(_ *kgo.Record, err error) {
			errs[i] = err
			done <- struct{}{}
		})
	}
	for ; sent > 0; sent-- {
		<-done
	}
	return errs
}

// ProduceAsync sends one event; done is called (from the client's
// goroutine) with the outcome once Kafka acknowledged or refused it. It
// blocks while too many records are in flight.
func (p *Producer) ProduceAsync(ctx context.Context, ev *attribution.Event, done func(error)) {
	rec, err := p.Record(ev)
	if err != nil {
		done(err)
		return
	}
	p.cl.Produce(ctx, rec, func(_ *kgo.Record, err error) { done(err) })
}

// Flush waits for every record in flight.
func (p *Producer) Flush(ctx context.Context) error { return p.cl.Flush(ctx) }

// Close flushes and closes the client.
func (p *Producer) Close() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = p.cl.Flush(ctx)
	p.cl.Close()
}
