package ingest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/lookback-dev/lookback/attribution"
)

// ConsumerConfig configures the consumer group.
type ConsumerConfig struct {
	Brokers []string
	Group   string
	Topics  Topics
	// Partitions is the input topics' partition count (from EnsureTopics):
	// a record whose user does not hash to its partition is rejected.
	Partitions int32
	// MaxPollRecords bounds one poll, and so the records between two
	// chances to rebalance.
	MaxPollRecords int
	// FetchMaxWait is how long a fetch waits for data; short, so that a
	// resumed partition is fetched again soon.
	FetchMaxWait time.Duration
	// MaxFutureSkew: an event further ahead of the wall clock is rejected.
	MaxFutureSkew time.Duration
	// BidSchemaIDs are the schema ids accepted for bid requests in the
	// Confluent wire format.
	BidSchemaIDs []int32
	// SessionTimeout: a member silent this long leaves the group.
	SessionTimeout time.Duration
	// RebalanceTimeout is how long the group waits for its members to
	// rejoin in a rebalance; a member revoking partitions finishes their
	// final checkpoint within it or is dropped (the claims fence it). A
	// member that died while joining can hold the group this long on
	// brokers that never expire its session (kfake does not).
	RebalanceTimeout time.Duration
	// ClientID names this member in broker logs.
	ClientID string
}

// DefaultConsumerConfig returns the defaults.
func DefaultConsumerConfig() ConsumerConfig {
	return ConsumerConfig{
		Group:            "lookback",
		Topics:           DefaultTopics(),
		MaxPollRecords:   10_000,
		FetchMaxWait:     200 * time.Millisecond,
		MaxFutureSkew:    5 * time.Minute,
		BidSchemaIDs:     []int32{1},
		SessionTimeout:   10 * time.Second,
		RebalanceTimeout: time.Minute,
		ClientID:         "lookback",
	}
}

// Validate reports the first problem with the configuration.
func (c *ConsumerConfig) Validate() error {
	switch {
	case len(c.Brokers) == 0:
		return errors.New("no Kafka brokers")
	case c.Group == "":
		return errors.New("no consumer group")
	case c.Partitions < 1:
		return errors.New("partition count must be positive")
	case c.MaxPollRecords < 1:
		return errors.New("max poll records must be positive")
	case c.FetchMaxWait <= 0:
		return errors.New("fetch max wait must be positive")
	case c.MaxFutureSkew <= 0:
		return errors.New("max future skew must be positive")
	case c.SessionTimeout <= 0, c.RebalanceTimeout <= 0:
		return errors.New("session and rebalance timeouts must be positive")
	}
	return c.Topics.Validate()
}

// Record is one decoded, valid record.
type Record struct {
	Input  int // see Topics.Inputs
	Offset int64
	Event  attribution.Event
}

// PartitionBatch is one poll's records of one partition (all inputs).
type PartitionBatch struct {
	Partition int32
	// Records are the valid records, in offset order within each input.
	Records []Record
	// Next is, per input, the offset after the last record this poll read
	// (valid or dead-lettered), or -1 when it read none from that input.
	Next [NumInputs]int64
	// Lagging is, per input, whether the log holds records past Next: the
	// input is behind, not idle. It is known only for inputs this poll
	// read; EndOffsets tells it for every input.
	Lagging [NumInputs]bool
}

// Handler is what the consumer hands partitions and records to.
type Handler interface {
	// Assign is called for newly assigned partitions, before they are
	// fetched, with the group generation at that moment: it claims them
	// and returns, per partition and input, the offset to resume from (a
	// negative one: the start of the log). When it fails, the member
	// rejoins the group: the partitions are reported to Lose first (drop
	// whatever Assign started), then assigned again.
	Assign(ctx context.Context, generation int32, partitions []int32) (map[int32][NumInputs]int64, error)
	// Revoke is called before partitions move to another member; when it
	// returns, the handler is done with them (final checkpoint written).
	Revoke(ctx context.Context, partitions []int32)
	// Lose is called for partitions lost without a clean handoff (the
	// session expired): another member may own them already, so they are
	// dropped without a checkpoint.
	Lose(ctx context.Context, partitions []int32)
	// Handle takes one poll's records. It may keep the batches.
	Handle(ctx context.Context, batches []PartitionBatch) error
}

