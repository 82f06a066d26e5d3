package ingest

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/lookback-dev/lookback/attribution"
)

// maxCSVRecordBytes bounds one record (row) of a CSV batch file, so that an
// unterminated quote does not read a whole file into memory.
const maxCSVRecordBytes = 1 << 20

// RowError is the error of one bad row of a CSV file. Reading goes on with
// the next row.
type RowError struct {
	Line int   // 1-based line number of the row's first line
	Err  error // matches ErrMalformed or attribution.ErrInvalidEvent
}

func (e *RowError) Error() string { return "line " + strconv.Itoa(e.Line) + ": " + e.Err.Error() }

// Unwrap returns the row's problem.
func (e *RowError) Unwrap() error { return e.Err }

// CSVFileReader reads the events of a CSV batch file (lookback ingest-csv,
// the spool directory). The file starts with a header row; columns are
// found by name (case-insensitive, surrounding spaces ignored) in any order,
// and unknown columns are ignored. The time column is event_timestamp or
// timestamp. Fields may be quoted as in RFC 4180 (commas, quotes and line
// breaks inside quotes); lines may end in LF or CRLF; a UTF-8 byte order
// mark at the start and blank lines are skipped.
//
// The event type of the rows is, in this order: the type given to
// NewCSVFileReader; else, per row, the event_type column (click or
// conversion) of a combined file; else the one the header implies (a
// click_id column: clicks, a conversion_id column: conversions). When a type
// is given and the file has an event_type column too, a row of another type
// is an error.
//
// Required columns are user_id, the time, and the id column of each type the
// file holds (click_id, conversion_id, both in a combined file, with
// event_type); the others are empty when absent. Empty ids are derived
// (see attribution.DeriveID).
type CSVFileReader struct {
	br     *bufio.Reader
	typ    attribution.Type // TypeNone: from event_type, per row
	ix     colIndex
	ncols  int
	line   int    // physical lines read so far
	rec    []byte // the record being read, line terminators included
	sp     csvSplitter
	intern internTable
	eof    bool
	err    error // sticky: io.EOF or a read error
}

// NewCSVFileReader reads the header of a CSV file of events of type typ
// (attribution.TypeClick or TypeConversion), or of a type found from the
// header when typ is attribution.TypeNone. A header without a required
// column, with a column named twice, or from which no type can be found is
// an error naming the problem; so is a read error. An empty file has no
// rows.
func NewCSVFileReader(r io.Reader, typ attribution.Type) (*CSVFileReader, error) {
	switch typ {
	case attribution.TypeNone, attribution.TypeClick, attribution.TypeConversion:
	default:
		return nil, fmt.Errorf("csv: events of type %s do not come in CSV files (want click or conversion)", typ)
	}
	c := &CSVFileReader{br: bufio.NewReaderSize(r, 64<<10), typ: typ}
	_, fields, line, err := c.readRecord()
	switch {
	case err == io.EOF:
		c.err = io.EOF
		return c, nil
	case err != nil && c.err != nil:
		return nil, fmt.Errorf("csv: reading the header: %w", err)
	case err != nil:
		return nil, fmt.Errorf("csv: header (line %d): %w", line, err)
	}
	if err := c.parseHeader(fields); err != nil {
		return nil, fmt.Errorf("csv: header: %w", err)
	}
	return c, nil
}

// headerNames maps column names to roles.
var headerNames = map[string]csvCol{
	"click_id":        colClickID,
	"conversion_id":   colConversionID,
	"user_id":         colUserID,
	"event_timestamp": colTime,
	"timestamp":       colTime,
	"ad_creative_id":  colCreative,
	"campaign_id":     colCampaign,
	"impression_id":   colImpressionID,
	"conversion_type": colConversionType,
	"value":           colValue,
	"currency":        colCurrency,
	"event_type":      colEventType,
}

func (c *CSVFileReader) parseHeader(fields [][]byte) error {
	for i := range c.ix {
		c.ix[i] = -1
	}
	c.ncols = len(fields)
	names := make([]string, len(fields))
	for i, f := range fields {
		name := strings.ToLower(strings.TrimSpace(string(f)))
		names[i] = name
		role, ok := headerNames[name]
		if !ok {
			continue
		}
		if j := c.ix[role]; j >= 0 {
			if names[j] != name {
				return fmt.Errorf("both %q and %q columns: keep one", names[j], name)
			}
			return fmt.Errorf("column %q appears twice", name)
		}
		c.ix[role] = i
	}
	has := func(r csvCol) bool { return c.ix[r] >= 0 }
	var required []csvCol
	switch {
	case c.typ == attribution.TypeClick:
		required = []csvCol{colClickID}
	case c.typ == attribution.TypeConversion:
		required = []csvCol{colConversionID}
	case has(colEventType):
		required = []csvCol{colClickID, colConversionID}
	case has(colClickID) && has(colConversionID):
		return errors.New("both click_id and conversion_id columns and no event_type column: give the type of the file")
	case has(colClickID):
		c.typ = attribution.TypeClick
	case has(colConversionID):
		c.typ = attribution.TypeConversion
	default:
		return errors.New("no event_type, click_id or conversion_id column: give the type of the file")
	}
	required = append(required, colUserID, colTime)
	for _, r := range required {
		if !has(r) {
			if r == colTime {
				return errors.New(`missing column "event_timestamp" (or "timestamp")`)
			}
			return fmt.Errorf("missing column %q", roleName(r))
		}
	}
	return nil
}

func roleName(r csvCol) string {
	for name, role := range headerNames {
		if role == r && name != "timestamp" {
			return name
		}
	}
	return "?"
}

