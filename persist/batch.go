package persist

import (
	"encoding/json"
	"fmt"
	"math"
	"sort"
	"strings"
	"time"

	"github.com/lookback-dev/lookback/attribution"
)

// convKey is the unit in which a conversion's rows are replaced.
type convKey struct {
	ID    string
	Model attribution.Model
}

// rowGroup is the rows of one conversion under one model: rows[start:end]
// of the batch.
type rowGroup struct {
	key        convKey
	start, end int
}

// factBatch is one Write's facts after the sink semantics are applied in
// memory: one impression and one click per id (the last fact of an id
// wins), and one group of rows per (conversion id, model) (from the last
// conversion fact carrying that model). Every sink stages exactly this, so
// the database never sees two rows of one key in a batch (PostgreSQL would
// reject them in ON CONFLICT; Redshift would silently keep both).
type factBatch struct {
	impressions []*attribution.ImpressionFact
	clicks      []*attribution.ClickFact
	rows        []attribution.AttributionRow
	groups      []rowGroup
}

func (b *factBatch) empty() bool {
	return len(b.impressions) == 0 && len(b.clicks) == 0 && len(b.rows) == 0
}

// rowCount is the warehouse rows the batch writes.
func (b *factBatch) rowCount() int {
	return len(b.impressions) + len(b.clicks) + len(b.rows)
}

// split deals the batch into n parts by a hash of the key: the impression
// id, the click id, and the conversion id (so that all the rows of a
// conversion, under every model, are in one part, which replaces them as a
// whole). Parts share no key, so concurrent transactions writing them
// touch disjoint rows. A part may be empty.
func (b *factBatch) split(n int) []*factBatch {
	parts := make([]*factBatch, n)
	for i := range parts {
		parts[i] = &factBatch{
			impressions: make([]*attribution.ImpressionFact, 0, len(b.impressions)/n+len(b.impressions)/(4*n)),
			clicks:      make([]*attribution.ClickFact, 0, len(b.clicks)/n+len(b.clicks)/(4*n)),
			rows:        make([]attribution.AttributionRow, 0, len(b.rows)/n+len(b.rows)/(4*n)),
		}
	}
	for _, f := range b.impressions {
		p := parts[keyPart(f.ImpressionID, n)]
		p.impressions = append(p.impressions, f)
	}
	for _, f := range b.clicks {
		p := parts[keyPart(f.ClickID, n)]
		p.clicks = append(p.clicks, f)
	}
	for _, g := range b.groups {
		p := parts[keyPart(g.key.ID, n)]
		start := len(p.rows)
		p.rows = append(p.rows, b.rows[g.start:g.end]...)
		p.groups = append(p.groups, rowGroup{key: g.key, start: start, end: len(p.rows)})
	}
	return parts
}

// keyPart maps a key to one of n parts by its 32-bit FNV-1a hash: spread
// evenly over ids that differ in their last digits, and the same in every
// process, so that "part 2 of 3" names the same keys on every retry.
func keyPart(key string, n int) int {
	h := uint32(2166136261)
	for i := 0; i < len(key); i++ {
		h ^= uint32(key[i])
		h *= 16777619
	}
	return int(h % uint32(n))
}

