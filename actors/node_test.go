package actors

import (
	"context"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/lookback-dev/lookback/attribution"
	"github.com/lookback-dev/lookback/ingest"
	"github.com/lookback-dev/lookback/internal/testenv"
	"github.com/lookback-dev/lookback/persist"
)

// An in-process lookback node for tests, in the manner of nats-server's
// test helpers: a real Kafka-protocol broker (kfake), a real checkpoint
// store and fact sink, the engine and its consumer. Nodes can be stopped
// and started again on the same store, sink and broker.

// testCluster is a broker with its topics, shared by the nodes of a test.
type testCluster struct {
	t          testing.TB
	broker     *ingest.EmbeddedBroker
	topics     ingest.Topics
	partitions int32
	producer   *ingest.Producer
}

func newTestCluster(t testing.TB, partitions int32) *testCluster {
	t.Helper()
	log := testenv.Logger()
	b, err := ingest.StartBroker("127.0.0.1:0", filepath.Join(t.TempDir(), "kafka"), partitions, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	topics := ingest.DefaultTopics()
	n, err := ingest.EnsureTopics(context.Background(), b.Addrs(), topics, partitions, 1)
	if err != nil {
		t.Fatal(err)
	}
	pcfg := ingest.DefaultProducerConfig()
	pcfg.Brokers, pcfg.Topics = b.Addrs(), topics
	p, err := ingest.NewProducer(pcfg, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return &testCluster{t: t, broker: b, topics: topics, partitions: n, producer: p}
}

// produce sends events and fails the test unless Kafka acknowledged all.
func (c *testCluster) produce(events []attribution.Event) {
	c.t.Helper()
	for i, err := range c.producer.Produce(context.Background(), events) {
		if err != nil {
			c.t.Fatalf("producing event %d: %v", i, err)
		}
	}
}

type nodeOptions struct {
	rules  *attribution.Rules
	store  persist.CheckpointStore
	sink   persist.FactSink
	nodeID string
	config func(*Config)
}

// testNode is one running engine with its consumer.
type testNode struct {
	t        testing.TB
	engine   *Engine
	consumer *ingest.Consumer
	reg      *prometheus.Registry
	cancel   context.CancelFunc
	done     chan struct{}
	runErr   error
	stopOnce sync.Once
}

func (c *testCluster) startNode(o nodeOptions) *testNode {
	t := c.t
	t.Helper()
	log := testenv.Logger()
	reg := prometheus.NewRegistry()
	cfg := DefaultConfig()
	cfg.NodeID = o.nodeID
	if cfg.NodeID == "" {
		cfg.NodeID = "node-1"
	}
	cfg.Partitions, cfg.Topics, cfg.Rules = c.partitions, c.topics, o.rules
	cfg.CheckpointInterval = 200 * time.Millisecond
	cfg.Watermark.IdleTimeout = time.Second
	cfg.Watermark.AllowedLateness = time.Second
	if o.config != nil {
		o.config(&cfg)
	}
	engine, err := NewEngine(cfg, o.store, o.sink, nil, log, reg)
	if err != nil {
		t.Fatal(err)
	}
	ccfg := ingest.DefaultConsumerConfig()
	ccfg.Brokers, ccfg.Topics, ccfg.Partitions = c.broker.Addrs(), c.topics, c.partitions
	ccfg.SessionTimeout = 6 * time.Second
	ccfg.ClientID = cfg.NodeID
	consumer, err := ingest.NewConsumer(ccfg, engine, log, reg)
	if err != nil {
		t.Fatal(err)
	}
	engine.Attach(consumer)
	ctx, cancel := context.WithCancel(context.Background())
	n := &testNode{t: t, engine: engine, consumer: consumer, reg: reg, cancel: cancel, done: make(chan struct{})}
	var wg sync.WaitGroup
	wg.Add(2)
	var consumeErr, engineErr error
	go func() { defer wg.Done(); consumeErr = consumer.Run(ctx) }()
	go func() { defer wg.Done(); engineErr = engine.Run(ctx) }()
	go func() {
		wg.Wait()
		if engineErr != nil {
			n.runErr = engineErr
		} else {
			n.runErr = consumeErr
		}
		close(n.done)
	}()
	t.Cleanup(n.stop)
	return n
}

// stop shuts the node down gracefully (final checkpoint) and fails the
// test if it ended with an error.
func (n *testNode) stop() {
	n.stopOnce.Do(func() {
		n.cancel()
		<-n.done
		n.consumer.Close()
		n.engine.Close()
		if n.runErr != nil {
			n.t.Errorf("node stopped with an error: %v", n.runErr)
		}
	})
}

// lookup polls until the user's view satisfies fn.
func (n *testNode) lookupUntil(user string, fn func(*UserView) error) *UserView {
	n.t.Helper()
	var v *UserView
	testenv.CheckFor(n.t, 20*time.Second, 50*time.Millisecond, func() error {
		var err error
		v, err = n.engine.Lookup(context.Background(), user)
		if err != nil {
			return err
		}
		return fn(v)
	})
	return v
}

func newFileStore(t testing.TB, dir string) persist.CheckpointStore {
	t.Helper()
	s, err := persist.NewFileStore(persist.FileStoreConfig{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func newFileSink(t testing.TB, dir string) *persist.FileSink {
	t.Helper()
	s, err := persist.NewFileSink(persist.FileSinkConfig{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// snapshotCredits reads a sink back as conversion -> model -> touch ->
// credit.
func snapshotCredits(t testing.TB, r persist.SnapshotReader) (map[string]map[string]map[string]float64, *persist.Snapshot) {
	t.Helper()
	snap, err := r.Snapshot(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]map[string]map[string]float64{}
	for _, row := range snap.Attributions {
		if out[row.ConversionID] == nil {
			out[row.ConversionID] = map[string]map[string]float64{}
		}
		m := out[row.ConversionID][row.Model.String()]
		if m == nil {
			m = map[string]float64{}
			out[row.ConversionID][row.Model.String()] = m
		}
		m[row.TouchID] += row.Credit
	}
	return out, snap
}

// testutilGauge sums a metric's samples (over all label values) from reg.
func testutilGauge(t testing.TB, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
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
