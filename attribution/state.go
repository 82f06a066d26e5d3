package attribution

import (
	"math"
	"sort"
)

// Touch is an impression or click kept in a user's state.
type Touch struct {
	Type       Type
	ID         string
	Time       int64
	CreativeID string
	CampaignID string
	// ImpressionID is, for a click, the impression it joined (or named).
	ImpressionID string

	// expiry is Time plus the touch's window: the last conversion time the
	// touch is eligible for, and the latest time it is kept until.
	expiry int64
	// pending is set on an impression that names an auction whose bid has
	// not been applied yet, so that the bid can still join it.
	pending *pendingJoin
}

type pendingJoin struct {
	AuctionID string
	Website   string
}

// Expiry is the last conversion time this touch is eligible for.
func (t *Touch) Expiry() int64 { return t.expiry }

type bidRecord struct {
	ID   string
	Time int64
	// Bid is kept after a join: an impression applied again (a duplicate
	// the state no longer remembers, a replay) must join it again, or its
	// new fact would replace the joined one without the bid.
	Bid *Bid
}

// forgotten is an event a per-user cap pushed out of the state, remembered
// (by a hash of its type and id) until its window passes, so that its
// duplicates are still duplicates.
type forgotten struct {
	key    uint64
	expiry int64
}

// forgetKey hashes an event's type and id (FNV-1a, 64 bits).
func forgetKey(t Type, id string) uint64 {
	h := uint64(14695981039346656037)
	h = (h ^ uint64(t)) * 1099511628211
	for i := 0; i < len(id); i++ {
		h = (h ^ uint64(id[i])) * 1099511628211
	}
	return h
}

// State is one user's attribution state: the touches that can still be
// credited, recent bids waiting for their impression, and recent
// conversions (for dedupe and lookups). The zero value is an empty state.
//
// A State is not safe for concurrent use; in lookback one actor owns it.
type State struct {
	touches []Touch      // ordered by (Time, ID): path order
	bids    []bidRecord  // in application order
	convs   []Conversion // ordered by (Time, ID)
	// forgotten remembers what the caps evicted, oldest first.
	forgotten []forgotten
	// latest is the time of the latest record applied; retention is
	// measured back from it.
	latest int64
	// nextExpiry is the earliest time at which something in the state
	// expires, so that pruning is skipped until latest passes it.
	nextExpiry int64
}

// Outcome says what applying an event did.
type Outcome struct {
	// Duplicate: the state had already seen this (type, id); nothing changed.
	Duplicate bool
	// Evicted counts touches and conversions pushed out by the per-user caps.
	Evicted int
}

// Touches returns the kept touches, oldest first. Read-only.
func (s *State) Touches() []Touch { return s.touches }

// Conversions returns the kept conversions, oldest first. Read-only.
func (s *State) Conversions() []Conversion { return s.convs }

// Conversion returns the kept conversion of that id.
func (s *State) Conversion(id string) (*Conversion, bool) {
	for i := range s.convs {
		if s.convs[i].ID == id {
			return &s.convs[i], true
		}
	}
	return nil, false
}

// Latest is the time of the latest record applied (0 for a new state).
func (s *State) Latest() int64 { return s.latest }

// Empty reports whether the state holds nothing at all.
func (s *State) Empty() bool {
	return len(s.touches) == 0 && len(s.bids) == 0 && len(s.convs) == 0 && len(s.forgotten) == 0 && s.latest == 0
}

// Apply validates an event, then applies it (see ApplyValid). An invalid
// event returns a *ValidationError and leaves the state unchanged.
func (r *Rules) Apply(s *State, ev *Event, out *Facts) (Outcome, error) {
	if err := ev.Validate(); err != nil {
		return Outcome{}, err
	}
	return r.ApplyValid(s, ev, out), nil
}

// ApplyValid applies one event that has passed Validate to the user's
// state and appends the facts it produces to out. Decoders validate every
// event they return, and validating again would cost about as much as
// applying; an event that has not passed Validate may corrupt the state.
// Events must be applied in (time, type, id) order for results that do not
// depend on arrival order (see Sequencer); an event older than the state's
// latest (a late one) is still applied.
func (r *Rules) ApplyValid(s *State, ev *Event, out *Facts) Outcome {
	switch ev.Type {
	case TypeImpression:
		return r.applyImpression(s, ev, out)
	case TypeClick:
		return r.applyClick(s, ev, out)
	case TypeConversion:
		return r.applyConversion(s, ev, out)
	default:
		return r.applyBid(s, ev, out)
	}
}

