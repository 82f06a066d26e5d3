package ingest_test

import (
	"context"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/lookback-dev/lookback/attribution"
	"github.com/lookback-dev/lookback/ingest"
	"github.com/lookback-dev/lookback/internal/testenv"
)

// csvFixture is a CSV batch file with good and bad rows, and what loading
// it must do.
type csvFixture struct {
	body    string
	good    []attribution.Event
	rejects map[int]string // line -> part of the reason
	rows    int
}

// loadTime is the clock of the loader in these tests.
var loadTime = time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)

// clicksFixture is a clicks file: columns in an unusual order with an
// unknown one, a blank line, quoted fields (a comma, a line break), and
// bad rows of several kinds.
func clicksFixture(t testing.TB) csvFixture {
	ts := "2026-11-28T10:00:00Z"
	ms := loadTime.Add(-2 * time.Hour).UnixMilli()
	future := loadTime.Add(time.Hour).Format(time.RFC3339)
	body := strings.Join([]string{
		"user_id,click_id,note,event_timestamp,ad_creative_id,campaign_id,impression_id", // 1
		"u-a,k-1,x," + ts + ",cr-1,camp-1,imp-1",                                         // 2 good
		"u-b,k-2,x,yesterday,cr-1,camp-1,imp-2",                                          // 3 bad time
		"u-c,k-3,x",                                                                      // 4 columns
		"",                                                                               // 5 blank
		",k-4,x," + ts + ",cr-1,camp-1,imp-4",                                            // 6 no user
		"u-e,k-5,x," + future + ",cr-1,camp-1,imp-5",                                     // 7 future
		`u-f,"k-6, quoted",x,` + ts + `,cr-1,"camp ""q""",imp-6`,                         // 8 good
		`u-g,k-7,"two`,                                                                   // 9 good: a line break
		`lines",` + ts + `,cr-1,camp-1,imp-7`,                                            // 10   in a quoted field
		`u-h,k-8,x,` + ts + `,cr-1,camp-1`,                                               // 11 columns
		`u-i,k-9,x,` + ts + `,cr-2,camp-2,imp-9`,                                         // 12 good
	}, "\n") + "\n"
	good := []attribution.Event{
		{Type: attribution.TypeClick, UserID: "u-a", ID: "k-1", Time: ms, CreativeID: "cr-1", CampaignID: "camp-1", ImpressionID: "imp-1"},
		{Type: attribution.TypeClick, UserID: "u-f", ID: "k-6, quoted", Time: ms, CreativeID: "cr-1", CampaignID: `camp "q"`, ImpressionID: "imp-6"},
		{Type: attribution.TypeClick, UserID: "u-g", ID: "k-7", Time: ms, CreativeID: "cr-1", CampaignID: "camp-1", ImpressionID: "imp-7"},
		{Type: attribution.TypeClick, UserID: "u-i", ID: "k-9", Time: ms, CreativeID: "cr-2", CampaignID: "camp-2", ImpressionID: "imp-9"},
	}
	return csvFixture{
		body: body, good: good, rows: 9,
		rejects: map[int]string{3: "timestamp", 4: "columns", 6: "user_id", 7: "ahead of the clock", 11: "columns"},
	}
}

func newLoader(k *testKafka, p *ingest.Producer, onSent func(int)) *ingest.CSVLoader {
	return &ingest.CSVLoader{
		Producer:      p,
		DeadLetters:   ingest.NewDeadLetterWriter(p.Client(), k.topics.DeadLetter, testenv.Logger(), onSent),
		MaxFutureSkew: 5 * time.Minute,
		Now:           func() time.Time { return loadTime },
	}
}

