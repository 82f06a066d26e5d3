package ingest

import (
	_ "embed"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"

	"github.com/hamba/avro/v2"

	"github.com/lookback-dev/lookback/attribution"
)

//go:embed bid_request.avsc
var bidRequestAvsc string

// BidRequestSchema returns the Avro schema (bid_request.avsc) of the values of
// the bid_requests topic, for schema registries and other producers.
func BidRequestSchema() string { return bidRequestAvsc }

var (
	bidSchema = func() avro.Schema {
		s, err := avro.ParseWithCache(bidRequestAvsc, "", &avro.SchemaCache{})
		if err != nil {
			panic("ingest: bad bid_request.avsc: " + err.Error())
		}
		return s
	}()
	// avroAPI bounds what a hostile record can make the decoder allocate:
	// strings and arrays far beyond what validation accepts are refused
	// before they are read.
	avroAPI = avro.Config{
		MaxByteSliceSize:  64 << 10,
		MaxSliceAllocSize: 4096,
	}.Freeze()
)

// avroBid mirrors bid_request.avsc for hamba/avro. country and device_type
// are not in the struct, so hamba skips them without allocating; segments is
// read into a reused slice (skipping an array does not bound its block count)
// and dropped, as Event has no place for it.
type avroBid struct {
	UserInfo struct {
		UserID   string   `avro:"user_id"`
		Segments []string `avro:"segments"`
	} `avro:"user_info"`
	AuctionDetails struct {
		AuctionID  string  `avro:"auction_id"`
		FloorPrice float64 `avro:"floor_price"`
		BidPrice   float64 `avro:"bid_price"`
		Currency   string  `avro:"currency"`
		Exchange   string  `avro:"exchange"`
	} `avro:"auction_details"`
	AdTargeting struct {
		Criteria   []string `avro:"targeting_criteria"`
		CreativeID string   `avro:"ad_creative_id"`
		CampaignID string   `avro:"campaign_id"`
		Website    string   `avro:"website"`
	} `avro:"ad_targeting"`
	Timestamp int64 `avro:"timestamp"`
}

// confluentHeaderLen is the magic byte and the 4-byte schema id.
const confluentHeaderLen = 5

// BidDecoder decodes the values of the bid_requests topic: Avro binary of
// BidRequestSchema, either plain or in the Confluent wire format (magic byte
// 0, a 4-byte big-endian schema id, then the Avro body). Plain Avro of this
// schema never starts with byte 0 (its first field is user_id, whose length
// is at least 1 in a valid record), so a leading 0 means the framing.
//
// The event maps user_info.user_id to UserID, auction_details.auction_id to
// ID, ad_targeting's creative, campaign and website to the event's fields,
// and the prices, currency, exchange and targeting criteria to Bid. Country,
// device type and segments are read and dropped.
//
// A decoder is reused across records and is not safe for concurrent use.
type BidDecoder struct {
	accepted []int32
	r        *avro.Reader
	rec      avroBid
	intern   internTable
}

// NewBidDecoder returns a bid decoder that accepts records framed with any
// of acceptedSchemaIDs; with none, it accepts every schema id (the records
// are read with this package's schema whatever the id says).
func NewBidDecoder(acceptedSchemaIDs []int32) *BidDecoder {
	return &BidDecoder{
		accepted: append([]int32(nil), acceptedSchemaIDs...),
		r:        avro.NewReader(nil, 0, avro.WithReaderConfig(avroAPI)),
	}
}

func (d *BidDecoder) accepts(id int32) bool {
	if len(d.accepted) == 0 {
		return true
	}
	for _, a := range d.accepted {
		if a == id {
			return true
		}
	}
	return false
}

