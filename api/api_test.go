package api_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/lookback-dev/lookback/actors"
	"github.com/lookback-dev/lookback/api"
	"github.com/lookback-dev/lookback/attribution"
	"github.com/lookback-dev/lookback/ingest"
	"github.com/lookback-dev/lookback/internal/testenv"
)

// fakeEngine answers lookups from a map.
type fakeEngine struct {
	mu       sync.Mutex
	views    map[string]*actors.UserView
	notOwned map[string]bool
	fail     error // for every other user, when set
	owned    []int32
	ready    bool
	lookups  []string
}

func (e *fakeEngine) Lookup(_ context.Context, user string) (*actors.UserView, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.lookups = append(e.lookups, user)
	if v, ok := e.views[user]; ok {
		return v, nil
	}
	if e.notOwned[user] {
		return nil, fmt.Errorf("lookup of %s: %w", user, actors.ErrNotOwned)
	}
	if e.fail != nil {
		return nil, e.fail
	}
	return nil, fmt.Errorf("lookup of %s: %w", user, actors.ErrUserNotFound)
}

func (e *fakeEngine) Owned() []int32 {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.owned)
}

func (e *fakeEngine) Ready() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.ready
}

// fakeProducer records what it is given; events whose id is in fail (or
// all, with failAll) are not acknowledged.
type fakeProducer struct {
	mu      sync.Mutex
	calls   [][]attribution.Event
	fail    map[string]bool
	failAll bool
}

var errKafka = errors.New("kafka: NOT_ENOUGH_REPLICAS")

func (p *fakeProducer) Produce(_ context.Context, events []attribution.Event) []error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.calls = append(p.calls, slices.Clone(events))
	errs := make([]error, len(events))
	for i, ev := range events {
		if p.failAll || p.fail[ev.ID] {
			errs[i] = errKafka
		}
	}
	return errs
}

// produced is every event given to the producer, in order.
func (p *fakeProducer) produced() []attribution.Event {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []attribution.Event
	for _, c := range p.calls {
		out = append(out, c...)
	}
	return out
}

// fakeDLQ records dead letters, and can fail.
type fakeDLQ struct {
	mu      sync.Mutex
	letters []ingest.DeadLetter
	err     error
}

func (d *fakeDLQ) Send(_ context.Context, letters []ingest.DeadLetter) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.letters = append(d.letters, letters...)
	return d.err
}

func (d *fakeDLQ) all() []ingest.DeadLetter {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.letters)
}

type testAPI struct {
	t      *testing.T
	srv    *httptest.Server
	engine *fakeEngine
	prod   *fakeProducer
	dlq    *fakeDLQ
	reg    *prometheus.Registry
}

func newTestAPI(t *testing.T, mod func(*api.Config), admin bool) *testAPI {
	t.Helper()
	cfg := api.DefaultConfig()
	cfg.Partitions, cfg.NodeID = 12, "node-a"
	if mod != nil {
		mod(&cfg)
	}
	a := &testAPI{
		t:      t,
		engine: &fakeEngine{views: map[string]*actors.UserView{}, notOwned: map[string]bool{}, owned: []int32{1, 4, 7}, ready: true},
		prod:   &fakeProducer{fail: map[string]bool{}},
		dlq:    &fakeDLQ{},
		reg:    prometheus.NewRegistry(),
	}
	s, err := api.New(cfg, a.engine, a.prod, a.dlq, testenv.Logger(), a.reg, a.reg)
	if err != nil {
		t.Fatal(err)
	}
	a.srv = httptest.NewServer(s.Handler(admin))
	t.Cleanup(a.srv.Close)
	return a
}

// do sends a request and returns the status, the body and the
// Content-Type.
func (a *testAPI) do(method, path, body string) (int, []byte, string) {
	a.t.Helper()
	req, err := http.NewRequest(method, a.srv.URL+path, strings.NewReader(body))
	if err != nil {
		a.t.Fatal(err)
	}
	resp, err := a.srv.Client().Do(req)
	if err != nil {
		a.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		a.t.Fatal(err)
	}
	return resp.StatusCode, b, resp.Header.Get("Content-Type")
}

