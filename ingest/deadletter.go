package ingest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
)

// DeadLetter is a record lookback rejected, with where it came from and why.
type DeadLetter struct {
	// Topic, Partition and Offset locate a record read from Kafka; for
	// other sources Offset is -1 and File/Line (CSV) or Source (HTTP)
	// say where it came from.
	Topic     string
	Partition int32
	Offset    int64
	File      string
	Line      int
	Source    string

	Key   []byte
	Value []byte // the original bytes
	Err   error
}

// MaxDeadLetterBytes bounds a dead letter's value, so that an oversized
// record (the likely reason it was rejected) cannot be refused by the
// broker in turn. A truncated value carries the original size in a header.
const MaxDeadLetterBytes = 512 << 10

// DeadLetterWriter sends rejected records to the dead-letter topic.
type DeadLetterWriter struct {
	cl     *kgo.Client
	topic  string
	log    *slog.Logger
	onSent func(n int)
}

// NewDeadLetterWriter writes to topic through cl. onSent, if not nil, is
// called with the number of letters acknowledged (for a metric).
func NewDeadLetterWriter(cl *kgo.Client, topic string, log *slog.Logger, onSent func(int)) *DeadLetterWriter {
	return &DeadLetterWriter{cl: cl, topic: topic, log: log, onSent: onSent}
}

// Send produces the letters and waits until Kafka acknowledged them all,
// retrying with backoff until it succeeds or ctx ends: a rejected record is
// never dropped silently, and the caller does not move past it until it is
// safe in the dead-letter topic.
func (w *DeadLetterWriter) Send(ctx context.Context, letters []DeadLetter) error {
	if len(letters) == 0 {
		return nil
	}
	recs := make([]*kgo.Record, len(letters))
	for i := range letters {
		recs[i] = w.record(&letters[i])
	}
	pause := 100 * time.Millisecond
	for {
		var failed []*kgo.Record
		tooLarge := false
		for _, r := range w.cl.ProduceSync(ctx, recs...) {
			if r.Err == nil {
				continue
			}
			// The dead-letter topic may take less than MaxDeadLetterBytes:
			// cut the letter in half until it fits, rather than retry it
			// forever (the consumer waits for it).
			if errors.Is(r.Err, kerr.MessageTooLarge) || errors.Is(r.Err, kerr.RecordListTooLarge) {
				shrink(r.Record)
				tooLarge = true
			}
			failed = append(failed, r.Record)
		}
		if len(failed) == 0 {
			if w.onSent != nil {
				w.onSent(len(recs))
			}
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("sending %d dead letters: %w", len(failed), ctx.Err())
		}
		recs = failed
		if tooLarge {
			continue // retry the cut letters at once
		}
		w.log.Warn("dead-letter topic refused records; retrying", "records", len(failed), "retry_in", pause)
		select {
		case <-ctx.Done():
			return fmt.Errorf("sending %d dead letters: %w", len(failed), ctx.Err())
		case <-time.After(pause):
		}
		pause = min(2*pause, 10*time.Second)
	}
}

// shrink halves a dead letter's value, recording the original size.
func shrink(r *kgo.Record) {
	for _, h := range r.Headers {
		if h.Key == "original-size" {
			r.Value = r.Value[:len(r.Value)/2]
			return
		}
	}
	r.Headers = append(r.Headers, kgo.RecordHeader{Key: "original-size", Value: strconv.AppendInt(nil, int64(len(r.Value)), 10)})
	r.Value = r.Value[:len(r.Value)/2]
}

func (w *DeadLetterWriter) record(l *DeadLetter) *kgo.Record {
	value := l.Value
	headers := []kgo.RecordHeader{{Key: "error", Value: []byte(l.Err.Error())}}
	if l.Topic != "" {
		headers = append(headers,
			kgo.RecordHeader{Key: "source-topic", Value: []byte(l.Topic)},
			kgo.RecordHeader{Key: "source-partition", Value: strconv.AppendInt(nil, int64(l.Partition), 10)},
			kgo.RecordHeader{Key: "source-offset", Value: strconv.AppendInt(nil, l.Offset, 10)})
	}
	if l.File != "" {
		headers = append(headers,
			kgo.RecordHeader{Key: "source-file", Value: []byte(l.File)},
			kgo.RecordHeader{Key: "source-line", Value: strconv.AppendInt(nil, int64(l.Line), 10)})
	}
	if l.Source != "" {
		headers = append(headers, kgo.RecordHeader{Key: "source", Value: []byte(l.Source)})
	}
	if len(value) > MaxDeadLetterBytes {
		headers = append(headers, kgo.RecordHeader{Key: "original-size", Value: strconv.AppendInt(nil, int64(len(value)), 10)})
		value = value[:MaxDeadLetterBytes]
	}
	return &kgo.Record{Topic: w.topic, Key: l.Key, Value: value, Headers: headers}
}
