package loadtest

import (
	"fmt"
	"math"
	"reflect"
	"slices"
	"strings"

	"github.com/lookback-dev/lookback/attribution"
	"github.com/lookback-dev/lookback/persist"
)

// rowKey is the primary key of conversion_attributions.
type rowKey struct {
	conversion string
	model      attribution.Model
	touchType  attribution.Type
	touch      string
}

func rowKeyOf(r *attribution.AttributionRow) rowKey {
	return rowKey{r.ConversionID, r.Model, r.TouchType, r.TouchID}
}

func (k rowKey) String() string {
	return fmt.Sprintf("%s/%s/%s/%q", k.conversion, k.model, k.touchType, k.touch)
}

// Tolerances of credits: the engine and the oracle compute time_decay by
// different formulas, equal in exact arithmetic, not in the last bits.
const (
	creditTolerance = 1e-9
	valueTolerance  = 1e-9 // relative to the conversion's value, at least 1
)

// TableDiff is how one table of the warehouse differs from the oracle.
type TableDiff struct {
	Table     string
	Want, Got int // rows
	Missing   int // rows the oracle has and the warehouse not
	Extra     int // rows the warehouse has and the oracle not
	Different int // rows of the same key with other values
	// Examples describe a few of the differences.
	Examples []string
}

// Equal reports whether the table matches.
func (t *TableDiff) Equal() bool { return t.Missing == 0 && t.Extra == 0 && t.Different == 0 }

// maxExamples bounds the examples kept per table.
const maxExamples = 3

func (t *TableDiff) example(format string, args ...any) {
	if len(t.Examples) < maxExamples {
		t.Examples = append(t.Examples, fmt.Sprintf(format, args...))
	}
}

// Diff is how a warehouse snapshot differs from the oracle's, table by
// table: impressions, clicks, conversion attributions.
type Diff struct {
	Tables [3]TableDiff
}

// Equal reports whether every table matches.
func (d *Diff) Equal() bool {
	for i := range d.Tables {
		if !d.Tables[i].Equal() {
			return false
		}
	}
	return true
}

// Rows returns the rows of the warehouse (got) and of the oracle (want).
func (d *Diff) Rows() (got, want int) {
	for _, t := range d.Tables {
		got, want = got+t.Got, want+t.Want
	}
	return got, want
}

// String is a report of a few lines per table that differs.
func (d *Diff) String() string {
	var b strings.Builder
	for _, t := range d.Tables {
		status := "ok"
		if !t.Equal() {
			status = fmt.Sprintf("%d missing, %d extra, %d different", t.Missing, t.Extra, t.Different)
		}
		fmt.Fprintf(&b, "  %-24s %9d rows, expected %9d: %s\n", t.Table, t.Got, t.Want, status)
		for _, e := range t.Examples {
			fmt.Fprintf(&b, "      %s\n", strings.ReplaceAll(e, "\n", "\n      "))
		}
	}
	return b.String()
}

// Compare diffs two normalized snapshots: got (the warehouse's) against
// want (the oracle's). Credits and credited values are compared within
// 1e-9 (relative to the value for the latter), everything else exactly.
func Compare(got, want *persist.Snapshot) *Diff {
	d := &Diff{}
	d.Tables[0] = diffTable("ad_impressions", got.Impressions, want.Impressions,
		func(f *attribution.ImpressionFact) string { return f.ImpressionID },
		func(a, b *attribution.ImpressionFact) bool { return reflect.DeepEqual(*a, *b) }, fmtImpression)
	d.Tables[1] = diffTable("ad_clicks", got.Clicks, want.Clicks,
		func(f *attribution.ClickFact) string { return f.ClickID },
		func(a, b *attribution.ClickFact) bool { return *a == *b },
		func(f *attribution.ClickFact) string { return fmt.Sprintf("%+v", *f) })
	d.Tables[2] = diffTable("conversion_attributions", got.Attributions, want.Attributions,
		rowKeyOf, rowsEqual, func(r *attribution.AttributionRow) string { return fmt.Sprintf("%+v", *r) })
	return d
}

// diffTable compares two tables by key. Each key is expected once per
// table (it is the table's primary key); a repeated key counts as extra.
func diffTable[T any, K comparable](name string, got, want []T, key func(*T) K, equal func(a, b *T) bool, show func(*T) string) TableDiff {
	t := TableDiff{Table: name, Want: len(want), Got: len(got)}
	index := make(map[K]int, len(got))
	for i := range got {
		k := key(&got[i])
		if _, dup := index[k]; dup {
			t.Extra++
			t.example("key %v twice: %s", k, show(&got[i]))
			continue
		}
		index[k] = i
	}
	matched := make(map[K]bool, len(want))
	for i := range want {
		w := &want[i]
		k := key(w)
		j, ok := index[k]
		if !ok {
			t.Missing++
			t.example("missing %v: want %s", k, show(w))
			continue
		}
		matched[k] = true
		if g := &got[j]; !equal(g, w) {
			t.Different++
			t.example("different %v:\n  got  %s\n  want %s", k, show(g), show(w))
		}
	}
	for i := range got {
		if k := key(&got[i]); index[k] == i && !matched[k] {
			t.Extra++
			t.example("extra %v: %s", k, show(&got[i]))
		}
	}
	return t
}

func rowsEqual(a, b *attribution.AttributionRow) bool {
	if math.Abs(a.Credit-b.Credit) > creditTolerance ||
		math.Abs(a.CreditedValue-b.CreditedValue) > valueTolerance*math.Max(1, math.Abs(b.Value)) {
		return false
	}
	x, y := *a, *b
	x.Credit, x.CreditedValue, y.Credit, y.CreditedValue = 0, 0, 0, 0
	return x == y
}

func fmtImpression(f *attribution.ImpressionFact) string {
	s := fmt.Sprintf("%+v", *f)
	if f.Bid != nil {
		s += fmt.Sprintf(" bid=%+v", *f.Bid)
	}
	return s
}

// Filter keeps the facts of the given users, so that what other runs or
// other traffic left in the warehouse does not count as extra. It returns
// the rows it dropped.
func Filter(s *persist.Snapshot, users map[string]bool) (dropped int) {
	n := len(s.Impressions) + len(s.Clicks) + len(s.Attributions)
	s.Impressions = slices.DeleteFunc(s.Impressions, func(f attribution.ImpressionFact) bool { return !users[f.UserID] })
	s.Clicks = slices.DeleteFunc(s.Clicks, func(f attribution.ClickFact) bool { return !users[f.UserID] })
	s.Attributions = slices.DeleteFunc(s.Attributions, func(r attribution.AttributionRow) bool { return !users[r.UserID] })
	return n - len(s.Impressions) - len(s.Clicks) - len(s.Attributions)
}