// jsonError checks that a response is a JSON error with the given status
// and returns its message.
func (a *testAPI) jsonError(method, path, body string, status int) string {
	a.t.Helper()
	code, b, ctype := a.do(method, path, body)
	if code != status {
		a.t.Errorf("%s %s: status %d (%s), want %d", method, path, code, trunc(b), status)
	}
	if ctype != "application/json" {
		a.t.Errorf("%s %s: Content-Type %q, want application/json", method, path, ctype)
	}
	var e map[string]any
	if err := json.Unmarshal(b, &e); err != nil {
		a.t.Errorf("%s %s: body %q is not JSON: %v", method, path, trunc(b), err)
		return ""
	}
	msg, ok := e["error"].(string)
	if !ok || msg == "" || len(e) != 1 {
		a.t.Errorf(`%s %s: body %s, want {"error":"..."}`, method, path, b)
	}
	return msg
}

type eventsAnswer struct {
	Accepted int `json:"accepted"`
	Rejected []struct {
		Index int    `json:"index"`
		Error string `json:"error"`
	} `json:"rejected"`
}

// post posts events and decodes a 202 answer.
func (a *testAPI) post(body string) eventsAnswer {
	a.t.Helper()
	code, b, ctype := a.do("POST", "/v1/events", body)
	if code != http.StatusAccepted || ctype != "application/json" {
		a.t.Fatalf("POST /v1/events: %d %s %s, want 202 JSON", code, ctype, b)
	}
	var ans eventsAnswer
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&ans); err != nil {
		a.t.Fatalf("answer %s: %v", b, err)
	}
	if !bytes.Contains(b, []byte(`"rejected":[`)) {
		a.t.Errorf(`answer %s: "rejected" must be an array, even empty`, b)
	}
	return ans
}

func trunc(b []byte) string {
	if len(b) > 200 {
		return string(b[:200]) + "..."
	}
	return string(b)
}

var (
	past   = time.Now().Add(-time.Hour).UTC().Truncate(time.Millisecond)
	pastTS = past.Format(time.RFC3339Nano)
	pastMS = past.UnixMilli()
)

// The elements of the bodies below.
var (
	elemImpression = `{"type":"impression","impression_id":"i-1","user_id":"u-1","timestamp":"` + pastTS + `","ad_creative_id":"cr-1","campaign_id":"camp-1","website":"news.example.com","auction_id":"a-1"}`
	elemNoUser     = `{"type":"click","click_id":"k-1","timestamp":"` + pastTS + `"}`
	elemBid        = `{"type":"bid","user_info":{"user_id":"u-2","country":"US","device_type":null,"segments":["s1"]},` +
		`"auction_details":{"auction_id":"a-2","floor_price":0.5,"bid_price":1.75,"currency":"usd","exchange":"adx"},` +
		`"ad_targeting":{"targeting_criteria":["sports","geo:US"],"ad_creative_id":"cr-2","campaign_id":"camp-2","website":"w.example"},"timestamp":"` + pastTS + `"}`
	elemConversion = `{"type":"conversion","conversion_id":"v-1","user_id":"u-1","timestamp":"` + pastTS + `","conversion_type":"purchase","value":100,"currency":"EUR"}`
	elemBadType    = `{"type":"purchase","user_id":"u-1","timestamp":"` + pastTS + `"}`
	elemFuture     = `{"type":"click","click_id":"k-9","user_id":"u-3","timestamp":"` + time.Now().Add(time.Hour).UTC().Format(time.RFC3339) + `"}`
	elemClick      = `{"type":"click","click_id":"k-2","user_id":"u-3","timestamp":"` + pastTS + `","ad_creative_id":"cr-1","campaign_id":"camp-1","impression_id":"i-1"}`
)