// prepareBatch dedupes facts as described at factBatch. Impressions and
// clicks keep the position of an id's first fact and the content of its
// last.
func prepareBatch(facts *attribution.Facts) *factBatch {
	b := &factBatch{}
	if facts == nil {
		return b
	}
	b.impressions = lastByID(facts.Impressions, func(f *attribution.ImpressionFact) string { return f.ImpressionID })
	b.clicks = lastByID(facts.Clicks, func(f *attribution.ClickFact) string { return f.ClickID })
	if n := len(facts.Conversions); n > 0 {
		// Walk backwards so that the last fact of a (conversion, model)
		// claims the key first; then restore the forward order.
		seen := make(map[convKey]bool, n)
		var tmp []attribution.AttributionRow
		type pending struct {
			key  convKey
			rows []attribution.AttributionRow
		}
		var picked []pending
		for i := n - 1; i >= 0; i-- {
			f := &facts.Conversions[i]
			tmp = f.AppendRows(tmp[:0])
			for _, m := range f.Models {
				k := convKey{f.ID, m}
				if seen[k] {
					continue
				}
				seen[k] = true
				var rows []attribution.AttributionRow
				for _, r := range tmp {
					if r.Model == m {
						rows = append(rows, r)
					}
				}
				if len(rows) == 0 {
					continue // a model that credited nothing has no rows to replace
				}
				picked = append(picked, pending{k, mergeDuplicateTouches(rows)})
			}
		}
		for i := len(picked) - 1; i >= 0; i-- {
			p := picked[i]
			start := len(b.rows)
			b.rows = append(b.rows, p.rows...)
			b.groups = append(b.groups, rowGroup{key: p.key, start: start, end: len(b.rows)})
		}
	}
	return b
}

// mergeDuplicateTouches folds rows of one conversion and model that name
// the same touch (type and id) into one, adding their credits. A path never
// holds one touch twice (events are deduped by id before they join a
// path), so this does nothing in practice; it exists because the warehouse
// key is (conversion_id, model, touch_type, touch_id) and a duplicate would
// make every retry of the batch fail on PostgreSQL's primary key.
func mergeDuplicateTouches(rows []attribution.AttributionRow) []attribution.AttributionRow {
	if len(rows) < 2 {
		return rows
	}
	type tk struct {
		t  attribution.Type
		id string
	}
	idx := make(map[tk]int, len(rows))
	out := rows[:0]
	for _, r := range rows {
		k := tk{r.TouchType, r.TouchID}
		if j, ok := idx[k]; ok {
			out[j].Credit += r.Credit
			out[j].CreditedValue += r.CreditedValue
			continue
		}
		idx[k] = len(out)
		out = append(out, r)
	}
	return out
}

// Table names.
const (
	tableImpressions  = "ad_impressions"
	tableClicks       = "ad_clicks"
	tableAttributions = "conversion_attributions"
	tableMigrations   = "lookback_schema_migrations"
)

// nullString maps the empty string to SQL NULL. The warehouse stores
// absent optional strings as NULL (key columns are never empty, except
// touch_id of an organic conversion, which is part of the primary key and
// so stored as ”); reading maps NULL back to "".
func nullString(s string) any {
	if s == "" {
		return nil
	}
	return s
}

func sqlTime(ms int64) time.Time { return time.UnixMilli(ms).UTC() }

// criteriaJSON encodes targeting criteria as a JSON array (never null:
// a bid without criteria has "[]").
func criteriaJSON(c []string) string {
	if len(c) == 0 {
		return "[]"
	}
	var sb strings.Builder
	sb.WriteByte('[')
	for i, s := range c {
		if i > 0 {
			sb.WriteByte(',')
		}
		appendJSONString(&sb, s)
	}
	sb.WriteByte(']')
	return sb.String()
}

// appendJSONString writes s as a JSON string without HTML escaping, so
// that criteria stay short (the column is VARCHAR(65535) bytes).
func appendJSONString(sb *strings.Builder, s string) {
	const hex = "0123456789abcdef"
	sb.WriteByte('"')
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '"' || c == '\\':
			sb.WriteByte('\\')
			sb.WriteByte(c)
		case c < 0x20:
			sb.WriteString(`\u00`)
			sb.WriteByte(hex[c>>4])
			sb.WriteByte(hex[c&0xf])
		default:
			sb.WriteByte(c)
		}
	}
	sb.WriteByte('"')
}

func parseCriteria(s string) ([]string, error) {
	if s == "" || s == "[]" {
		return nil, nil
	}
	var c []string
	if err := json.Unmarshal([]byte(s), &c); err != nil {
		return nil, fmt.Errorf("reading targeting criteria %q: %w", s, err)
	}
	if len(c) == 0 {
		return nil, nil
	}
	return c, nil
}

