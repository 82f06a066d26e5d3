package persist

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"hash/fnv"
	"io"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/lookback-dev/lookback/attribution"
)

// FileSinkConfig configures a FileSink.
type FileSinkConfig struct {
	// Dir holds the sink's files. Required.
	Dir string
}

// Validate reports the first invalid field.
func (c FileSinkConfig) Validate() error {
	if c.Dir == "" {
		return errors.New("file sink directory is empty")
	}
	return nil
}

// File names of a FileSink, one NDJSON file per warehouse table, plus the
// committed sizes of the three.
const (
	fileImpressions  = "impressions.ndjson"
	fileClicks       = "clicks.ndjson"
	fileAttributions = "conversion_attributions.ndjson"
	fileCommitted    = "committed.json"
)

// FileSink writes facts as NDJSON files under a directory, one file per
// warehouse table (impressions.ndjson, clicks.ndjson,
// conversion_attributions.ndjson), one JSON object per row, with the
// tables' column names; absent optional values are null, as they are NULL
// in the warehouse. It is the embedded default of `lookback serve` and is
// meant for development volumes (up to a few million facts: it keeps an
// index of every key in memory and rewrites the files when it opens).
//
// It is idempotent like the warehouse sinks, so that a restart loses
// nothing and doubles nothing:
//
//   - It keeps in memory, per key (impression id, click id, (conversion id,
//     model)), a 64-bit hash of the row's content (of the group of rows,
//     for a conversion). Write skips rows identical to what is stored and
//     appends changed ones; a changed row supersedes the stored one, and
//     the superseded row stays in the file until the next compaction.
//     Readers of the raw files must apply "last row of a key wins" (for
//     conversions: the rows of the last batch of a (conversion_id, model),
//     told apart by their "batch" field); Snapshot does.
//   - Opening compacts each file to one row per key (temp file, fsync,
//     rename) and rebuilds the index.
//   - A Write appends to the files, fsyncs them, then records their new
//     sizes in committed.json (temp file, fsync, rename, fsync of the
//     directory). Opening cuts each file back to its committed size, so a
//     crash in the middle of a Write leaves none of it: a Write is all or
//     nothing across the three files.
//
// One process at a time: the directory is flocked while the sink is open.
type FileSink struct {
	dir     string
	dirFile *os.File // flocked while open

	mu     sync.Mutex
	files  [3]*os.File // impressions, clicks, attributions
	sizes  [3]int64    // committed sizes
	imp    map[string]uint64
	clk    map[string]uint64
	conv   map[convKey]uint64
	batch  uint64 // the next Write's batch number
	broken error  // set when a failed Write could not be undone
	closed bool
}

// fileSinkNames are the table files, in the order of FileSink.files.
func fileSinkNames() [3]string { return [3]string{fileImpressions, fileClicks, fileAttributions} }

// NDJSON rows. Field order is column order.
type impressionLine struct {
	ImpressionID      string   `json:"impression_id"`
	UserID            string   `json:"user_id"`
	EventTime         string   `json:"event_time"`
	CreativeID        *string  `json:"ad_creative_id"`
	CampaignID        *string  `json:"campaign_id"`
	Website           *string  `json:"website"`
	AuctionID         *string  `json:"auction_id"`
	BidPrice          *float64 `json:"bid_price"`
	FloorPrice        *float64 `json:"floor_price"`
	BidCurrency       *string  `json:"bid_currency"`
	Exchange          *string  `json:"exchange"`
	TargetingCriteria []string `json:"targeting_criteria"`
}

type clickLine struct {
	ClickID                string   `json:"click_id"`
	UserID                 string   `json:"user_id"`
	EventTime              string   `json:"event_time"`
	CreativeID             *string  `json:"ad_creative_id"`
	CampaignID             *string  `json:"campaign_id"`
	ImpressionID           *string  `json:"impression_id"`
	SecondsSinceImpression *float64 `json:"seconds_since_impression"`
}

