package ingest

import (
	"bytes"
	"sync"

	"github.com/lookback-dev/lookback/attribution"
)

// Rejection is an element of a POST /v1/events body that is not a valid
// event: its 0-based position and why.
type Rejection struct {
	Index int    `json:"index"`
	Error string `json:"error"`
	// Raw is the element's bytes, for the dead-letter topic: a slice of
	// the body (an NDJSON line that is not JSON: the line).
	Raw []byte `json:"-"`
}

// DecodeEventsJSON decodes the body of POST /v1/events: a JSON array of
// event objects, or NDJSON (objects one after another, usually one a line).
// Each object has "type" (impression, bid, click or conversion) and that
// type's fields, with "timestamp" in RFC 3339 for every type:
//
//   - impression: impression_id, user_id, ad_creative_id, campaign_id,
//     website, auction_id (as on the ad_impressions topic);
//   - click: click_id, user_id, ad_creative_id, campaign_id, impression_id;
//   - conversion: conversion_id, user_id, conversion_type, value (a number),
//     currency;
//   - bid: the nested shape of bid_request.avsc: user_info {user_id, country,
//     device_type, segments}, auction_details {auction_id, floor_price,
//     bid_price, currency (default USD), exchange}, ad_targeting
//     {targeting_criteria, ad_creative_id, campaign_id, website}.
//
// An element that is not a valid event is a Rejection; Index counts the
// array's elements, or the NDJSON objects (blank lines do not count). The
// valid events come back in order, normalized and validated. Every element
// is exactly one of the two, so the k-th event is the k-th index that is
// not rejected. err is set,
// and nothing else returned, only when the body is not JSON: empty, not an
// array and not starting with an object, or an array with a syntax error.
// In NDJSON, a line with a syntax error is rejected and decoding goes on at
// the next line, unless no line at all is JSON.
//
// check, if not nil, is applied to every valid event: an event it refuses
// is rejected with its error, like an invalid one (the API refuses events
// too far in the future this way, keeping their original bytes).
func DecodeEventsJSON(body []byte, check func(*attribution.Event) error) (events []attribution.Event, rejected []Rejection, err error) {
	d := eventsDecoders.Get().(*eventsDecoder)
	defer d.release()
	s := &d.body
	s.reset("events", body)
	reject := func(i int, raw []byte, err error) {
		rejected = append(rejected, Rejection{Index: i, Error: err.Error(), Raw: raw})
	}
	switch c := s.peek(); c {
	case '[':
		s.pos++
		for i := 0; ; i++ {
			ok, err := s.elem(i)
			if err != nil {
				return nil, nil, err
			}
			if !ok {
				break
			}
			start := s.pos
			if err := s.skip(); err != nil {
				return nil, nil, err
			}
			var ev attribution.Event
			if err := d.element(body[start:s.pos], &ev); err != nil {
				reject(i, body[start:s.pos], err)
				continue
			}
			if check != nil {
				if err := check(&ev); err != nil {
					reject(i, body[start:s.pos], err)
					continue
				}
			}
			events = append(events, ev)
		}
		if err := s.end(); err != nil {
			return nil, nil, err
		}
	case '{':
		var firstErr error // of a line that is not JSON
		anyJSON := false
		for i := 0; s.peek() != endOfInput; i++ {
			start := s.pos
			if err := s.skip(); err != nil {
				if firstErr == nil {
					firstErr = err
				}
				// Go on at the line after the one the object started on.
				nl := bytes.IndexByte(body[start:], '\n')
				if nl < 0 {
					reject(i, bytes.TrimRight(body[start:], "\r"), err)
					break
				}
				reject(i, bytes.TrimRight(body[start:start+nl], "\r"), err)
				s.pos = start + nl + 1
				continue
			}
			anyJSON = true
			var ev attribution.Event
			if err := d.element(body[start:s.pos], &ev); err != nil {
				reject(i, body[start:s.pos], err)
				continue
			}
			if check != nil {
				if err := check(&ev); err != nil {
					reject(i, body[start:s.pos], err)
					continue
				}
			}
			events = append(events, ev)
		}
		if !anyJSON {
			return nil, nil, firstErr // not one line of JSON: not NDJSON
		}
	case endOfInput:
		return nil, nil, malformed("events", "empty body: want a JSON array or NDJSON of events")
	default:
		start := s.pos
		if err := s.skip(); err != nil {
			return nil, nil, err
		}
		return nil, nil, s.errAt(start, "want a JSON array or NDJSON of event objects, found "+kindName(c))
	}
	return events, rejected, nil
}

