package actors

import (
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/lookback-dev/lookback/attribution"
	"github.com/lookback-dev/lookback/ingest"
	"github.com/lookback-dev/lookback/internal/testenv"
)

type vector struct {
	Name   string                                   `json:"name"`
	Events json.RawMessage                          `json:"events"`
	Expect map[string]map[string]map[string]float64 `json:"expect"`
}

// loadVectors reads the spec's vectors (attribution/testdata/vectors.json)
// with their events decoded as the HTTP API decodes them.
func loadVectors(t testing.TB) ([]vector, [][]attribution.Event) {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "attribution", "testdata", "vectors.json"))
	if err != nil {
		t.Fatal(err)
	}
	var f struct{ Vectors []vector }
	if err := json.Unmarshal(data, &f); err != nil {
		t.Fatal(err)
	}
	events := make([][]attribution.Event, len(f.Vectors))
	for i, v := range f.Vectors {
		evs, rejected, err := ingest.DecodeEventsJSON(v.Events, nil)
		if err != nil || len(rejected) > 0 {
			t.Fatalf("vector %q: %v %v", v.Name, err, rejected)
		}
		events[i] = evs
	}
	return f.Vectors, events
}

func allModels(t testing.TB) *attribution.Rules {
	cfg := attribution.DefaultConfig()
	cfg.Models = attribution.AllModels
	r, err := attribution.NewRules(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func diffCredits(got, want map[string]map[string]map[string]float64) error {
	for conv, models := range want {
		for model, touches := range models {
			g := got[conv][model]
			if len(g) != len(touches) {
				return fmt.Errorf("%s %s: credits %v, want %v", conv, model, g, touches)
			}
			for touch, c := range touches {
				if math.Abs(g[touch]-c) > 1e-9 {
					return fmt.Errorf("%s %s %q: credit %v, want %v", conv, model, touch, g[touch], c)
				}
			}
		}
	}
	if len(got) != len(want) {
		return fmt.Errorf("%d conversions in the sink, want %d", len(got), len(want))
	}
	return nil
}

// TestEngineVectors runs every vector of the spec through a whole node:
// Kafka topics in their wire formats, the consumer group, partition and
// user actors, checkpoints, and the file sink; the sink must hold exactly
// the expected credits, and lookups must show them.
func TestEngineVectors(t *testing.T) {
	c := newTestCluster(t, 4)
	vectors, events := loadVectors(t)
	want := map[string]map[string]map[string]float64{}
	var all []attribution.Event
	for i, v := range vectors {
		all = append(all, events[i]...)
		for conv, m := range v.Expect {
			want[conv] = m
		}
	}
	rand.New(rand.NewPCG(7, 7)).Shuffle(len(all), func(i, j int) { all[i], all[j] = all[j], all[i] })
	c.produce(all)

	sink := newFileSink(t, t.TempDir())
	n := c.startNode(nodeOptions{rules: allModels(t), store: newFileStore(t, t.TempDir()), sink: sink})
	testenv.CheckFor(t, 30*time.Second, 100*time.Millisecond, func() error {
		got, _ := snapshotCredits(t, sink)
		return diffCredits(got, want)
	})
	// Lookups read the same answer from the live actors.
	v := n.lookupUntil("a", func(v *UserView) error {
		if len(v.Conversions) != 1 || v.Conversions[0].Status != "attributed" {
			return fmt.Errorf("conversions %+v", v.Conversions)
		}
		return nil
	})
	if got := v.Conversions[0].Attributions["last_touch"]; len(got) != 1 || got[0].TouchID != "a-k3" {
		t.Fatalf("last_touch of a-v: %+v", got)
	}
	if len(v.Touchpoints) != 3 {
		t.Fatalf("touchpoints of a: %+v", v.Touchpoints)
	}
}

// TestEngineRestartKeepsState stops a node after half a stream and starts
// another on the same store and sink: the second half's conversions are
// credited to touches of the first half, which only the checkpointed
// states hold. Users are passivated in between, so they are also loaded
// back from the store.
func TestEngineRestartKeepsState(t *testing.T) {
	c := newTestCluster(t, 4)
	storeDir, sinkDir := t.TempDir(), t.TempDir()
	rules := allModels(t)
	base := time.Now().Add(-time.Hour).UnixMilli()
	var touches, convs []attribution.Event
	for u := 0; u < 50; u++ {
		user := fmt.Sprintf("user-%d", u)
		touches = append(touches, attribution.Event{Type: attribution.TypeClick, UserID: user, ID: user + "-k", Time: base + int64(u),
			CreativeID: "cr", CampaignID: "ca"})
		convs = append(convs, attribution.Event{Type: attribution.TypeConversion, UserID: user, ID: user + "-v", Time: base + 60_000 + int64(u),
			ConversionType: "purchase", Value: 10, Currency: "USD"})
	}
	c.produce(touches)
	sink := newFileSink(t, sinkDir)
	n := c.startNode(nodeOptions{rules: rules, store: newFileStore(t, storeDir), sink: sink, config: func(cfg *Config) {
		cfg.PassivateAfter = 100 * time.Millisecond
	}})
	testenv.CheckFor(t, 30*time.Second, 100*time.Millisecond, func() error {
		snap, err := sink.Snapshot(t.Context())
		if err != nil {
			return err
		}
		if len(snap.Clicks) != len(touches) {
			return fmt.Errorf("%d clicks in the sink, want %d", len(snap.Clicks), len(touches))
		}
		return nil
	})
	// Let the users be passivated (their states are durable by now).
	testenv.CheckFor(t, 30*time.Second, 100*time.Millisecond, func() error {
		if got := testutilGauge(t, n.reg, "lookback_users_passivated_total"); got < float64(len(touches)) {
			return fmt.Errorf("%v users passivated", got)
		}
		return nil
	})
	n.stop()
	sink.Close()

	c.produce(convs)
	sink2 := newFileSink(t, sinkDir)
	t.Cleanup(func() { sink2.Close() })
	c.startNode(nodeOptions{rules: rules, store: newFileStore(t, storeDir), sink: sink2})
	want := map[string]map[string]map[string]float64{}
	for _, cv := range convs {
		m := map[string]map[string]float64{}
		for _, model := range attribution.AllModels {
			m[model.String()] = map[string]float64{cv.UserID + "-k": 1}
		}
		want[cv.ID] = m
	}
	testenv.CheckFor(t, 30*time.Second, 100*time.Millisecond, func() error {
		got, snap := snapshotCredits(t, sink2)
		if len(snap.Clicks) != len(touches) {
			return fmt.Errorf("%d clicks after the restart, want %d (no doubles)", len(snap.Clicks), len(touches))
		}
		return diffCredits(got, want)
	})
}