type attributionLine struct {
	ConversionID   string  `json:"conversion_id"`
	UserID         string  `json:"user_id"`
	Model          string  `json:"model"`
	TouchType      string  `json:"touch_type"`
	TouchID        string  `json:"touch_id"`
	CreativeID     *string `json:"ad_creative_id"`
	CampaignID     *string `json:"campaign_id"`
	TouchTime      *string `json:"touch_time"`
	ConversionTime string  `json:"conversion_time"`
	ConversionType *string `json:"conversion_type"`
	Value          float64 `json:"value"`
	Currency       *string `json:"currency"`
	Credit         float64 `json:"credit"`
	CreditedValue  float64 `json:"credited_value"`
	// Batch numbers the Write that wrote the row: the rows of a
	// (conversion_id, model) with the highest batch are current.
	Batch uint64 `json:"batch"`
}

func optString(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

func fileTime(ms int64) string {
	return time.UnixMilli(ms).UTC().Format("2006-01-02T15:04:05.000Z07:00")
}

func parseFileTime(s string) (int64, error) {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return 0, err
	}
	return t.UnixMilli(), nil
}

func toImpressionLine(f *attribution.ImpressionFact) impressionLine {
	l := impressionLine{
		ImpressionID: f.ImpressionID, UserID: f.UserID, EventTime: fileTime(f.Time),
		CreativeID: optString(f.CreativeID), CampaignID: optString(f.CampaignID),
		Website: optString(f.Website), AuctionID: optString(f.AuctionID),
	}
	if f.Bid != nil {
		bp, fp := f.Bid.BidPrice, f.Bid.FloorPrice
		l.BidPrice, l.FloorPrice = &bp, &fp
		l.BidCurrency, l.Exchange = optString(f.Bid.Currency), optString(f.Bid.Exchange)
		l.TargetingCriteria = f.Bid.Criteria
		if l.TargetingCriteria == nil {
			l.TargetingCriteria = []string{}
		}
	}
	return l
}

func (l *impressionLine) fact() (attribution.ImpressionFact, error) {
	t, err := parseFileTime(l.EventTime)
	if err != nil {
		return attribution.ImpressionFact{}, err
	}
	f := attribution.ImpressionFact{
		ImpressionID: l.ImpressionID, UserID: l.UserID, Time: t,
		CreativeID: deref(l.CreativeID), CampaignID: deref(l.CampaignID),
		Website: deref(l.Website), AuctionID: deref(l.AuctionID),
	}
	if l.BidPrice != nil {
		f.Bid = &attribution.Bid{BidPrice: *l.BidPrice, FloorPrice: derefF(l.FloorPrice),
			Currency: deref(l.BidCurrency), Exchange: deref(l.Exchange)}
		if len(l.TargetingCriteria) > 0 {
			f.Bid.Criteria = l.TargetingCriteria
		}
	}
	return f, nil
}

func toClickLine(f *attribution.ClickFact) clickLine {
	l := clickLine{
		ClickID: f.ClickID, UserID: f.UserID, EventTime: fileTime(f.Time),
		CreativeID: optString(f.CreativeID), CampaignID: optString(f.CampaignID),
		ImpressionID: optString(f.ImpressionID),
	}
	if f.Joined {
		s := float64(f.SinceImpression) / 1000
		l.SecondsSinceImpression = &s
	}
	return l
}

func (l *clickLine) fact() (attribution.ClickFact, error) {
	t, err := parseFileTime(l.EventTime)
	if err != nil {
		return attribution.ClickFact{}, err
	}
	f := attribution.ClickFact{
		ClickID: l.ClickID, UserID: l.UserID, Time: t,
		CreativeID: deref(l.CreativeID), CampaignID: deref(l.CampaignID), ImpressionID: deref(l.ImpressionID),
	}
	if l.SecondsSinceImpression != nil {
		f.Joined, f.SinceImpression = true, sinceFromSeconds(*l.SecondsSinceImpression)
	}
	return f, nil
}