func (s *State) hasTouch(t Type, id string) bool {
	for i := range s.touches {
		if s.touches[i].ID == id && s.touches[i].Type == t {
			return true
		}
	}
	return s.wasForgotten(t, id)
}

func (s *State) wasForgotten(t Type, id string) bool {
	if len(s.forgotten) == 0 {
		return false
	}
	key := forgetKey(t, id)
	for _, f := range s.forgotten {
		if f.key == key {
			return true
		}
	}
	return false
}

// forget remembers an event a cap evicted, within a bound of its own.
func (s *State) forget(r *Rules, t Type, id string, expiry int64) {
	if expiry < s.latest {
		return // its window has passed: nothing could be a duplicate of it now
	}
	s.forgotten = append(s.forgotten, forgotten{key: forgetKey(t, id), expiry: expiry})
	if over := len(s.forgotten) - r.maxForgotten; over > 0 {
		s.forgotten = dropFront(s.forgotten, over)
	}
	s.noteExpiry(expiry)
}

func (r *Rules) applyImpression(s *State, ev *Event, out *Facts) Outcome {
	if s.hasTouch(TypeImpression, ev.ID) {
		return Outcome{Duplicate: true}
	}
	s.advance(r, ev.Time) // joins see only what the state keeps at this time
	window := r.Window(TypeImpression, ev.CampaignID)
	t := Touch{
		Type: TypeImpression, ID: ev.ID, Time: ev.Time,
		CreativeID: ev.CreativeID, CampaignID: ev.CampaignID,
		expiry: ev.Time + window,
	}
	fact := ImpressionFact{
		ImpressionID: ev.ID, UserID: ev.UserID, Time: ev.Time,
		CreativeID: ev.CreativeID, CampaignID: ev.CampaignID,
		Website: ev.Website, AuctionID: ev.AuctionID,
	}
	if ev.AuctionID != "" {
		if b := s.findBid(ev.AuctionID); b != nil && abs(ev.Time-b.Time) <= window {
			fact.Bid = b.Bid
		} else {
			t.pending = &pendingJoin{AuctionID: ev.AuctionID, Website: ev.Website}
		}
	}
	out.Impressions = append(out.Impressions, fact)
	return Outcome{Evicted: s.addTouch(r, t)}
}

func (r *Rules) applyClick(s *State, ev *Event, out *Facts) Outcome {
	if s.hasTouch(TypeClick, ev.ID) {
		return Outcome{Duplicate: true}
	}
	s.advance(r, ev.Time)
	window := r.Window(TypeClick, ev.CampaignID)
	fact := ClickFact{
		ClickID: ev.ID, UserID: ev.UserID, Time: ev.Time,
		CreativeID: ev.CreativeID, CampaignID: ev.CampaignID,
		ImpressionID: ev.ImpressionID,
	}
	if imp := s.clickImpression(ev, window); imp != nil {
		fact.ImpressionID = imp.ID
		fact.Joined = true
		fact.SinceImpression = ev.Time - imp.Time
	}
	out.Clicks = append(out.Clicks, fact)
	t := Touch{
		Type: TypeClick, ID: ev.ID, Time: ev.Time,
		CreativeID: ev.CreativeID, CampaignID: ev.CampaignID,
		ImpressionID: fact.ImpressionID,
		expiry:       ev.Time + window,
	}
	return Outcome{Evicted: s.addTouch(r, t)}
}

// clickImpression finds the impression a click joins: the one it names, or
// when it names none, the latest impression of the same creative at or
// before the click and within the click window.
func (s *State) clickImpression(ev *Event, window int64) *Touch {
	if ev.ImpressionID != "" {
		for i := range s.touches {
			if t := &s.touches[i]; t.Type == TypeImpression && t.ID == ev.ImpressionID {
				return t
			}
		}
		return nil
	}
	if ev.CreativeID == "" {
		return nil
	}
	for i := len(s.touches) - 1; i >= 0; i-- {
		t := &s.touches[i]
		if t.Type == TypeImpression && t.CreativeID == ev.CreativeID &&
			t.Time <= ev.Time && ev.Time-t.Time <= window {
			return t
		}
	}
	return nil
}

