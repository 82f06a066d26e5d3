package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/lookback-dev/lookback/attribution"
	"github.com/lookback-dev/lookback/ingest"
	"github.com/lookback-dev/lookback/internal/testenv"
	"github.com/lookback-dev/lookback/loadtest"
	"github.com/lookback-dev/lookback/persist"
)

// envInt reads an integer knob of the long tests.
func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// testSeed is LOOKBACK_TEST_SEED, or a fresh one; tests print it so a
// failure can be replayed.
func testSeed(t testing.TB) uint64 {
	seed := uint64(time.Now().UnixNano())
	if v, err := strconv.ParseUint(os.Getenv("LOOKBACK_TEST_SEED"), 10, 64); err == nil {
		seed = v
	}
	t.Logf("seed %d (replay with LOOKBACK_TEST_SEED=%d)", seed, seed)
	return seed
}

// e2eEnv is what the process-level tests share: a broker process with a
// pre-filled, seeded stream, the oracle's answer, and fresh Redis and
// PostgreSQL namespaces.
type e2eEnv struct {
	t           testing.TB
	brokerAddr  string
	redisPrefix string
	dsn         string
	group       string
	stream      *loadtest.Stream
	want        *persist.Snapshot
	rules       attribution.Config
	models      string
	records     int
}

const allModelsFlag = "last_touch,first_touch,linear,time_decay,position_based"

// newE2EEnv starts a broker, pre-fills it with a seeded stream of events
// events, and computes the oracle's facts for models (comma-separated).
func newE2EEnv(t testing.TB, seed uint64, events int, models string) *e2eEnv {
	t.Helper()
	_, prefix := testenv.Redis(t)
	env := &e2eEnv{t: t, redisPrefix: prefix, dsn: testenv.PostgresSchema(t), group: testenv.Name("lookback-e2e-")}
	env.brokerAddr = fmt.Sprintf("127.0.0.1:%d", freePort(t))
	startProc(t, "broker", "broker", "--embedded-kafka-addr", env.brokerAddr, "--data-dir", t.TempDir())

	gen := loadtest.DefaultGenConfig()
	gen.Seed, gen.Events, gen.Users = seed, events, max(events/20, 10)
	env.stream = loadtest.Generate(gen)
	env.rules = attribution.DefaultConfig()
	var err error
	if env.rules.Models, err = attribution.ParseModels(models); err != nil {
		t.Fatal(err)
	}
	env.models = models
	env.want = loadtest.Expect(env.rules, env.stream.Events).Want()
	env.records = env.stream.Records()

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var n int32
	testenv.CheckFor(t, 30*time.Second, 100*time.Millisecond, func() error {
		var err error
		n, err = ingest.EnsureTopics(ctx, []string{env.brokerAddr}, ingest.DefaultTopics(), 12, 1)
		return err
	})
	var producer *ingest.Producer
	pcfg := ingest.DefaultProducerConfig()
	pcfg.Brokers = []string{env.brokerAddr}
	producer, err = ingest.NewProducer(pcfg, testenv.Logger())
	if err != nil {
		t.Fatal(err)
	}
	defer producer.Close()
	res, err := loadtest.Produce(ctx, producer, env.stream, loadtest.ProduceConfig{})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("produced %d records (%d distinct events, %d partitions) in %s", res.Records, env.stream.Distinct, n, res.Elapsed.Round(time.Millisecond))
	return env
}

// serveArgs runs a node on the env's broker, Redis and PostgreSQL.
//
// The rebalance timeout is short because a node killed while joining
// stays in kfake's group without a session until a rebalance deadline
// removes it; with the default minute, two such deadlines in a row
// outlast a test's wait.
func (env *e2eEnv) serveArgs(httpPort int, extra ...string) []string {
	return append([]string{"serve",
		"--kafka-brokers", env.brokerAddr,
		"--redis-addr", testenv.RedisAddr(), "--redis-key-prefix", env.redisPrefix,
		"--warehouse-dsn", env.dsn,
		"--http-addr", fmt.Sprintf("127.0.0.1:%d", httpPort),
		"--consumer-group", env.group, "--session-timeout", "6s", "--rebalance-timeout", "10s",
		"--node-id", "e2e-node",
		"--models", env.models,
		"--checkpoint-interval", "250ms",
	}, extra...)
}