// Decode parses value into ev (overwriting all of it), then normalizes and
// validates the event. A framed record with a schema id that is not
// accepted, a truncated record and one with bytes after its end are errors
// matching ErrMalformed; validation errors are *attribution.ValidationError.
func (d *BidDecoder) Decode(value []byte, ev *attribution.Event) error {
	*ev = attribution.Event{}
	body := value
	if len(value) > 0 && value[0] == 0 {
		if len(value) < confluentHeaderLen {
			return malformed("bid", "truncated Confluent wire-format header ("+strconv.Itoa(len(value))+" bytes)")
		}
		id := int32(binary.BigEndian.Uint32(value[1:confluentHeaderLen]))
		if !d.accepts(id) {
			return malformed("bid", "schema id "+strconv.Itoa(int(id))+" not accepted")
		}
		body = value[confluentHeaderLen:]
	}
	if len(body) == 0 {
		return malformed("bid", "empty Avro record")
	}
	if err := checkAvroBid(body); err != nil {
		return err
	}
	if d.r == nil {
		d.r = avro.NewReader(nil, 0, avro.WithReaderConfig(avroAPI))
	}
	if err := d.read(body); err != nil {
		return err
	}
	rec := &d.rec
	criteria := rec.AdTargeting.Criteria
	if len(criteria) == 0 {
		criteria = nil
	}
	for i, c := range criteria {
		criteria[i] = d.intern.strs(c)
	}
	// Strings decoded by hamba share a slab with other records' strings:
	// copy them out so that an event kept in state pins only its own bytes.
	*ev = attribution.Event{
		Type:       attribution.TypeBid,
		UserID:     strings.Clone(rec.UserInfo.UserID),
		ID:         strings.Clone(rec.AuctionDetails.AuctionID),
		Time:       rec.Timestamp,
		CreativeID: d.intern.strs(rec.AdTargeting.CreativeID),
		CampaignID: d.intern.strs(rec.AdTargeting.CampaignID),
		Website:    d.intern.strs(rec.AdTargeting.Website),
		Bid: &attribution.Bid{
			FloorPrice: rec.AuctionDetails.FloorPrice,
			BidPrice:   rec.AuctionDetails.BidPrice,
			Currency:   d.intern.strs(rec.AuctionDetails.Currency),
			Exchange:   d.intern.strs(rec.AuctionDetails.Exchange),
			Criteria:   criteria,
		},
	}
	return finish(ev)
}

// checkAvroBid walks an Avro body of bid_request.avsc without decoding it,
// and fails unless it is exactly one well-formed record: every length and
// count within the input, union indexes 0 or 1, array block sizes that
// match their items, nothing after the end. hamba/avro is only given
// records that pass: on some malformed ones it loops for a very long time
// (a huge block count of skipped items) or writes through a slice of
// negative length (a block count of math.MinInt64), corrupting memory.
func checkAvroBid(b []byte) error {
	w := avroWalk{b: b}
	w.str("user_info.user_id")
	w.nullableStr("user_info.country")
	w.nullableStr("user_info.device_type")
	w.strArray("user_info.segments")
	w.str("auction_details.auction_id")
	w.fixed("auction_details.floor_price", 8)
	w.fixed("auction_details.bid_price", 8)
	w.str("auction_details.currency")
	w.str("auction_details.exchange")
	w.strArray("ad_targeting.targeting_criteria")
	w.str("ad_targeting.ad_creative_id")
	w.str("ad_targeting.campaign_id")
	w.str("ad_targeting.website")
	w.long("timestamp")
	if w.err != nil {
		return w.err
	}
	if w.i != len(b) {
		return malformed("bid", "unexpected data after the Avro record ("+strconv.Itoa(len(b)-w.i)+" bytes)")
	}
	return nil
}

// avroWalk reads Avro binary for checkAvroBid; the first error sticks.
type avroWalk struct {
	b   []byte
	i   int
	err error
}

func (w *avroWalk) fail(field, problem string) {
	if w.err == nil {
		w.err = malformed("bid", "bad Avro at offset "+strconv.Itoa(w.i)+" ("+field+"): "+problem)
	}
}

func (w *avroWalk) truncated(field string) {
	if w.err == nil {
		w.err = malformed("bid", "truncated Avro record (in "+field+")")
	}
}

// long reads a zigzag varint as hamba/avro does: at most 10 bytes.
func (w *avroWalk) long(field string) int64 {
	if w.err != nil {
		return 0
	}
	if w.i < len(w.b) && w.b[w.i] < 0x80 { // one byte: most lengths
		u := uint64(w.b[w.i])
		w.i++
		return int64(u>>1) ^ -int64(u&1)
	}
	var u uint64
	for n := 0; n < 10; n++ {
		if w.i >= len(w.b) {
			w.truncated(field)
			return 0
		}
		c := w.b[w.i]
		w.i++
		u |= uint64(c&0x7f) << (7 * n)
		if c&0x80 == 0 {
			return int64(u>>1) ^ -int64(u&1)
		}
	}
	w.fail(field, "varint longer than 10 bytes")
	return 0
}

func (w *avroWalk) fixed(field string, n int) {
	if w.err == nil && len(w.b)-w.i < n {
		w.truncated(field)
		return
	}
	w.i += n
}

func (w *avroWalk) str(field string) {
	n := w.long(field)
	switch {
	case w.err != nil:
	case n < 0:
		w.fail(field, "negative string length")
	case n > int64(len(w.b)-w.i):
		w.truncated(field)
	default:
		w.i += int(n)
	}
}

func (w *avroWalk) nullableStr(field string) {
	switch idx := w.long(field); {
	case w.err != nil:
	case idx == 1:
		w.str(field)
	case idx != 0:
		w.fail(field, "union index "+strconv.FormatInt(idx, 10)+" out of range")
	}
}

