// Package api owns lookback's HTTP interface: the event ingest endpoint,
// live attribution lookups, the cluster view, health checks and the
// Prometheus exposition. Every node answers every request.
package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/lookback-dev/lookback/actors"
	"github.com/lookback-dev/lookback/attribution"
	"github.com/lookback-dev/lookback/ingest"
)

// Config configures the HTTP API.
type Config struct {
	// MaxBodyBytes bounds a POST /v1/events body (413 beyond it).
	MaxBodyBytes int64
	// MaxFutureSkew: an event further ahead of the clock is rejected.
	MaxFutureSkew time.Duration
	// NodeID names this node in /v1/cluster.
	NodeID string
	// Partitions is the input topics' partition count.
	Partitions int32
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{MaxBodyBytes: 10 << 20, MaxFutureSkew: 5 * time.Minute}
}

// Validate reports the first problem with the configuration.
func (c *Config) Validate() error {
	if c.MaxBodyBytes < 1 {
		return errors.New("max body size must be positive")
	}
	if c.MaxFutureSkew <= 0 {
		return errors.New("max future skew must be positive")
	}
	if c.Partitions < 1 {
		return errors.New("partition count must be positive")
	}
	return nil
}

// Engine is what the API needs of the node's engine.
type Engine interface {
	Lookup(ctx context.Context, userID string) (*actors.UserView, error)
	Owned() []int32
	Ready() bool
}

// Producer sends accepted events to Kafka and waits for its acknowledgement.
type Producer interface {
	Produce(ctx context.Context, events []attribution.Event) []error
}

// DeadLetters receives the events the API rejected.
type DeadLetters interface {
	Send(ctx context.Context, letters []ingest.DeadLetter) error
}

// Server holds the handlers.
type Server struct {
	cfg      Config
	engine   Engine
	producer Producer
	dlq      DeadLetters
	gatherer prometheus.Gatherer
	log      *slog.Logger

	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
	events   *prometheus.CounterVec
}

// New builds the API server. reg receives the API's own metrics; gatherer
// is what /metrics exposes.
func New(cfg Config, engine Engine, producer Producer, dlq DeadLetters, log *slog.Logger, reg prometheus.Registerer, gatherer prometheus.Gatherer) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	s := &Server{
		cfg: cfg, engine: engine, producer: producer, dlq: dlq, gatherer: gatherer, log: log,
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lookback_http_requests_total", Help: "HTTP requests by route and status code.",
		}, []string{"route", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "lookback_http_request_duration_seconds", Help: "HTTP request latency by route.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		}, []string{"route"}),
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lookback_http_events_total", Help: "Events received by POST /v1/events, by outcome (accepted, rejected).",
		}, []string{"outcome"}),
	}
	for _, c := range []prometheus.Collector{s.requests, s.duration, s.events} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("registering API metrics: %w", err)
		}
	}
	return s, nil
}

// Handler returns the API's routes. With admin set, health and metrics
// are served too (the single-listener layout); otherwise see AdminHandler.
func (s *Server) Handler(admin bool) http.Handler {
	mux := http.NewServeMux()
	s.route(mux, "POST /v1/events", "events", s.postEvents)
	s.route(mux, "GET /v1/users/{user_id}", "user", s.getUser)
	s.route(mux, "GET /v1/users/{user_id}/conversions/{conversion_id}", "conversion", s.getConversion)
	s.route(mux, "GET /v1/cluster", "cluster", s.getCluster)
	if admin {
		s.adminRoutes(mux)
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "no such endpoint: "+r.Method+" "+r.URL.Path)
	})
	return mux
}

// AdminHandler serves health and metrics alone (for --admin-addr).
func (s *Server) AdminHandler() http.Handler {
	mux := http.NewServeMux()
	s.adminRoutes(mux)
	return mux
}

func (s *Server) adminRoutes(mux *http.ServeMux) {
	live := func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "alive"})
	}
	mux.HandleFunc("GET /livez", live)
	mux.HandleFunc("GET /healthz", live)
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !s.engine.Ready() {
			writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "not ready: no partitions claimed yet"})
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"status": "ready", "partitions": s.engine.Owned()})
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.gatherer, promhttp.HandlerOpts{}))
}

func (s *Server) route(mux *http.ServeMux, pattern, name string, h http.HandlerFunc) {
	mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w, code: http.StatusOK}
		h(rec, r)
		s.requests.WithLabelValues(name, fmt.Sprint(rec.code)).Inc()
		s.duration.WithLabelValues(name).Observe(time.Since(start).Seconds())
	})
}

type statusRecorder struct {
	http.ResponseWriter
	code int
}

func (r *statusRecorder) WriteHeader(code int) {
	r.code = code
	r.ResponseWriter.WriteHeader(code)
}

// eventsResponse is POST /v1/events' answer.
type eventsResponse struct {
	Accepted int                `json:"accepted"`
	Rejected []ingest.Rejection `json:"rejected"`
}

