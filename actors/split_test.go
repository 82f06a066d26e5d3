package actors

import (
	"fmt"
	"testing"

	"github.com/lookback-dev/lookback/attribution"
)

func TestSplitFacts(t *testing.T) {
	models := []attribution.Model{attribution.LastTouch, attribution.Linear}
	var f attribution.Facts
	for i := 0; i < 25; i++ {
		f.Impressions = append(f.Impressions, attribution.ImpressionFact{ImpressionID: fmt.Sprint("i", i%20)}) // 5 re-emitted ids
	}
	for i := 0; i < 10; i++ {
		f.Clicks = append(f.Clicks, attribution.ClickFact{ClickID: fmt.Sprint("k", i)})
	}
	for i := 0; i < 6; i++ {
		path := make([]attribution.PathTouch, i) // 0 (organic) to 5 touches: 2 to 10 rows
		f.Conversions = append(f.Conversions, attribution.ConversionFact{Conversion: attribution.Conversion{ID: fmt.Sprint("v", i), Path: path}, Models: models})
	}
	total := factRows(&f)
	for _, max := range []int{1, 7, 10, total - 1, total, 1000} {
		t.Run(fmt.Sprint("max ", max), func(t *testing.T) {
			chunks := splitFacts(&f, max)
			var got attribution.Facts
			for _, c := range chunks {
				// A chunk holds at most max rows, or one conversion more.
				if rows := factRows(&c); rows > max && !(len(c.Conversions) > 0 && rows-max < 10) {
					t.Fatalf("a chunk of %d rows, max %d", rows, max)
				}
				if c.Len() == 0 {
					t.Fatal("an empty chunk")
				}
				got.Append(&c)
			}
			if max >= total && len(chunks) != 1 {
				t.Fatalf("%d chunks for %d rows under a max of %d", len(chunks), total, max)
			}
			// Nothing lost, nothing reordered: a later fact of an id stays later.
			if fmt.Sprint(got) != fmt.Sprint(f) {
				t.Fatalf("chunks do not add up to the facts, in order")
			}
		})
	}
}
