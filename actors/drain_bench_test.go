package actors

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"strconv"
	"testing"
	"time"

	"github.com/lookback-dev/lookback/attribution"
	"github.com/lookback-dev/lookback/internal/testenv"
	"github.com/lookback-dev/lookback/persist"
)

// benchEvents is the size of the drain benchmark's backlog
// (LOOKBACK_BENCH_EVENTS, default 1,000,000).
func benchEvents() int {
	if n, err := strconv.Atoi(os.Getenv("LOOKBACK_BENCH_EVENTS")); err == nil && n > 0 {
		return n
	}
	return 1_000_000
}

// mixedEvents returns n events of users users: about 40% bids, 35%
// impressions (most joining a bid), 17% clicks (most naming an
// impression) and 8% conversions, or with funnel 60/30/8/2, over the last
// hours, with UUID-like ids.
func mixedEvents(seed uint64, n, users int, end time.Time, funnel bool) []attribution.Event {
	rng := rand.New(rand.NewPCG(seed, 1))
	span := int64(n) * 10 // ms: 100 events per simulated second
	base := end.UnixMilli() - span
	id := func(prefix byte, i int) string {
		return fmt.Sprintf("%c%07x-%04x-4%03x-8%03x-%012x", prefix, i&0xfffffff, rng.IntN(1<<16), rng.IntN(1<<12), rng.IntN(1<<12), rng.Uint64()&0xffffffffffff)
	}
	type last struct{ auction, impression, creative string }
	recent := make([]last, users)
	evs := make([]attribution.Event, 0, n)
	for i := 0; len(evs) < n; i++ {
		u := rng.IntN(users)
		user := fmt.Sprintf("user-%07d", u)
		t := base + int64(i)*10 + rng.Int64N(2000) // out of order within 2 s
		creative := fmt.Sprintf("cr-%03d", rng.IntN(200))
		campaign := fmt.Sprintf("camp-%02d", rng.IntN(40))
		r := recent[u]
		x := rng.IntN(100)
		if funnel {
			// A realistic funnel: most auctions are lost, few impressions
			// are clicked, fewer convert.
			switch {
			case x < 60:
				x = 0
			case x < 90:
				x = 40
			case x < 98:
				x = 75
			default:
				x = 92
			}
		}
		switch {
		case x < 40:
			a := id('a', i)
			recent[u].auction = a
			evs = append(evs, attribution.Event{Type: attribution.TypeBid, UserID: user, ID: a, Time: t,
				CreativeID: creative, CampaignID: campaign, Website: "news.example.com",
				Bid: &attribution.Bid{FloorPrice: 0.5, BidPrice: 1 + rng.Float64(), Currency: "USD", Exchange: "adx",
					Criteria: []string{"geo:us", "age:25-34"}}})
		case x < 75:
			imp := id('i', i)
			recent[u].impression, recent[u].creative = imp, creative
			evs = append(evs, attribution.Event{Type: attribution.TypeImpression, UserID: user, ID: imp, Time: t,
				CreativeID: creative, CampaignID: campaign, Website: "news.example.com", AuctionID: r.auction})
		case x < 92:
			ev := attribution.Event{Type: attribution.TypeClick, UserID: user, ID: id('k', i), Time: t,
				CreativeID: creative, CampaignID: campaign}
			if r.impression != "" && rng.IntN(4) > 0 {
				ev.ImpressionID, ev.CreativeID = r.impression, r.creative
			}
			evs = append(evs, ev)
		default:
			evs = append(evs, attribution.Event{Type: attribution.TypeConversion, UserID: user, ID: id('v', i), Time: t,
				ConversionType: "purchase", Value: float64(rng.IntN(20000)) / 100, Currency: "USD"})
		}
	}
	return evs
}