// The events of the valid elements.
var (
	evImpression = attribution.Event{Type: attribution.TypeImpression, UserID: "u-1", ID: "i-1", Time: pastMS,
		CreativeID: "cr-1", CampaignID: "camp-1", Website: "news.example.com", AuctionID: "a-1"}
	evBid = attribution.Event{Type: attribution.TypeBid, UserID: "u-2", ID: "a-2", Time: pastMS,
		CreativeID: "cr-2", CampaignID: "camp-2", Website: "w.example",
		Bid: &attribution.Bid{FloorPrice: 0.5, BidPrice: 1.75, Currency: "USD", Exchange: "adx", Criteria: []string{"sports", "geo:US"}}}
	evConversion = attribution.Event{Type: attribution.TypeConversion, UserID: "u-1", ID: "v-1", Time: pastMS,
		ConversionType: "purchase", Value: 100, Currency: "EUR"}
	evClick = attribution.Event{Type: attribution.TypeClick, UserID: "u-3", ID: "k-2", Time: pastMS,
		CreativeID: "cr-1", CampaignID: "camp-1", ImpressionID: "i-1"}
)

// mixed is a body's elements: valid and invalid ones.
var mixed = []string{elemImpression, elemNoUser, elemBid, elemConversion, elemBadType, elemFuture, elemClick}

// mixedRejects are the indexes of mixed's invalid elements and what their
// errors mention.
var mixedRejects = map[int]string{1: "user_id", 4: "type", futureIndex: "ahead of the clock"}

// futureIndex is the index of mixed's element too far in the future.
const futureIndex = 5

// TestPostEventsFutureDeadLetterBytes: an event rejected for being too far
// in the future is dead-lettered with its original bytes, as every other
// rejected record is (interfaces.md: "the original bytes").
func TestPostEventsFutureDeadLetterBytes(t *testing.T) {
	a := newTestAPI(t, nil, true)
	body := "[" + elemImpression + ",\n " + elemFuture + "]"
	if ans := a.post(body); ans.Accepted != 1 || len(ans.Rejected) != 1 || ans.Rejected[0].Index != 1 {
		t.Fatalf("answer %+v, want element 1 rejected", ans)
	}
	l := a.dlq.all()
	if len(l) != 1 {
		t.Fatalf("%d dead letters, want 1", len(l))
	}
	if string(l[0].Value) != elemFuture {
		t.Errorf("dead letter value %q, want the element's bytes %q", l[0].Value, elemFuture)
	}
}

func checkMixed(t *testing.T, a *testAPI, ans eventsAnswer, elems []string) {
	t.Helper()
	if ans.Accepted != 4 {
		t.Errorf("accepted %d, want 4", ans.Accepted)
	}
	var idx []int
	for _, r := range ans.Rejected {
		idx = append(idx, r.Index)
		if want, ok := mixedRejects[r.Index]; !ok || !strings.Contains(r.Error, want) {
			t.Errorf("rejected element %d: %q, want it to mention %q", r.Index, r.Error, want)
		}
	}
	if !slices.Equal(idx, []int{1, 4, 5}) {
		t.Errorf("rejected indexes %v, want [1 4 5] in order", idx)
	}
	// Only the valid events reach the producer, in order.
	if got, want := a.prod.produced(), []attribution.Event{evImpression, evBid, evConversion, evClick}; !reflect.DeepEqual(got, want) {
		t.Errorf("produced\n%+v\nwant\n%+v", got, want)
	}
	// The rejected ones go to the dead letters, each with its own bytes.
	letters := a.dlq.all()
	if len(letters) != len(mixedRejects) {
		t.Fatalf("%d dead letters, want %d", len(letters), len(mixedRejects))
	}
	for _, l := range letters {
		var i int
		if _, err := fmt.Sscanf(l.Source, "http POST /v1/events element %d", &i); err != nil {
			t.Errorf("dead letter source %q", l.Source)
			continue
		}
		if want, ok := mixedRejects[i]; !ok || l.Err == nil || !strings.Contains(l.Err.Error(), want) {
			t.Errorf("dead letter of element %d: %v, want it to mention %q", i, l.Err, want)
		}
		if i == futureIndex {
			// See TestPostEventsFutureDeadLetterBytes: the value is a
			// re-encoding of the event, not its bytes; it must at least
			// be the same event.
			got, _, err := ingest.DecodeEventsJSON(l.Value, nil)
			want, _, _ := ingest.DecodeEventsJSON([]byte(elems[i]), nil)
			if err != nil || !reflect.DeepEqual(got, want) {
				t.Errorf("dead letter of the future element %d: value %q is not the event %q", i, l.Value, elems[i])
			}
			continue
		}
		if string(l.Value) != elems[i] {
			t.Errorf("dead letter of element %d: value %q, want %q", i, l.Value, elems[i])
		}
		if l.Offset != -1 || l.Topic != "" || l.File != "" {
			t.Errorf("dead letter of element %d: topic %q offset %d file %q, want an HTTP source only", i, l.Topic, l.Offset, l.File)
		}
	}
}

