package ingest

import (
	"strconv"
	"unicode/utf16"
	"unicode/utf8"
)

// jsonScanner is a small, strict JSON reader for the flat objects of the
// event formats. It checks the full JSON grammar (RFC 8259) of what it reads
// and skips, and allocates nothing: strings come back as slices of the input
// or, when they hold escapes, of a scratch buffer that the next string read
// overwrites. Bytes >= 0x80 inside strings are passed through unchecked;
// validation rejects a field that is not valid UTF-8.
type jsonScanner struct {
	data []byte
	pos  int
	buf  []byte // unescaped strings
	what string // format name for error messages
}

// maxJSONDepth bounds the nesting of skipped values.
const maxJSONDepth = 1000

func (s *jsonScanner) reset(what string, data []byte) {
	s.what = what
	s.data = data
	s.pos = 0
}

func (s *jsonScanner) errAt(pos int, msg string) error {
	return malformed(s.what, "bad JSON at offset "+strconv.Itoa(pos)+": "+msg)
}

func (s *jsonScanner) errEOF() error { return s.errAt(s.pos, "unexpected end of input") }

func (s *jsonScanner) ws() {
	for s.pos < len(s.data) {
		switch s.data[s.pos] {
		case ' ', '\t', '\n', '\r':
			s.pos++
		default:
			return
		}
	}
}

// endOfInput is what peek returns when no byte is left.
const endOfInput = -1

// peek skips white space and returns the next byte, or endOfInput.
func (s *jsonScanner) peek() int {
	s.ws()
	if s.pos < len(s.data) {
		return int(s.data[s.pos])
	}
	return endOfInput
}

// end checks that only white space is left.
func (s *jsonScanner) end() error {
	s.ws()
	if s.pos < len(s.data) {
		return s.errAt(s.pos, "unexpected data after the top-level value")
	}
	return nil
}

// openObject consumes the '{' that starts an object.
func (s *jsonScanner) openObject() error {
	switch c := s.peek(); c {
	case '{':
		s.pos++
		return nil
	case endOfInput:
		return s.errEOF()
	default:
		return s.errAt(s.pos, "expected an object, found "+kindName(c))
	}
}

// key reads the next key of an object whose '{' has been consumed; n is the
// number of keys read before. ok is false at the closing '}'. The key is
// valid until the next string is read; the position is left at the value.
func (s *jsonScanner) key(n int) (key []byte, ok bool, err error) {
	c := s.peek()
	if c == '}' {
		s.pos++
		return nil, false, nil
	}
	if n > 0 {
		if c != ',' {
			if c == endOfInput {
				return nil, false, s.errEOF()
			}
			return nil, false, s.errAt(s.pos, "expected ',' or '}' after an object value")
		}
		s.pos++
		c = s.peek()
	}
	if c != '"' {
		if c == endOfInput {
			return nil, false, s.errEOF()
		}
		return nil, false, s.errAt(s.pos, "expected a string for an object key")
	}
	if key, err = s.str(); err != nil {
		return nil, false, err
	}
	if c = s.peek(); c != ':' {
		if c == endOfInput {
			return nil, false, s.errEOF()
		}
		return nil, false, s.errAt(s.pos, "expected ':' after an object key")
	}
	s.pos++
	s.ws()
	if s.pos >= len(s.data) {
		return nil, false, s.errEOF()
	}
	return key, true, nil
}

// strSpecial marks the bytes that end the plain run of a string: the
// closing quote, a backslash and the control characters JSON forbids raw.
var strSpecial = func() (t [256]bool) {
	for c := 0; c < 0x20; c++ {
		t[c] = true
	}
	t['"'], t['\\'] = true, true
	return t
}()

// str reads a string at the current position (which holds '"').
func (s *jsonScanner) str() ([]byte, error) {
	start := s.pos + 1
	d := s.data
	i := start
	for i+4 <= len(d) && !strSpecial[d[i]] && !strSpecial[d[i+1]] && !strSpecial[d[i+2]] && !strSpecial[d[i+3]] {
		i += 4
	}
	for ; i < len(d); i++ {
		if c := d[i]; strSpecial[c] {
			switch {
			case c == '"':
				s.pos = i + 1
				return d[start:i], nil
			case c == '\\':
				return s.strEscaped(start, i)
			}
			return nil, s.errAt(i, "control character in a string")
		}
	}
	return nil, s.errAt(len(d), "unterminated string")
}