// checkTopicEvents reads topic and checks that it holds exactly want, each
// in its user's partition.
func checkTopicEvents(t testing.TB, k *testKafka, topic string, want []attribution.Event) {
	t.Helper()
	recs := k.readTopic(topic, len(want))
	dec := ingest.NewValueDecoder(nil)
	byID := map[string]attribution.Event{}
	for _, ev := range want {
		byID[ev.ID] = ev
	}
	for _, r := range recs {
		var ev attribution.Event
		if err := dec.Decode(want[0].Type, r.Value, &ev); err != nil {
			t.Errorf("%s/%d@%d: %v", topic, r.Partition, r.Offset, err)
			continue
		}
		w, ok := byID[ev.ID]
		if !ok {
			t.Errorf("%s: unexpected %+v", topic, ev)
			continue
		}
		delete(byID, ev.ID)
		if !reflect.DeepEqual(ev, w) {
			t.Errorf("%s: got %+v, want %+v", topic, ev, w)
		}
		if string(r.Key) != ev.UserID {
			t.Errorf("%s: %s keyed %q, want its user %q", topic, ev.ID, r.Key, ev.UserID)
		}
		if p := ingest.PartitionOf(ev.UserID, int(k.n)); r.Partition != p {
			t.Errorf("%s: %s in partition %d, its user's is %d", topic, ev.ID, r.Partition, p)
		}
	}
	for id := range byID {
		t.Errorf("%s: %s missing", topic, id)
	}
}

// checkRowLetters checks that the dead-letter topic holds exactly the bad
// rows of file, with source-file and source-line headers, the row's bytes
// and the reason.
func checkRowLetters(t testing.TB, k *testKafka, file string, body string, rejects map[int]string) {
	t.Helper()
	lines := strings.Split(body, "\n")
	letters := k.readTopic(k.topics.DeadLetter, len(rejects))
	seen := map[int]bool{}
	for _, r := range letters {
		f, ok1 := header(r, "source-file")
		l, ok2 := header(r, "source-line")
		e, ok3 := header(r, "error")
		if !ok1 || !ok2 || !ok3 || f != file {
			t.Errorf("dead letter %q: headers %v, want source-file %q, source-line and error", r.Value, headerKeys(r), file)
			continue
		}
		if _, has := header(r, "source-topic"); has {
			t.Errorf("line %s: a CSV row's dead letter has a source-topic header", l)
		}
		line, err := strconv.Atoi(l)
		if err != nil {
			t.Errorf("source-line %q", l)
			continue
		}
		reason, ok := rejects[line]
		if !ok {
			t.Errorf("line %d dead-lettered (%s), it is not a bad row", line, e)
			continue
		}
		seen[line] = true
		if !strings.Contains(e, reason) || !strings.Contains(e, "line "+l) {
			t.Errorf("line %d: error %q, want it to mention %q and the line", line, e, reason)
		}
		if string(r.Value) != lines[line-1] {
			t.Errorf("line %d: dead letter value %q, want the row %q", line, r.Value, lines[line-1])
		}
	}
	for line := range rejects {
		if !seen[line] {
			t.Errorf("line %d not dead-lettered", line)
		}
	}
}

// TestCSVLoaderLoad loads a clicks file with good and bad rows: the
// summary counts them, the good rows are on the clicks topic keyed by user,
// the bad ones in the dead-letter topic with their file and line.
func TestCSVLoaderLoad(t *testing.T) {
	t.Parallel()
	k := newTestKafka(t, 3)
	p := k.producer(ingest.BidEncoder{})
	fx := clicksFixture(t)
	var progress []ingest.CSVSummary
	var mu sync.Mutex
	l := newLoader(k, p, nil)
	l.ProgressEvery = 4
	l.Progress = func(s ingest.CSVSummary) {
		mu.Lock()
		defer mu.Unlock()
		progress = append(progress, s)
	}
	sum, err := l.Load(context.Background(), strings.NewReader(fx.body), "clicks-batch.csv", attribution.TypeNone)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if sum.File != "clicks-batch.csv" || sum.Rows != fx.rows || sum.Produced != len(fx.good) || sum.Rejected != len(fx.rejects) || sum.Failed != 0 {
		t.Errorf("summary %+v, want file clicks-batch.csv, %d rows, %d produced, %d rejected, 0 failed", sum, fx.rows, len(fx.good), len(fx.rejects))
	}
	got := map[int]string{}
	for _, r := range sum.Rejects {
		got[r.Line] = r.Err.Error()
	}
	for line, reason := range fx.rejects {
		if !strings.Contains(got[line], reason) {
			t.Errorf("summary reject of line %d: %q, want it to mention %q", line, got[line], reason)
		}
	}
	if len(got) != len(fx.rejects) {
		t.Errorf("summary rejects %v, want lines of %v", got, fx.rejects)
	}
	checkTopicEvents(t, k, k.topics.Clicks, fx.good)
	checkRowLetters(t, k, "clicks-batch.csv", fx.body, fx.rejects)
	if n := k.topicSize(k.topics.Conversions); n != 0 {
		t.Errorf("%d records on the conversions topic", n)
	}
	if len(progress) != fx.rows/4 || progress[0].Rows != 4 || progress[1].Rows != 8 {
		t.Errorf("progress reports %+v, want at rows 4 and 8", progress)
	}
}