func TestPostEventsArray(t *testing.T) {
	a := newTestAPI(t, nil, true)
	body := "[\n  " + strings.Join(mixed, ",\n  ") + "\n]"
	checkMixed(t, a, a.post(body), mixed)
	if n := counter(t, a.reg, "lookback_http_events_total", "outcome", "accepted"); n != 4 {
		t.Errorf("lookback_http_events_total{outcome=accepted} = %v, want 4", n)
	}
	if n := counter(t, a.reg, "lookback_http_events_total", "outcome", "rejected"); n != 3 {
		t.Errorf("lookback_http_events_total{outcome=rejected} = %v, want 3", n)
	}
}

func TestPostEventsNDJSON(t *testing.T) {
	a := newTestAPI(t, nil, true)
	// A blank line does not count; CRLF line ends are fine.
	body := strings.Join(mixed[:3], "\n") + "\n\n" + strings.Join(mixed[3:], "\r\n") + "\n"
	checkMixed(t, a, a.post(body), mixed)
}

// TestPostEventsNDJSONSyntaxError: in NDJSON a line that is not JSON is
// rejected by its index, and the lines after it still go through.
func TestPostEventsNDJSONSyntaxError(t *testing.T) {
	a := newTestAPI(t, nil, true)
	elems := []string{elemImpression, `{"type":"click", oops}`, elemClick}
	ans := a.post(strings.Join(elems, "\n"))
	if ans.Accepted != 2 || len(ans.Rejected) != 1 || ans.Rejected[0].Index != 1 {
		t.Errorf("answer %+v, want 2 accepted and element 1 rejected", ans)
	}
	if got := a.prod.produced(); !reflect.DeepEqual(got, []attribution.Event{evImpression, evClick}) {
		t.Errorf("produced %+v", got)
	}
	if l := a.dlq.all(); len(l) != 1 || string(l[0].Value) != elems[1] {
		t.Errorf("dead letters %+v, want the bad line", l)
	}
}

// TestPostEventsNDJSONObjectsSharingALine: NDJSON objects need not be one a
// line (DecodeEventsJSON takes objects one after another); each rejected
// one must still be dead-lettered with its own bytes.
func TestPostEventsNDJSONObjectsSharingALine(t *testing.T) {
	a := newTestAPI(t, nil, true)
	body := elemImpression + " " + elemBadType + "\n" + elemNoUser + "\n"
	ans := a.post(body)
	if ans.Accepted != 1 || len(ans.Rejected) != 2 || ans.Rejected[0].Index != 1 || ans.Rejected[1].Index != 2 {
		t.Fatalf("answer %+v, want element 0 accepted, 1 and 2 rejected", ans)
	}
	want := map[string]string{"http POST /v1/events element 1": elemBadType, "http POST /v1/events element 2": elemNoUser}
	for _, l := range a.dlq.all() {
		if string(l.Value) != want[l.Source] {
			t.Errorf("%s dead-lettered with %q, want %q", l.Source, l.Value, want[l.Source])
		}
	}
}

