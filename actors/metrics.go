package actors

import (
	"fmt"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/lookback-dev/lookback/attribution"
)

// metrics are the engine's Prometheus metrics. None is labelled by user,
// campaign or creative; partition labels are bounded by the topic's
// partition count.
type metrics struct {
	applied           *prometheus.CounterVec
	duplicates        prometheus.Counter
	late              prometheus.Counter
	evicted           prometheus.Counter
	panics            prometheus.Counter
	conversions       *prometheus.CounterVec
	facts             *prometheus.CounterVec
	checkpointSeconds prometheus.Histogram
	phaseSeconds      *prometheus.HistogramVec
	lastCheckpoint    prometheus.Gauge
	storeErrors       *prometheus.CounterVec
	backpressure      prometheus.Gauge
	fenced            prometheus.Counter
	owned             prometheus.Gauge
	activeUsers       *prometheus.GaugeVec
	buffered          *prometheus.GaugeVec
	watermarkLag      *prometheus.GaugeVec
	passivated        prometheus.Counter
	usersLoaded       prometheus.Counter
	loadSeconds       prometheus.Histogram
	stateErrors       prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	durations := []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}
	m := &metrics{
		applied: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lookback_events_applied_total", Help: "Events applied to user states and checkpointed, by type (duplicates excluded).",
		}, []string{"type"}),
		duplicates: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "lookback_events_duplicate_total", Help: "Events a user's state had already seen; they changed nothing.",
		}),
		late: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "lookback_events_late_total", Help: "Events that arrived after the watermark passed their time; applied at once.",
		}),
		evicted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "lookback_touches_evicted_total", Help: "Touches and conversions pushed out of a user's state by the per-user caps.",
		}),
		panics: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "lookback_apply_panics_total", Help: "Records whose application panicked; each was dead-lettered.",
		}),
		conversions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lookback_conversions_total", Help: "Conversions attributed, by outcome (attributed to touches, or organic).",
		}, []string{"outcome"}),
		facts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lookback_facts_written_total", Help: "Facts durably written to the warehouse, by kind (impression, click, attribution row).",
		}, []string{"kind"}),
		checkpointSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "lookback_checkpoint_duration_seconds", Help: "Duration of a whole checkpoint cycle.", Buckets: durations,
		}),
		phaseSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "lookback_checkpoint_phase_duration_seconds", Help: "Duration of a checkpoint phase (collect, warehouse, store), retries included.", Buckets: durations,
		}, []string{"phase"}),
		lastCheckpoint: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "lookback_checkpoint_last_success_timestamp_seconds", Help: "When the last checkpoint cycle completed.",
		}),
		storeErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lookback_dependency_errors_total", Help: "Failed calls to a dependency (warehouse, store, load, claim), each retried with backoff.",
		}, []string{"dependency"}),
		backpressure: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "lookback_backpressure_active", Help: "1 while consumption is paused because a dependency is failing.",
		}),
		fenced: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "lookback_checkpoint_fenced_total", Help: "Checkpoints refused because another owner claimed the partition.",
		}),
		owned: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "lookback_partitions_owned", Help: "Partitions this node owns.",
		}),
		activeUsers: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "lookback_active_users", Help: "Users with an actor in memory, per partition.",
		}, []string{"partition"}),
		buffered: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "lookback_buffered_records", Help: "Records waiting in a partition's event-time buffer.",
		}, []string{"partition"}),
		watermarkLag: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "lookback_watermark_lag_seconds", Help: "Wall clock minus a partition's watermark.",
		}, []string{"partition"}),
		passivated: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "lookback_users_passivated_total", Help: "Idle users that left memory.",
		}),
		usersLoaded: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "lookback_users_loaded_total", Help: "Users whose state was looked up in the checkpoint store (new or passivated).",
		}),
		loadSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "lookback_user_load_duration_seconds", Help: "Duration of a batched state load from the checkpoint store.", Buckets: durations,
		}),
		stateErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "lookback_state_decode_errors_total", Help: "Stored user states that could not be decoded.",
		}),
	}
	for _, c := range []prometheus.Collector{
		m.applied, m.duplicates, m.late, m.evicted, m.panics, m.conversions, m.facts, m.checkpointSeconds,
		m.phaseSeconds, m.lastCheckpoint, m.storeErrors, m.backpressure, m.fenced, m.owned, m.activeUsers,
		m.buffered, m.watermarkLag, m.passivated, m.usersLoaded, m.loadSeconds, m.stateErrors,
	} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("registering engine metrics: %w", err)
		}
	}
	return m, nil
}

func (m *metrics) recordStats(s *applyStats) {
	for t := attribution.TypeBid; t <= attribution.TypeConversion; t++ {
		if n := s.applied[t]; n > 0 {
			m.applied.WithLabelValues(t.String()).Add(float64(n))
		}
	}
	m.duplicates.Add(float64(s.duplicates))
	m.late.Add(float64(s.late))
	m.evicted.Add(float64(s.evicted))
	m.panics.Add(float64(s.panics))
	m.conversions.WithLabelValues("organic").Add(float64(s.organic))
	m.conversions.WithLabelValues("attributed").Add(float64(s.applied[attribution.TypeConversion] - s.organic))
}

func (m *metrics) recordFacts(f *attribution.Facts) {
	m.facts.WithLabelValues("impression").Add(float64(len(f.Impressions)))
	m.facts.WithLabelValues("click").Add(float64(len(f.Clicks)))
	rows := 0
	for i := range f.Conversions {
		c := &f.Conversions[i]
		for j := range c.Models {
			for _, credit := range c.CreditsOf(j) {
				if credit != 0 {
					rows++
				}
			}
		}
	}
	m.facts.WithLabelValues("attribution").Add(float64(rows))
}

func (m *metrics) observePartition(p int32, seq *attribution.Sequencer, now int64) {
	label := strconv.Itoa(int(p))
	m.buffered.WithLabelValues(label).Set(float64(seq.Buffer.Len()))
	if wm := seq.Watermark.Current(); wm != attribution.NoWatermark {
		m.watermarkLag.WithLabelValues(label).Set(float64(now-wm) / 1000)
	}
}