// eventsDecoder decodes the elements of an events body.
type eventsDecoder struct {
	body, sc jsonScanner
	intern   internTable
}

// eventsDecoders keeps decoders, and their intern tables, across requests.
var eventsDecoders = sync.Pool{New: func() any { return new(eventsDecoder) }}

// release returns d to the pool, without the body it read.
func (d *eventsDecoder) release() {
	for _, s := range []*jsonScanner{&d.body, &d.sc} {
		s.data = nil
		if cap(s.buf) > 64<<10 {
			s.buf = nil
		}
	}
	eventsDecoders.Put(d)
}

// element decodes one event object.
func (d *eventsDecoder) element(elem []byte, ev *attribution.Event) error {
	s := &d.sc
	s.reset("event", elem)
	if err := s.openObject(); err != nil {
		return err
	}
	var typ attribution.Type
	var err error
	typeSeen := false
	for n := 0; ; n++ {
		key, ok, err := s.key(n)
		if err != nil {
			return err
		}
		if !ok {
			break
		}
		if string(key) != "type" {
			if err := s.skip(); err != nil {
				return err
			}
			continue
		}
		b, err := s.strField("type")
		if err != nil {
			return err
		}
		if b == nil {
			typeSeen = false
			continue
		}
		typeSeen = true
		if typ, err = attribution.ParseType(string(b)); err != nil {
			return err
		}
	}
	if !typeSeen {
		return fieldError("type", "missing (impression, bid, click or conversion)")
	}
	s.reset(typ.String(), elem)
	if err = s.openObject(); err != nil {
		return err
	}
	switch typ {
	case attribution.TypeImpression:
		err = decodeImpressionFields(s, &d.intern, ev)
	case attribution.TypeClick:
		err = decodeClickJSON(s, &d.intern, ev)
	case attribution.TypeConversion:
		err = decodeConversionJSON(s, &d.intern, ev)
	case attribution.TypeBid:
		err = decodeBidJSON(s, &d.intern, ev)
	}
	if err != nil {
		return err
	}
	return finish(ev)
}

// decodeClickJSON reads the fields of a click object whose '{' has been
// consumed.
func decodeClickJSON(s *jsonScanner, in *internTable, ev *attribution.Event) error {
	*ev = attribution.Event{Type: attribution.TypeClick}
	hasTime := false
	for n := 0; ; n++ {
		key, ok, err := s.key(n)
		if err != nil {
			return err
		}
		if !ok {
			break
		}
		var b []byte
		switch string(key) {
		case "click_id":
			b, err = s.strField("click_id")
			ev.ID = string(b)
		case "user_id":
			b, err = s.strField("user_id")
			ev.UserID = string(b)
		case "timestamp":
			ev.Time, hasTime, err = s.timeField("timestamp")
		case "ad_creative_id":
			b, err = s.strField("ad_creative_id")
			ev.CreativeID = in.str(b)
		case "campaign_id":
			b, err = s.strField("campaign_id")
			ev.CampaignID = in.str(b)
		case "impression_id":
			b, err = s.strField("impression_id")
			ev.ImpressionID = string(b)
		default:
			err = s.skip()
		}
		if err != nil {
			return err
		}
	}
	if !hasTime {
		return fieldError("timestamp", "missing")
	}
	return nil
}

// decodeConversionJSON reads the fields of a conversion object whose '{'
// has been consumed.
func decodeConversionJSON(s *jsonScanner, in *internTable, ev *attribution.Event) error {
	*ev = attribution.Event{Type: attribution.TypeConversion}
	hasTime := false
	for n := 0; ; n++ {
		key, ok, err := s.key(n)
		if err != nil {
			return err
		}
		if !ok {
			break
		}
		var b []byte
		switch string(key) {
		case "conversion_id":
			b, err = s.strField("conversion_id")
			ev.ID = string(b)
		case "user_id":
			b, err = s.strField("user_id")
			ev.UserID = string(b)
		case "timestamp":
			ev.Time, hasTime, err = s.timeField("timestamp")
		case "conversion_type":
			b, err = s.strField("conversion_type")
			ev.ConversionType = in.str(b)
		case "value":
			ev.Value, _, err = s.numField("value")
		case "currency":
			b, err = s.strField("currency")
			ev.Currency = in.str(b)
		default:
			err = s.skip()
		}
		if err != nil {
			return err
		}
	}
	if !hasTime {
		return fieldError("timestamp", "missing")
	}
	return nil
}