func TestPostEventsAllValid(t *testing.T) {
	a := newTestAPI(t, nil, true)
	ans := a.post("[" + elemImpression + "," + elemClick + "]")
	if ans.Accepted != 2 || len(ans.Rejected) != 0 {
		t.Errorf("answer %+v, want 2 accepted, none rejected", ans)
	}
	if l := a.dlq.all(); len(l) != 0 {
		t.Errorf("dead letters %+v for a body without rejects", l)
	}
}

// TestPostEventsNotJSON: 400 with a JSON error, nothing produced or
// dead-lettered.
func TestPostEventsNotJSON(t *testing.T) {
	a := newTestAPI(t, nil, true)
	for _, body := range []string{"", "   \n", "hello", "42", `"events"`, "[" + elemImpression + ",", `[{"type":"click"`, "<events/>"} {
		a.jsonError("POST", "/v1/events", body, http.StatusBadRequest)
	}
	if p := a.prod.produced(); len(p) != 0 {
		t.Errorf("produced %+v from bodies that are not JSON", p)
	}
	if l := a.dlq.all(); len(l) != 0 {
		t.Errorf("dead letters %+v from bodies that are not JSON", l)
	}
}

// TestPostEventsTooLarge: 413 over MaxBodyBytes, accepted at it.
func TestPostEventsTooLarge(t *testing.T) {
	a := newTestAPI(t, func(c *api.Config) { c.MaxBodyBytes = 2048 }, true)
	elem := elemClick
	var b strings.Builder
	b.WriteString("[")
	for b.Len()+len(elem)+2 <= 2048 {
		if b.Len() > 1 {
			b.WriteString(",")
		}
		b.WriteString(elem)
	}
	b.WriteString("]")
	for b.Len() < 2048 {
		body := b.String()
		b.Reset()
		b.WriteString(body[:len(body)-1] + " ]")
	}
	fits := b.String()
	if len(fits) != 2048 {
		t.Fatalf("body of %d bytes, want 2048", len(fits))
	}
	if ans := a.post(fits); ans.Accepted == 0 {
		t.Errorf("a body of exactly MaxBodyBytes: %+v", ans)
	}
	n := len(a.prod.produced())
	msg := a.jsonError("POST", "/v1/events", fits[:len(fits)-1]+" ]", http.StatusRequestEntityTooLarge)
	if !strings.Contains(msg, "2048") {
		t.Errorf("413 error %q, want it to name the limit", msg)
	}
	a.jsonError("POST", "/v1/events", strings.Repeat(" ", 1<<20)+"[]", http.StatusRequestEntityTooLarge)
	if len(a.prod.produced()) != n {
		t.Errorf("events of an oversized body were produced")
	}
}

