package ingest

import (
	"math/rand/v2"
	"testing"

	"github.com/lookback-dev/lookback/attribution"
)

func TestAppendTime(t *testing.T) {
	r := rand.New(rand.NewPCG(11, 12))
	edges := []int64{0, 1, 999, 86_399_999, 86_400_000, 951_782_400_000, 951_868_799_999, 4_107_542_400_000,
		attribution.MinEventTime, attribution.MaxEventTime, maxFastTime - 1, maxFastTime, -1, -86_400_001}
	for i := 0; i < 200_000; i++ {
		ms := r.Int64N(maxFastTime + 1000)
		if i < len(edges) {
			ms = edges[i]
		}
		got := string(appendTime(nil, ms))
		if want := attribution.FormatTime(ms); got != want {
			t.Fatalf("%d: got %s, want %s", ms, got, want)
		}
		back, ok := parseUTC([]byte(got))
		if ms >= 0 && ms < maxFastTime && (!ok || back != ms) {
			t.Fatalf("%s: parsed %d %v, want %d", got, back, ok, ms)
		}
	}
}

func TestParseTimeFastPath(t *testing.T) {
	for _, s := range []string{
		"2026-11-28T10:00:00Z", "2026-11-28T10:00:00.1Z", "2026-11-28T10:00:00.123456789Z", "2024-02-29T23:59:59.999Z",
		"2000-01-01T00:00:00Z", "0000-01-01T00:00:00Z", "9999-12-31T23:59:59.999Z", "1969-12-31T23:59:59.5Z",
	} {
		got, ok := parseUTC([]byte(s))
		want, err := attribution.ParseTime(s)
		if !ok || err != nil || got != want {
			t.Errorf("%s: fast %d %v, ParseTime %d %v", s, got, ok, want, err)
		}
	}
	// Not the fast path's: ParseTime decides.
	for _, s := range []string{
		"2026-11-28T10:00:00+02:00", "2026-11-28t10:00:00Z", "2026-11-28T10:00:00z", "2023-02-29T00:00:00Z",
		"2026-11-28T24:00:00Z", "2026-11-28T10:00:60Z", "2026-11-28T10:00:00.Z", "2026-11-28T10:00:00.1234567890Z",
		"2026-11-28T10:00:00,5Z", "2026-13-28T10:00:00Z", "+026-11-28T10:00:00Z", "2026-11-28T10:00:00ZZ",
	} {
		if ms, ok := parseUTC([]byte(s)); ok {
			t.Errorf("%s: fast path took it as %d", s, ms)
		}
	}
}

// FuzzParseTime checks the fast path against attribution.ParseTime.
func FuzzParseTime(f *testing.F) {
	f.Add("2026-11-28T10:00:00.123Z")
	f.Add("2024-02-29T23:59:59Z")
	f.Add("1795860000123")
	f.Fuzz(func(t *testing.T, s string) {
		ms, ok := parseUTC([]byte(s))
		if !ok {
			return
		}
		want, err := attribution.ParseTime(s)
		if err != nil || want != ms {
			t.Fatalf("%q: fast %d, ParseTime %d %v", s, ms, want, err)
		}
	})
}
