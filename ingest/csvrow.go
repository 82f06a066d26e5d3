package ingest

import (
	"bytes"
	"errors"
	"strconv"
	"strings"

	"github.com/lookback-dev/lookback/attribution"
)

// The column order of the CSV rows of the clicks and conversions topics.
const (
	ClickCSVHeader      = "click_id,user_id,event_timestamp,ad_creative_id,campaign_id,impression_id"
	ConversionCSVHeader = "conversion_id,user_id,event_timestamp,conversion_type,value,currency"
)

// csvCol is the role of a CSV column.
type csvCol uint8

const (
	colClickID csvCol = iota
	colConversionID
	colUserID
	colTime
	colCreative
	colCampaign
	colImpressionID
	colConversionType
	colValue
	colCurrency
	colEventType
	numCSVCols
)

// colIndex maps each role to its field index in a row, or -1.
type colIndex [numCSVCols]int

var (
	clickRowIndex = colIndex{
		colClickID: 0, colUserID: 1, colTime: 2, colCreative: 3, colCampaign: 4, colImpressionID: 5,
		colConversionID: -1, colConversionType: -1, colValue: -1, colCurrency: -1, colEventType: -1,
	}
	conversionRowIndex = colIndex{
		colConversionID: 0, colUserID: 1, colTime: 2, colConversionType: 3, colValue: 4, colCurrency: 5,
		colClickID: -1, colCreative: -1, colCampaign: -1, colImpressionID: -1, colEventType: -1,
	}
)

const (
	clickColumns      = 6
	conversionColumns = 6
)

func (ix *colIndex) get(fields [][]byte, c csvCol) []byte {
	if i := ix[c]; i >= 0 {
		return fields[i]
	}
	return nil
}

// decodeClick fills ev from a split click row.
func decodeClick(fields [][]byte, ix *colIndex, in *internTable, ev *attribution.Event) error {
	t, err := parseTime(ix.get(fields, colTime))
	if err != nil {
		return err
	}
	*ev = attribution.Event{
		Type:         attribution.TypeClick,
		ID:           string(ix.get(fields, colClickID)),
		UserID:       string(ix.get(fields, colUserID)),
		Time:         t,
		CreativeID:   in.str(ix.get(fields, colCreative)),
		CampaignID:   in.str(ix.get(fields, colCampaign)),
		ImpressionID: string(ix.get(fields, colImpressionID)),
	}
	return finish(ev)
}

// decodeConversion fills ev from a split conversion row. An empty value is
// 0.
func decodeConversion(fields [][]byte, ix *colIndex, in *internTable, ev *attribution.Event) error {
	t, err := parseTime(ix.get(fields, colTime))
	if err != nil {
		return err
	}
	var v float64
	if b := ix.get(fields, colValue); len(b) > 0 {
		if v, err = strconv.ParseFloat(tmpString(b), 64); err != nil {
			return fieldError("value", "not a number: "+quoteTrunc(string(b), 64))
		}
	}
	*ev = attribution.Event{
		Type:           attribution.TypeConversion,
		ID:             string(ix.get(fields, colConversionID)),
		UserID:         string(ix.get(fields, colUserID)),
		Time:           t,
		ConversionType: in.str(ix.get(fields, colConversionType)),
		Value:          v,
		Currency:       in.str(ix.get(fields, colCurrency)),
	}
	return finish(ev)
}

// ClickRowDecoder decodes the values of the clicks topic: one CSV row in the
// column order of ClickCSVHeader, without a header. Fields may be quoted as
// in RFC 4180; a trailing CR or LF is ignored.
//
// A decoder is reused across records and is not safe for concurrent use; the
// zero value is ready to use.
type ClickRowDecoder struct {
	sp     csvSplitter
	intern internTable
}

// NewClickRowDecoder returns a decoder for clicks values.
func NewClickRowDecoder() *ClickRowDecoder { return new(ClickRowDecoder) }

// Decode parses value into ev, then normalizes and validates the event. A
// row that is not CSV or has the wrong number of columns is an error
// matching ErrMalformed; validation errors are *attribution.ValidationError.
// On error, ev's content is unspecified.
func (d *ClickRowDecoder) Decode(value []byte, ev *attribution.Event) error {
	fields, err := d.sp.split(trimEOL(value))
	if err != nil {
		return malformed("click", err.Error())
	}
	if len(fields) != clickColumns {
		return columnCount("click", len(fields), clickColumns, ClickCSVHeader)
	}
	return decodeClick(fields, &clickRowIndex, &d.intern, ev)
}

// ConversionRowDecoder decodes the values of the conversions topic: one CSV
// row in the column order of ConversionCSVHeader, without a header. Fields
// may be quoted as in RFC 4180; a trailing CR or LF is ignored. value is a
// decimal number (empty means 0).
//
// A decoder is reused across records and is not safe for concurrent use; the
// zero value is ready to use.
type ConversionRowDecoder struct {
	sp     csvSplitter
	intern internTable
}

// NewConversionRowDecoder returns a decoder for conversions values.
func NewConversionRowDecoder() *ConversionRowDecoder { return new(ConversionRowDecoder) }

// Decode parses value into ev, then normalizes and validates the event. A
// row that is not CSV or has the wrong number of columns is an error
// matching ErrMalformed; validation errors are *attribution.ValidationError.
// On error, ev's content is unspecified.
func (d *ConversionRowDecoder) Decode(value []byte, ev *attribution.Event) error {
	fields, err := d.sp.split(trimEOL(value))
	if err != nil {
		return malformed("conversion", err.Error())
	}
	if len(fields) != conversionColumns {
		return columnCount("conversion", len(fields), conversionColumns, ConversionCSVHeader)
	}
	return decodeConversion(fields, &conversionRowIndex, &d.intern, ev)
}

