package attribution

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"math"
	"strconv"
	"time"
	"unicode/utf8"
)

// Type is the kind of an event. The numeric order is the order in which
// events of equal time are applied: bid, impression, click, conversion.
type Type uint8

const (
	TypeNone       Type = 0 // no touch: the touch type of an organic conversion
	TypeBid        Type = 1
	TypeImpression Type = 2
	TypeClick      Type = 3
	TypeConversion Type = 4
)

var typeNames = [...]string{"none", "bid", "impression", "click", "conversion"}

// String returns the name used on the wire and in the warehouse.
func (t Type) String() string {
	if int(t) < len(typeNames) {
		return typeNames[t]
	}
	return "type(" + strconv.Itoa(int(t)) + ")"
}

// ParseType is the inverse of Type.String for the four event types.
func ParseType(s string) (Type, error) {
	for i := TypeBid; i <= TypeConversion; i++ {
		if typeNames[i] == s {
			return i, nil
		}
	}
	return TypeNone, &ValidationError{Field: "type", Problem: "unknown event type " + strconv.Quote(s)}
}

// IsTouch reports whether events of this type can be credited for a conversion.
func (t Type) IsTouch() bool { return t == TypeImpression || t == TypeClick }

// Event is one decoded, validated record of any type. Times are Unix
// milliseconds, UTC. Fields that do not belong to the event's type are empty.
//
// The same struct serves all four types so that a partition's buffer holds
// one flat value per record and ordering needs no type switches.
type Event struct {
	Type   Type
	UserID string
	// ID is the event id: impression_id, click_id, conversion_id, or the
	// bid's auction_details.auction_id. Normalize derives one when missing.
	ID   string
	Time int64

	CreativeID string // impression, click, bid (ad_targeting)
	CampaignID string // impression, click, bid (ad_targeting)
	Website    string // impression, bid (ad_targeting)

	AuctionID    string // impression: the bid it joins to
	ImpressionID string // click: the impression it joins to

	ConversionType string  // conversion
	Value          float64 // conversion
	Currency       string  // conversion

	Bid *Bid // bid only
}

// Bid holds what a bid request carries beyond the common fields.
type Bid struct {
	FloorPrice float64
	BidPrice   float64
	Currency   string
	Exchange   string
	Criteria   []string // ad_targeting.targeting_criteria
}

// Limits on field sizes. They bound a user's state and keep every value
// inside a Redshift VARCHAR(256) column.
const (
	MaxFieldLen  = 256           // bytes, any string field
	MaxCriteria  = 64            // targeting criteria per bid
	MinEventTime = 946684800000  // 2000-01-01T00:00:00Z
	MaxEventTime = 7258118400000 // 2200-01-01T00:00:00Z
)

// ErrInvalidEvent is matched (errors.Is) by every validation error.
var ErrInvalidEvent = errors.New("invalid event")

// ErrFutureEvent is matched by the error of an event too far ahead of the
// wall clock (see CheckTime).
var ErrFutureEvent = errors.New("event time too far in the future")

// ValidationError names the field at fault and the problem with it.
type ValidationError struct {
	Field   string
	Problem string
	future  bool
}

func (e *ValidationError) Error() string { return e.Field + ": " + e.Problem }

// Is makes errors.Is(err, ErrInvalidEvent) true for every ValidationError,
// and errors.Is(err, ErrFutureEvent) for a time too far ahead.
func (e *ValidationError) Is(target error) bool {
	return target == ErrInvalidEvent || (e.future && target == ErrFutureEvent)
}

func invalid(field, problem string) error { return &ValidationError{Field: field, Problem: problem} }

// idField is the name of the event's id field on the wire.
func (t Type) idField() string {
	switch t {
	case TypeImpression:
		return "impression_id"
	case TypeClick:
		return "click_id"
	case TypeConversion:
		return "conversion_id"
	case TypeBid:
		return "auction_details.auction_id"
	}
	return "id"
}

// Normalize derives a missing id (see DeriveID) and upper-cases currency
// codes. It is idempotent. Decoders call it before Validate.
func (e *Event) Normalize() {
	e.Currency = upperASCII(e.Currency)
	if e.Bid != nil {
		e.Bid.Currency = upperASCII(e.Bid.Currency)
	}
	if e.ID == "" {
		e.ID = DeriveID(e)
	}
}

// Validate checks the event's fields. It does not look at the wall clock:
// see CheckTime for that. The error is a *ValidationError.
func (e *Event) Validate() error {
	if e.Type < TypeBid || e.Type > TypeConversion {
		return invalid("type", "unknown event type "+strconv.Itoa(int(e.Type)))
	}
	if e.UserID == "" {
		return invalid("user_id", "missing")
	}
	if e.ID == "" {
		return invalid(e.Type.idField(), "missing")
	}
	if e.Time < MinEventTime || e.Time >= MaxEventTime {
		return invalid("timestamp", "out of range (years 2000 to 2199): "+FormatTime(e.Time))
	}
	if err := checkStrings(e); err != nil {
		return err
	}
	switch e.Type {
	case TypeConversion:
		if math.IsNaN(e.Value) || math.IsInf(e.Value, 0) {
			return invalid("value", "not a finite number")
		}
		if e.Currency != "" && !isCurrency(e.Currency) {
			return invalid("currency", "not a three-letter code: "+strconv.Quote(e.Currency))
		}
	case TypeBid:
		if e.Bid == nil {
			return invalid("auction_details", "missing")
		}
		if err := checkPrice("auction_details.bid_price", e.Bid.BidPrice); err != nil {
			return err
		}
		if err := checkPrice("auction_details.floor_price", e.Bid.FloorPrice); err != nil {
			return err
		}
		if e.Bid.Currency != "" && !isCurrency(e.Bid.Currency) {
			return invalid("auction_details.currency", "not a three-letter code: "+strconv.Quote(e.Bid.Currency))
		}
		if len(e.Bid.Criteria) > MaxCriteria {
			return invalid("ad_targeting.targeting_criteria", "more than "+strconv.Itoa(MaxCriteria)+" entries")
		}
		for _, c := range e.Bid.Criteria {
			if err := checkString("ad_targeting.targeting_criteria", c); err != nil {
				return err
			}
		}
		if err := checkString("auction_details.exchange", e.Bid.Exchange); err != nil {
			return err
		}
	}
	return nil
}

