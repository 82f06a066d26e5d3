package attribution

// Facts are what applying events produces, ready for any sink. Facts share
// strings and slices with the state that made them: treat them as read-only.
//
// A sink writes them idempotently: impressions and clicks are keyed by
// their ids (a later fact of the same id replaces the earlier, as when a
// bid joins an impression that was written before it), and a conversion's
// rows are replaced as a whole, keyed by conversion id and model.
type Facts struct {
	Impressions []ImpressionFact
	Clicks      []ClickFact
	Conversions []ConversionFact
}

// Len is the number of facts of all kinds.
func (f *Facts) Len() int { return len(f.Impressions) + len(f.Clicks) + len(f.Conversions) }

// Reset empties f, keeping its capacity.
func (f *Facts) Reset() {
	clear(f.Impressions)
	clear(f.Clicks)
	clear(f.Conversions)
	f.Impressions, f.Clicks, f.Conversions = f.Impressions[:0], f.Clicks[:0], f.Conversions[:0]
}

// Append adds all of o's facts to f.
func (f *Facts) Append(o *Facts) {
	f.Impressions = append(f.Impressions, o.Impressions...)
	f.Clicks = append(f.Clicks, o.Clicks...)
	f.Conversions = append(f.Conversions, o.Conversions...)
}

// ImpressionFact is an impression, joined with its bid when there was one.
type ImpressionFact struct {
	ImpressionID string
	UserID       string
	Time         int64
	CreativeID   string
	CampaignID   string
	Website      string
	AuctionID    string
	Bid          *Bid // nil when no bid joined (yet)
}

// ClickFact is a click, joined with its impression when there was one.
type ClickFact struct {
	ClickID    string
	UserID     string
	Time       int64
	CreativeID string
	CampaignID string
	// ImpressionID is the joined impression, or else the one the click named.
	ImpressionID string
	// Joined says whether an impression was found; SinceImpression is then
	// the click's time minus the impression's, in milliseconds.
	Joined          bool
	SinceImpression int64
}

// PathTouch is a touch credited for a conversion.
type PathTouch struct {
	Type       Type
	ID         string
	Time       int64
	CreativeID string
	CampaignID string
}

// Conversion is an attributed conversion as a user's state keeps it. Path
// is ordered oldest first; it is empty for an organic conversion.
type Conversion struct {
	ID             string
	Time           int64
	ConversionType string
	Value          float64
	Currency       string
	Path           []PathTouch
}

// ConversionFact is an attributed conversion with its credits under every
// enabled model.
type ConversionFact struct {
	UserID string
	Conversion
	// Models are the enabled models, in configuration order.
	Models []Model
	// Credits holds, model after model, one credit per path touch (one
	// credit of 1 for an organic conversion).
	Credits []float64
}

// CreditsOf returns the credits of the i-th model of f.Models.
func (f *ConversionFact) CreditsOf(i int) []float64 {
	n := max(len(f.Path), 1)
	return f.Credits[i*n : (i+1)*n]
}

// AttributionRow is one row of the conversion_attributions table: a
// conversion, a model, and one credited touch (touch type none, empty id
// and zero touch time for an organic conversion).
type AttributionRow struct {
	ConversionID   string
	UserID         string
	Model          Model
	TouchType      Type
	TouchID        string
	CreativeID     string
	CampaignID     string
	TouchTime      int64 // 0 when TouchType is TypeNone
	ConversionTime int64
	ConversionType string
	Value          float64
	Currency       string
	Credit         float64
	CreditedValue  float64
}

// AppendRows appends f's rows, model by model, path order within a model:
// one row per credited touch (a touch a model gives no credit has no row).
func (f *ConversionFact) AppendRows(dst []AttributionRow) []AttributionRow {
	for i, m := range f.Models {
		credits := f.CreditsOf(i)
		row := AttributionRow{
			ConversionID:   f.ID,
			UserID:         f.UserID,
			Model:          m,
			ConversionTime: f.Time,
			ConversionType: f.ConversionType,
			Value:          f.Value,
			Currency:       f.Currency,
		}
		if len(f.Path) == 0 {
			row.Credit, row.CreditedValue = 1, f.Value
			dst = append(dst, row)
			continue
		}
		for j, t := range f.Path {
			if credits[j] == 0 {
				continue // not credited (first and last touch credit one)
			}
			row.TouchType, row.TouchID, row.TouchTime = t.Type, t.ID, t.Time
			row.CreativeID, row.CampaignID = t.CreativeID, t.CampaignID
			row.Credit = credits[j]
			row.CreditedValue = f.Value * credits[j]
			dst = append(dst, row)
		}
	}
	return dst
}
