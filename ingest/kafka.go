package ingest

import (
	"context"
	"log/slog"

	"github.com/twmb/franz-go/pkg/kgo"
)

// PartitionOf returns the partition of a user's events among n partitions:
// Kafka's default partitioner (murmur2 of the key, high bit masked, modulo
// n), which every producer must use so that a user's events, of all four
// topics, land in the same partition number.
func PartitionOf(userID string, n int) int32 {
	return int32(int(murmur2(userID)&0x7fffffff) % n)
}

// murmur2 is Kafka's key hash (Utils.murmur2 in the Java client).
func murmur2(s string) uint32 {
	const (
		seed uint32 = 0x9747b28c
		m    uint32 = 0x5bd1e995
		r           = 24
	)
	h := seed ^ uint32(len(s))
	for len(s) >= 4 {
		k := uint32(s[3])<<24 | uint32(s[2])<<16 | uint32(s[1])<<8 | uint32(s[0])
		s = s[4:]
		k *= m
		k ^= k >> r
		k *= m
		h *= m
		h ^= k
	}
	switch len(s) {
	case 3:
		h ^= uint32(s[2]) << 16
		fallthrough
	case 2:
		h ^= uint32(s[1]) << 8
		fallthrough
	case 1:
		h ^= uint32(s[0])
		h *= m
	}
	h ^= h >> 13
	h *= m
	h ^= h >> 15
	return h
}

// kafkaLogger adapts slog to franz-go's logger interface. franz-go logs
// routine group and connection events at info; they go to debug here.
type kafkaLogger struct{ l *slog.Logger }

func newKafkaLogger(l *slog.Logger) kgo.Logger { return kafkaLogger{l.With("component", "kafka")} }

func (k kafkaLogger) Level() kgo.LogLevel {
	switch {
	case k.l.Enabled(context.Background(), slog.LevelDebug):
		return kgo.LogLevelDebug
	case k.l.Enabled(context.Background(), slog.LevelWarn):
		return kgo.LogLevelWarn
	}
	return kgo.LogLevelError
}

func (k kafkaLogger) Log(level kgo.LogLevel, msg string, keyvals ...any) {
	var l slog.Level
	switch level {
	case kgo.LogLevelError:
		l = slog.LevelError
	case kgo.LogLevelWarn:
		l = slog.LevelWarn
	default:
		l = slog.LevelDebug
	}
	k.l.Log(context.Background(), l, msg, keyvals...)
}
