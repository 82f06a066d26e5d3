package ingest

import (
	"github.com/lookback-dev/lookback/attribution"
)

// ImpressionDecoder decodes the values of the ad_impressions topic: a JSON
// object with impression_id, user_id, timestamp (RFC 3339; integer Unix
// milliseconds are accepted too), ad_creative_id, campaign_id, website and
// auction_id. Keys match exactly (case-sensitive); a repeated key's last value
// wins; unknown keys are skipped; null is the same as an absent key. A value
// of the wrong JSON type is a validation error naming the field.
//
// A decoder is reused across records and is not safe for concurrent use; the
// zero value is ready to use.
type ImpressionDecoder struct {
	sc     jsonScanner
	intern internTable
}

// NewImpressionDecoder returns a decoder for impression values.
func NewImpressionDecoder() *ImpressionDecoder { return new(ImpressionDecoder) }

// Decode parses value into ev (overwriting all of it), then normalizes and
// validates the event. Errors matching ErrMalformed describe unparsable
// input; validation errors are *attribution.ValidationError.
func (d *ImpressionDecoder) Decode(value []byte, ev *attribution.Event) error {
	s := &d.sc
	s.reset("impression", value)
	if err := s.openObject(); err != nil {
		return err
	}
	if err := decodeImpressionFields(s, &d.intern, ev); err != nil {
		return err
	}
	if err := s.end(); err != nil {
		return err
	}
	return finish(ev)
}

// decodeImpressionFields reads the keys of an impression object whose '{'
// has been consumed, up to its '}', into ev (overwriting all of it).
func decodeImpressionFields(s *jsonScanner, in *internTable, ev *attribution.Event) error {
	*ev = attribution.Event{Type: attribution.TypeImpression}
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
		case "impression_id":
			b, err = s.strField("impression_id")
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
		case "website":
			b, err = s.strField("website")
			ev.Website = in.str(b)
		case "auction_id":
			b, err = s.strField("auction_id")
			ev.AuctionID = string(b)
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

// AppendImpressionJSON appends the ad_impressions value of ev: a JSON object
// with the fields ImpressionDecoder reads, the time in RFC 3339 with
// milliseconds (UTC).
func AppendImpressionJSON(dst []byte, ev *attribution.Event) []byte {
	dst = append(dst, '{')
	dst = appendImpressionFields(dst, ev)
	return append(dst, '}')
}

func appendImpressionFields(dst []byte, ev *attribution.Event) []byte {
	dst = appendJSONField(dst, `"impression_id":`, ev.ID)
	dst = appendJSONField(dst, `,"user_id":`, ev.UserID)
	dst = appendJSONTime(dst, `,"timestamp":`, ev.Time)
	dst = appendJSONField(dst, `,"ad_creative_id":`, ev.CreativeID)
	dst = appendJSONField(dst, `,"campaign_id":`, ev.CampaignID)
	dst = appendJSONField(dst, `,"website":`, ev.Website)
	dst = appendJSONField(dst, `,"auction_id":`, ev.AuctionID)
	return dst
}
