package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/redis/go-redis/v9"
	"golang.org/x/sync/errgroup"

	"github.com/lookback-dev/lookback/actors"
	"github.com/lookback-dev/lookback/api"
	"github.com/lookback-dev/lookback/ingest"
	"github.com/lookback-dev/lookback/persist"
)

type serveCmd struct {
	kafkaFlags
	rulesFlags

	HTTPAddr           string        `name:"http-addr" help:"HTTP API address." default:":8080"`
	AdminAddr          string        `help:"Serve health checks and metrics on this address instead of --http-addr."`
	RedisAddr          string        `help:"Redis for checkpoints (host:port). Empty: a local store under --data-dir."`
	RedisKeyPrefix     string        `help:"Prefix of every Redis key, so that several deployments (or tests) can share one Redis." default:"lookback"`
	WarehouseDSN       string        `name:"warehouse-dsn" help:"postgres://... or redshift://... Empty: facts in local files under --data-dir."`
	DataDir            string        `help:"Where the embedded defaults keep their files." default:"./lookback-data" type:"path"`
	AllowedLateness    time.Duration `help:"How far the watermark trails the slowest input." default:"10s"`
	IdleTimeout        time.Duration `help:"An input with no record for this long stops holding the watermark back." default:"5s"`
	MaxSkew            time.Duration `help:"An input further ahead of the watermark is paused." default:"5m"`
	MaxFutureSkew      time.Duration `help:"Events further ahead of the clock are dead-lettered." default:"5m"`
	CheckpointInterval time.Duration `help:"Checkpoint and warehouse micro-batch cadence." default:"1s"`
	PassivateAfter     time.Duration `help:"Users idle this long leave memory." default:"10m"`
	NodeID             string        `name:"node-id" help:"This node's name in logs, metrics and /v1/cluster (default: the hostname)."`
	ClusterAddr        string        `help:"host:port this node's actor system will listen on for other nodes (reserved: routing lookups between nodes is not built yet)." default:"127.0.0.1:8090"`
	ClusterPeers       []string      `help:"The --cluster-addr of every member (itself included). Empty: a single node; more than one is refused until routing between nodes is built." sep:","`
	ConsumerGroup      string        `help:"Kafka consumer group of the nodes." default:"lookback"`
	SessionTimeout     time.Duration `help:"How long the group waits for a silent node before moving its partitions." default:"10s"`
	RebalanceTimeout   time.Duration `help:"How long a rebalance waits for nodes to rejoin (a revoking node's final checkpoint must fit in it)." default:"60s"`
	SpoolDir           string        `help:"Watch this directory for CSV files to ingest (done/ and failed/ beside them)." type:"path"`
}

func (c *serveCmd) Run(root *cli) error {
	log := root.logger()
	if c.NodeID == "" {
		c.NodeID = hostname()
	}
	if len(c.ClusterPeers) > 1 {
		return errors.New("--cluster-peers: multi-node clusters are not implemented yet; run one node per consumer group")
	}
	rules, err := c.rules()
	if err != nil {
		return err
	}
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(actors.GCPercent)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	// Kafka: the embedded broker unless brokers are given.
	brokers := c.KafkaBrokers
	if len(brokers) == 0 {
		broker, err := ingest.StartBroker(c.EmbeddedKafkaAddr, filepath.Join(c.DataDir, "kafka"), c.Partitions, log)
		if err != nil {
			return err
		}
		defer broker.Close()
		brokers = broker.Addrs()
		log.Info("embedded Kafka broker started", "addr", brokers[0], "data_dir", filepath.Join(c.DataDir, "kafka"))
	}
	topics := c.topics()
	partitions, err := ensureTopics(ctx, brokers, topics, c.Partitions, log)
	if err != nil {
		return err
	}

	store, err := c.openStore(ctx)
	if err != nil {
		return err
	}
	defer store.Close()
	sink, err := c.openSink(ctx, log)
	if err != nil {
		return err
	}
	defer sink.Close()

	ecfg := actors.DefaultConfig()
	ecfg.NodeID, ecfg.Partitions, ecfg.Topics, ecfg.Rules = c.NodeID, partitions, topics, rules
	ecfg.Watermark.AllowedLateness, ecfg.Watermark.IdleTimeout, ecfg.Watermark.MaxSkew = c.AllowedLateness, c.IdleTimeout, c.MaxSkew
	ecfg.CheckpointInterval, ecfg.PassivateAfter = c.CheckpointInterval, c.PassivateAfter

	ccfg := ingest.DefaultConsumerConfig()
	ccfg.Brokers, ccfg.Group, ccfg.Topics, ccfg.Partitions = brokers, c.ConsumerGroup, topics, partitions
	ccfg.MaxFutureSkew, ccfg.BidSchemaIDs, ccfg.ClientID = c.MaxFutureSkew, c.BidSchemaIDs, "lookback-"+c.NodeID
	ccfg.SessionTimeout, ccfg.RebalanceTimeout = c.SessionTimeout, c.RebalanceTimeout

	// The engine and the consumer need each other: the consumer hands the
	// engine records, the engine pauses the consumer. The dead-letter
	// writer shares the consumer's client.
	var dlq *ingest.DeadLetterWriter
	engine, err := actors.NewEngine(ecfg, store, sink, lazyDeadLetters{&dlq}, log, reg)
	if err != nil {
		return err
	}
	defer engine.Close()
	consumer, err := ingest.NewConsumer(ccfg, engine, log, reg)
	if err != nil {
		return err
	}
	engine.Attach(consumer)
	dlq = ingest.NewDeadLetterWriter(consumer.Client(), topics.DeadLetter, log, nil)

	pcfg := ingest.DefaultProducerConfig()
	pcfg.Brokers, pcfg.Topics = brokers, topics
	producer, err := ingest.NewProducer(pcfg, log)
	if err != nil {
		return err
	}
	defer producer.Close()

	acfg := api.DefaultConfig()
	acfg.NodeID, acfg.Partitions, acfg.MaxFutureSkew = c.NodeID, partitions, c.MaxFutureSkew
	server, err := api.New(acfg, engine, producer, dlq, log, reg, reg)
	if err != nil {
		return err
	}

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return consumer.Run(gctx) })
	g.Go(func() error { return engine.Run(gctx) })
	g.Go(func() error { return serveHTTP(gctx, c.HTTPAddr, server.Handler(c.AdminAddr == ""), log) })
	if c.AdminAddr != "" {
		g.Go(func() error { return serveHTTP(gctx, c.AdminAddr, server.AdminHandler(), log) })
	}
	if c.SpoolDir != "" {
		spool := ingest.NewSpool(c.SpoolDir, producer, dlq, c.MaxFutureSkew, log)
		g.Go(func() error { return spool.Run(gctx) })
	}
	log.Info("lookback serving", "node", c.NodeID, "http", c.HTTPAddr, "partitions", partitions, "models", c.Models,
		"store", storeName(c.RedisAddr), "warehouse", warehouseName(c.WarehouseDSN))
	err = g.Wait()
	// Leaving the group revokes what this node still owns, which writes
	// their final checkpoint (the engine wrote one already on the way out).
	consumer.Close()
	if err != nil {
		return err
	}
	log.Info("lookback stopped")
	return nil
}