func (r *Rules) applyBid(s *State, ev *Event, out *Facts) Outcome {
	if s.findBid(ev.ID) != nil || s.wasForgotten(TypeBid, ev.ID) {
		return Outcome{Duplicate: true}
	}
	s.advance(r, ev.Time)
	// The bid may come after its impressions: join those still waiting for
	// it, and write their facts again.
	for i := range s.touches {
		t := &s.touches[i]
		if t.pending == nil || t.pending.AuctionID != ev.ID || abs(t.Time-ev.Time) > t.expiry-t.Time {
			continue
		}
		out.Impressions = append(out.Impressions, ImpressionFact{
			ImpressionID: t.ID, UserID: ev.UserID, Time: t.Time,
			CreativeID: t.CreativeID, CampaignID: t.CampaignID,
			Website: t.pending.Website, AuctionID: ev.ID, Bid: ev.Bid,
		})
		t.pending = nil
	}
	expiry := ev.Time + r.maxView
	if expiry < s.latest {
		return Outcome{} // too old to join anything later: keep nothing
	}
	s.bids = append(s.bids, bidRecord{ID: ev.ID, Time: ev.Time, Bid: ev.Bid})
	s.noteExpiry(expiry)
	// Bids are capped like touches; the oldest go first.
	if over := len(s.bids) - r.cfg.MaxTouchesPerUser; over > 0 {
		oldest := 0
		for i := range s.bids {
			if s.bids[i].Time < s.bids[oldest].Time {
				oldest = i
			}
		}
		b := s.bids[oldest]
		s.bids = append(s.bids[:oldest], s.bids[oldest+1:]...)
		s.forget(r, TypeBid, b.ID, b.Time+r.maxView)
		return Outcome{Evicted: 1}
	}
	return Outcome{}
}

func (s *State) findBid(id string) *bidRecord {
	for i := range s.bids {
		if s.bids[i].ID == id {
			return &s.bids[i]
		}
	}
	return nil
}

func (r *Rules) applyConversion(s *State, ev *Event, out *Facts) Outcome {
	if _, ok := s.Conversion(ev.ID); ok || s.wasForgotten(TypeConversion, ev.ID) {
		return Outcome{Duplicate: true}
	}
	s.advance(r, ev.Time)
	c := Conversion{
		ID: ev.ID, Time: ev.Time, ConversionType: ev.ConversionType,
		Value: ev.Value, Currency: ev.Currency,
		Path: s.path(ev.Time),
	}
	models := r.cfg.Models
	n := max(len(c.Path), 1)
	credits := make([]float64, len(models)*n)
	for i, m := range models {
		r.Credits(m, c.Time, c.Path, credits[i*n:i*n:(i+1)*n])
	}
	out.Conversions = append(out.Conversions, ConversionFact{
		UserID: ev.UserID, Conversion: c, Models: models, Credits: credits,
	})
	if c.Time+r.maxWindow < s.latest {
		return Outcome{} // a late conversion already past retention
	}
	i := sort.Search(len(s.convs), func(i int) bool { return convLess(&c, &s.convs[i]) })
	s.convs = insertAt(s.convs, i, c)
	s.noteExpiry(c.Time + r.maxWindow)
	evicted := 0
	if over := len(s.convs) - r.cfg.MaxConversionsPerUser; over > 0 {
		for _, old := range s.convs[:over] {
			s.forget(r, TypeConversion, old.ID, old.Time+r.maxWindow)
		}
		s.convs = dropFront(s.convs, over)
		evicted = over
	}
	return Outcome{Evicted: evicted}
}