// Type returns the type of the file's events, or attribution.TypeNone when
// each row's event_type column gives it.
func (c *CSVFileReader) Type() attribution.Type { return c.typ }

// Next returns the next row's event, the 1-based line number where the row
// starts, and the row's bytes (without its line terminator; a copy the
// caller may keep). At the end of the file the error is io.EOF. A bad row is
// a *RowError carrying the line number and the reason, with the row's bytes
// and a zero event; the next call reads on. Any other error is a read error
// of the underlying reader, and the reader stays at it.
func (c *CSVFileReader) Next() (ev attribution.Event, line int, raw []byte, err error) {
	if c.err != nil {
		return attribution.Event{}, 0, nil, c.err
	}
	body, fields, line, err := c.readRecord()
	if err != nil {
		if c.err != nil {
			return attribution.Event{}, 0, nil, c.err
		}
		return attribution.Event{}, line, bytes.Clone(body), &RowError{Line: line, Err: err}
	}
	raw = bytes.Clone(body)
	if err := c.decode(fields, &ev); err != nil {
		return attribution.Event{}, line, raw, &RowError{Line: line, Err: err}
	}
	return ev, line, raw, nil
}

func (c *CSVFileReader) decode(fields [][]byte, ev *attribution.Event) error {
	if len(fields) != c.ncols {
		return &malformedError{msg: strconv.Itoa(len(fields)) + " columns, the header has " + strconv.Itoa(c.ncols)}
	}
	typ := c.typ
	if i := c.ix[colEventType]; i >= 0 {
		rowTyp, err := parseEventType(fields[i])
		switch {
		case err != nil && (typ == attribution.TypeNone || len(fields[i]) > 0):
			return err
		case typ == attribution.TypeNone:
			typ = rowTyp
		case len(fields[i]) > 0 && rowTyp != typ:
			return fieldError("event_type", rowTyp.String()+" in a file of "+typ.String()+"s")
		}
	}
	if typ == attribution.TypeClick {
		return decodeClick(fields, &c.ix, &c.intern, ev)
	}
	return decodeConversion(fields, &c.ix, &c.intern, ev)
}

// parseEventType reads an event_type field: click or conversion, in any
// case, surrounding spaces ignored.
func parseEventType(b []byte) (attribution.Type, error) {
	s := bytes.TrimSpace(b)
	switch {
	case len(s) == 0:
		return attribution.TypeNone, fieldError("event_type", "missing")
	case bytes.EqualFold(s, []byte("click")):
		return attribution.TypeClick, nil
	case bytes.EqualFold(s, []byte("conversion")):
		return attribution.TypeConversion, nil
	}
	return attribution.TypeNone, fieldError("event_type", "must be click or conversion, not "+quoteTrunc(string(b), 64))
}

// readRecord reads the next record, skipping blank lines: its bytes without
// the final line terminator, its fields (valid until the next call) and the
// line it starts on. A record that is not valid CSV is an error matching
// ErrMalformed, with its bytes. At the end of the input, or on a read error,
// the error is also stored in c.err.
func (c *CSVFileReader) readRecord() (body []byte, fields [][]byte, line int, err error) {
	for {
		c.rec = c.rec[:0]
		if c.eof {
			c.err = io.EOF
			return nil, nil, 0, io.EOF
		}
		line = c.line + 1
		tooLong, err := c.readLine()
		if err != nil {
			c.err = err
			return nil, nil, 0, err
		}
		body = trimTerminator(c.rec)
		if len(body) == 0 {
			if c.eof {
				c.err = io.EOF
				return nil, nil, 0, io.EOF
			}
			continue // blank line
		}
		if !tooLong {
			fields, err = c.sp.split(body)
			for err == errUnterminated && !c.eof && !tooLong {
				if tooLong, err = c.readLine(); err != nil {
					c.err = err
					return nil, nil, 0, err
				}
				body = trimTerminator(c.rec)
				fields, err = c.sp.split(body)
			}
		}
		if tooLong {
			return body, nil, line, &malformedError{msg: "row longer than " + strconv.Itoa(maxCSVRecordBytes>>20) + " MiB (an unterminated quoted field?)"}
		}
		if err != nil {
			return body, nil, line, &malformedError{msg: err.Error()}
		}
		return body, fields, line, nil
	}
}

// readLine appends the next physical line, with its terminator, to c.rec.
// A line that would make the record longer than maxCSVRecordBytes is read
// to its end but not kept, and tooLong is set. A UTF-8 byte order mark at
// the start of the input is dropped.
func (c *CSVFileReader) readLine() (tooLong bool, err error) {
	first := c.line == 0
	start := len(c.rec)
	for {
		chunk, err := c.br.ReadSlice('\n')
		if len(c.rec)+len(chunk) > maxCSVRecordBytes {
			tooLong = true
		} else {
			c.rec = append(c.rec, chunk...)
		}
		switch err {
		case nil:
		case bufio.ErrBufferFull:
			continue
		case io.EOF:
			c.eof = true
		default:
			return tooLong, err
		}
		break
	}
	c.line++
	if first && bytes.HasPrefix(c.rec[start:], utf8BOM) {
		c.rec = append(c.rec[:start], c.rec[start+len(utf8BOM):]...)
	}
	return tooLong, nil
}

var utf8BOM = []byte{0xEF, 0xBB, 0xBF}

// trimTerminator drops a final LF or CRLF (and a lone final CR).
func trimTerminator(b []byte) []byte {
	if n := len(b); n > 0 && b[n-1] == '\n' {
		b = b[:n-1]
	}
	if n := len(b); n > 0 && b[n-1] == '\r' {
		b = b[:n-1]
	}
	return b
}