// strEscaped continues str from the first backslash at i.
func (s *jsonScanner) strEscaped(start, i int) ([]byte, error) {
	b := append(s.buf[:0], s.data[start:i]...)
	for i < len(s.data) {
		c := s.data[i]
		switch {
		case c == '"':
			s.pos = i + 1
			s.buf = b
			return b, nil
		case c < 0x20:
			return nil, s.errAt(i, "control character in a string")
		case c != '\\':
			b = append(b, c)
			i++
			continue
		}
		if i+1 >= len(s.data) {
			return nil, s.errAt(len(s.data), "unterminated string")
		}
		switch e := s.data[i+1]; e {
		case '"', '\\', '/':
			b = append(b, e)
		case 'b':
			b = append(b, '\b')
		case 'f':
			b = append(b, '\f')
		case 'n':
			b = append(b, '\n')
		case 'r':
			b = append(b, '\r')
		case 't':
			b = append(b, '\t')
		case 'u':
			r, ok := hex4(s.data, i+2)
			if !ok {
				return nil, s.errAt(i, `bad \u escape`)
			}
			i += 6
			if utf16.IsSurrogate(r) {
				// A high surrogate followed by a low one is one rune;
				// anything else is replaced, as encoding/json does.
				if r2, ok := hex4(s.data, i+2); ok && i+1 < len(s.data) && s.data[i] == '\\' && s.data[i+1] == 'u' {
					if dec := utf16.DecodeRune(r, r2); dec != utf8.RuneError {
						b = utf8.AppendRune(b, dec)
						i += 6
						continue
					}
				}
				r = utf8.RuneError
			}
			b = utf8.AppendRune(b, r)
			continue
		default:
			return nil, s.errAt(i, "bad escape in a string")
		}
		i += 2
	}
	return nil, s.errAt(len(s.data), "unterminated string")
}

func hex4(b []byte, i int) (rune, bool) {
	if i+4 > len(b) {
		return 0, false
	}
	var r rune
	for _, c := range b[i : i+4] {
		switch {
		case c >= '0' && c <= '9':
			c -= '0'
		case c >= 'a' && c <= 'f':
			c = c - 'a' + 10
		case c >= 'A' && c <= 'F':
			c = c - 'A' + 10
		default:
			return 0, false
		}
		r = r<<4 | rune(c)
	}
	return r, true
}

// number reads a number at the current position and returns its text.
func (s *jsonScanner) number() ([]byte, error) {
	d := s.data
	start, i := s.pos, s.pos
	if i < len(d) && d[i] == '-' {
		i++
	}
	switch {
	case i < len(d) && d[i] == '0':
		i++
	case i < len(d) && d[i] >= '1' && d[i] <= '9':
		for i++; i < len(d) && d[i] >= '0' && d[i] <= '9'; i++ {
		}
	default:
		return nil, s.errAt(i, "bad number")
	}
	if i < len(d) && d[i] == '.' {
		i++
		if i >= len(d) || d[i] < '0' || d[i] > '9' {
			return nil, s.errAt(i, "bad number")
		}
		for ; i < len(d) && d[i] >= '0' && d[i] <= '9'; i++ {
		}
	}
	if i < len(d) && (d[i] == 'e' || d[i] == 'E') {
		i++
		if i < len(d) && (d[i] == '+' || d[i] == '-') {
			i++
		}
		if i >= len(d) || d[i] < '0' || d[i] > '9' {
			return nil, s.errAt(i, "bad number")
		}
		for ; i < len(d) && d[i] >= '0' && d[i] <= '9'; i++ {
		}
	}
	s.pos = i
	return d[start:i], nil
}

// literal consumes true, false or null.
func (s *jsonScanner) literal() error {
	d := s.data[s.pos:]
	for _, lit := range [...]string{"true", "false", "null"} {
		if len(d) >= len(lit) && string(d[:len(lit)]) == lit {
			s.pos += len(lit)
			return nil
		}
	}
	return s.errAt(s.pos, "invalid literal")
}

// skip reads and discards the value at the current position.
func (s *jsonScanner) skip() error { return s.skipDepth(0) }