func toAttributionLine(r *attribution.AttributionRow, batch uint64) attributionLine {
	l := attributionLine{
		ConversionID: r.ConversionID, UserID: r.UserID, Model: r.Model.String(),
		TouchType: r.TouchType.String(), TouchID: r.TouchID,
		CreativeID: optString(r.CreativeID), CampaignID: optString(r.CampaignID),
		ConversionTime: fileTime(r.ConversionTime), ConversionType: optString(r.ConversionType),
		Value: r.Value, Currency: optString(r.Currency), Credit: r.Credit, CreditedValue: r.CreditedValue,
		Batch: batch,
	}
	if r.TouchType != attribution.TypeNone {
		t := fileTime(r.TouchTime)
		l.TouchTime = &t
	}
	return l
}

func (l *attributionLine) row() (attribution.AttributionRow, error) {
	r := attribution.AttributionRow{
		ConversionID: l.ConversionID, UserID: l.UserID, TouchID: l.TouchID,
		CreativeID: deref(l.CreativeID), CampaignID: deref(l.CampaignID),
		ConversionType: deref(l.ConversionType), Value: l.Value, Currency: deref(l.Currency),
		Credit: l.Credit, CreditedValue: l.CreditedValue,
	}
	var err error
	if r.Model, err = attribution.ParseModel(l.Model); err != nil {
		return r, err
	}
	if r.TouchType, err = parseTouchType(l.TouchType); err != nil {
		return r, err
	}
	if r.ConversionTime, err = parseFileTime(l.ConversionTime); err != nil {
		return r, err
	}
	if l.TouchTime != nil {
		if r.TouchTime, err = parseFileTime(*l.TouchTime); err != nil {
			return r, err
		}
	}
	return r, nil
}

// Content hashes: FNV-1a 64 over a canonical encoding of the fields (not
// of the JSON, so that the encoder's choices do not matter). A collision
// would make Write skip a changed row; at 64 bits that is negligible for
// development volumes.
type contentHash struct {
	h   hash.Hash64
	buf [binary.MaxVarintLen64]byte
}

func newContentHash() *contentHash { return &contentHash{h: fnv.New64a()} }

func (c *contentHash) str(s string) {
	c.num(uint64(len(s)))
	_, _ = io.WriteString(c.h, s)
}

func (c *contentHash) num(v uint64) {
	n := binary.PutUvarint(c.buf[:], v)
	_, _ = c.h.Write(c.buf[:n])
}

func (c *contentHash) int(v int64)   { c.num(uint64(v)) }
func (c *contentHash) flt(v float64) { c.num(math.Float64bits(v)) }
func (c *contentHash) sum() uint64   { return c.h.Sum64() }
func (c *contentHash) reset()        { c.h.Reset() }
func (c *contentHash) typ(t uint8)   { c.num(uint64(t)) }

func (c *contentHash) bool(b bool) {
	if b {
		c.num(1)
	} else {
		c.num(0)
	}
}

func (c *contentHash) strs(s []string) {
	c.num(uint64(len(s)))
	for _, x := range s {
		c.str(x)
	}
}

func hashImpression(c *contentHash, f *attribution.ImpressionFact) uint64 {
	c.reset()
	c.str(f.ImpressionID)
	c.str(f.UserID)
	c.int(f.Time)
	c.str(f.CreativeID)
	c.str(f.CampaignID)
	c.str(f.Website)
	c.str(f.AuctionID)
	c.bool(f.Bid != nil)
	if f.Bid != nil {
		c.flt(f.Bid.BidPrice)
		c.flt(f.Bid.FloorPrice)
		c.str(f.Bid.Currency)
		c.str(f.Bid.Exchange)
		c.strs(f.Bid.Criteria)
	}
	return c.sum()
}

func hashClick(c *contentHash, f *attribution.ClickFact) uint64 {
	c.reset()
	c.str(f.ClickID)
	c.str(f.UserID)
	c.int(f.Time)
	c.str(f.CreativeID)
	c.str(f.CampaignID)
	c.str(f.ImpressionID)
	c.bool(f.Joined)
	if f.Joined {
		c.int(f.SinceImpression)
	}
	return c.sum()
}