func storeName(redisAddr string) string {
	if redisAddr == "" {
		return "local files"
	}
	return "redis " + redisAddr
}

func warehouseName(dsn string) string {
	if dsn == "" {
		return "local files"
	}
	_, d, err := persist.ParseWarehouseDSN(dsn)
	if err != nil {
		return "?"
	}
	return d.String()
}

func (c *serveCmd) openStore(ctx context.Context) (persist.CheckpointStore, error) {
	if c.RedisAddr == "" {
		return persist.NewFileStore(persist.FileStoreConfig{Dir: filepath.Join(c.DataDir, "checkpoints")})
	}
	// No retries in the client: the engine retries failed calls itself,
	// with backoff and backpressure, and must learn of a failure at once.
	client := redis.NewClient(&redis.Options{Addr: c.RedisAddr, MaxRetries: -1})
	if err := client.Ping(ctx).Err(); err != nil {
		client.Close()
		return nil, fmt.Errorf("connecting to Redis at %s: %w", c.RedisAddr, err)
	}
	cfg := persist.DefaultRedisStoreConfig()
	cfg.KeyPrefix = c.RedisKeyPrefix
	store, err := persist.NewRedisStore(client, cfg)
	if err != nil {
		client.Close()
		return nil, err
	}
	return closeAlso{store, client.Close}, nil
}

func (c *serveCmd) openSink(ctx context.Context, log *slog.Logger) (persist.FactSink, error) {
	if c.WarehouseDSN == "" {
		return persist.NewFileSink(persist.FileSinkConfig{Dir: filepath.Join(c.DataDir, "facts")})
	}
	sink, err := persist.OpenSink(ctx, c.WarehouseDSN, persist.DefaultSinkConfig())
	if err != nil {
		return nil, err
	}
	// Migrations are idempotent and serialized by a lock, so every node may
	// run them at start.
	if err := persist.Migrate(ctx, sink.Pool(), sink.Dialect()); err != nil {
		sink.Close()
		return nil, fmt.Errorf("migrating the warehouse: %w", err)
	}
	log.Info("warehouse ready", "dialect", sink.Dialect())
	return sink, nil
}

// closeAlso closes a store, then what it was built on.
type closeAlso struct {
	persist.CheckpointStore
	also func() error
}

func (c closeAlso) Close() error { return errors.Join(c.CheckpointStore.Close(), c.also()) }

// lazyDeadLetters lets the engine be built before the dead-letter writer,
// which needs the consumer, which needs the engine.
type lazyDeadLetters struct{ w **ingest.DeadLetterWriter }

func (l lazyDeadLetters) Send(ctx context.Context, letters []ingest.DeadLetter) error {
	return (*l.w).Send(ctx, letters)
}

// ensureTopics creates the topics lookback needs and returns the input
// topics' partition count.
func ensureTopics(ctx context.Context, brokers []string, topics ingest.Topics, partitions int32, log *slog.Logger) (int32, error) {
	n, err := ingest.EnsureTopics(ctx, brokers, topics, partitions, 1)
	if err != nil {
		return 0, err
	}
	if n != partitions {
		log.Info("topics exist with another partition count; using it", "partitions", n, "flag", partitions)
	}
	return n, nil
}

// serveHTTP serves h on addr until ctx ends, then shuts down gracefully.
func serveHTTP(ctx context.Context, addr string, h http.Handler, log *slog.Logger) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", addr, err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	log.Info("HTTP listening", "addr", ln.Addr().String())
	select {
	case err := <-errc:
		return fmt.Errorf("serving HTTP on %s: %w", addr, err)
	case <-ctx.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return srv.Shutdown(shutdownCtx)
}