// decodeBidJSON reads the fields of a bid object (the nested shape of
// bid_request.avsc) whose '{' has been consumed. auction_details, its
// floor_price and bid_price are required, as in the schema; an absent
// currency is the schema's default, USD.
func decodeBidJSON(s *jsonScanner, in *internTable, ev *attribution.Event) error {
	*ev = attribution.Event{Type: attribution.TypeBid}
	var bid attribution.Bid
	var hasTime, hasAuction, hasFloor, hasPrice, hasCurrency bool
	userInfo := func(key []byte) error {
		switch string(key) {
		case "user_id":
			b, err := s.strField("user_info.user_id")
			ev.UserID = string(b)
			return err
		case "country":
			_, err := s.strField("user_info.country")
			return err
		case "device_type":
			_, err := s.strField("user_info.device_type")
			return err
		case "segments":
			return stringsField(s, "user_info.segments", nil)
		}
		return s.skip()
	}
	auction := func(key []byte) error {
		var b []byte
		var err error
		switch string(key) {
		case "auction_id":
			b, err = s.strField("auction_details.auction_id")
			ev.ID = string(b)
		case "floor_price":
			bid.FloorPrice, hasFloor, err = s.numField("auction_details.floor_price")
		case "bid_price":
			bid.BidPrice, hasPrice, err = s.numField("auction_details.bid_price")
		case "currency":
			b, err = s.strField("auction_details.currency")
			bid.Currency = in.str(b)
			hasCurrency = b != nil
		case "exchange":
			b, err = s.strField("auction_details.exchange")
			bid.Exchange = in.str(b)
		default:
			err = s.skip()
		}
		return err
	}
	targeting := func(key []byte) error {
		var b []byte
		var err error
		switch string(key) {
		case "targeting_criteria":
			bid.Criteria = bid.Criteria[:0]
			err = stringsField(s, "ad_targeting.targeting_criteria", func(b []byte) {
				bid.Criteria = append(bid.Criteria, in.str(b))
			})
		case "ad_creative_id":
			b, err = s.strField("ad_targeting.ad_creative_id")
			ev.CreativeID = in.str(b)
		case "campaign_id":
			b, err = s.strField("ad_targeting.campaign_id")
			ev.CampaignID = in.str(b)
		case "website":
			b, err = s.strField("ad_targeting.website")
			ev.Website = in.str(b)
		default:
			err = s.skip()
		}
		return err
	}
	for n := 0; ; n++ {
		key, ok, err := s.key(n)
		if err != nil {
			return err
		}
		if !ok {
			break
		}
		switch string(key) {
		case "user_info":
			_, err = objectField(s, "user_info", userInfo)
		case "auction_details":
			var present bool
			present, err = objectField(s, "auction_details", auction)
			hasAuction = hasAuction || present
		case "ad_targeting":
			_, err = objectField(s, "ad_targeting", targeting)
		case "timestamp":
			ev.Time, hasTime, err = s.timeField("timestamp")
		default:
			err = s.skip()
		}
		if err != nil {
			return err
		}
	}
	switch {
	case !hasAuction:
		return fieldError("auction_details", "missing")
	case !hasFloor:
		return fieldError("auction_details.floor_price", "missing")
	case !hasPrice:
		return fieldError("auction_details.bid_price", "missing")
	case !hasTime:
		return fieldError("timestamp", "missing")
	}
	if !hasCurrency {
		bid.Currency = "USD" // the schema's default
	}
	if len(bid.Criteria) == 0 {
		bid.Criteria = nil
	}
	ev.Bid = &bid
	return nil
}

// objectField reads an object value for field, calling fn for each key
// with the position at its value (fn must read the value). present is false
// for null, which stands for an absent object.
func objectField(s *jsonScanner, field string, fn func(key []byte) error) (present bool, err error) {
	switch c := s.peek(); c {
	case '{':
		s.pos++
		for n := 0; ; n++ {
			key, ok, err := s.key(n)
			if err != nil {
				return true, err
			}
			if !ok {
				return true, nil
			}
			if err := fn(key); err != nil {
				return true, err
			}
		}
	case 'n':
		return false, s.literal()
	default:
		if err := s.skip(); err != nil {
			return false, err
		}
		return false, fieldError(field, "expected an object, got "+kindName(c))
	}
}