// TestCSVLoaderCombined loads a file of both types (event_type column):
// each row goes to its type's topic.
func TestCSVLoaderCombined(t *testing.T) {
	t.Parallel()
	k := newTestKafka(t, 2)
	p := k.producer(ingest.BidEncoder{})
	body := "event_type,click_id,conversion_id,user_id,timestamp,ad_creative_id,campaign_id,impression_id,conversion_type,value,currency\n" +
		"click,k-1,,u-1,2026-11-28T10:00:00Z,cr,camp,imp-1,,,\n" +
		"conversion,,v-1,u-1,2026-11-28T11:00:00Z,,,,purchase,99.5,usd\n" +
		"signup,,v-2,u-2,2026-11-28T11:00:00Z,,,,signup,0,USD\n" +
		"Conversion,,v-3,u-3,2026-11-28T11:30:00Z,,,,lead,,\n"
	sum, err := newLoader(k, p, nil).Load(context.Background(), strings.NewReader(body), "mixed.csv", attribution.TypeNone)
	if err != nil {
		t.Fatal(err)
	}
	if sum.Rows != 4 || sum.Produced != 3 || sum.Rejected != 1 || len(sum.Rejects) != 1 || sum.Rejects[0].Line != 4 {
		t.Errorf("summary %+v, want 4 rows, 3 produced, line 4 rejected", sum)
	}
	t10 := time.Date(2026, 11, 28, 10, 0, 0, 0, time.UTC).UnixMilli()
	checkTopicEvents(t, k, k.topics.Clicks, []attribution.Event{
		{Type: attribution.TypeClick, UserID: "u-1", ID: "k-1", Time: t10, CreativeID: "cr", CampaignID: "camp", ImpressionID: "imp-1"},
	})
	checkTopicEvents(t, k, k.topics.Conversions, []attribution.Event{
		{Type: attribution.TypeConversion, UserID: "u-1", ID: "v-1", Time: t10 + 3_600_000, ConversionType: "purchase", Value: 99.5, Currency: "USD"},
		{Type: attribution.TypeConversion, UserID: "u-3", ID: "v-3", Time: t10 + 5_400_000, ConversionType: "lead"},
	})
	checkRowLetters(t, k, "mixed.csv", body, map[int]string{4: "event_type"})
}

// TestCSVLoaderBadHeader: a header Load cannot use is an error, and
// nothing is produced or dead-lettered.
func TestCSVLoaderBadHeader(t *testing.T) {
	t.Parallel()
	k := newTestKafka(t, 1)
	p := k.producer(ingest.BidEncoder{})
	for name, tc := range map[string]struct {
		body string
		typ  attribution.Type
	}{
		"no id column":         {"user_id,event_timestamp\nu,2026-11-28T10:00:00Z\n", attribution.TypeNone},
		"wrong type given":     {"click_id,user_id,event_timestamp\nk,u,2026-11-28T10:00:00Z\n", attribution.TypeConversion},
		"no time column":       {"click_id,user_id\nk,u\n", attribution.TypeNone},
		"column twice":         {"click_id,user_id,user_id,event_timestamp\nk,u,u,2026-11-28T10:00:00Z\n", attribution.TypeNone},
		"both time columns":    {"click_id,user_id,timestamp,event_timestamp\nk,u,2026-11-28T10:00:00Z,2026-11-28T10:00:00Z\n", attribution.TypeNone},
		"impressions in a CSV": {"impression_id,user_id,timestamp\ni,u,2026-11-28T10:00:00Z\n", attribution.TypeImpression},
	} {
		sum, err := newLoader(k, p, nil).Load(context.Background(), strings.NewReader(tc.body), name+".csv", tc.typ)
		if err == nil || !strings.Contains(err.Error(), name+".csv") {
			t.Errorf("%s: Load returned %v, want an error naming the file", name, err)
		}
		if sum.Rows != 0 || sum.Produced != 0 {
			t.Errorf("%s: summary %+v after a bad header", name, sum)
		}
	}
	for _, topic := range k.topics.All() {
		if n := k.topicSize(topic); n != 0 {
			t.Errorf("%d records on %s after bad headers", n, topic)
		}
	}
}