// Consumer reads the four input topics as one consumer group, decodes and
// validates every record, dead-letters the bad ones, and hands each poll to
// the Handler grouped by partition. Offsets are not committed to Kafka by
// the consumer: the handler resumes them from its checkpoints (Assign), and
// may report them to Kafka for lag tools (CommitOffsets).
type Consumer struct {
	cfg     ConsumerConfig
	cl      *kgo.Client
	handler Handler
	log     *slog.Logger
	dlq     *DeadLetterWriter
	values  *ValueDecoder
	now     func() time.Time

	records     *prometheus.CounterVec
	deadLetters *prometheus.CounterVec
	lag         *prometheus.GaugeVec
	rebalances  *prometheus.CounterVec
	pausedGauge prometheus.Gauge

	mu     sync.Mutex
	paused map[pauseKey]bool
	// built is closed once cl is set: the client joins the group as soon
	// as it exists, and its callbacks may run before NewConsumer returns.
	built chan struct{}
}

type pauseKey struct {
	partition int32
	input     int
}

// NewConsumer connects a consumer group member. Run starts consuming.
func NewConsumer(cfg ConsumerConfig, handler Handler, log *slog.Logger, reg prometheus.Registerer) (*Consumer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	c := &Consumer{
		cfg: cfg, handler: handler, log: log, now: time.Now,
		paused: map[pauseKey]bool{}, built: make(chan struct{}),
		records: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lookback_ingest_records_total",
			Help: "Records read from the input topics, by topic and outcome (ok, dead_letter).",
		}, []string{"topic", "outcome"}),
		deadLetters: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lookback_deadletter_records_total",
			Help: "Records sent to the dead-letter topic, by source and reason (decode, invalid, future, partition, panic).",
		}, []string{"source", "reason"}),
		lag: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "lookback_consumer_lag_records",
			Help: "Records in the log past the last one read, per input topic and partition.",
		}, []string{"topic", "partition"}),
		rebalances: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lookback_consumer_partitions_total",
			Help: "Partitions assigned, revoked and lost by rebalances.",
		}, []string{"event"}),
		pausedGauge: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "lookback_consumer_paused_inputs",
			Help: "Topic-partitions whose fetching is paused (watermark alignment, backpressure, bounded buffers).",
		}),
	}
	for _, col := range []prometheus.Collector{c.records, c.deadLetters, c.lag, c.rebalances, c.pausedGauge} {
		if err := reg.Register(col); err != nil {
			return nil, fmt.Errorf("registering consumer metrics: %w", err)
		}
	}
	c.values = NewValueDecoder(cfg.BidSchemaIDs)
	inputs := cfg.Topics.Inputs()
	var err error
	c.cl, err = kgo.NewClient(
		kgo.SeedBrokers(cfg.Brokers...),
		kgo.ClientID(cfg.ClientID),
		kgo.ConsumerGroup(cfg.Group),
		kgo.ConsumeTopics(inputs[:]...),
		kgo.Balancers(CopartitionedBalancer()),
		kgo.DisableAutoCommit(),
		kgo.BlockRebalanceOnPoll(),
		kgo.FetchMaxWait(cfg.FetchMaxWait),
		// Bound what one fetch brings (the default is 50 MiB): a pause
		// (alignment, backpressure) only stops fetches not yet made, so
		// what is in flight is what still arrives after it.
		kgo.FetchMaxBytes(8<<20),
		kgo.SessionTimeout(cfg.SessionTimeout),
		kgo.RebalanceTimeout(cfg.RebalanceTimeout),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.AdjustFetchOffsetsFn(c.adjustOffsets),
		kgo.OnPartitionsRevoked(c.onRevoked),
		kgo.OnPartitionsLost(c.onLost),
		kgo.WithLogger(newKafkaLogger(log)),
	)
	if err != nil {
		return nil, fmt.Errorf("creating the Kafka consumer: %w", err)
	}
	close(c.built)
	c.dlq = NewDeadLetterWriter(c.cl, cfg.Topics.DeadLetter, log, nil)
	return c, nil
}

// Client is the underlying Kafka client (it can also produce).
func (c *Consumer) Client() *kgo.Client { return c.cl }

