package main

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lookback-dev/lookback/actors"
	"github.com/lookback-dev/lookback/internal/testenv"
)

// TestEmbeddedDefaults runs `lookback serve` as a newcomer would, on its
// embedded defaults (broker, checkpoint store and facts under --data-dir;
// only the ports differ, so tests can run beside other things): events go
// in over HTTP, lookups answer, and the users' state survives a graceful
// stop and a SIGKILL, with every fact written once.
func TestEmbeddedDefaults(t *testing.T) {
	dataDir := t.TempDir()
	httpPort, kafkaPort := freePort(t), freePort(t)
	api := fmt.Sprintf("http://127.0.0.1:%d", httpPort)
	args := []string{"serve", "--http-addr", fmt.Sprintf("127.0.0.1:%d", httpPort),
		"--embedded-kafka-addr", fmt.Sprintf("127.0.0.1:%d", kafkaPort), "--data-dir", dataDir,
		"--idle-timeout", "1s", "--allowed-lateness", "1s"}
	node := startProc(t, "serve-1", args...)
	waitReady(t, api, node)

	ts := time.Now().Add(-time.Minute).UTC().Format(time.RFC3339Nano)
	body := fmt.Sprintf(`{"type":"impression","impression_id":"i1","user_id":"newcomer","timestamp":%q,"ad_creative_id":"c1","campaign_id":"p1","website":"example.com"}
{"type":"click","click_id":"k1","user_id":"newcomer","timestamp":%q,"ad_creative_id":"c1","campaign_id":"p1","impression_id":"i1"}
{"type":"conversion","conversion_id":"v1","user_id":"newcomer","timestamp":%q,"conversion_type":"purchase","value":42.5,"currency":"usd"}
{"type":"click","user_id":"newcomer"}
`, ts, ts, ts)
	code, resp := postJSON(t, api+"/v1/events", body)
	if code != http.StatusAccepted || !strings.Contains(resp, `"accepted":3`) || !strings.Contains(resp, `"index":3`) {
		t.Fatalf("POST /v1/events: %d %s", code, resp)
	}

	attributed := func() error {
		var v actors.UserView
		code, err := getJSON(api+"/v1/users/newcomer", &v)
		if err != nil || code != http.StatusOK {
			return fmt.Errorf("lookup: %d %v", code, err)
		}
		if len(v.Conversions) != 1 || v.Conversions[0].Status != "attributed" {
			return fmt.Errorf("conversions %+v", v.Conversions)
		}
		lt := v.Conversions[0].Attributions["last_touch"]
		if len(lt) != 1 || lt[0].TouchID != "k1" || lt[0].CreditedValue != 42.5 {
			return fmt.Errorf("last_touch %+v", lt)
		}
		if len(v.Touchpoints) != 2 {
			return fmt.Errorf("touchpoints %+v", v.Touchpoints)
		}
		return nil
	}
	testenv.CheckFor(t, 60*time.Second, 200*time.Millisecond, attributed)
	if code, _ := getJSON(api+"/v1/users/nobody", nil); code != http.StatusNotFound {
		t.Fatalf("unknown user: %d, want 404", code)
	}

	// A graceful stop, then a start: the state is back at once.
	node.stop()
	node = startProc(t, "serve-2", args...)
	waitReady(t, api, node)
	testenv.CheckFor(t, 30*time.Second, 100*time.Millisecond, attributed)

	// A crash, then a start: still there, and no fact doubled.
	node.kill()
	node = startProc(t, "serve-3", args...)
	waitReady(t, api, node)
	testenv.CheckFor(t, 30*time.Second, 100*time.Millisecond, attributed)
	node.stop()

	for file, want := range map[string]int{"impressions.ndjson": 1, "clicks.ndjson": 1, "conversion_attributions.ndjson": 1} {
		data, err := os.ReadFile(filepath.Join(dataDir, "facts", file))
		if err != nil {
			t.Fatal(err)
		}
		if got := strings.Count(strings.TrimSpace(string(data)), "\n") + 1; got != want {
			t.Fatalf("%s has %d rows, want %d:\n%s", file, got, want, data)
		}
	}
}
