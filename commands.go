package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/lookback-dev/lookback/attribution"
	"github.com/lookback-dev/lookback/ingest"
	"github.com/lookback-dev/lookback/persist"
)

type ingestCSVCmd struct {
	kafkaFlags
	Type          string        `help:"Row type of the files: clicks or conversions. Empty: from an event_type column or the header." enum:"clicks,conversions," default:""`
	MaxFutureSkew time.Duration `help:"Rows further ahead of the clock are rejected." default:"5m"`
	Files         []string      `arg:"" help:"CSV files with a header row." type:"existingfile"`
}

// rejectedRowsError reports that ingest-csv produced the good rows but
// rejected some (exit status 2).
type rejectedRowsError struct{ rejected, rows int }

func (e rejectedRowsError) Error() string {
	return fmt.Sprintf("%d of %d rows rejected (see the lines above and the dead-letter topic)", e.rejected, e.rows)
}

func (c *ingestCSVCmd) Run(root *cli) error {
	log := root.logger()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	typ := attribution.TypeNone
	switch c.Type {
	case "clicks":
		typ = attribution.TypeClick
	case "conversions":
		typ = attribution.TypeConversion
	}
	brokers := c.brokers()
	topics := c.topics()
	if _, err := ensureTopics(ctx, brokers, topics, c.Partitions, log); err != nil {
		return err
	}
	pcfg := ingest.DefaultProducerConfig()
	pcfg.Brokers, pcfg.Topics = brokers, topics
	producer, err := ingest.NewProducer(pcfg, log)
	if err != nil {
		return err
	}
	defer producer.Close()
	loader := &ingest.CSVLoader{
		Producer:      producer,
		DeadLetters:   ingest.NewDeadLetterWriter(producer.Client(), topics.DeadLetter, log, nil),
		MaxFutureSkew: c.MaxFutureSkew,
		ProgressEvery: 100_000,
	}
	var total ingest.CSVSummary
	for _, path := range c.Files {
		start := time.Now()
		loader.Progress = func(s ingest.CSVSummary) {
			fmt.Fprintf(os.Stderr, "%s: %d rows read, %d produced, %d rejected (%.0f rows/s)\n",
				s.File, s.Rows, s.Produced, s.Rejected, float64(s.Rows)/time.Since(start).Seconds())
		}
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		sum, err := loader.Load(ctx, f, filepath.Base(path), typ)
		f.Close()
		for _, r := range sum.Rejects {
			fmt.Fprintf(os.Stderr, "%s:%d: %v\n", filepath.Base(path), r.Line, r.Err)
		}
		fmt.Printf("%s: %d rows read, %d produced, %d rejected, %d not acknowledged, in %s\n",
			path, sum.Rows, sum.Produced, sum.Rejected, sum.Failed, time.Since(start).Round(time.Millisecond))
		if err != nil {
			return err
		}
		total.Rows += sum.Rows
		total.Rejected += sum.Rejected
	}
	if total.Rejected > 0 {
		return rejectedRowsError{total.Rejected, total.Rows}
	}
	return nil
}

type migrateCmd struct {
	WarehouseDSN string `name:"warehouse-dsn" help:"postgres://... or redshift://..." required:""`
}

func (c *migrateCmd) Run(root *cli) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	sink, err := persist.OpenSink(ctx, c.WarehouseDSN, persist.DefaultSinkConfig())
	if err != nil {
		return err
	}
	defer sink.Close()
	if err := persist.Migrate(ctx, sink.Pool(), sink.Dialect()); err != nil {
		return fmt.Errorf("migrating: %w", err)
	}
	root.logger().Info("warehouse schema up to date", "dialect", sink.Dialect())
	return nil
}

type brokerCmd struct {
	EmbeddedKafkaAddr string `help:"Where the broker listens." default:"127.0.0.1:9092"`
	Partitions        int32  `help:"Default partitions of created topics." default:"12"`
	DataDir           string `help:"Where the broker keeps its log." default:"./lookback-data" type:"path"`
}

func (c *brokerCmd) Run(root *cli) error {
	log := root.logger()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	b, err := ingest.StartBroker(c.EmbeddedKafkaAddr, filepath.Join(c.DataDir, "kafka"), c.Partitions, log)
	if err != nil {
		return err
	}
	log.Info("embedded Kafka broker running", "addr", b.Addrs()[0])
	<-ctx.Done()
	b.Close()
	return nil
}
