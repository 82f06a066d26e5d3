package ingest

import (
	"fmt"

	"github.com/lookback-dev/lookback/attribution"
)

// ValueEncoder encodes events of any type into the value format of their
// topic: impressions as JSON, bids as Avro (with Bid's framing), clicks and
// conversions as CSV rows. The zero value writes plain Avro.
type ValueEncoder struct {
	Bid BidEncoder
}

// Append appends the topic value of ev to dst. It fails only for an event of
// no known type or a bid without Bid (see BidEncoder.Append).
func (e ValueEncoder) Append(dst []byte, ev *attribution.Event) ([]byte, error) {
	switch ev.Type {
	case attribution.TypeImpression:
		return AppendImpressionJSON(dst, ev), nil
	case attribution.TypeBid:
		return e.Bid.Append(dst, ev)
	case attribution.TypeClick:
		return AppendClickCSV(dst, ev), nil
	case attribution.TypeConversion:
		return AppendConversionCSV(dst, ev), nil
	}
	return dst, fmt.Errorf("ingest: cannot encode an event of type %s", ev.Type)
}

// EncodeValue returns the type of ev, which names its topic (see
// Topics.TopicOf), and its value in that topic's format, bids in plain Avro.
func EncodeValue(ev *attribution.Event) (attribution.Type, []byte, error) {
	b, err := ValueEncoder{}.Append(nil, ev)
	return ev.Type, b, err
}

// ValueDecoder decodes the values of all four input topics, holding one
// decoder of each kind. It is not safe for concurrent use.
type ValueDecoder struct {
	Impressions *ImpressionDecoder
	Bids        *BidDecoder
	Clicks      *ClickRowDecoder
	Conversions *ConversionRowDecoder
}

// NewValueDecoder returns a ValueDecoder whose bid decoder accepts the
// given schema ids (see NewBidDecoder).
func NewValueDecoder(acceptedSchemaIDs []int32) *ValueDecoder {
	return &ValueDecoder{
		Impressions: NewImpressionDecoder(),
		Bids:        NewBidDecoder(acceptedSchemaIDs),
		Clicks:      NewClickRowDecoder(),
		Conversions: NewConversionRowDecoder(),
	}
}

// Decode decodes value, read from the topic of events of type t, into ev.
func (d *ValueDecoder) Decode(t attribution.Type, value []byte, ev *attribution.Event) error {
	switch t {
	case attribution.TypeImpression:
		return d.Impressions.Decode(value, ev)
	case attribution.TypeBid:
		return d.Bids.Decode(value, ev)
	case attribution.TypeClick:
		return d.Clicks.Decode(value, ev)
	case attribution.TypeConversion:
		return d.Conversions.Decode(value, ev)
	}
	return fmt.Errorf("ingest: no topic carries events of type %s", t)
}