func (s *Server) postEvents(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, s.cfg.MaxBodyBytes))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("body larger than %d bytes", tooBig.Limit))
			return
		}
		writeError(w, http.StatusBadRequest, "reading the body: "+err.Error())
		return
	}
	now := time.Now()
	events, rejected, err := ingest.DecodeEventsJSON(body, func(ev *attribution.Event) error {
		return ev.CheckTime(now, s.cfg.MaxFutureSkew)
	})
	if err != nil {
		writeError(w, http.StatusBadRequest, "body is not a JSON array or NDJSON of events: "+err.Error())
		return
	}
	s.deadLetter(r.Context(), rejected)
	// Positions of the valid events in the body: the indexes not rejected.
	index := make([]int, 0, len(events))
	rejectedAt := make(map[int]bool, len(rejected))
	for _, rj := range rejected {
		rejectedAt[rj.Index] = true
	}
	for i := 0; len(index) < len(events); i++ {
		if !rejectedAt[i] {
			index = append(index, i)
		}
	}

	accepted := 0
	var kafkaErr error
	for i, err := range s.producer.Produce(r.Context(), events) {
		if err != nil {
			kafkaErr = err
			rejected = append(rejected, ingest.Rejection{Index: index[i], Error: "not acknowledged by Kafka (retry it): " + err.Error()})
			continue
		}
		accepted++
	}
	s.events.WithLabelValues("accepted").Add(float64(accepted))
	s.events.WithLabelValues("rejected").Add(float64(len(rejected)))
	if accepted == 0 && kafkaErr != nil {
		writeError(w, http.StatusServiceUnavailable, "Kafka did not acknowledge the events: "+kafkaErr.Error())
		return
	}
	sort.Slice(rejected, func(i, j int) bool { return rejected[i].Index < rejected[j].Index })
	if rejected == nil {
		rejected = []ingest.Rejection{}
	}
	writeJSON(w, http.StatusAccepted, eventsResponse{Accepted: accepted, Rejected: rejected})
}

// deadLetter sends rejected elements, with their reasons, to the
// dead-letter topic. The client has the reasons too; the dead-letter topic
// is where operators look for every rejected record.
func (s *Server) deadLetter(ctx context.Context, rejected []ingest.Rejection) {
	if len(rejected) == 0 || s.dlq == nil {
		return
	}
	letters := make([]ingest.DeadLetter, 0, len(rejected))
	for _, rj := range rejected {
		letters = append(letters, ingest.DeadLetter{
			Offset: -1, Source: fmt.Sprintf("http POST /v1/events element %d", rj.Index),
			Value: rj.Raw, Err: errors.New(rj.Error),
		})
	}
	if err := s.dlq.Send(ctx, letters); err != nil {
		s.log.Warn("dead-lettering rejected HTTP events failed", "events", len(letters), "err", err)
	}
}

func (s *Server) lookup(w http.ResponseWriter, r *http.Request) (*actors.UserView, bool) {
	user := r.PathValue("user_id")
	if user == "" || len(user) > attribution.MaxFieldLen {
		writeError(w, http.StatusBadRequest, "user_id: must be 1 to 256 bytes")
		return nil, false
	}
	v, err := s.engine.Lookup(r.Context(), user)
	switch {
	case err == nil:
		return v, true
	case errors.Is(err, actors.ErrUserNotFound):
		writeError(w, http.StatusNotFound, fmt.Sprintf("user %q not found", user))
	case errors.Is(err, actors.ErrNotOwned):
		writeError(w, http.StatusServiceUnavailable, fmt.Sprintf("the partition of user %q is not owned by a node yet; retry", user))
	default:
		s.log.Warn("lookup failed", "user", user, "err", err)
		writeError(w, http.StatusServiceUnavailable, "lookup failed: "+err.Error())
	}
	return nil, false
}

func (s *Server) getUser(w http.ResponseWriter, r *http.Request) {
	if v, ok := s.lookup(w, r); ok {
		writeJSON(w, http.StatusOK, v)
	}
}

func (s *Server) getConversion(w http.ResponseWriter, r *http.Request) {
	v, ok := s.lookup(w, r)
	if !ok {
		return
	}
	id := r.PathValue("conversion_id")
	c, ok := v.Conversion(id)
	if !ok {
		writeError(w, http.StatusNotFound, fmt.Sprintf("user %q has no conversion %q", v.UserID, id))
		return
	}
	writeJSON(w, http.StatusOK, c)
}

// clusterView is GET /v1/cluster's answer.
type clusterView struct {
	Members    []memberView      `json:"members"`
	Partitions map[string]string `json:"partitions"`
}

type memberView struct {
	NodeID     string  `json:"node_id"`
	Self       bool    `json:"self"`
	Partitions []int32 `json:"partitions"`
}

func (s *Server) getCluster(w http.ResponseWriter, _ *http.Request) {
	owned := s.engine.Owned()
	v := clusterView{
		Members:    []memberView{{NodeID: s.cfg.NodeID, Self: true, Partitions: owned}},
		Partitions: make(map[string]string, s.cfg.Partitions),
	}
	for _, p := range owned {
		v.Partitions[fmt.Sprint(p)] = s.cfg.NodeID
	}
	writeJSON(w, http.StatusOK, v)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	if err := enc.Encode(v); err != nil {
		// The client went away; nothing to tell it.
		return
	}
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, map[string]string{"error": strings.TrimSpace(msg)})
}