// hashAddRow adds one row to a group hash being built (after a reset).
func hashAddRow(c *contentHash, r *attribution.AttributionRow) {
	c.str(r.ConversionID)
	c.str(r.UserID)
	c.typ(uint8(r.Model))
	c.typ(uint8(r.TouchType))
	c.str(r.TouchID)
	c.str(r.CreativeID)
	c.str(r.CampaignID)
	c.int(r.TouchTime)
	c.int(r.ConversionTime)
	c.str(r.ConversionType)
	c.flt(r.Value)
	c.str(r.Currency)
	c.flt(r.Credit)
	c.flt(r.CreditedValue)
}

// NewFileSink opens the sink in cfg.Dir (creating it), cuts each file
// back to its committed size, compacts it and indexes it.
func NewFileSink(cfg FileSinkConfig) (*FileSink, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("creating the fact directory: %w", err)
	}
	d, err := os.Open(cfg.Dir)
	if err != nil {
		return nil, fmt.Errorf("opening the fact directory: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	err = lockFile(ctx, d)
	cancel()
	if err != nil {
		d.Close()
		return nil, fmt.Errorf("fact directory %s is in use by another process: %w", cfg.Dir, err)
	}
	s := &FileSink{dir: cfg.Dir, dirFile: d,
		imp: make(map[string]uint64), clk: make(map[string]uint64), conv: make(map[convKey]uint64)}
	if err := s.open(); err != nil {
		s.closeFiles()
		unlockFile(d)
		d.Close()
		return nil, err
	}
	return s, nil
}

// committedSizes is committed.json.
type committedSizes struct {
	Sizes map[string]int64 `json:"sizes"`
}

func (s *FileSink) open() error {
	var committed committedSizes
	b, err := os.ReadFile(filepath.Join(s.dir, fileCommitted))
	switch {
	case err == nil:
		if err := json.Unmarshal(b, &committed); err != nil {
			return fmt.Errorf("reading %s: %w", fileCommitted, err)
		}
	case errors.Is(err, fs.ErrNotExist):
		// A new directory (or files written by hand): the files are
		// taken as they are, less any incomplete last line.
	default:
		return fmt.Errorf("reading %s: %w", fileCommitted, err)
	}
	for i, name := range fileSinkNames() {
		path := filepath.Join(s.dir, name)
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
		if err != nil {
			return fmt.Errorf("opening %s: %w", name, err)
		}
		s.files[i] = f
		size, err := committedSize(f, committed.Sizes, name)
		if err != nil {
			return fmt.Errorf("recovering %s: %w", name, err)
		}
		s.sizes[i] = size
	}
	if err := s.compactImpressions(); err != nil {
		return fmt.Errorf("compacting %s: %w", fileImpressions, err)
	}
	if err := s.compactClicks(); err != nil {
		return fmt.Errorf("compacting %s: %w", fileClicks, err)
	}
	if err := s.compactAttributions(); err != nil {
		return fmt.Errorf("compacting %s: %w", fileAttributions, err)
	}
	if err := s.dirFile.Sync(); err != nil {
		return fmt.Errorf("syncing the fact directory: %w", err)
	}
	return s.writeCommitted(s.sizes)
}

// committedSize cuts f back to its committed size (or, with none
// recorded, after its last complete line) and returns the size.
func committedSize(f *os.File, sizes map[string]int64, name string) (int64, error) {
	st, err := f.Stat()
	if err != nil {
		return 0, err
	}
	size := st.Size()
	if want, ok := sizes[name]; ok && want < size {
		size = want
	}
	// Whatever the record says, a committed file ends with a newline.
	for size > 0 {
		var last [1]byte
		if _, err := f.ReadAt(last[:], size-1); err != nil {
			return 0, err
		}
		if last[0] == '\n' {
			break
		}
		// Find the previous newline.
		start := max(size-4096, 0)
		buf := make([]byte, size-start)
		if _, err := f.ReadAt(buf, start); err != nil {
			return 0, err
		}
		if i := bytes.LastIndexByte(buf, '\n'); i >= 0 {
			size = start + int64(i) + 1
		} else {
			size = start
		}
	}
	if size < st.Size() {
		if err := f.Truncate(size); err != nil {
			return 0, err
		}
		if err := f.Sync(); err != nil {
			return 0, err
		}
	}
	return size, nil
}

// scanLines calls fn for each line of the first size bytes of f.
func scanLines(f *os.File, size int64, fn func(line []byte) error) error {
	sc := bufio.NewScanner(io.NewSectionReader(f, 0, size))
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	for sc.Scan() {
		if len(sc.Bytes()) == 0 {
			continue
		}
		if err := fn(sc.Bytes()); err != nil {
			return err
		}
	}
	return sc.Err()
}

// rewrite writes, to a temporary file renamed over file i, the lines for
// which keep(n) is true, n counting lines from 0.
func (s *FileSink) rewrite(i int, keep func(n int) bool) error {
	path := filepath.Join(s.dir, fileSinkNames()[i])
	tmpPath := path + ".compact"
	tmp, err := os.OpenFile(tmpPath, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	w := bufio.NewWriterSize(tmp, 1<<20)
	n := 0
	err = scanLines(s.files[i], s.sizes[i], func(line []byte) error {
		defer func() { n++ }()
		if !keep(n) {
			return nil
		}
		if _, err := w.Write(line); err != nil {
			return err
		}
		return w.WriteByte('\n')
	})
	if err == nil {
		err = w.Flush()
	}
	if err == nil {
		err = tmp.Sync()
	}
	if err != nil {
		tmp.Close()
		os.Remove(tmpPath)
		return err
	}
	st, err := tmp.Stat()
	if err != nil {
		tmp.Close()
		os.Remove(tmpPath)
		return err
	}
	if err := os.Rename(tmpPath, path); err != nil {
		tmp.Close()
		os.Remove(tmpPath)
		return err
	}
	s.files[i].Close()
	s.files[i] = tmp
	s.sizes[i] = st.Size()
	return nil
}

func (s *FileSink) compactImpressions() error {
	return s.compactByKey(0, s.imp, func(line []byte, h *contentHash) (string, uint64, error) {
		var l impressionLine
		if err := json.Unmarshal(line, &l); err != nil {
			return "", 0, err
		}
		f, err := l.fact()
		return f.ImpressionID, hashImpression(h, &f), err
	})
}

func (s *FileSink) compactClicks() error {
	return s.compactByKey(1, s.clk, func(line []byte, h *contentHash) (string, uint64, error) {
		var l clickLine
		if err := json.Unmarshal(line, &l); err != nil {
			return "", 0, err
		}
		f, err := l.fact()
		return f.ClickID, hashClick(h, &f), err
	})
}

// compactByKey keeps, of the lines of file i, the last one of each key,
// and indexes each key's content hash. parse reads a line's key and hash.
func (s *FileSink) compactByKey(i int, index map[string]uint64, parse func(line []byte, h *contentHash) (string, uint64, error)) error {
	last := make(map[string]int)
	n := 0
	h := newContentHash()
	err := scanLines(s.files[i], s.sizes[i], func(line []byte) error {
		key, sum, err := parse(line, h)
		if err != nil {
			return fmt.Errorf("line %d: %w", n+1, err)
		}
		last[key] = n
		index[key] = sum
		n++
		return nil
	})
	if err != nil || len(last) == n {
		return err
	}
	keep := make([]bool, n)
	for _, j := range last {
		keep[j] = true
	}
	return s.rewrite(i, func(j int) bool { return keep[j] })
}

// compactAttributions keeps, per (conversion_id, model), the rows of its
// last batch.
func (s *FileSink) compactAttributions() error {
	type group struct {
		batch uint64
		h     *contentHash
	}
	groups := make(map[convKey]*group)
	var lineKeys []convKey
	var lineBatches []uint64
	err := scanLines(s.files[2], s.sizes[2], func(line []byte) error {
		var l attributionLine
		if err := json.Unmarshal(line, &l); err != nil {
			return fmt.Errorf("line %d: %w", len(lineKeys)+1, err)
		}
		r, err := l.row()
		if err != nil {
			return fmt.Errorf("line %d: %w", len(lineKeys)+1, err)
		}
		k := convKey{r.ConversionID, r.Model}
		g := groups[k]
		if g == nil {
			g = &group{batch: l.Batch, h: newContentHash()}
			groups[k] = g
		} else if g.batch != l.Batch {
			g.batch = l.Batch
			g.h.reset()
		}
		hashAddRow(g.h, &r)
		lineKeys = append(lineKeys, k)
		lineBatches = append(lineBatches, l.Batch)
		s.batch = max(s.batch, l.Batch+1)
		return nil
	})
	if err != nil {
		return err
	}
	superseded := false
	for i, k := range lineKeys {
		if lineBatches[i] != groups[k].batch {
			superseded = true
			break
		}
	}
	for k, g := range groups {
		s.conv[k] = g.h.sum()
	}
	if !superseded {
		return nil
	}
	return s.rewrite(2, func(i int) bool { return lineBatches[i] == groups[lineKeys[i]].batch })
}

// writeCommitted records the files' committed sizes.
func (s *FileSink) writeCommitted(sizes [3]int64) error {
	c := committedSizes{Sizes: make(map[string]int64, 3)}
	for i, name := range fileSinkNames() {
		c.Sizes[name] = sizes[i]
	}
	b, err := json.Marshal(c)
	if err != nil {
		return err
	}
	path := filepath.Join(s.dir, fileCommitted)
	tmpPath := path + ".tmp"
	tmp, err := os.OpenFile(tmpPath, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return fmt.Errorf("writing %s: %w", fileCommitted, err)
	}
	_, err = tmp.Write(b)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmpPath, path)
	}
	if err == nil {
		err = s.dirFile.Sync()
	}
	if err != nil {
		os.Remove(tmpPath)
		return fmt.Errorf("writing %s: %w", fileCommitted, err)
	}
	return nil
}