func (s *jsonScanner) skipDepth(depth int) error {
	if depth > maxJSONDepth {
		return s.errAt(s.pos, "nested too deeply")
	}
	switch c := s.peek(); {
	case c == '"':
		_, err := s.str()
		return err
	case c == '{':
		s.pos++
		for n := 0; ; n++ {
			_, ok, err := s.key(n)
			if err != nil {
				return err
			}
			if !ok {
				return nil
			}
			if err := s.skipDepth(depth + 1); err != nil {
				return err
			}
		}
	case c == '[':
		s.pos++
		for n := 0; ; n++ {
			ok, err := s.elem(n)
			if err != nil {
				return err
			}
			if !ok {
				return nil
			}
			if err := s.skipDepth(depth + 1); err != nil {
				return err
			}
		}
	case c == '-' || (c >= '0' && c <= '9'):
		_, err := s.number()
		return err
	case c == 't' || c == 'f' || c == 'n':
		return s.literal()
	case c == endOfInput:
		return s.errEOF()
	default:
		return s.errAt(s.pos, "unexpected "+kindName(c))
	}
}

// elem moves to the next element of an array whose '[' has been consumed;
// n is the number of elements read before. ok is false at the closing ']'.
func (s *jsonScanner) elem(n int) (ok bool, err error) {
	c := s.peek()
	if c == ']' {
		s.pos++
		return false, nil
	}
	if n > 0 {
		if c != ',' {
			if c == endOfInput {
				return false, s.errEOF()
			}
			return false, s.errAt(s.pos, "expected ',' or ']' after an array element")
		}
		s.pos++
		c = s.peek()
	}
	if c == endOfInput {
		return false, s.errEOF()
	}
	if c == ']' {
		return false, s.errAt(s.pos, "expected a value after ','")
	}
	return true, nil
}

// kindName names the JSON type of a value starting with c.
func kindName(c int) string {
	switch {
	case c == '"':
		return "a string"
	case c == '{':
		return "an object"
	case c == '[':
		return "an array"
	case c == 't' || c == 'f':
		return "a boolean"
	case c == 'n':
		return "null"
	case c == '-' || (c >= '0' && c <= '9'):
		return "a number"
	case c == endOfInput:
		return "end of input"
	case c > 0x20 && c < 0x7f:
		return "character " + strconv.QuoteRune(rune(c))
	}
	return "byte 0x" + string([]byte{hexDigits[c>>4], hexDigits[c&0xf]})
}

// strField reads a string value for field: the raw bytes, or nil for null.
// A value of another type is a validation error naming the field.
func (s *jsonScanner) strField(field string) ([]byte, error) {
	switch c := s.peek(); c {
	case '"':
		b, err := s.str()
		if b == nil && err == nil {
			b = []byte{} // present, empty: not null
		}
		return b, err
	case 'n':
		return nil, s.literal()
	default:
		if err := s.skip(); err != nil {
			return nil, err
		}
		return nil, fieldError(field, "expected a string, got "+kindName(c))
	}
}

// numField reads a number for field; present is false for null.
func (s *jsonScanner) numField(field string) (v float64, present bool, err error) {
	switch c := s.peek(); {
	case c == '-' || (c >= '0' && c <= '9'):
		b, err := s.number()
		if err != nil {
			return 0, false, err
		}
		v, err := strconv.ParseFloat(tmpString(b), 64)
		if err != nil {
			return 0, false, fieldError(field, "number out of range: "+string(b))
		}
		return v, true, nil
	case c == 'n':
		return 0, false, s.literal()
	default:
		if err := s.skip(); err != nil {
			return 0, false, err
		}
		return 0, false, fieldError(field, "expected a number, got "+kindName(c))
	}
}

// timeField reads an event time: an RFC 3339 string (or anything
// attribution.ParseTime accepts), or an integer number of Unix milliseconds.
// set is false for null.
func (s *jsonScanner) timeField(field string) (ms int64, set bool, err error) {
	switch c := s.peek(); {
	case c == '"':
		b, err := s.str()
		if err != nil {
			return 0, false, err
		}
		ms, err := parseTime(b)
		return ms, err == nil, err
	case c == '-' || (c >= '0' && c <= '9'):
		b, err := s.number()
		if err != nil {
			return 0, false, err
		}
		ms, err := strconv.ParseInt(tmpString(b), 10, 64)
		if err != nil {
			return 0, false, fieldError(field, "not an integer number of Unix milliseconds: "+quoteTrunc(string(b), 64))
		}
		return ms, true, nil
	case c == 'n':
		return 0, false, s.literal()
	default:
		if err := s.skip(); err != nil {
			return 0, false, err
		}
		return 0, false, fieldError(field, "expected an RFC 3339 string, got "+kindName(c))
	}
}