// recordsRead scrapes a node's count of records read, or -1.
func recordsRead(api string) float64 {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	m, err := loadtest.Scrape(ctx, http.DefaultClient, api+"/metrics")
	if err != nil {
		return -1
	}
	return m.Sum("lookback_ingest_records_total")
}

// verify waits until the warehouse holds exactly the oracle's facts.
func (env *e2eEnv) verify(timeout time.Duration) {
	t := env.t
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	wh, err := loadtest.OpenWarehouse(ctx, loadtest.WarehouseConfig{DSN: env.dsn})
	if err != nil {
		t.Fatal(err)
	}
	defer wh.Close()
	wcfg := loadtest.DefaultWaitConfig()
	wcfg.Timeout = timeout
	v, err := loadtest.Wait(ctx, wh, env.want, nil, wcfg)
	if err != nil {
		t.Fatalf("waiting for the warehouse: %v", err)
	}
	if !v.Equal() {
		t.Fatalf("the warehouse differs from the oracle:\n%s", v.Diff)
	}
	got, want := v.Diff.Rows()
	t.Logf("warehouse equals the oracle: %d rows (want %d)", got, want)
}

// TestCrashRecovery feeds a seeded stream with duplicates and out-of-order
// records, kills `lookback serve` with SIGKILL at random moments (during
// start-up and at random points of its progress) at least five times,
// restarts it each time, and then finds the warehouse equal to the
// oracle's facts, row for row: nothing lost, nothing doubled.
func TestCrashRecovery(t *testing.T) {
	seed := testSeed(t)
	rng := rand.New(rand.NewPCG(seed, 99))
	env := newE2EEnv(t, seed, envInt("LOOKBACK_CRASH_EVENTS", 60_000), allModelsFlag)
	httpPort := freePort(t)
	api := fmt.Sprintf("http://127.0.0.1:%d", httpPort)

	kills := envInt("LOOKBACK_CRASH_KILLS", 6)
	for i := 0; i < kills; i++ {
		node := startProc(t, fmt.Sprintf("serve-%d", i), env.serveArgs(httpPort)...)
		start := time.Now()
		if i%3 == 0 {
			// During start-up: the group join (a node waits out its killed
			// predecessor's session first), or the claims and first
			// checkpoints when it joins at once.
			wait := time.Duration(rng.IntN(1500)) * time.Millisecond
			testenv.CheckFor(t, time.Minute, 20*time.Millisecond, func() error {
				if time.Since(start) < wait {
					return fmt.Errorf("waiting")
				}
				return nil
			})
		} else {
			// Mid-stream: once this run has read a random share, or
			// has read all it will (earlier runs may have checkpointed
			// most of the stream): nothing new for 2s since it was ready.
			target := float64(1 + rng.IntN(env.records/2))
			last, lastChange := -1.0, time.Time{}
			testenv.CheckFor(t, 2*time.Minute, 5*time.Millisecond, func() error {
				if node.exited() {
					t.Fatalf("%s exited by itself: %v\n%s", node.name, node.err, node.tail(30))
				}
				n := recordsRead(api)
				if n >= target {
					return nil
				}
				if lastChange.IsZero() {
					if !ready(api) {
						return fmt.Errorf("%s is not ready", node.name)
					}
					lastChange = time.Now()
				}
				if n != last {
					last, lastChange = n, time.Now()
				}
				if time.Since(lastChange) < 2*time.Second {
					return fmt.Errorf("%v of %v records read", n, target)
				}
				return nil
			})
		}
		read := recordsRead(api)
		node.kill()
		t.Logf("kill %d: SIGKILL %s after start, %v records read in that run", i+1, time.Since(start).Round(time.Millisecond), read)
	}

	node := startProc(t, "serve-final", env.serveArgs(httpPort)...)
	waitReady(t, api, node)
	env.verify(3 * time.Minute)
	node.stop()
}
