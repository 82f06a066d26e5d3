package main

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"testing"
	"time"

	"github.com/lookback-dev/lookback/internal/faultproxy"
	"github.com/lookback-dev/lookback/internal/testenv"
	"github.com/lookback-dev/lookback/loadtest"
)

// outageDuration is how long a dependency stays away
// (LOOKBACK_OUTAGE, default 30s).
func outageDuration() time.Duration {
	if d, err := time.ParseDuration(os.Getenv("LOOKBACK_OUTAGE")); err == nil && d > 0 {
		return d
	}
	return 30 * time.Second
}

func scrape(t testing.TB, api string) loadtest.Metrics {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	m, err := loadtest.Scrape(ctx, http.DefaultClient, api+"/metrics")
	if err != nil {
		t.Fatalf("scraping %s: %v", api, err)
	}
	return m
}

// TestOutages takes PostgreSQL, then Redis, away for 30 s each while a
// node works through a backlog, through a proxy the test controls. During
// each outage the node must pause fetching (backpressure, shown by
// lookback_backpressure_active and a stalled read count) and count the
// failures; afterwards it must resume, and the warehouse must hold exactly
// the oracle's facts: nothing lost, nothing doubled.
func TestOutages(t *testing.T) {
	for _, dep := range []string{"warehouse", "store"} {
		t.Run(dep, func(t *testing.T) {
			seed := testSeed(t)
			// A backlog that outlasts the detection of the outage by far,
			// even on a loaded machine: the pause must be observable.
			env := newE2EEnv(t, seed, envInt("LOOKBACK_OUTAGE_EVENTS", 1_000_000), "last_touch")

			pgProxy, err := faultproxy.Start("127.0.0.1:5432")
			if err != nil {
				t.Fatal(err)
			}
			defer pgProxy.Close()
			redisProxy, err := faultproxy.Start(testenv.RedisAddr())
			if err != nil {
				t.Fatal(err)
			}
			defer redisProxy.Close()
			proxied, err := url.Parse(env.dsn)
			if err != nil {
				t.Fatal(err)
			}
			proxied.Host = pgProxy.Addr()

			httpPort := freePort(t)
			api := fmt.Sprintf("http://127.0.0.1:%d", httpPort)
			args := env.serveArgs(httpPort, "--warehouse-dsn", proxied.String(), "--redis-addr", redisProxy.Addr())
			node := startProc(t, "serve", args...)
			waitReady(t, api, node)

			// Under load: the node is working through the backlog.
			testenv.CheckFor(t, time.Minute, 10*time.Millisecond, func() error {
				if n := scrape(t, api).Sum("lookback_ingest_records_total"); n < float64(env.records)/20 {
					return fmt.Errorf("%v records read", n)
				}
				return nil
			})
			// Users a lookup has found in memory must stay answerable.
			inMemory := checkLookups(t, api, earlyUsers(env.stream, 20), false)

			proxy := pgProxy
			if dep == "store" {
				proxy = redisProxy
			}
			proxy.Down()
			downAt := time.Now()
			t.Logf("%s down after %v records read", dep, scrape(t, api).Sum("lookback_ingest_records_total"))

			// Backpressure: the failure is counted, the gauge is up, and
			// reading stops (what was in flight aside) and stays stopped.
			testenv.CheckFor(t, 20*time.Second, 50*time.Millisecond, func() error {
				m := scrape(t, api)
				if m.Sum("lookback_backpressure_active") != 1 {
					return fmt.Errorf("backpressure not active")
				}
				if m.Sum("lookback_dependency_errors_total") == 0 {
					return fmt.Errorf("no dependency error counted")
				}
				if m.Sum("lookback_consumer_paused_inputs") == 0 {
					return fmt.Errorf("no input paused")
				}
				return nil
			})
			paused := scrape(t, api).Sum("lookback_ingest_records_total")
			t.Logf("backpressure on: %v of %d records read, %v inputs paused", paused, env.records, scrape(t, api).Sum("lookback_consumer_paused_inputs"))
			testenv.CheckFor(t, outageDuration(), time.Second, func() error {
				if n := scrape(t, api).Sum("lookback_ingest_records_total"); n > paused+float64(env.records)/20 {
					t.Fatalf("reading went on under backpressure: %v records, %v when paused", n, paused)
				}
				if time.Since(downAt) < outageDuration()-time.Second {
					return fmt.Errorf("still down")
				}
				return nil
			})
			if n := scrape(t, api).Sum("lookback_ingest_records_total"); n >= float64(env.records) {
				t.Fatalf("every record was read during the outage (%v): it did not test backpressure", n)
			}
			// Lookups keep working for users in memory.
			checkLookups(t, api, inMemory, true)

			proxy.Up()
			t.Logf("%s back after %s", dep, time.Since(downAt).Round(time.Millisecond))
			testenv.CheckFor(t, time.Minute, 100*time.Millisecond, func() error {
				if scrape(t, api).Sum("lookback_backpressure_active") != 0 {
					return fmt.Errorf("backpressure still active")
				}
				return nil
			})
			t.Logf("backpressure released; %v inputs paused", scrape(t, api).Sum("lookback_consumer_paused_inputs"))
			env.verify(3 * time.Minute)
			if n := scrape(t, api).Sum("lookback_ingest_records_total"); n < float64(env.records) {
				t.Fatalf("%v of %d records read", n, env.records)
			}
			node.stop()
		})
	}
}

// checkLookups GETs users and returns those that answered 200. Every
// answer must be 200, or, unless all must be 200, 404 (a user whose
// records are all still buffered, with no state yet). Some must be 200.
func checkLookups(t testing.TB, api string, users []string, all bool) []string {
	t.Helper()
	client := &http.Client{Timeout: 10 * time.Second}
	var found []string
	for _, u := range users {
		resp, err := client.Get(api + "/v1/users/" + url.PathEscape(u))
		if err != nil {
			t.Fatalf("lookup of %s: %v", u, err)
		}
		resp.Body.Close()
		switch {
		case resp.StatusCode == http.StatusOK:
			found = append(found, u)
		case resp.StatusCode == http.StatusNotFound && !all:
		default:
			t.Fatalf("lookup of %s: %s", u, resp.Status)
		}
	}
	if len(found) == 0 {
		t.Fatalf("no lookup of %d users answered 200", len(users))
	}
	return found
}

// earlyUsers returns n users whose records came in the first few percent
// of the stream: they were in memory before the outage.
func earlyUsers(s *loadtest.Stream, n int) []string {
	seen := map[string]bool{}
	var out []string
	for _, i := range s.Order[:len(s.Order)/50] {
		if u := s.Events[i].UserID; !seen[u] {
			seen[u] = true
			out = append(out, u)
			if len(out) == n {
				break
			}
		}
	}
	return out
}