// TestCSVLoaderKafkaRefuses: when Kafka does not acknowledge the rows,
// Load says so (Failed and an error); the bad rows are still dead-lettered.
func TestCSVLoaderKafkaRefuses(t *testing.T) {
	t.Parallel()
	k := newTestKafka(t, 2)
	fault := k.cluster().Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: k.topics.Clicks, Err: kerr.InvalidRecord, Count: -1})
	defer fault.Remove()
	p := k.producer(ingest.BidEncoder{})
	fx := clicksFixture(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	sum, err := newLoader(k, p, nil).Load(ctx, strings.NewReader(fx.body), "refused.csv", attribution.TypeClick)
	if err == nil {
		t.Fatalf("Load succeeded while Kafka refused every row: %+v", sum)
	}
	if sum.Rows != fx.rows || sum.Produced != 0 || sum.Failed != len(fx.good) || sum.Rejected != len(fx.rejects) {
		t.Errorf("summary %+v, want %d rows, 0 produced, %d failed, %d rejected", sum, fx.rows, len(fx.good), len(fx.rejects))
	}
	checkRowLetters(t, k, "refused.csv", fx.body, fx.rejects)
	if n := k.topicSize(k.topics.Clicks); n != 0 {
		t.Errorf("%d clicks in Kafka", n)
	}
}

// TestCSVLoaderLarge loads more rows than the dead-letter batch (1,000)
// and checks the counts and that every row is where it belongs.
func TestCSVLoaderLarge(t *testing.T) {
	t.Parallel()
	k := newTestKafka(t, 4)
	p := k.producer(ingest.BidEncoder{})
	var b strings.Builder
	b.WriteString("conversion_id,user_id,event_timestamp,conversion_type,value,currency\n")
	rejects := map[int]string{}
	var good []attribution.Event
	ms := loadTime.Add(-time.Hour).UnixMilli()
	for i := range 3000 {
		line := i + 2
		if i%3 == 1 {
			fmt.Fprintf(&b, "v-%d,u-%d,%s,purchase,not-a-number,USD\n", i, i%50, attribution.FormatTime(ms))
			rejects[line] = "value"
			continue
		}
		fmt.Fprintf(&b, "v-%d,u-%d,%s,purchase,%d.5,EUR\n", i, i%50, attribution.FormatTime(ms), i)
		good = append(good, attribution.Event{Type: attribution.TypeConversion, UserID: fmt.Sprintf("u-%d", i%50), ID: fmt.Sprintf("v-%d", i),
			Time: ms, ConversionType: "purchase", Value: float64(i) + 0.5, Currency: "EUR"})
	}
	var dl int
	var mu sync.Mutex
	sum, err := newLoader(k, p, func(n int) { mu.Lock(); dl += n; mu.Unlock() }).Load(context.Background(), strings.NewReader(b.String()), "big.csv", attribution.TypeConversion)
	if err != nil {
		t.Fatal(err)
	}
	if sum.Rows != 3000 || sum.Produced != len(good) || sum.Rejected != len(rejects) {
		t.Errorf("summary rows %d produced %d rejected %d, want 3000, %d, %d", sum.Rows, sum.Produced, sum.Rejected, len(good), len(rejects))
	}
	if dl != len(rejects) {
		t.Errorf("%d dead letters acknowledged, want %d", dl, len(rejects))
	}
	checkTopicEvents(t, k, k.topics.Conversions, good)
	checkRowLetters(t, k, "big.csv", b.String(), rejects)
}
