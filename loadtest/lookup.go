package loadtest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"
)

// LookupConfig configures Lookups.
type LookupConfig struct {
	// BaseURL is the engine's HTTP API, e.g. http://127.0.0.1:8080.
	BaseURL string
	// Users are looked up at random (with replacement). They should all
	// exist: a 404 counts as an error.
	Users []string
	// Requests is the number of lookups; Concurrency how many run at once.
	Requests    int
	Concurrency int
	// Seed draws the users.
	Seed uint64
}

// DefaultLookupConfig returns the defaults (BaseURL and Users unset).
func DefaultLookupConfig() LookupConfig {
	return LookupConfig{Requests: 1000, Concurrency: 8, Seed: 1}
}

// Validate reports the first problem with the configuration.
func (c *LookupConfig) Validate() error {
	switch {
	case c.BaseURL == "":
		return errors.New("lookups: no base URL")
	case len(c.Users) == 0:
		return errors.New("lookups: no users")
	case c.Requests < 1 || c.Concurrency < 1:
		return fmt.Errorf("lookups: requests %d and concurrency %d must be at least 1", c.Requests, c.Concurrency)
	}
	return nil
}

// LookupResult is the latency of user lookups, errors excluded.
type LookupResult struct {
	Requests, Errors   int
	P50, P95, P99, Max time.Duration
	Elapsed            time.Duration
	// FirstError describes one failed lookup.
	FirstError string
}

// Rate is the lookups per second.
func (r *LookupResult) Rate() float64 { return perSecond(r.Requests, r.Elapsed) }

// Lookups sends GET /v1/users/{id} for random users of cfg.Users and
// measures each until its body is read. Any answer but 200 is an error.
func Lookups(ctx context.Context, client *http.Client, cfg LookupConfig) (LookupResult, error) {
	if err := cfg.Validate(); err != nil {
		return LookupResult{}, err
	}
	base := strings.TrimRight(cfg.BaseURL, "/") + "/v1/users/"
	rng := rand.New(rand.NewPCG(cfg.Seed, 0x100c))
	jobs := make(chan string)
	go func() {
		defer close(jobs)
		for i := 0; i < cfg.Requests; i++ {
			select {
			case jobs <- cfg.Users[rng.IntN(len(cfg.Users))]:
			case <-ctx.Done():
				return
			}
		}
	}()
	var (
		mu        sync.Mutex
		latencies = make([]time.Duration, 0, cfg.Requests)
		res       LookupResult
		wg        sync.WaitGroup
	)
	start := time.Now()
	for w := 0; w < cfg.Concurrency; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for user := range jobs {
				t0 := time.Now()
				err := lookup(ctx, client, base+url.PathEscape(user))
				d := time.Since(t0)
				mu.Lock()
				res.Requests++
				if err != nil {
					res.Errors++
					if res.FirstError == "" {
						res.FirstError = fmt.Sprintf("user %s: %v", user, err)
					}
				} else {
					latencies = append(latencies, d)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	res.Elapsed = time.Since(start)
	if len(latencies) > 0 {
		slices.Sort(latencies)
		q := func(p float64) time.Duration { return latencies[min(len(latencies)-1, int(p*float64(len(latencies))))] }
		res.P50, res.P95, res.P99, res.Max = q(0.50), q(0.95), q(0.99), latencies[len(latencies)-1]
	}
	if err := ctx.Err(); err != nil {
		return res, fmt.Errorf("lookups: %w", err)
	}
	return res, nil
}

func lookup(ctx context.Context, client *http.Client, u string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(body[:min(len(body), 200)])))
	}
	return nil
}

// HTTPClient returns a client for n concurrent requests to one host (the
// default transport keeps only 2 idle connections per host, so more
// concurrency would measure connection setup), each bounded by timeout.
func HTTPClient(n int, timeout time.Duration) *http.Client {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConnsPerHost = max(n, 2)
	return &http.Client{Transport: t, Timeout: timeout}
}

// SeenUsers returns the users with at least one event in the stream (a
// lookup of a user never seen is a 404), in Users order.
func (s *Stream) SeenUsers() []string {
	seen := make(map[string]bool, len(s.Users))
	for i := range s.Events[:s.Distinct] {
		seen[s.Events[i].UserID] = true
	}
	out := make([]string, 0, len(seen))
	for _, u := range s.Users {
		if seen[u] {
			out = append(out, u)
		}
	}
	return out
}