// Write implements FactSink. See FileSink.
func (s *FileSink) Write(ctx context.Context, facts *attribution.Facts) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("writing facts: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return errors.New("writing facts: sink closed")
	}
	if s.broken != nil {
		return fmt.Errorf("writing facts: the sink needs reopening after a failed write: %w", s.broken)
	}
	b := prepareBatch(facts)
	if b.empty() {
		return nil
	}
	h := newContentHash()
	var bufs [3]bytes.Buffer
	encs := [3]*json.Encoder{json.NewEncoder(&bufs[0]), json.NewEncoder(&bufs[1]), json.NewEncoder(&bufs[2])}
	for _, e := range encs {
		e.SetEscapeHTML(false)
	}
	type impUpdate struct {
		id string
		h  uint64
	}
	var impUp, clkUp []impUpdate
	type convUpdate struct {
		k convKey
		h uint64
	}
	var convUp []convUpdate

	for _, f := range b.impressions {
		sum := hashImpression(h, f)
		if old, ok := s.imp[f.ImpressionID]; ok && old == sum {
			continue
		}
		if err := encs[0].Encode(toImpressionLine(f)); err != nil {
			return fmt.Errorf("encoding an impression: %w", err)
		}
		impUp = append(impUp, impUpdate{f.ImpressionID, sum})
	}
	for _, f := range b.clicks {
		sum := hashClick(h, f)
		if old, ok := s.clk[f.ClickID]; ok && old == sum {
			continue
		}
		if err := encs[1].Encode(toClickLine(f)); err != nil {
			return fmt.Errorf("encoding a click: %w", err)
		}
		clkUp = append(clkUp, impUpdate{f.ClickID, sum})
	}
	for _, g := range b.groups {
		h.reset()
		for i := g.start; i < g.end; i++ {
			hashAddRow(h, &b.rows[i])
		}
		sum := h.sum()
		if old, ok := s.conv[g.key]; ok && old == sum {
			continue
		}
		for i := g.start; i < g.end; i++ {
			if err := encs[2].Encode(toAttributionLine(&b.rows[i], s.batch)); err != nil {
				return fmt.Errorf("encoding an attribution row: %w", err)
			}
		}
		convUp = append(convUp, convUpdate{g.key, sum})
	}

	sizes := s.sizes
	err := func() error {
		for i := range bufs {
			if bufs[i].Len() == 0 {
				continue
			}
			if _, err := s.files[i].WriteAt(bufs[i].Bytes(), s.sizes[i]); err != nil {
				return fmt.Errorf("appending to %s: %w", fileSinkNames()[i], err)
			}
			sizes[i] += int64(bufs[i].Len())
		}
		for i := range bufs {
			if bufs[i].Len() == 0 {
				continue
			}
			if err := s.files[i].Sync(); err != nil {
				return fmt.Errorf("syncing %s: %w", fileSinkNames()[i], err)
			}
		}
		if sizes == s.sizes {
			return nil // everything was already stored
		}
		return s.writeCommitted(sizes)
	}()
	if err != nil {
		// Undo the appends, so that the next Write does not commit them.
		for i := range s.files {
			if terr := s.files[i].Truncate(s.sizes[i]); terr != nil {
				s.broken = terr
			}
		}
		return fmt.Errorf("writing facts: %w", err)
	}
	s.sizes = sizes
	s.batch++
	for _, u := range impUp {
		s.imp[u.id] = u.h
	}
	for _, u := range clkUp {
		s.clk[u.id] = u.h
	}
	for _, u := range convUp {
		s.conv[u.k] = u.h
	}
	return nil
}

