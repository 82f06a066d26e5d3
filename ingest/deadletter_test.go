package ingest_test

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/lookback-dev/lookback/ingest"
	"github.com/lookback-dev/lookback/internal/testenv"
)

// headerKeys lists a record's header keys in order.
func headerKeys(r *kgo.Record) []string {
	var out []string
	for _, h := range r.Headers {
		out = append(out, h.Key)
	}
	return out
}

// TestDeadLetterWriterHeaders sends letters from each source (a Kafka
// record, a CSV row, an HTTP element) and oversized ones, and reads them
// back: original bytes, the headers of their source and nothing else, a
// value over MaxDeadLetterBytes cut with its original size.
func TestDeadLetterWriterHeaders(t *testing.T) {
	t.Parallel()
	k := newTestKafka(t, 2)
	cl := k.rawClient()
	var sent atomic.Int64
	w := ingest.NewDeadLetterWriter(cl, k.topics.DeadLetter, testenv.Logger(), func(n int) { sent.Add(int64(n)) })

	big := bytes.Repeat([]byte("0123456789"), ingest.MaxDeadLetterBytes/10+100)
	exact := bytes.Repeat([]byte("e"), ingest.MaxDeadLetterBytes)
	letters := []ingest.DeadLetter{
		{Topic: "clicks", Partition: 3, Offset: 12345, Key: []byte("u1"), Value: []byte("k1,u1"), Err: errors.New("click: 2 columns, want 6")},
		{Offset: -1, File: "batch.csv", Line: 7, Key: []byte("u2"), Value: []byte("k2,u2,nope"), Err: errors.New("line 7: timestamp: bad")},
		{Offset: -1, Source: "http POST /v1/events element 4", Value: []byte(`{"type":"click"}`), Err: errors.New("user_id: missing")},
		{Topic: "ad_impressions", Partition: 0, Offset: 9, Value: big, Err: errors.New("website: longer than 256 bytes")},
		{Offset: -1, Source: "http", Value: exact, Err: errors.New("exactly the limit")},
	}
	// Send must not depend on the caller keeping its slice intact.
	if err := w.Send(context.Background(), letters); err != nil {
		t.Fatal(err)
	}
	if n := sent.Load(); n != int64(len(letters)) {
		t.Errorf("onSent reported %d letters, want %d", n, len(letters))
	}
	if err := w.Send(context.Background(), nil); err != nil {
		t.Errorf("sending no letters: %v", err)
	}
	if n := sent.Load(); n != int64(len(letters)) {
		t.Errorf("onSent reported %d letters after an empty Send, want %d", n, len(letters))
	}

	recs := k.readTopic(k.topics.DeadLetter, len(letters))
	byErr := map[string]*kgo.Record{}
	for _, r := range recs {
		e, _ := header(r, "error")
		byErr[e] = r
	}
	type want struct {
		headers map[string]string
		value   []byte
		key     []byte
	}
	wants := []want{
		{map[string]string{"error": "click: 2 columns, want 6", "source-topic": "clicks", "source-partition": "3", "source-offset": "12345"}, []byte("k1,u1"), []byte("u1")},
		{map[string]string{"error": "line 7: timestamp: bad", "source-file": "batch.csv", "source-line": "7"}, []byte("k2,u2,nope"), []byte("u2")},
		{map[string]string{"error": "user_id: missing", "source": "http POST /v1/events element 4"}, []byte(`{"type":"click"}`), nil},
		{map[string]string{"error": "website: longer than 256 bytes", "source-topic": "ad_impressions", "source-partition": "0", "source-offset": "9",
			"original-size": strconv.Itoa(len(big))}, big[:ingest.MaxDeadLetterBytes], nil},
		{map[string]string{"error": "exactly the limit", "source": "http"}, exact, nil},
	}
	for _, w := range wants {
		r := byErr[w.headers["error"]]
		if r == nil {
			t.Errorf("no dead letter with error %q", w.headers["error"])
			continue
		}
		if len(r.Headers) != len(w.headers) {
			t.Errorf("%q: headers %v, want exactly %v", w.headers["error"], headerKeys(r), w.headers)
		}
		for key, v := range w.headers {
			if got, ok := header(r, key); !ok || got != v {
				t.Errorf("%q: header %s = %q (present once: %v), want %q", w.headers["error"], key, got, ok, v)
			}
		}
		if !bytes.Equal(r.Value, w.value) {
			t.Errorf("%q: value of %d bytes, want %d bytes", w.headers["error"], len(r.Value), len(w.value))
		}
		if !bytes.Equal(r.Key, w.key) {
			t.Errorf("%q: key %q, want %q", w.headers["error"], r.Key, w.key)
		}
	}
	// The caller's values are not cut in place.
	if len(letters[3].Value) != len(big) {
		t.Errorf("Send truncated the caller's value to %d bytes", len(letters[3].Value))
	}
}