// impressionValues appends an impression's column values.
func impressionValues(dst []any, f *attribution.ImpressionFact) []any {
	dst = append(dst, f.ImpressionID, f.UserID, sqlTime(f.Time), nullString(f.CreativeID),
		nullString(f.CampaignID), nullString(f.Website), nullString(f.AuctionID))
	if f.Bid == nil {
		return append(dst, nil, nil, nil, nil, nil)
	}
	return append(dst, f.Bid.BidPrice, f.Bid.FloorPrice, nullString(f.Bid.Currency),
		nullString(f.Bid.Exchange), criteriaJSON(f.Bid.Criteria))
}

// clickValues appends a click's column values; seconds_since_impression is
// NULL when no impression was joined.
func clickValues(dst []any, f *attribution.ClickFact) []any {
	var since any
	if f.Joined {
		since = float64(f.SinceImpression) / 1000
	}
	return append(dst, f.ClickID, f.UserID, sqlTime(f.Time), nullString(f.CreativeID),
		nullString(f.CampaignID), nullString(f.ImpressionID), since)
}

// attributionValues appends an attribution row's column values; touch_time
// is NULL for an organic conversion.
func attributionValues(dst []any, r *attribution.AttributionRow) []any {
	var touchTime any
	if r.TouchType != attribution.TypeNone {
		touchTime = sqlTime(r.TouchTime)
	}
	return append(dst, r.ConversionID, r.UserID, r.Model.String(), r.TouchType.String(), r.TouchID,
		nullString(r.CreativeID), nullString(r.CampaignID), touchTime, sqlTime(r.ConversionTime),
		nullString(r.ConversionType), r.Value, nullString(r.Currency), r.Credit, r.CreditedValue)
}

// parseTouchType reads a touch_type column: "none" or an event type.
func parseTouchType(s string) (attribution.Type, error) {
	if s == attribution.TypeNone.String() {
		return attribution.TypeNone, nil
	}
	return attribution.ParseType(s)
}

// sinceFromSeconds converts seconds_since_impression back to milliseconds.
func sinceFromSeconds(s float64) int64 { return int64(math.Round(s * 1000)) }

// sortSnapshot orders a snapshot by key, so that sinks return the same
// order and tests and tools can diff them.
func sortSnapshot(s *Snapshot) {
	sort.Slice(s.Impressions, func(i, j int) bool { return s.Impressions[i].ImpressionID < s.Impressions[j].ImpressionID })
	sort.Slice(s.Clicks, func(i, j int) bool { return s.Clicks[i].ClickID < s.Clicks[j].ClickID })
	sort.Slice(s.Attributions, func(i, j int) bool { return attributionLess(&s.Attributions[i], &s.Attributions[j]) })
}

func attributionLess(a, b *attribution.AttributionRow) bool {
	if a.ConversionID != b.ConversionID {
		return a.ConversionID < b.ConversionID
	}
	if a.Model != b.Model {
		return a.Model < b.Model
	}
	if a.TouchType != b.TouchType {
		return a.TouchType < b.TouchType
	}
	return a.TouchID < b.TouchID
}

// lastByID returns pointers to facts with one per id, the last fact of an
// id in the place of its first (a later fact replaces an earlier one, as an
// impression joined to a late bid replaces its unjoined fact).
func lastByID[F any](facts []F, id func(*F) string) []*F {
	if len(facts) == 0 {
		return nil
	}
	seen := make(map[string]int, len(facts))
	out := make([]*F, 0, len(facts))
	for i := range facts {
		f := &facts[i]
		if j, ok := seen[id(f)]; ok {
			out[j] = f
			continue
		}
		seen[id(f)] = len(out)
		out = append(out, f)
	}
	return out
}