// stringsField reads an array of strings (or null) for field, calling fn,
// when not nil, with each.
func stringsField(s *jsonScanner, field string, fn func(b []byte)) error {
	switch c := s.peek(); c {
	case '[':
		s.pos++
		for n := 0; ; n++ {
			ok, err := s.elem(n)
			if err != nil {
				return err
			}
			if !ok {
				return nil
			}
			if c := s.peek(); c != '"' {
				if err := s.skip(); err != nil {
					return err
				}
				return fieldError(field, "expected strings in the array, got "+kindName(c))
			}
			b, err := s.str()
			if err != nil {
				return err
			}
			if fn != nil {
				fn(b)
			}
		}
	case 'n':
		return s.literal()
	default:
		if err := s.skip(); err != nil {
			return err
		}
		return fieldError(field, "expected an array of strings, got "+kindName(c))
	}
}

// AppendEventJSON appends ev as an element of a POST /v1/events body: a
// JSON object with "type" and the fields DecodeEventsJSON reads for that
// type (a bid in its nested shape, with country and device_type null and
// segments empty).
func AppendEventJSON(dst []byte, ev *attribution.Event) []byte {
	dst = append(dst, `{"type":`...)
	dst = appendJSONString(dst, ev.Type.String())
	switch ev.Type {
	case attribution.TypeImpression:
		dst = append(dst, ',')
		dst = appendImpressionFields(dst, ev)
	case attribution.TypeClick:
		dst = appendJSONField(dst, `,"click_id":`, ev.ID)
		dst = appendJSONField(dst, `,"user_id":`, ev.UserID)
		dst = appendJSONTime(dst, `,"timestamp":`, ev.Time)
		dst = appendJSONField(dst, `,"ad_creative_id":`, ev.CreativeID)
		dst = appendJSONField(dst, `,"campaign_id":`, ev.CampaignID)
		dst = appendJSONField(dst, `,"impression_id":`, ev.ImpressionID)
	case attribution.TypeConversion:
		dst = appendJSONField(dst, `,"conversion_id":`, ev.ID)
		dst = appendJSONField(dst, `,"user_id":`, ev.UserID)
		dst = appendJSONTime(dst, `,"timestamp":`, ev.Time)
		dst = appendJSONField(dst, `,"conversion_type":`, ev.ConversionType)
		dst = append(dst, `,"value":`...)
		dst = appendFloat(dst, ev.Value)
		dst = appendJSONField(dst, `,"currency":`, ev.Currency)
	case attribution.TypeBid:
		dst = appendJSONField(dst, `,"user_info":{"user_id":`, ev.UserID)
		dst = append(dst, `,"country":null,"device_type":null,"segments":[]}`...)
		if b := ev.Bid; b != nil {
			dst = appendJSONField(dst, `,"auction_details":{"auction_id":`, ev.ID)
			dst = append(dst, `,"floor_price":`...)
			dst = appendFloat(dst, b.FloorPrice)
			dst = append(dst, `,"bid_price":`...)
			dst = appendFloat(dst, b.BidPrice)
			dst = appendJSONField(dst, `,"currency":`, b.Currency)
			dst = appendJSONField(dst, `,"exchange":`, b.Exchange)
			dst = append(dst, `},"ad_targeting":{"targeting_criteria":[`...)
			for i, c := range b.Criteria {
				if i > 0 {
					dst = append(dst, ',')
				}
				dst = appendJSONString(dst, c)
			}
			dst = append(dst, ']')
			dst = appendJSONField(dst, `,"ad_creative_id":`, ev.CreativeID)
			dst = appendJSONField(dst, `,"campaign_id":`, ev.CampaignID)
			dst = appendJSONField(dst, `,"website":`, ev.Website)
			dst = append(dst, '}')
		}
		dst = appendJSONTime(dst, `,"timestamp":`, ev.Time)
	default:
		dst = appendJSONField(dst, `,"id":`, ev.ID)
		dst = appendJSONField(dst, `,"user_id":`, ev.UserID)
		dst = appendJSONTime(dst, `,"timestamp":`, ev.Time)
	}
	return append(dst, '}')
}