// CheckTime rejects an event more than maxFutureSkew ahead of now.
func (e *Event) CheckTime(now time.Time, maxFutureSkew time.Duration) error {
	if e.Time > now.UnixMilli()+maxFutureSkew.Milliseconds() {
		return &ValidationError{
			Field:   "timestamp",
			Problem: FormatTime(e.Time) + " is more than " + maxFutureSkew.String() + " ahead of the clock",
			future:  true,
		}
	}
	return nil
}

func checkPrice(field string, v float64) error {
	if math.IsNaN(v) || math.IsInf(v, 0) || v < 0 {
		return invalid(field, "not a finite, non-negative number")
	}
	return nil
}

func checkStrings(e *Event) error {
	fields := [...]struct {
		name, v string
	}{
		{"user_id", e.UserID}, {e.Type.idField(), e.ID},
		{"ad_creative_id", e.CreativeID}, {"campaign_id", e.CampaignID},
		{"website", e.Website}, {"auction_id", e.AuctionID},
		{"impression_id", e.ImpressionID}, {"conversion_type", e.ConversionType},
		{"currency", e.Currency},
	}
	for _, f := range fields {
		if err := checkString(f.name, f.v); err != nil {
			return err
		}
	}
	return nil
}

func checkString(field, v string) error {
	if len(v) > MaxFieldLen {
		return invalid(field, "longer than "+strconv.Itoa(MaxFieldLen)+" bytes")
	}
	if !utf8.ValidString(v) {
		return invalid(field, "not valid UTF-8")
	}
	for i := 0; i < len(v); i++ {
		if v[i] < 0x20 || v[i] == 0x7f {
			return invalid(field, "contains a control character")
		}
	}
	return nil
}

func isCurrency(s string) bool {
	if len(s) != 3 {
		return false
	}
	for i := 0; i < 3; i++ {
		if s[i] < 'A' || s[i] > 'Z' {
			return false
		}
	}
	return true
}

func upperASCII(s string) string {
	for i := 0; i < len(s); i++ {
		if s[i] >= 'a' && s[i] <= 'z' {
			b := []byte(s)
			for j := i; j < len(b); j++ {
				if b[j] >= 'a' && b[j] <= 'z' {
					b[j] -= 'a' - 'A'
				}
			}
			return string(b)
		}
	}
	return s
}

// DeriveID returns the deterministic id of an event that arrived without
// one: 32 hex digits of a SHA-256 over its type and canonical fields, so the
// same record always gets the same id (and so dedupes).
func DeriveID(e *Event) string {
	h := sha256.New()
	var n [8]byte
	put := func(s string) {
		binary.BigEndian.PutUint64(n[:], uint64(len(s)))
		h.Write(n[:])
		h.Write([]byte(s))
	}
	putInt := func(v uint64) {
		binary.BigEndian.PutUint64(n[:], v)
		h.Write(n[:])
	}
	putInt(uint64(e.Type))
	put(e.UserID)
	putInt(uint64(e.Time))
	put(e.CreativeID)
	put(e.CampaignID)
	put(e.Website)
	put(e.AuctionID)
	put(e.ImpressionID)
	put(e.ConversionType)
	putInt(math.Float64bits(e.Value))
	put(e.Currency)
	if b := e.Bid; b != nil {
		putInt(math.Float64bits(b.FloorPrice))
		putInt(math.Float64bits(b.BidPrice))
		put(b.Currency)
		put(b.Exchange)
		for _, c := range b.Criteria {
			put(c)
		}
	}
	var sum [sha256.Size]byte
	return hex.EncodeToString(h.Sum(sum[:0])[:16])
}

// FormatTime renders Unix milliseconds as RFC 3339 with milliseconds, UTC.
func FormatTime(ms int64) string {
	return time.UnixMilli(ms).UTC().Format("2006-01-02T15:04:05.000Z07:00")
}

// ParseTime reads an RFC 3339 timestamp (any offset, fractional seconds
// optional, truncated to milliseconds) or integer Unix milliseconds.
func ParseTime(s string) (int64, error) {
	if s == "" {
		return 0, invalid("timestamp", "missing")
	}
	if s[0] >= '0' && s[0] <= '9' && len(s) >= 10 && !containsByte(s, '-') {
		ms, err := strconv.ParseInt(s, 10, 64)
		if err == nil {
			return ms, nil
		}
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return 0, invalid("timestamp", "not RFC 3339 or Unix milliseconds: "+strconv.Quote(truncate(s, 64)))
	}
	return t.UnixMilli(), nil
}

func containsByte(s string, c byte) bool {
	for i := 0; i < len(s); i++ {
		if s[i] == c {
			return true
		}
	}
	return false
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// Less orders events for application: by time, then type (bid, impression,
// click, conversion), then id in byte order.
func Less(a, b *Event) bool {
	if a.Time != b.Time {
		return a.Time < b.Time
	}
	if a.Type != b.Type {
		return a.Type < b.Type
	}
	return a.ID < b.ID
}