// TestPostEventsKafkaFails: nothing acknowledged is a 503; some
// acknowledged is a 202 that rejects the others by index, as retryable.
func TestPostEventsKafkaFails(t *testing.T) {
	t.Run("all", func(t *testing.T) {
		a := newTestAPI(t, nil, true)
		a.prod.failAll = true
		msg := a.jsonError("POST", "/v1/events", "["+strings.Join(mixed, ",")+"]", http.StatusServiceUnavailable)
		if !strings.Contains(msg, "Kafka") {
			t.Errorf("503 error %q, want it to say Kafka did not acknowledge", msg)
		}
		// The invalid elements are dead-lettered all the same.
		if l := a.dlq.all(); len(l) != len(mixedRejects) {
			t.Errorf("%d dead letters, want %d", len(l), len(mixedRejects))
		}
	})
	t.Run("some", func(t *testing.T) {
		a := newTestAPI(t, nil, true)
		a.prod.fail["a-2"] = true // the bid, element 2
		a.prod.fail["k-2"] = true // the click, element 6
		ans := a.post("[" + strings.Join(mixed, ",") + "]")
		if ans.Accepted != 2 {
			t.Errorf("accepted %d, want 2", ans.Accepted)
		}
		got := map[int]string{}
		var idx []int
		for _, r := range ans.Rejected {
			got[r.Index] = r.Error
			idx = append(idx, r.Index)
		}
		if !slices.Equal(idx, []int{1, 2, 4, 5, 6}) {
			t.Errorf("rejected %v, want [1 2 4 5 6] in order", idx)
		}
		for _, i := range []int{2, 6} {
			if !strings.Contains(got[i], "Kafka") || !strings.Contains(got[i], "retry") {
				t.Errorf("element %d: %q, want a retryable Kafka error", i, got[i])
			}
		}
		// Not acknowledged is not invalid: those are not dead letters.
		if l := a.dlq.all(); len(l) != len(mixedRejects) {
			t.Errorf("%d dead letters, want only the %d invalid elements", len(l), len(mixedRejects))
		}
	})
	t.Run("dead letters fail", func(t *testing.T) {
		a := newTestAPI(t, nil, true)
		a.dlq.err = errors.New("dead-letter topic unavailable")
		checkMixed(t, a, a.post("["+strings.Join(mixed, ",")+"]"), mixed)
	})
}

func userView() *actors.UserView {
	return &actors.UserView{
		UserID: "u1",
		Touchpoints: []actors.TouchView{
			{Type: "click", ID: "k1", Timestamp: "2026-11-28T10:00:00.000Z", CreativeID: "c1", CampaignID: "p1"},
		},
		Conversions: []actors.ConversionView{
			{ConversionID: "v1", Timestamp: "2026-11-28T11:00:00.000Z", ConversionType: "purchase", Value: 100, Currency: "USD",
				Status: "attributed", Attributions: map[string][]actors.CreditView{
					"last_touch": {{TouchType: "click", TouchID: "k1", Credit: 1, CreditedValue: 100}},
				}},
			{ConversionID: "v2", Timestamp: "2026-11-28T12:00:00.000Z", ConversionType: "signup", Status: "pending",
				Attributions: map[string][]actors.CreditView{}},
		},
	}
}

