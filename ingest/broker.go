package ingest

import (
	"fmt"
	"log/slog"
	"net"
	"strconv"

	"github.com/twmb/franz-go/pkg/kfake"
)

// EmbeddedBroker is an in-process Kafka-protocol broker (franz-go's kfake)
// for running lookback with no Kafka to set up. It keeps its log under a
// data directory, fsyncing every write, so a restart (even after a crash)
// keeps every acknowledged record; other processes (lookback ingest-csv,
// the load generator, more nodes) reach it on its address.
type EmbeddedBroker struct {
	cluster *kfake.Cluster
}

// StartBroker starts a single-broker cluster listening on addr
// (host:port), with its data in dataDir, creating topics with partitions
// partitions by default.
func StartBroker(addr, dataDir string, partitions int32, log *slog.Logger) (*EmbeddedBroker, error) {
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("embedded broker address %q: %w", addr, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return nil, fmt.Errorf("embedded broker port %q: %w", portStr, err)
	}
	c, err := kfake.NewCluster(
		kfake.NumBrokers(1),
		kfake.Ports(port),
		kfake.ListenFn(func(network, _ string) (net.Listener, error) {
			return net.Listen(network, net.JoinHostPort(host, portStr))
		}),
		kfake.DataDir(dataDir),
		kfake.SyncWrites(),
		kfake.DefaultNumPartitions(int(partitions)),
		kfake.WithLogger(kfakeLogger{log.With("component", "embedded-kafka")}),
	)
	if err != nil {
		return nil, fmt.Errorf("starting the embedded Kafka broker on %s: %w", addr, err)
	}
	return &EmbeddedBroker{cluster: c}, nil
}

// Addrs are the addresses clients connect to.
func (b *EmbeddedBroker) Addrs() []string { return b.cluster.ListenAddrs() }

// Cluster exposes the fake cluster, for tests that inject faults.
func (b *EmbeddedBroker) Cluster() *kfake.Cluster { return b.cluster }

// Close stops the broker, flushing its data directory.
func (b *EmbeddedBroker) Close() { b.cluster.Close() }

type kfakeLogger struct{ l *slog.Logger }

func (k kfakeLogger) Logf(level kfake.LogLevel, msg string, args ...any) {
	switch level {
	case kfake.LogLevelError:
		k.l.Error(fmt.Sprintf(msg, args...))
	case kfake.LogLevelWarn:
		k.l.Warn(fmt.Sprintf(msg, args...))
	}
}