// Snapshot implements SnapshotReader: it reads the committed files and
// applies "last row of a key wins".
func (s *FileSink) Snapshot(ctx context.Context) (*Snapshot, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("reading facts: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, errors.New("reading facts: sink closed")
	}
	snap := &Snapshot{}

	imps := make(map[string]attribution.ImpressionFact)
	err := scanLines(s.files[0], s.sizes[0], func(line []byte) error {
		var l impressionLine
		if err := json.Unmarshal(line, &l); err != nil {
			return err
		}
		f, err := l.fact()
		imps[f.ImpressionID] = f
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", fileImpressions, err)
	}
	for _, f := range imps {
		snap.Impressions = append(snap.Impressions, f)
	}

	clks := make(map[string]attribution.ClickFact)
	err = scanLines(s.files[1], s.sizes[1], func(line []byte) error {
		var l clickLine
		if err := json.Unmarshal(line, &l); err != nil {
			return err
		}
		f, err := l.fact()
		clks[f.ClickID] = f
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", fileClicks, err)
	}
	for _, f := range clks {
		snap.Clicks = append(snap.Clicks, f)
	}

	type group struct {
		batch uint64
		rows  []attribution.AttributionRow
	}
	groups := make(map[convKey]*group)
	err = scanLines(s.files[2], s.sizes[2], func(line []byte) error {
		var l attributionLine
		if err := json.Unmarshal(line, &l); err != nil {
			return err
		}
		r, err := l.row()
		if err != nil {
			return err
		}
		k := convKey{r.ConversionID, r.Model}
		g := groups[k]
		if g == nil || g.batch != l.Batch {
			g = &group{batch: l.Batch}
			groups[k] = g
		}
		g.rows = append(g.rows, r)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", fileAttributions, err)
	}
	keys := make([]convKey, 0, len(groups))
	for k := range groups {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		if keys[i].ID != keys[j].ID {
			return keys[i].ID < keys[j].ID
		}
		return keys[i].Model < keys[j].Model
	})
	for _, k := range keys {
		snap.Attributions = append(snap.Attributions, groups[k].rows...)
	}
	sortSnapshot(snap)
	return snap, nil
}

func (s *FileSink) closeFiles() {
	for _, f := range s.files {
		if f != nil {
			f.Close()
		}
	}
}

// Close closes the files and releases the directory.
func (s *FileSink) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	s.closeFiles()
	unlockFile(s.dirFile)
	return s.dirFile.Close()
}