func TestGetUser(t *testing.T) {
	a := newTestAPI(t, nil, true)
	a.engine.views["u1"] = userView()
	a.engine.views["a/b c"] = &actors.UserView{UserID: "a/b c", Touchpoints: []actors.TouchView{}, Conversions: []actors.ConversionView{}}
	a.engine.notOwned["u-elsewhere"] = true

	code, b, ctype := a.do("GET", "/v1/users/u1", "")
	if code != 200 || ctype != "application/json" {
		t.Fatalf("GET /v1/users/u1: %d %s %s", code, ctype, b)
	}
	// The fixed fields of the spec's example.
	var got map[string]any
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	conv := got["conversions"].([]any)[0].(map[string]any)
	touch := got["touchpoints"].([]any)[0].(map[string]any)
	credit := conv["attributions"].(map[string]any)["last_touch"].([]any)[0].(map[string]any)
	for _, c := range []struct {
		what string
		got  any
		want any
	}{
		{"user_id", got["user_id"], "u1"},
		{"touch type", touch["type"], "click"}, {"touch id", touch["id"], "k1"}, {"touch timestamp", touch["timestamp"], "2026-11-28T10:00:00.000Z"},
		{"touch creative", touch["ad_creative_id"], "c1"}, {"touch campaign", touch["campaign_id"], "p1"},
		{"conversion_id", conv["conversion_id"], "v1"}, {"conversion_type", conv["conversion_type"], "purchase"},
		{"value", conv["value"], 100.0}, {"currency", conv["currency"], "USD"}, {"status", conv["status"], "attributed"},
		{"touch_type", credit["touch_type"], "click"}, {"touch_id", credit["touch_id"], "k1"},
		{"credit", credit["credit"], 1.0}, {"credited_value", credit["credited_value"], 100.0},
	} {
		if c.got != c.want {
			t.Errorf("%s: %v, want %v (%s)", c.what, c.got, c.want, b)
		}
	}

	// An id with a slash and a space, escaped in the path.
	code, b, _ = a.do("GET", "/v1/users/"+url.PathEscape("a/b c"), "")
	if code != 200 || !strings.Contains(string(b), `"user_id":"a/b c"`) {
		t.Errorf("GET of an escaped user id: %d %s", code, b)
	}

	if msg := a.jsonError("GET", "/v1/users/nobody", "", http.StatusNotFound); !strings.Contains(msg, "nobody") {
		t.Errorf("404 error %q, want it to name the user", msg)
	}
	if msg := a.jsonError("GET", "/v1/users/u-elsewhere", "", http.StatusServiceUnavailable); !strings.Contains(msg, "retry") || !strings.Contains(msg, "not owned") {
		t.Errorf("503 error %q for a partition not owned, want it to say so and to retry", msg)
	}
	a.jsonError("GET", "/v1/users/"+strings.Repeat("x", attribution.MaxFieldLen+1), "", http.StatusBadRequest)
	a.engine.fail = errors.New("actor timed out")
	a.jsonError("GET", "/v1/users/someone", "", http.StatusServiceUnavailable)

	a.engine.mu.Lock()
	lookups := slices.Clone(a.engine.lookups)
	a.engine.mu.Unlock()
	if want := []string{"u1", "a/b c", "nobody", "u-elsewhere", "someone"}; !slices.Equal(lookups, want) {
		t.Errorf("engine looked up %q, want %q", lookups, want)
	}
}

func TestGetConversion(t *testing.T) {
	a := newTestAPI(t, nil, true)
	a.engine.views["u1"] = userView()
	code, b, ctype := a.do("GET", "/v1/users/u1/conversions/v2", "")
	if code != 200 || ctype != "application/json" {
		t.Fatalf("GET a conversion: %d %s %s", code, ctype, b)
	}
	var got actors.ConversionView
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	if want := userView().Conversions[1]; !reflect.DeepEqual(got, want) {
		t.Errorf("conversion %+v, want %+v", got, want)
	}
	if !strings.Contains(string(b), `"attributions":{}`) {
		t.Errorf("a pending conversion's attributions must be an empty object: %s", b)
	}
	if msg := a.jsonError("GET", "/v1/users/u1/conversions/v9", "", http.StatusNotFound); !strings.Contains(msg, "v9") {
		t.Errorf("404 error %q, want it to name the conversion", msg)
	}
	a.jsonError("GET", "/v1/users/nobody/conversions/v1", "", http.StatusNotFound)
}

func TestCluster(t *testing.T) {
	a := newTestAPI(t, nil, true)
	code, b, _ := a.do("GET", "/v1/cluster", "")
	if code != 200 {
		t.Fatalf("GET /v1/cluster: %d %s", code, b)
	}
	var got struct {
		Members []struct {
			NodeID     string  `json:"node_id"`
			Self       bool    `json:"self"`
			Partitions []int32 `json:"partitions"`
		} `json:"members"`
		Partitions map[string]string `json:"partitions"`
	}
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	if len(got.Members) != 1 || got.Members[0].NodeID != "node-a" || !got.Members[0].Self || !slices.Equal(got.Members[0].Partitions, []int32{1, 4, 7}) {
		t.Errorf("members %+v", got.Members)
	}
	if !reflect.DeepEqual(got.Partitions, map[string]string{"1": "node-a", "4": "node-a", "7": "node-a"}) {
		t.Errorf("partitions %v", got.Partitions)
	}
}