// TestDeadLetterWriterRetries makes the broker refuse the dead-letter
// topic for a while: Send retries until the letters are in, once each.
func TestDeadLetterWriterRetries(t *testing.T) {
	t.Parallel()
	k := newTestKafka(t, 1)
	fault := k.cluster().Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: k.topics.DeadLetter, Err: kerr.InvalidRecord, Count: 2})
	cl := k.rawClient()
	w := ingest.NewDeadLetterWriter(cl, k.topics.DeadLetter, testenv.Logger(), nil)
	// One letter: one produce request per attempt.
	letters := []ingest.DeadLetter{{Offset: -1, Source: "test", Value: []byte("one"), Err: errors.New("first")}}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	start := time.Now()
	if err := w.Send(ctx, letters); err != nil {
		t.Fatalf("Send: %v", err)
	}
	if hits := fault.Hits(); hits != 2 {
		t.Errorf("the broker refused %d produce requests, want 2", hits)
	}
	// Two refusals, then backoffs of 100 and 200 ms.
	if d := time.Since(start); d < 250*time.Millisecond {
		t.Errorf("Send took %s: no backoff between retries", d)
	}
	recs := k.readTopic(k.topics.DeadLetter, len(letters))
	if string(recs[0].Value) != "one" {
		t.Errorf("dead letter %q", recs[0].Value)
	}
}

// TestDeadLetterWriterGivesUpWithContext: while the topic refuses letters,
// Send returns only when its context ends, with an error.
func TestDeadLetterWriterGivesUpWithContext(t *testing.T) {
	t.Parallel()
	k := newTestKafka(t, 1)
	fault := k.cluster().Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: k.topics.DeadLetter, Err: kerr.InvalidRecord, Count: -1})
	defer fault.Remove()
	cl := k.rawClient()
	w := ingest.NewDeadLetterWriter(cl, k.topics.DeadLetter, testenv.Logger(), func(int) { t.Error("onSent called for refused letters") })
	ctx, cancel := context.WithTimeout(context.Background(), 700*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := w.Send(ctx, []ingest.DeadLetter{{Offset: -1, Source: "test", Value: []byte("x"), Err: errors.New("bad")}})
	if err == nil || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Send returned %v, want the context's error", err)
	}
	if d := time.Since(start); d < 600*time.Millisecond || d > 5*time.Second {
		t.Errorf("Send gave up after %s, want when its context ended (700ms)", d)
	}
	if fault.Hits() < 2 {
		t.Errorf("Send tried %d times, want retries", fault.Hits())
	}
}

// TestDeadLetterWriterTopicLimit: MaxDeadLetterBytes is there so that "an
// oversized record cannot be refused by the broker in turn"; a dead-letter
// topic with a smaller max.message.bytes must not make Send retry forever
// (the consumer waits for Send: every partition would stop).
func TestDeadLetterWriterTopicLimit(t *testing.T) {
	t.Parallel()
	k := newTestKafka(t, 1)
	if err := k.cluster().CreateTopic("small-dlq", 1, map[string]string{"max.message.bytes": "100000"}); err != nil {
		t.Fatal(err)
	}
	cl := k.rawClient()
	w := ingest.NewDeadLetterWriter(cl, "small-dlq", testenv.Logger(), nil)
	r := rand.New(rand.NewPCG(1, 2))
	value := make([]byte, 300<<10) // random letters: snappy cannot shrink it below the limit
	for i := range value {
		value[i] = byte('a' + r.IntN(26))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := w.Send(ctx, []ingest.DeadLetter{{Offset: -1, Source: "test", Value: value, Err: errors.New("too big")}}); err != nil {
		t.Fatalf("Send: %v", err)
	}
	recs := k.readTopic("small-dlq", 1)
	if got := recs[0].Value; !bytes.HasPrefix(value, got) || len(got) == len(value) {
		t.Errorf("dead letter of %d bytes, want a cut of the original's %d", len(got), len(value))
	}
	if size, ok := header(recs[0], "original-size"); !ok || size != strconv.Itoa(len(value)) {
		t.Errorf("original-size %q, want %d", size, len(value))
	}
}
