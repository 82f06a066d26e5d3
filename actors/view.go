package actors

import (
	"errors"
	"sort"

	"github.com/lookback-dev/lookback/attribution"
)

// ErrUserNotFound is returned by a lookup of a user this engine has never
// seen (no state, nothing buffered).
var ErrUserNotFound = errors.New("user not found")

// ErrNotOwned is returned by a lookup of a user whose partition this node
// does not own.
var ErrNotOwned = errors.New("partition not owned by this node")

// UserView is a user's live state as the HTTP API shows it: its kept
// touches and conversions, and the records still waiting in the
// partition's buffer (touches marked pending, conversions with status
// pending).
type UserView struct {
	UserID      string           `json:"user_id"`
	Touchpoints []TouchView      `json:"touchpoints"`
	Conversions []ConversionView `json:"conversions"`
}

// TouchView is an impression or click.
type TouchView struct {
	Type       string `json:"type"`
	ID         string `json:"id"`
	Timestamp  string `json:"timestamp"`
	CreativeID string `json:"ad_creative_id"`
	CampaignID string `json:"campaign_id"`
	Pending    bool   `json:"pending,omitempty"`
}

// ConversionView is a conversion; Attributions has one key per enabled
// model once Status is "attributed", and is empty while "pending".
type ConversionView struct {
	ConversionID   string                  `json:"conversion_id"`
	Timestamp      string                  `json:"timestamp"`
	ConversionType string                  `json:"conversion_type"`
	Value          float64                 `json:"value"`
	Currency       string                  `json:"currency"`
	Status         string                  `json:"status"`
	Attributions   map[string][]CreditView `json:"attributions"`
}

// CreditView is one credited touch (touch type "none" and an empty id for
// an organic conversion).
type CreditView struct {
	TouchType      string  `json:"touch_type"`
	TouchID        string  `json:"touch_id"`
	TouchTimestamp string  `json:"touch_timestamp,omitempty"`
	CreativeID     string  `json:"ad_creative_id,omitempty"`
	CampaignID     string  `json:"campaign_id,omitempty"`
	Credit         float64 `json:"credit"`
	CreditedValue  float64 `json:"credited_value"`
}

// Conversion returns the view of one conversion.
func (v *UserView) Conversion(id string) (*ConversionView, bool) {
	for i := range v.Conversions {
		if v.Conversions[i].ConversionID == id {
			return &v.Conversions[i], true
		}
	}
	return nil, false
}

// buildView renders a state plus the user's buffered records.
func buildView(userID string, rules *attribution.Rules, s *attribution.State, pending []attribution.Event) *UserView {
	v := &UserView{UserID: userID, Touchpoints: []TouchView{}, Conversions: []ConversionView{}}
	for _, t := range s.Touches() {
		v.Touchpoints = append(v.Touchpoints, TouchView{
			Type: t.Type.String(), ID: t.ID, Timestamp: attribution.FormatTime(t.Time),
			CreativeID: t.CreativeID, CampaignID: t.CampaignID,
		})
	}
	var credits []float64
	for i := range s.Conversions() {
		c := &s.Conversions()[i]
		cv := ConversionView{
			ConversionID: c.ID, Timestamp: attribution.FormatTime(c.Time), ConversionType: c.ConversionType,
			Value: c.Value, Currency: c.Currency, Status: "attributed",
			Attributions: make(map[string][]CreditView, len(rules.Models())),
		}
		for _, m := range rules.Models() {
			credits = rules.Credits(m, c.Time, c.Path, credits)
			var list []CreditView
			if len(c.Path) == 0 {
				list = append(list, CreditView{TouchType: attribution.TypeNone.String(), Credit: 1, CreditedValue: c.Value})
			}
			for j, t := range c.Path {
				if credits[j] == 0 {
					continue
				}
				list = append(list, CreditView{
					TouchType: t.Type.String(), TouchID: t.ID, TouchTimestamp: attribution.FormatTime(t.Time),
					CreativeID: t.CreativeID, CampaignID: t.CampaignID,
					Credit: credits[j], CreditedValue: c.Value * credits[j],
				})
			}
			cv.Attributions[m.String()] = list
		}
		v.Conversions = append(v.Conversions, cv)
	}
	sort.Slice(pending, func(i, j int) bool { return attribution.Less(&pending[i], &pending[j]) })
	for i := range pending {
		ev := &pending[i]
		switch ev.Type {
		case attribution.TypeImpression, attribution.TypeClick:
			v.Touchpoints = append(v.Touchpoints, TouchView{
				Type: ev.Type.String(), ID: ev.ID, Timestamp: attribution.FormatTime(ev.Time),
				CreativeID: ev.CreativeID, CampaignID: ev.CampaignID, Pending: true,
			})
		case attribution.TypeConversion:
			if _, dup := v.Conversion(ev.ID); dup {
				continue
			}
			v.Conversions = append(v.Conversions, ConversionView{
				ConversionID: ev.ID, Timestamp: attribution.FormatTime(ev.Time), ConversionType: ev.ConversionType,
				Value: ev.Value, Currency: ev.Currency, Status: "pending",
				Attributions: map[string][]CreditView{},
			})
		}
	}
	return v
}
