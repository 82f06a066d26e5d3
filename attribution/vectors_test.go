package attribution

import (
	"math"
	"math/rand/v2"
	"testing"
	"time"
)

// TestVectors runs every stream of testdata/vectors.json (a copy of
// shared/spec/vectors.json) through the sequencer, in event-time order and
// in shuffled orders, and checks it gets exactly the expected credits.
func TestVectors(t *testing.T) {
	r := allModelsRules(t)
	for _, v := range loadVectors(t) {
		t.Run(v.Name, func(t *testing.T) {
			var events []Event
			for _, je := range v.Events {
				events = append(events, je.event(t))
			}
			// The vectors span days; a lateness that covers the whole
			// stream makes any delivery order "within the lateness".
			wm := WatermarkConfig{AllowedLateness: 30 * 24 * time.Hour, IdleTimeout: 5 * time.Second, MaxSkew: 60 * 24 * time.Hour}
			orders := map[string][]Event{"event-time order": events}
			rng := rand.New(rand.NewPCG(1, uint64(len(v.Name))))
			for i := 0; i < 50; i++ {
				shuffled := append([]Event(nil), events...)
				rng.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
				orders["shuffled"+string(rune('A'+i%26))+string(rune('a'+i/26))] = shuffled
			}
			for name, order := range orders {
				facts, _ := runSequenced(t, r, wm, order, time.Millisecond)
				checkCredits(t, name, v.Expect, creditsOf(facts))
			}
		})
	}
}

func checkCredits(t *testing.T, order string, want map[string]map[string]map[string]float64, got credits) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d conversions attributed, want %d: %v", order, len(got), len(want), got)
	}
	for conv, models := range want {
		for model, touches := range models {
			g := got[conv][model]
			if len(g) != len(touches) {
				t.Fatalf("%s: %s %s: credits %v, want %v", order, conv, model, g, touches)
			}
			for touch, c := range touches {
				if gc, ok := g[touch]; !ok || math.Abs(gc-c) > 1e-9 {
					t.Fatalf("%s: %s %s %q: credit %v, want %v (all %v)", order, conv, model, touch, gc, c, g)
				}
			}
		}
	}
}