func columnCount(what string, got, want int, header string) error {
	return malformed(what, strconv.Itoa(got)+" columns, want "+strconv.Itoa(want)+" ("+header+")")
}

// trimEOL drops trailing CR and LF bytes.
func trimEOL(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == '\r') {
		b = b[:len(b)-1]
	}
	return b
}

// errUnterminated is the error of a record that ends inside a quoted field:
// a file reader joins the next line and tries again.
var errUnterminated = errors.New(`bad CSV: unterminated quoted field`)

// csvSplitter splits CSV records into fields, reusing its buffers: the
// fields are valid until the next split.
type csvSplitter struct {
	fields  [][]byte
	scratch []byte // unescaped quoted fields
}

// split splits one record (without its line terminator) into fields. With
// no quote in the record it splits at commas; otherwise it follows RFC
// 4180: a field that starts with a quote runs to the closing quote, "" in
// it is one quote, and a quoted field may hold commas and line breaks. A
// quote inside an unquoted field, or anything but a comma after a closing
// quote, is an error, as in encoding/csv without LazyQuotes.
func (s *csvSplitter) split(rec []byte) ([][]byte, error) {
	fields := s.fields[:0]
	if bytes.IndexByte(rec, '"') < 0 {
		for {
			i := bytes.IndexByte(rec, ',')
			if i < 0 {
				break
			}
			fields = append(fields, rec[:i])
			rec = rec[i+1:]
		}
		fields = append(fields, rec)
		s.fields = fields
		return fields, nil
	}
	// Unescaped fields are never longer than the record: with this much
	// room, appending never moves the fields already cut from scratch.
	if cap(s.scratch) < len(rec) {
		s.scratch = make([]byte, 0, len(rec)+len(rec)/2)
	}
	scratch := s.scratch[:0]
	col := 1
	i := 0
	for {
		if i < len(rec) && rec[i] == '"' {
			i++
			start := len(scratch)
			for {
				j := bytes.IndexByte(rec[i:], '"')
				if j < 0 {
					s.fields = fields
					return nil, errUnterminated
				}
				scratch = append(scratch, rec[i:i+j]...)
				i += j + 1
				if i < len(rec) && rec[i] == '"' {
					scratch = append(scratch, '"')
					i++
					continue
				}
				break
			}
			fields = append(fields, scratch[start:len(scratch):len(scratch)])
			if i == len(rec) {
				break
			}
			if rec[i] != ',' {
				s.fields = fields
				return nil, errors.New(`bad CSV: unexpected character after the closing quote of column ` + strconv.Itoa(col))
			}
			i++
		} else {
			j := bytes.IndexByte(rec[i:], ',')
			end := len(rec)
			if j >= 0 {
				end = i + j
			}
			f := rec[i:end]
			if bytes.IndexByte(f, '"') >= 0 {
				s.fields = fields
				return nil, errors.New(`bad CSV: bare " in unquoted column ` + strconv.Itoa(col))
			}
			fields = append(fields, f)
			if j < 0 {
				break
			}
			i = end + 1
		}
		col++
	}
	s.fields = fields
	s.scratch = scratch
	return fields, nil
}

// AppendClickCSV appends the clicks value of ev: one CSV row in the column
// order of ClickCSVHeader, fields quoted only when needed, no line
// terminator.
func AppendClickCSV(dst []byte, ev *attribution.Event) []byte {
	dst = appendCSVField(dst, ev.ID)
	dst = append(dst, ',')
	dst = appendCSVField(dst, ev.UserID)
	dst = append(dst, ',')
	dst = appendTime(dst, ev.Time)
	dst = append(dst, ',')
	dst = appendCSVField(dst, ev.CreativeID)
	dst = append(dst, ',')
	dst = appendCSVField(dst, ev.CampaignID)
	dst = append(dst, ',')
	return appendCSVField(dst, ev.ImpressionID)
}

// AppendConversionCSV appends the conversions value of ev: one CSV row in
// the column order of ConversionCSVHeader, fields quoted only when needed,
// no line terminator.
func AppendConversionCSV(dst []byte, ev *attribution.Event) []byte {
	dst = appendCSVField(dst, ev.ID)
	dst = append(dst, ',')
	dst = appendCSVField(dst, ev.UserID)
	dst = append(dst, ',')
	dst = appendTime(dst, ev.Time)
	dst = append(dst, ',')
	dst = appendCSVField(dst, ev.ConversionType)
	dst = append(dst, ',')
	dst = appendFloat(dst, ev.Value)
	dst = append(dst, ',')
	return appendCSVField(dst, ev.Currency)
}

// appendCSVField appends s, quoted as RFC 4180 says when it holds a comma,
// quote, CR or LF, and also when it starts with a space or tab (as
// encoding/csv does, for readers that trim leading space).
func appendCSVField(dst []byte, s string) []byte {
	if !csvNeedsQuotes(s) {
		return append(dst, s...)
	}
	dst = append(dst, '"')
	for {
		i := strings.IndexByte(s, '"')
		if i < 0 {
			break
		}
		dst = append(dst, s[:i+1]...)
		dst = append(dst, '"')
		s = s[i+1:]
	}
	dst = append(dst, s...)
	return append(dst, '"')
}

func csvNeedsQuotes(s string) bool {
	if s == "" {
		return false
	}
	if s[0] == ' ' || s[0] == '\t' {
		return true
	}
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case ',', '"', '\r', '\n':
			return true
		}
	}
	return false
}