func TestHealthAndMetrics(t *testing.T) {
	a := newTestAPI(t, nil, true)
	for _, path := range []string{"/livez", "/healthz"} {
		code, b, ctype := a.do("GET", path, "")
		if code != 200 || ctype != "application/json" || !strings.Contains(string(b), "alive") {
			t.Errorf("GET %s: %d %s %s", path, code, ctype, b)
		}
	}
	code, b, _ := a.do("GET", "/readyz", "")
	if code != 200 || !strings.Contains(string(b), `"partitions":[1,4,7]`) {
		t.Errorf("GET /readyz when ready: %d %s", code, b)
	}
	a.engine.mu.Lock()
	a.engine.ready = false
	a.engine.mu.Unlock()
	if code, b, _ := a.do("GET", "/readyz", ""); code != http.StatusServiceUnavailable {
		t.Errorf("GET /readyz when not ready: %d %s", code, b)
	}

	a.post("[" + elemImpression + "]")
	a.do("GET", "/v1/users/nobody", "")
	code, b, ctype := a.do("GET", "/metrics", "")
	if code != 200 || !strings.HasPrefix(ctype, "text/plain") {
		t.Fatalf("GET /metrics: %d %s", code, ctype)
	}
	for _, want := range []string{
		`lookback_http_requests_total{code="202",route="events"} 1`,
		`lookback_http_requests_total{code="404",route="user"} 1`,
		`lookback_http_events_total{outcome="accepted"} 1`,
		`lookback_http_request_duration_seconds_count{route="events"} 1`,
	} {
		if !strings.Contains(string(b), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}

	// Without admin routes, health and metrics are not on the API's
	// handler; the admin handler has them.
	b2 := newTestAPI(t, nil, false)
	b2.jsonError("GET", "/livez", "", http.StatusNotFound)
	b2.jsonError("GET", "/metrics", "", http.StatusNotFound)
	s, err := api.New(func() api.Config { c := api.DefaultConfig(); c.Partitions = 1; return c }(), a.engine, a.prod, nil, testenv.Logger(), prometheus.NewRegistry(), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	admin := httptest.NewServer(s.AdminHandler())
	defer admin.Close()
	for _, path := range []string{"/livez", "/healthz", "/metrics"} {
		resp, err := admin.Client().Get(admin.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Errorf("admin GET %s: %d", path, resp.StatusCode)
		}
	}
}

func TestUnknownPath(t *testing.T) {
	a := newTestAPI(t, nil, true)
	msg := a.jsonError("GET", "/v2/nothing", "", http.StatusNotFound)
	if !strings.Contains(msg, "/v2/nothing") {
		t.Errorf("404 error %q, want it to name the path", msg)
	}
	a.jsonError("GET", "/v1/users/", "", http.StatusNotFound)
	// A known path with the wrong method is still answered in JSON (404
	// today; 405 would fit better).
	code, b, ctype := a.do("GET", "/v1/events", "")
	if (code != http.StatusNotFound && code != http.StatusMethodNotAllowed) || ctype != "application/json" {
		t.Errorf("GET /v1/events: %d %s %s", code, ctype, b)
	}
}

func TestNewValidates(t *testing.T) {
	for name, mod := range map[string]func(*api.Config){
		"no body limit":  func(c *api.Config) { c.MaxBodyBytes = 0 },
		"no future skew": func(c *api.Config) { c.MaxFutureSkew = 0 },
		"no partitions":  func(c *api.Config) { c.Partitions = 0 },
	} {
		cfg := api.DefaultConfig()
		cfg.Partitions = 4
		mod(&cfg)
		if _, err := api.New(cfg, &fakeEngine{}, &fakeProducer{}, &fakeDLQ{}, testenv.Logger(), prometheus.NewRegistry(), prometheus.NewRegistry()); err == nil {
			t.Errorf("%s: New accepted %+v", name, cfg)
		}
	}
}

// counter reads one labelled counter from reg.
func counter(t *testing.T, reg *prometheus.Registry, name, label, value string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == label && lp.GetValue() == value {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}