// strArray reads an array of strings: blocks of a count and that many
// items, a negative count being followed by the block's size in bytes, up to
// a block of count 0.
func (w *avroWalk) strArray(field string) {
	for w.err == nil {
		count := w.long(field)
		if w.err != nil || count == 0 {
			return
		}
		size := int64(-1)
		if count < 0 {
			if count == math.MinInt64 {
				w.fail(field, "bad block count")
				return
			}
			count = -count
			if size = w.long(field); w.err == nil && size < 0 {
				w.fail(field, "negative block size")
				return
			}
		}
		// Every item takes at least one byte.
		if count > int64(len(w.b)-w.i) || size > int64(len(w.b)-w.i) {
			w.truncated(field)
			return
		}
		start := w.i
		for range count {
			w.str(field)
		}
		if w.err == nil && size >= 0 && int64(w.i-start) != size {
			w.fail(field, "block size "+strconv.FormatInt(size, 10)+" does not match its items")
		}
	}
}

// read decodes one Avro body into d.rec.
func (d *BidDecoder) read(body []byte) (err error) {
	defer func() {
		// hamba/avro can panic on some hostile inputs (a block count of
		// math.MinInt64); a bad record must not take the consumer down.
		if p := recover(); p != nil {
			err = malformed("bid", fmt.Sprintf("bad Avro: %v", p))
		}
	}()
	segments := d.rec.UserInfo.Segments[:0]
	d.rec = avroBid{}
	d.rec.UserInfo.Segments = segments
	r := d.r
	r.Reset(body)
	r.Error = nil
	r.ReadVal(bidSchema, &d.rec)
	if r.Error != nil {
		err := r.Error
		r.Error = nil
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return &malformedError{msg: "bid: truncated Avro record", err: err}
		}
		return &malformedError{msg: "bid: bad Avro: " + err.Error(), err: err}
	}
	r.Peek()
	if r.Error == nil {
		return malformed("bid", "unexpected data after the Avro record")
	}
	r.Error = nil
	return nil
}

// BidEncoder writes bid events as bid_requests values: Avro binary of
// BidRequestSchema, plain or, with Framed set, in the Confluent wire format
// with SchemaID. Country and device type are written as null and segments
// as empty: Event does not carry them. The zero value writes plain Avro.
type BidEncoder struct {
	Framed   bool
	SchemaID int32
}

// Append appends the value of a bid event to dst. It fails for an event that
// is not a bid or has no Bid, and, in plain Avro, for an empty user_id (whose
// record would start with the byte that means the Confluent framing).
func (e BidEncoder) Append(dst []byte, ev *attribution.Event) ([]byte, error) {
	if ev.Type != attribution.TypeBid || ev.Bid == nil {
		return dst, fmt.Errorf("ingest: cannot encode a %s event without bid details as a bid request", ev.Type)
	}
	if e.Framed {
		dst = append(dst, 0)
		dst = binary.BigEndian.AppendUint32(dst, uint32(e.SchemaID))
	} else if ev.UserID == "" {
		return dst, errors.New("ingest: a bid request with an empty user_id cannot be written as plain Avro")
	}
	return appendAvroBid(dst, ev), nil
}

// appendAvroBid appends the Avro binary encoding of ev in the field order of
// bid_request.avsc.
func appendAvroBid(dst []byte, ev *attribution.Event) []byte {
	b := ev.Bid
	// user_info
	dst = appendAvroString(dst, ev.UserID)
	dst = append(dst, 0, 0, 0) // country null, device_type null, segments []
	// auction_details
	dst = appendAvroString(dst, ev.ID)
	dst = binary.LittleEndian.AppendUint64(dst, math.Float64bits(b.FloorPrice))
	dst = binary.LittleEndian.AppendUint64(dst, math.Float64bits(b.BidPrice))
	dst = appendAvroString(dst, b.Currency)
	dst = appendAvroString(dst, b.Exchange)
	// ad_targeting
	if n := len(b.Criteria); n > 0 {
		dst = appendAvroLong(dst, int64(n))
		for _, c := range b.Criteria {
			dst = appendAvroString(dst, c)
		}
	}
	dst = append(dst, 0) // end of the array
	dst = appendAvroString(dst, ev.CreativeID)
	dst = appendAvroString(dst, ev.CampaignID)
	dst = appendAvroString(dst, ev.Website)
	return appendAvroLong(dst, ev.Time)
}

func appendAvroLong(dst []byte, v int64) []byte {
	u := uint64(v<<1) ^ uint64(v>>63) // zigzag
	return binary.AppendUvarint(dst, u)
}

func appendAvroString(dst []byte, s string) []byte {
	dst = appendAvroLong(dst, int64(len(s)))
	return append(dst, s...)
}