// BenchmarkDrain measures a node draining a pre-filled broker: the
// consumer, decoding, sequencing, user actors, and checkpoints with facts
// to PostgreSQL and states to Redis. It reports events/s, and the mean
// checkpoint and warehouse durations.
func BenchmarkDrain(b *testing.B) {
	// As lookback serve runs the engine.
	if os.Getenv("GOGC") == "" {
		defer debug.SetGCPercent(debug.SetGCPercent(GCPercent))
	}
	n := benchEvents()
	c := newTestCluster(b, 12)
	// LOOKBACK_BENCH_MIX=funnel: 60% bids, 30% impressions, 8% clicks, 2%
	// conversions; LOOKBACK_BENCH_MODELS: the models (default all five).
	evs := mixedEvents(1, n, n/10, time.Now().Add(-time.Minute), os.Getenv("LOOKBACK_BENCH_MIX") == "funnel")
	start := time.Now()
	for i := 0; i < len(evs); i += 50_000 {
		c.produce(evs[i:min(i+50_000, len(evs))])
	}
	b.Logf("pre-filled %d events in %s", n, time.Since(start).Round(time.Millisecond))
	cfg := attribution.DefaultConfig()
	cfg.Models = attribution.AllModels
	if m := os.Getenv("LOOKBACK_BENCH_MODELS"); m != "" {
		var err error
		if cfg.Models, err = attribution.ParseModels(m); err != nil {
			b.Fatal(err)
		}
	}
	rules := attribution.MustRules(cfg)

	for b.Loop() {
		b.StopTimer()
		client, prefix := testenv.Redis(b)
		storeCfg := persist.DefaultRedisStoreConfig()
		storeCfg.KeyPrefix = prefix
		store, err := persist.NewRedisStore(client, storeCfg)
		if err != nil {
			b.Fatal(err)
		}
		// LOOKBACK_BENCH_SINK=discard measures the engine without the
		// warehouse.
		var sink persist.FactSink = discardSink{}
		if os.Getenv("LOOKBACK_BENCH_SINK") != "discard" {
			pg, err := persist.OpenSink(context.Background(), testenv.PostgresSchema(b), persist.DefaultSinkConfig())
			if err != nil {
				b.Fatal(err)
			}
			if err := persist.Migrate(context.Background(), pg.Pool(), pg.Dialect()); err != nil {
				b.Fatal(err)
			}
			sink = pg
		}
		runtime.GC()
		// LOOKBACK_BENCH_CPUPROFILE: a CPU profile of the drain alone,
		// without generating and producing the backlog.
		if path := os.Getenv("LOOKBACK_BENCH_CPUPROFILE"); path != "" {
			f, err := os.Create(path)
			if err != nil {
				b.Fatal(err)
			}
			if err := pprof.StartCPUProfile(f); err != nil {
				b.Fatal(err)
			}
			defer f.Close()
			defer pprof.StopCPUProfile()
		}
		b.StartTimer()
		cpu0 := processCPU(b)
		t0 := time.Now()
		node := c.startNode(nodeOptions{rules: rules, store: store, sink: sink, nodeID: testenv.Name("bench-"), config: func(cfg *Config) {
			cfg.CheckpointInterval = time.Second
		}})
		// Drained: every record read and a checkpoint completed after it.
		var readAt, tracedAt time.Time
		trace := os.Getenv("LOOKBACK_BENCH_TRACE") != ""
		testenv.CheckFor(b, 10*time.Minute, 50*time.Millisecond, func() error {
			read := testutilGauge(b, node.reg, "lookback_ingest_records_total")
			if trace && time.Since(tracedAt) >= 250*time.Millisecond {
				tracedAt = time.Now()
				b.Logf("%5.2fs buffered %7.0f read %7.0f applied %7.0f facts %7.0f checkpoints %3.0f paused %v", time.Since(t0).Seconds(), testutilGauge(b, node.reg, "lookback_buffered_records"), read,
					testutilGauge(b, node.reg, "lookback_events_applied_total"), testutilGauge(b, node.reg, "lookback_facts_written_total"),
					float64(histCount(b, node.reg, "lookback_checkpoint_duration_seconds")), testutilGauge(b, node.reg, "lookback_consumer_paused_inputs"))
			}
			if read < float64(n) {
				return fmt.Errorf("%v of %d records read", read, n)
			}
			if readAt.IsZero() {
				readAt = time.Now()
			}
			applied := testutilGauge(b, node.reg, "lookback_events_applied_total") + testutilGauge(b, node.reg, "lookback_events_duplicate_total")
			if applied < float64(n) {
				return fmt.Errorf("%v of %d applied and checkpointed", applied, n)
			}
			return nil
		})
		elapsed := time.Since(t0)
		cpu := processCPU(b) - cpu0
		b.StopTimer()
		// The process's CPU (broker included) per second of drain: near 2
		// means this node kept both cores of this machine busy.
		b.ReportMetric(cpu.Seconds()/elapsed.Seconds(), "cores")
		b.ReportMetric(float64(n)/elapsed.Seconds(), "events/s")
		b.ReportMetric(float64(n)/readAt.Sub(t0).Seconds(), "read-events/s")
		b.ReportMetric(histMean(b, node, "lookback_checkpoint_duration_seconds", ""), "checkpoint-s")
		for _, phase := range []string{"collect", "warehouse", "store"} {
			b.ReportMetric(histMean(b, node, "lookback_checkpoint_phase_duration_seconds", phase), phase+"-s")
		}
		b.ReportMetric(testutilGauge(b, node.reg, "lookback_facts_written_total")/float64(n), "rows/event")
		node.stop()
		sink.Close()
		store.Close()
		b.StartTimer()
	}
}

// histMean is the mean of a histogram's observations: those with a label
// of that value, or all of them when value is empty.
func histMean(t testing.TB, n *testNode, name, value string) float64 {
	mfs, err := n.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum, count := 0.0, 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			match := value == ""
			for _, l := range m.GetLabel() {
				match = match || l.GetValue() == value
			}
			if match {
				sum += m.GetHistogram().GetSampleSum()
				count += float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	if count == 0 {
		return 0
	}
	return sum / count
}