// path returns the touches eligible for a conversion at time ct: its
// eligible clicks, or when there are none its eligible impressions, oldest
// first. A touch is eligible when it is not after the conversion and the
// conversion is within the touch's window.
func (s *State) path(ct int64) []PathTouch {
	for _, typ := range [2]Type{TypeClick, TypeImpression} {
		n := 0
		for i := range s.touches {
			if t := &s.touches[i]; t.Type == typ && t.Time <= ct && ct <= t.expiry {
				n++
			}
		}
		if n == 0 {
			continue
		}
		p := make([]PathTouch, 0, n)
		for i := range s.touches {
			if t := &s.touches[i]; t.Type == typ && t.Time <= ct && ct <= t.expiry {
				p = append(p, PathTouch{Type: typ, ID: t.ID, Time: t.Time, CreativeID: t.CreativeID, CampaignID: t.CampaignID})
			}
		}
		return p
	}
	return nil
}

// addTouch keeps a touch unless it has already expired, and enforces the
// touch cap. The caller has advanced the state's clock to the touch. It
// returns how many touches the cap evicted.
func (s *State) addTouch(r *Rules, t Touch) int {
	if t.expiry < s.latest {
		return 0 // a late touch already out of every window it could serve
	}
	i := sort.Search(len(s.touches), func(i int) bool { return touchLess(&t, &s.touches[i]) })
	s.touches = insertAt(s.touches, i, t)
	s.noteExpiry(t.expiry)
	if over := len(s.touches) - r.cfg.MaxTouchesPerUser; over > 0 {
		for _, old := range s.touches[:over] {
			s.forget(r, old.Type, old.ID, old.expiry)
		}
		s.touches = dropFront(s.touches, over)
		return over
	}
	return 0
}

// advance moves the state's clock to t if t is later, and prunes what the
// new time puts out of retention.
func (s *State) advance(r *Rules, t int64) {
	if t <= s.latest {
		return
	}
	s.latest = t
	if s.nextExpiry != 0 && s.nextExpiry < t {
		s.prune(r)
	}
}

func (s *State) noteExpiry(e int64) {
	if s.nextExpiry == 0 || e < s.nextExpiry {
		s.nextExpiry = e
	}
}

// prune drops touches whose window ended before latest, bids older than the
// longest view window and conversions older than the longest window.
func (s *State) prune(r *Rules) {
	next := int64(math.MaxInt64)
	keep := s.touches[:0]
	for _, t := range s.touches {
		if t.expiry >= s.latest {
			keep = append(keep, t)
			next = min(next, t.expiry)
		}
	}
	clear(s.touches[len(keep):])
	s.touches = keep

	keepBids := s.bids[:0]
	for _, b := range s.bids {
		if e := b.Time + r.maxView; e >= s.latest {
			keepBids = append(keepBids, b)
			next = min(next, e)
		}
	}
	clear(s.bids[len(keepBids):])
	s.bids = keepBids

	keepConvs := s.convs[:0]
	for _, c := range s.convs {
		if e := c.Time + r.maxWindow; e >= s.latest {
			keepConvs = append(keepConvs, c)
			next = min(next, e)
		}
	}
	clear(s.convs[len(keepConvs):])
	s.convs = keepConvs

	keepForgotten := s.forgotten[:0]
	for _, f := range s.forgotten {
		if f.expiry >= s.latest {
			keepForgotten = append(keepForgotten, f)
			next = min(next, f.expiry)
		}
	}
	s.forgotten = keepForgotten

	if next == math.MaxInt64 {
		next = 0
	}
	s.nextExpiry = next
}

func touchLess(a, b *Touch) bool {
	if a.Time != b.Time {
		return a.Time < b.Time
	}
	if a.ID != b.ID {
		return a.ID < b.ID
	}
	return a.Type < b.Type
}

func convLess(a, b *Conversion) bool {
	if a.Time != b.Time {
		return a.Time < b.Time
	}
	return a.ID < b.ID
}

func insertAt[T any](s []T, i int, v T) []T {
	if i == len(s) {
		return append(s, v)
	}
	var zero T
	s = append(s, zero)
	copy(s[i+1:], s[i:])
	s[i] = v
	return s
}

func dropFront[T any](s []T, n int) []T {
	copy(s, s[n:])
	clear(s[len(s)-n:])
	return s[:len(s)-n]
}

func abs(v int64) int64 {
	if v < 0 {
		return -v
	}
	return v
}
