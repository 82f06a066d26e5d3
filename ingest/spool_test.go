package ingest_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/lookback-dev/lookback/attribution"
	"github.com/lookback-dev/lookback/ingest"
	"github.com/lookback-dev/lookback/internal/testenv"
)

// startSpool runs a spool of a new directory until the end of the test.
func startSpool(t *testing.T, k *testKafka) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "spool")
	p := k.producer(ingest.BidEncoder{})
	dlq := ingest.NewDeadLetterWriter(p.Client(), k.topics.DeadLetter, testenv.Logger(), nil)
	s := ingest.NewSpool(dir, p, dlq, 5*time.Minute, testenv.Logger())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Spool.Run: %v", err)
			}
		case <-time.After(20 * time.Second):
			t.Errorf("Spool.Run did not return after its context ended")
		}
	})
	testenv.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		for _, d := range []string{"done", "failed"} {
			if _, err := os.Stat(filepath.Join(dir, d)); err != nil {
				return err
			}
		}
		return nil
	})
	return dir
}

// dropFile writes a file elsewhere and renames it into dir, as a
// well-behaved producer of batch files does.
func dropFile(t *testing.T, dir, name, body string) {
	t.Helper()
	tmp := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(tmp, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
		t.Fatal(err)
	}
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// waitMoved waits until name has left dir for dir/dest, and fails if it
// went elsewhere. onMove is called as soon as the move is seen.
func waitMoved(t *testing.T, dir, name, dest string, onMove func()) {
	t.Helper()
	other := map[string]string{"done": "failed", "failed": "done"}[dest]
	testenv.CheckFor(t, 15*time.Second, 5*time.Millisecond, func() error {
		if exists(filepath.Join(dir, other, name)) {
			t.Fatalf("%s moved to %s/, want %s/", name, other, dest)
		}
		if !exists(filepath.Join(dir, dest, name)) {
			return fmt.Errorf("%s not in %s/ yet", name, dest)
		}
		if onMove != nil {
			onMove()
			onMove = nil
		}
		if exists(filepath.Join(dir, name)) {
			return fmt.Errorf("%s in %s/ but still in the spool directory", name, dest)
		}
		return nil
	})
}

// TestSpool drops a good file, a file with bad rows and a file with a bad
// header in the spool directory: the good one ends in done/ once its rows
// are in Kafka, the others in failed/ with a .rejects file; a hidden file
// is left alone.
func TestSpool(t *testing.T) {
	t.Parallel()
	k := newTestKafka(t, 3)
	dir := startSpool(t, k)

	ts := attribution.FormatTime(baseTime())
	goodBody := "click_id,user_id,event_timestamp,ad_creative_id,campaign_id,impression_id\n"
	for i := range 50 {
		goodBody += fmt.Sprintf("k-%d,u-%d,%s,cr,camp,imp-%d\n", i, i%7, ts, i)
	}
	mixedBody := "conversion_id,user_id,event_timestamp,conversion_type,value,currency\n" +
		"v-1,u-1," + ts + ",purchase,10,USD\n" +
		"v-2,u-2,not-a-time,purchase,10,USD\n" +
		"v-3,u-3," + ts + ",purchase,10\n" +
		"v-4,u-4," + ts + ",purchase,12.5,EUR\n"
	if err := os.WriteFile(filepath.Join(dir, ".incoming.csv"), []byte(goodBody), 0o644); err != nil {
		t.Fatal(err)
	}
	dropFile(t, dir, "a-good.csv", goodBody)
	dropFile(t, dir, "b-mixed.csv", mixedBody)
	dropFile(t, dir, "c-header.csv", "user_id,event_timestamp\nu-1,"+ts+"\n")

	waitMoved(t, dir, "a-good.csv", "done", func() {
		// Moved only once its rows are in Kafka.
		if n := k.topicSize(k.topics.Clicks); n != 50 {
			t.Errorf("a-good.csv in done/ with %d of its 50 rows in Kafka", n)
		}
	})
	if exists(filepath.Join(dir, "done", "a-good.csv.rejects")) || exists(filepath.Join(dir, "failed", "a-good.csv.rejects")) {
		t.Errorf("a rejects file for a file without bad rows")
	}
	waitMoved(t, dir, "b-mixed.csv", "failed", func() {
		if n := k.topicSize(k.topics.Conversions); n != 2 {
			t.Errorf("b-mixed.csv in failed/ with %d of its 2 good rows in Kafka", n)
		}
	})
	rejects, err := os.ReadFile(filepath.Join(dir, "failed", "b-mixed.csv.rejects"))
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(string(rejects), "\n"), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "line 3: ") || !strings.Contains(lines[0], "timestamp") ||
		!strings.HasPrefix(lines[1], "line 4: ") || !strings.Contains(lines[1], "columns") {
		t.Errorf("b-mixed.csv.rejects:\n%s\nwant lines 3 (timestamp) and 4 (columns)", rejects)
	}
	waitMoved(t, dir, "c-header.csv", "failed", nil)
	rejects, err = os.ReadFile(filepath.Join(dir, "failed", "c-header.csv.rejects"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(rejects), "header") {
		t.Errorf("c-header.csv.rejects: %q, want the header's problem", rejects)
	}

	checkTopicEvents(t, k, k.topics.Conversions, []attribution.Event{
		{Type: attribution.TypeConversion, UserID: "u-1", ID: "v-1", Time: mustMS(t, ts), ConversionType: "purchase", Value: 10, Currency: "USD"},
		{Type: attribution.TypeConversion, UserID: "u-4", ID: "v-4", Time: mustMS(t, ts), ConversionType: "purchase", Value: 12.5, Currency: "EUR"},
	})
	checkRowLetters(t, k, "b-mixed.csv", mixedBody, map[int]string{3: "timestamp", 4: "columns"})
	if !exists(filepath.Join(dir, ".incoming.csv")) {
		t.Errorf("the hidden file was moved")
	}
	if n := k.topicSize(k.topics.Clicks); n != 50 {
		t.Errorf("%d clicks in Kafka, want the 50 of a-good.csv (the hidden file is not ingested)", n)
	}
}

func mustMS(t testing.TB, s string) int64 {
	t.Helper()
	ms, err := attribution.ParseTime(s)
	if err != nil {
		t.Fatal(err)
	}
	return ms
}

// TestSpoolWaitsForWriter writes a file in place slowly, a part of a row at
// a time: the spool must not pick it up until it stops changing, then
// ingests all of it.
func TestSpoolWaitsForWriter(t *testing.T) {
	t.Parallel()
	k := newTestKafka(t, 2)
	dir := startSpool(t, k)
	ts := attribution.FormatTime(baseTime())

	path := filepath.Join(dir, "slow.csv")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	write := func(s string) {
		t.Helper()
		if _, err := f.WriteString(s); err != nil {
			t.Fatal(err)
		}
	}
	write("click_id,user_id,event_timestamp,ad_creative_id,campaign_id,impression_id\n")
	// Three seconds of writing, a half row every 150 ms: several scans see
	// the file, each time changed. A file picked up early would end in
	// failed/ (a cut row) or with fewer rows in Kafka.
	const rows = 10
	for i := range rows {
		row := fmt.Sprintf("k-%d,u-%d,%s,cr,camp,imp-%d\n", i, i, ts, i)
		write(row[:len(row)/2])
		time.Sleep(150 * time.Millisecond)
		write(row[len(row)/2:])
		time.Sleep(150 * time.Millisecond)
		if !exists(path) {
			t.Fatalf("slow.csv picked up after %d rows, while still being written", i+1)
		}
		if n := k.topicSize(k.topics.Clicks); n != 0 {
			t.Fatalf("%d rows of slow.csv in Kafka while it is still being written", n)
		}
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	waitMoved(t, dir, "slow.csv", "done", func() {
		if n := k.topicSize(k.topics.Clicks); n != rows {
			t.Errorf("slow.csv in done/ with %d of its %d rows in Kafka", n, rows)
		}
	})
}

// TestSpoolKafkaRefuses: while Kafka refuses the rows, the file stays in
// the spool directory; once Kafka takes them, it moves to done/.
func TestSpoolKafkaRefuses(t *testing.T) {
	t.Parallel()
	k := newTestKafka(t, 2)
	fault := k.cluster().Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: k.topics.Clicks, Err: kerr.InvalidRecord, Count: -1})
	dir := startSpool(t, k)
	ts := attribution.FormatTime(baseTime())
	body := "click_id,user_id,event_timestamp,ad_creative_id,campaign_id,impression_id\n"
	for i := range 5 {
		body += fmt.Sprintf("k-%d,u-%d,%s,cr,camp,imp-%d\n", i, i, ts, i)
	}
	dropFile(t, dir, "refused.csv", body)

	// The first load is refused; for the next 2.5 s (two more scans, one
	// more load) the file must stay where it is.
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := fault.Wait(ctx, 1); err != nil {
		t.Fatalf("the spool did not try to produce: %v", err)
	}
	first := fault.Hits()
	for end := time.Now().Add(2500 * time.Millisecond); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		for _, p := range []string{filepath.Join(dir, "done", "refused.csv"), filepath.Join(dir, "failed", "refused.csv")} {
			if exists(p) {
				t.Fatalf("refused.csv moved to %s while Kafka refused its rows", p)
			}
		}
		if !exists(filepath.Join(dir, "refused.csv")) {
			t.Fatalf("refused.csv gone from the spool directory while Kafka refused its rows")
		}
	}
	if fault.Hits() <= first {
		t.Errorf("the spool did not try refused.csv again (%d refused produce requests)", fault.Hits())
	}
	fault.Remove()
	waitMoved(t, dir, "refused.csv", "done", func() {
		if n := k.topicSize(k.topics.Clicks); n != 5 {
			t.Errorf("refused.csv in done/ with %d of its 5 rows in Kafka", n)
		}
	})
}
