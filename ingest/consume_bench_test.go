package ingest_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/lookback-dev/lookback/attribution"
	"github.com/lookback-dev/lookback/ingest"
	"github.com/lookback-dev/lookback/internal/testenv"
)

// benchRecords is the number of records BenchmarkConsumeDecode reads:
// 1,000,000, or LOOKBACK_BENCH_RECORDS.
func benchRecords(b *testing.B) int {
	n := 1_000_000
	if s := os.Getenv("LOOKBACK_BENCH_RECORDS"); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v < 1 {
			b.Fatalf("LOOKBACK_BENCH_RECORDS=%q: want a positive number", s)
		}
		n = v
	}
	return n
}

// benchEvent is the i-th record of the benchmark's mix: 40% bids, 40%
// impressions, 15% clicks, 5% conversions, of 100,000 users, with ids and
// names of realistic lengths (an impression is about 200 bytes of JSON, a
// bid about 150 of Avro).
func benchEvent(i int, base int64) attribution.Event {
	user := fmt.Sprintf("u-%08d", (i*7919)%100_000)
	at := base + int64(i)*50
	uuid := fmt.Sprintf("%016x", uint64(i)*0x9E3779B97F4A7C15)
	creative := "cr-" + strconv.Itoa(1000+i%500)
	campaign := "camp-" + strconv.Itoa(i%80)
	site := [...]string{"news.example.com", "sports.example.org", "weather.example.net", "recipes.example.com"}[i%4]
	switch m := i % 20; {
	case m < 8:
		return attribution.Event{
			Type: attribution.TypeBid, UserID: user, ID: "auc-" + uuid, Time: at,
			CreativeID: creative, CampaignID: campaign, Website: site,
			Bid: &attribution.Bid{FloorPrice: 0.35, BidPrice: 0.5 + float64(i%100)/100, Currency: "USD", Exchange: "adx",
				Criteria: []string{"sports", "age:25-34", "geo:US", "device:mobile", "interest:travel"}},
		}
	case m < 16:
		return attribution.Event{
			Type: attribution.TypeImpression, UserID: user, ID: "imp-" + uuid, Time: at,
			CreativeID: creative, CampaignID: campaign, Website: site, AuctionID: "auc-" + uuid,
		}
	case m < 19:
		return attribution.Event{
			Type: attribution.TypeClick, UserID: user, ID: "clk-" + uuid, Time: at,
			CreativeID: creative, CampaignID: campaign, ImpressionID: "imp-" + uuid,
		}
	default:
		return attribution.Event{
			Type: attribution.TypeConversion, UserID: user, ID: "conv-" + uuid, Time: at,
			ConversionType: "purchase", Value: float64(i%500) + 0.99, Currency: "EUR",
		}
	}
}

// benchData is a broker filled with the benchmark's records. It is made
// once per process and record count, and lives as long as the process.
type benchData struct {
	addrs      []string
	topics     ingest.Topics
	n          int32
	total      int
	valueBytes int64
}

var benchCache struct {
	sync.Mutex
	m map[int]*benchData
}

// benchDirPrefix names the data directories of benchmark brokers, with
// the pid of the process that owns them.
const benchDirPrefix = "lookback-bench-"

// sweepBenchDirs removes the data directories of benchmark processes that
// are gone (a broker that lives as long as its process cannot remove its
// own).
func sweepBenchDirs() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), benchDirPrefix+"*"))
	for _, d := range dirs {
		rest := strings.TrimPrefix(filepath.Base(d), benchDirPrefix)
		pid, err := strconv.Atoi(strings.SplitN(rest, "-", 2)[0])
		if err != nil || pid == os.Getpid() {
			continue
		}
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			os.RemoveAll(d)
		}
	}
}

// benchFill returns a broker with total records of the mix on 12
// partitions (bids in the Confluent framing), filling it on first use.
func benchFill(b *testing.B, total int) *benchData {
	b.Helper()
	benchCache.Lock()
	defer benchCache.Unlock()
	if d := benchCache.m[total]; d != nil {
		return d
	}
	start := time.Now()
	sweepBenchDirs()
	dir, err := os.MkdirTemp("", fmt.Sprintf("%s%d-", benchDirPrefix, os.Getpid()))
	if err != nil {
		b.Fatal(err)
	}
	log := testenv.Logger()
	broker, err := ingest.StartBroker("127.0.0.1:0", filepath.Join(dir, "kafka"), 12, log)
	if err != nil {
		b.Fatal(err)
	}
	d := &benchData{addrs: broker.Addrs(), topics: ingest.DefaultTopics(), total: total}
	ctx := context.Background()
	if d.n, err = ingest.EnsureTopics(ctx, d.addrs, d.topics, 12, 1); err != nil {
		b.Fatal(err)
	}
	bid := ingest.BidEncoder{Framed: true, SchemaID: 1}
	pcfg := ingest.DefaultProducerConfig()
	pcfg.Brokers, pcfg.Topics, pcfg.Bid = d.addrs, d.topics, bid
	p, err := ingest.NewProducer(pcfg, log)
	if err != nil {
		b.Fatal(err)
	}
	defer p.Close()
	enc := ingest.ValueEncoder{Bid: bid}
	base := time.Now().Add(-72 * time.Hour).UnixMilli()
	var failed atomic.Int64
	var firstErr atomic.Value
	var sizes, counts [5]int64
	for i := range total {
		ev := benchEvent(i, base)
		v, err := enc.Append(nil, &ev)
		if err != nil {
			b.Fatal(err)
		}
		sizes[ev.Type] += int64(len(v))
		counts[ev.Type]++
		p.ProduceAsync(ctx, &ev, func(err error) {
			if err != nil {
				failed.Add(1)
				firstErr.CompareAndSwap(nil, err)
			}
		})
	}
	if err := p.Flush(ctx); err != nil {
		b.Fatal(err)
	}
	if n := failed.Load(); n > 0 {
		b.Fatalf("%d records not produced: %v", n, firstErr.Load())
	}
	var inLog int64
	for _, topic := range d.topics.Inputs() {
		for _, info := range broker.Cluster().PartitionInfos(topic) {
			inLog += info.HighWatermark
		}
	}
	if inLog != int64(total) {
		b.Fatalf("%d records in the input topics, want %d", inLog, total)
	}
	for t := attribution.TypeBid; t <= attribution.TypeConversion; t++ {
		b.Logf("%-10s %7d records, %3d bytes on average", t, counts[t], sizes[t]/max(counts[t], 1))
		d.valueBytes += sizes[t]
	}
	b.Logf("filled %d records (%d MB of values) in %s", total, d.valueBytes>>20, time.Since(start).Round(time.Millisecond))
	if benchCache.m == nil {
		benchCache.m = map[int]*benchData{}
	}
	benchCache.m[total] = d
	return d
}

