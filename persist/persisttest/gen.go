// Package persisttest holds the conformance suites of package persist:
// TestCheckpointStore for checkpoint stores and TestFactSink for fact
// sinks. Every implementation runs the same suite, so they agree on the
// contracts of persist.CheckpointStore and persist.FactSink; a new
// implementation is done when it passes.
package persisttest

import (
	"fmt"
	"math/rand/v2"
	"strings"

	"github.com/lookback-dev/lookback/attribution"
)

// baseTime is 2026-11-28T10:00:00Z in Unix ms.
const baseTime int64 = 1795860000000

// Gen makes facts for tests and benchmarks: deterministic for a seed,
// with ids under a prefix so that several generators do not collide.
type Gen struct {
	rng    *rand.Rand
	prefix string
	n      int
}

// NewGen returns a generator of facts whose ids start with prefix.
func NewGen(seed uint64, prefix string) *Gen {
	return &Gen{rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), prefix: prefix}
}

func (g *Gen) id(kind string) string {
	g.n++
	return fmt.Sprintf("%s%s-%d", g.prefix, kind, g.n)
}

// str returns a short value, sometimes empty, sometimes awkward (quotes,
// backslashes, non-ASCII), sometimes the longest allowed.
func (g *Gen) str(kind string) string {
	switch g.rng.IntN(12) {
	case 0:
		return ""
	case 1:
		return kind + ` "quoted" \back\slash ünïcødé ✓`
	case 2:
		// 256 bytes exactly, with multi-byte runes.
		s := strings.Repeat("é", 100) + strings.Repeat("x", 56)
		return s
	}
	return fmt.Sprintf("%s-%d", kind, g.rng.IntN(50))
}

func (g *Gen) time() int64 { return baseTime + g.rng.Int64N(30*24*3600*1000) }

func (g *Gen) user() string { return fmt.Sprintf("%suser-%d", g.prefix, g.rng.IntN(1000)) }

// Impression returns a new impression, with a bid half of the time.
func (g *Gen) Impression() attribution.ImpressionFact {
	f := attribution.ImpressionFact{
		ImpressionID: g.id("imp"),
		UserID:       g.user(),
		Time:         g.time(),
		CreativeID:   g.str("creative"),
		CampaignID:   g.str("campaign"),
		Website:      g.str("site"),
		AuctionID:    g.str("auction"),
	}
	if g.rng.IntN(2) == 0 {
		f.Bid = g.Bid()
	}
	return f
}

// Bid returns a bid: criteria absent, empty or several.
func (g *Gen) Bid() *attribution.Bid {
	b := &attribution.Bid{
		BidPrice:   float64(g.rng.IntN(100000)) / 1000,
		FloorPrice: g.rng.Float64(),
		Currency:   []string{"", "USD", "EUR"}[g.rng.IntN(3)],
		Exchange:   g.str("exchange"),
	}
	switch g.rng.IntN(3) {
	case 1:
		b.Criteria = []string{}
	case 2:
		for i := 0; i < 1+g.rng.IntN(5); i++ {
			b.Criteria = append(b.Criteria, g.str("crit"))
		}
	}
	return b
}

// Click returns a new click, joined to an impression half of the time.
func (g *Gen) Click() attribution.ClickFact {
	f := attribution.ClickFact{
		ClickID:      g.id("clk"),
		UserID:       g.user(),
		Time:         g.time(),
		CreativeID:   g.str("creative"),
		CampaignID:   g.str("campaign"),
		ImpressionID: g.str("imp"),
	}
	if g.rng.IntN(2) == 0 {
		f.Joined = true
		f.SinceImpression = g.rng.Int64N(7 * 24 * 3600 * 1000)
	}
	return f
}

// Conversion returns a new conversion under some models: organic a
// quarter of the time, else with a path of one to four touches.
func (g *Gen) Conversion() attribution.ConversionFact {
	f := attribution.ConversionFact{
		UserID: g.user(),
		Conversion: attribution.Conversion{
			ID:             g.id("conv"),
			Time:           g.time(),
			ConversionType: []string{"purchase", "signup", ""}[g.rng.IntN(3)],
			Value:          float64(g.rng.IntN(100000)) / 100,
			Currency:       []string{"USD", "EUR", ""}[g.rng.IntN(3)],
		},
	}
	if g.rng.IntN(4) != 0 {
		n := 1 + g.rng.IntN(4)
		for i := 0; i < n; i++ {
			t := attribution.TypeClick
			if g.rng.IntN(2) == 0 {
				t = attribution.TypeImpression
			}
			f.Path = append(f.Path, attribution.PathTouch{
				Type: t, ID: g.id("touch"), Time: f.Time - int64(n-i)*60000,
				CreativeID: g.str("creative"), CampaignID: g.str("campaign"),
			})
		}
	}
	models := []attribution.Model{attribution.LastTouch}
	if g.rng.IntN(2) == 0 {
		models = attribution.AllModels
	}
	g.setModels(&f, models)
	return f
}

// setModels sets f.Models and credits shaped like the real models'
// (first and last touch credit one touch, the others all of them).
func (g *Gen) setModels(f *attribution.ConversionFact, models []attribution.Model) {
	f.Models = append([]attribution.Model(nil), models...)
	n := max(len(f.Path), 1)
	f.Credits = make([]float64, 0, n*len(models))
	for _, m := range models {
		c := make([]float64, n)
		switch {
		case len(f.Path) == 0:
			c[0] = 1
		case m == attribution.LastTouch:
			c[n-1] = 1
		case m == attribution.FirstTouch:
			c[0] = 1
		default:
			for i := range c {
				c[i] = 1 / float64(n)
			}
		}
		f.Credits = append(f.Credits, c...)
	}
}

// Facts returns nImp impressions, nClk clicks and nConv conversions.
func (g *Gen) Facts(nImp, nClk, nConv int) *attribution.Facts {
	f := &attribution.Facts{}
	for i := 0; i < nImp; i++ {
		f.Impressions = append(f.Impressions, g.Impression())
	}
	for i := 0; i < nClk; i++ {
		f.Clicks = append(f.Clicks, g.Click())
	}
	for i := 0; i < nConv; i++ {
		f.Conversions = append(f.Conversions, g.Conversion())
	}
	return f
}

// Rows returns how many warehouse rows facts make (before any dedupe).
func Rows(f *attribution.Facts) int {
	n := len(f.Impressions) + len(f.Clicks)
	var rows []attribution.AttributionRow
	for i := range f.Conversions {
		rows = f.Conversions[i].AppendRows(rows[:0])
		n += len(rows)
	}
	return n
}