// Run polls until ctx ends or the handler fails.
func (c *Consumer) Run(ctx context.Context) error {
	inputs := c.cfg.Topics.Inputs()
	for {
		fetches := c.cl.PollRecords(ctx, c.cfg.MaxPollRecords)
		if fetches.IsClientClosed() || ctx.Err() != nil {
			c.cl.AllowRebalance()
			return nil
		}
		fetches.EachError(func(topic string, p int32, err error) {
			if !errors.Is(err, context.Canceled) {
				c.log.Warn("fetch error", "topic", topic, "partition", p, "err", err)
			}
		})
		batches, letters := c.decode(fetches, inputs)
		if err := c.dlq.Send(ctx, letters); err != nil {
			c.cl.AllowRebalance()
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		for _, l := range letters {
			c.records.WithLabelValues(l.Topic, "dead_letter").Inc()
		}
		if len(batches) > 0 {
			if err := c.handler.Handle(ctx, batches); err != nil {
				c.cl.AllowRebalance()
				if ctx.Err() != nil {
					return nil
				}
				return fmt.Errorf("handling records: %w", err)
			}
		}
		c.cl.AllowRebalance()
	}
}

// decode turns a poll into per-partition batches of valid records and a
// list of dead letters.
func (c *Consumer) decode(fetches kgo.Fetches, inputs [NumInputs]string) ([]PartitionBatch, []DeadLetter) {
	// Each partition's records in one array of the right size, decoded in
	// place: events are large, and copies and growth showed in profiles.
	sizes := map[int32]int{}
	fetches.EachPartition(func(ftp kgo.FetchTopicPartition) { sizes[ftp.Partition] += len(ftp.Records) })
	byPartition := map[int32]*PartitionBatch{}
	var letters []DeadLetter
	now := c.now()
	fetches.EachPartition(func(ftp kgo.FetchTopicPartition) {
		if len(ftp.Records) == 0 {
			return
		}
		input := c.cfg.Topics.Input(ftp.Topic)
		if input < 0 {
			return
		}
		b := byPartition[ftp.Partition]
		if b == nil {
			b = &PartitionBatch{Partition: ftp.Partition, Next: [NumInputs]int64{-1, -1, -1, -1},
				Records: make([]Record, 0, sizes[ftp.Partition])}
			byPartition[ftp.Partition] = b
		}
		ok := 0
		for _, rec := range ftp.Records {
			b.Records = append(b.Records, Record{Input: input, Offset: rec.Offset})
			reason, err := c.decodeRecord(input, rec, &b.Records[len(b.Records)-1].Event, now)
			if err != nil {
				b.Records = b.Records[:len(b.Records)-1]
				c.deadLetters.WithLabelValues("kafka", reason).Inc()
				letters = append(letters, DeadLetter{
					Topic: rec.Topic, Partition: rec.Partition, Offset: rec.Offset,
					Key: rec.Key, Value: rec.Value, Err: err,
				})
				continue
			}
			ok++
		}
		next := ftp.Records[len(ftp.Records)-1].Offset + 1
		b.Next[input] = next
		b.Lagging[input] = ftp.HighWatermark > next
		c.lag.WithLabelValues(inputs[input], strconv.Itoa(int(ftp.Partition))).Set(float64(max(ftp.HighWatermark-next, 0)))
		c.records.WithLabelValues(ftp.Topic, "ok").Add(float64(ok))
	})
	batches := make([]PartitionBatch, 0, len(byPartition))
	for _, b := range byPartition {
		batches = append(batches, *b)
	}
	sort.Slice(batches, func(i, j int) bool { return batches[i].Partition < batches[j].Partition })
	return batches, letters
}

// decodeRecord decodes and checks one record; on failure it returns the
// reason (a metric label) and the error.
func (c *Consumer) decodeRecord(input int, rec *kgo.Record, ev *attribution.Event, now time.Time) (string, error) {
	if err := c.values.Decode(attribution.Type(input+1), rec.Value, ev); err != nil {
		if errors.Is(err, attribution.ErrInvalidEvent) {
			return "invalid", err
		}
		return "decode", err
	}
	if err := ev.CheckTime(now, c.cfg.MaxFutureSkew); err != nil {
		return "future", err
	}
	if want := PartitionOf(ev.UserID, int(c.cfg.Partitions)); want != rec.Partition {
		return "partition", fmt.Errorf("user_id %q belongs in partition %d, not %d: producers must key records by user_id with Kafka's default (murmur2) partitioner", ev.UserID, want, rec.Partition)
	}
	return "", nil
}

// adjustOffsets claims newly assigned partitions through the handler and
// resumes them from its offsets rather than Kafka's.
func (c *Consumer) adjustOffsets(ctx context.Context, offsets map[string]map[int32]kgo.Offset) (map[string]map[int32]kgo.Offset, error) {
	select {
	case <-c.built:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	_, gen := c.cl.GroupMetadata()
	var parts []int32
	seen := map[int32]bool{}
	for _, ps := range offsets {
		for p := range ps {
			if !seen[p] {
				seen[p] = true
				parts = append(parts, p)
			}
		}
	}
	sort.Slice(parts, func(i, j int) bool { return parts[i] < parts[j] })
	c.log.Info("partitions assigned", "partitions", parts, "generation", gen)
	c.rebalances.WithLabelValues("assigned").Add(float64(len(parts)))
	resume, err := c.handler.Assign(ctx, gen, parts)
	if err != nil {
		return nil, fmt.Errorf("claiming partitions %v: %w", parts, err)
	}
	for topic, ps := range offsets {
		input := c.cfg.Topics.Input(topic)
		for p := range ps {
			at, ok := resume[p]
			if !ok || input < 0 || at[input] < 0 {
				ps[p] = kgo.NewOffset().AtStart()
			} else {
				ps[p] = kgo.NewOffset().At(at[input]).WithEpoch(-1)
			}
		}
	}
	return offsets, nil
}

func (c *Consumer) onRevoked(ctx context.Context, _ *kgo.Client, revoked map[string][]int32) {
	parts := partitionNumbers(revoked)
	if len(parts) == 0 {
		return
	}
	c.log.Info("partitions revoked", "partitions", parts)
	c.rebalances.WithLabelValues("revoked").Add(float64(len(parts)))
	c.handler.Revoke(ctx, parts)
	c.forget(parts)
}

func (c *Consumer) onLost(ctx context.Context, _ *kgo.Client, lost map[string][]int32) {
	parts := partitionNumbers(lost)
	if len(parts) == 0 {
		return
	}
	c.log.Warn("partitions lost", "partitions", parts)
	c.rebalances.WithLabelValues("lost").Add(float64(len(parts)))
	c.handler.Lose(ctx, parts)
	c.forget(parts)
}

func partitionNumbers(m map[string][]int32) []int32 {
	seen := map[int32]bool{}
	var out []int32
	for _, ps := range m {
		for _, p := range ps {
			if !seen[p] {
				seen[p] = true
				out = append(out, p)
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

// SetPaused pauses or resumes fetching one input of one partition (for
// watermark alignment and backpressure). It is safe for concurrent use.
func (c *Consumer) SetPaused(partition int32, input int, paused bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	k := pauseKey{partition, input}
	if c.paused[k] == paused {
		return
	}
	c.paused[k] = paused
	tp := map[string][]int32{c.cfg.Topics.Inputs()[input]: {partition}}
	if paused {
		c.cl.PauseFetchPartitions(tp)
		c.pausedGauge.Inc()
	} else {
		c.cl.ResumeFetchPartitions(tp)
		c.pausedGauge.Dec()
	}
}

// forget clears the pause state of partitions that left this member.
func (c *Consumer) forget(parts []int32) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, p := range parts {
		for i := 0; i < NumInputs; i++ {
			k := pauseKey{p, i}
			if c.paused[k] {
				c.cl.ResumeFetchPartitions(map[string][]int32{c.cfg.Topics.Inputs()[i]: {p}})
				c.pausedGauge.Dec()
			}
			delete(c.paused, k)
		}
	}
}

// CommitOffsets reports offsets to Kafka so that lag tools see progress.
// lookback resumes from its own checkpoints, so this is best effort.
func (c *Consumer) CommitOffsets(ctx context.Context, offsets map[int32][NumInputs]int64) {
	commit := map[string]map[int32]kgo.EpochOffset{}
	for p, at := range offsets {
		for i, topic := range c.cfg.Topics.Inputs() {
			if at[i] < 0 {
				continue
			}
			if commit[topic] == nil {
				commit[topic] = map[int32]kgo.EpochOffset{}
			}
			commit[topic][p] = kgo.EpochOffset{Epoch: -1, Offset: at[i]}
		}
	}
	c.cl.CommitOffsets(ctx, commit, func(_ *kgo.Client, _ *kmsg.OffsetCommitRequest, _ *kmsg.OffsetCommitResponse, err error) {
		if err != nil && !errors.Is(err, context.Canceled) {
			c.log.Debug("reporting offsets to Kafka failed", "err", err)
		}
	})
}

// EndOffsets returns, per partition and input, the offset after the last
// record in the log (the high watermark). The engine compares it with what
// it has read, so that an input with unread records is never taken for an
// idle one, however slowly it is being fetched.
func (c *Consumer) EndOffsets(ctx context.Context) (map[int32][NumInputs]int64, error) {
	inputs := c.cfg.Topics.Inputs()
	listed, err := kadm.NewClient(c.cl).ListEndOffsets(ctx, inputs[:]...)
	if err != nil {
		return nil, fmt.Errorf("listing end offsets: %w", err)
	}
	out := make(map[int32][NumInputs]int64, c.cfg.Partitions)
	for i, topic := range inputs {
		for p, o := range listed[topic] {
			if o.Err != nil {
				continue
			}
			ends, ok := out[p]
			if !ok {
				ends = [NumInputs]int64{-1, -1, -1, -1}
			}
			ends[i] = o.Offset
			out[p] = ends
		}
	}
	return out, nil
}

// Close leaves the group and closes the client.
func (c *Consumer) Close() { c.cl.Close() }