// countHandler counts records and closes done when it has seen want.
type countHandler struct {
	want int64
	n    atomic.Int64
	once sync.Once
	done chan struct{}
}

func (h *countHandler) Assign(context.Context, int32, []int32) (map[int32][ingest.NumInputs]int64, error) {
	return nil, nil
}
func (h *countHandler) Revoke(context.Context, []int32) {}
func (h *countHandler) Lose(context.Context, []int32)   {}
func (h *countHandler) Handle(_ context.Context, batches []ingest.PartitionBatch) error {
	n := 0
	for i := range batches {
		n += len(batches[i].Records)
	}
	if h.n.Add(int64(n)) >= h.want {
		h.once.Do(func() { close(h.done) })
	}
	return nil
}

// BenchmarkConsumeDecode measures the consumer: a fresh consumer group
// member reads, decodes, validates and groups a pre-filled topic set of 12
// partitions (1,000,000 records by default; LOOKBACK_BENCH_RECORDS sets
// another count), from joining the group to the last record. The fill is
// done once per process, outside the timed loops; the sub-benchmark
// kgo-baseline reads the same records with a plain franz-go client (no
// group, no decoding), to tell the consumer's cost from the broker's.
func BenchmarkConsumeDecode(b *testing.B) {
	d := benchFill(b, benchRecords(b))
	b.Run("consumer", func(b *testing.B) { benchConsumer(b, d) })
	b.Run("kgo-baseline", func(b *testing.B) { benchBaseline(b, d) })
}

func benchConsumer(b *testing.B, d *benchData) {
	total := d.total
	b.SetBytes(d.valueBytes)
	b.ReportAllocs()
	iter := 0
	for b.Loop() {
		iter++
		h := &countHandler{want: int64(total), done: make(chan struct{})}
		cfg := ingest.DefaultConsumerConfig()
		cfg.Brokers, cfg.Topics, cfg.Partitions = d.addrs, d.topics, d.n
		cfg.Group = fmt.Sprintf("bench-%d-%d", time.Now().UnixNano(), iter)
		c, err := ingest.NewConsumer(cfg, h, testenv.Logger(), prometheus.NewRegistry())
		if err != nil {
			b.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		runErr := make(chan error, 1)
		go func() { runErr <- c.Run(ctx) }()
		select {
		case <-h.done:
		case err := <-runErr:
			b.Fatalf("Run returned %v after %d records", err, h.n.Load())
		case <-time.After(10 * time.Minute):
			b.Fatalf("%d of %d records after 10 minutes", h.n.Load(), total)
		}
		b.StopTimer() // leaving the group is not part of it
		cancel()
		if err := <-runErr; err != nil {
			b.Fatal(err)
		}
		c.Close()
		if n := h.n.Load(); n != int64(total) {
			b.Fatalf("%d records handled, want %d", n, total)
		}
		b.StartTimer()
	}
	b.ReportMetric(float64(total)*float64(b.N)/b.Elapsed().Seconds(), "records/s")
}

func benchBaseline(b *testing.B, d *benchData) {
	total := d.total
	b.SetBytes(d.valueBytes)
	b.ReportAllocs()
	in := d.topics.Inputs()
	for b.Loop() {
		cl, err := kgo.NewClient(
			kgo.SeedBrokers(d.addrs...),
			kgo.ConsumeTopics(in[:]...),
			kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		)
		if err != nil {
			b.Fatal(err)
		}
		n := 0
		deadline := time.Now().Add(10 * time.Minute)
		for n < total && time.Now().Before(deadline) {
			n += cl.PollRecords(context.Background(), 10_000).NumRecords()
		}
		b.StopTimer()
		cl.Close()
		if n != total {
			b.Fatalf("%d records read, want %d", n, total)
		}
		b.StartTimer()
	}
	b.ReportMetric(float64(total)*float64(b.N)/b.Elapsed().Seconds(), "records/s")
}
