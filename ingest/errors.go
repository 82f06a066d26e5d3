package ingest

import (
	"errors"
	"strconv"

	"github.com/lookback-dev/lookback/attribution"
)

// ErrMalformed is matched (errors.Is) by every error about a value that could
// not be parsed at all: bad JSON, truncated Avro, a CSV row with the wrong
// number of columns. An event that parsed but failed validation returns the
// *attribution.ValidationError instead, which matches
// attribution.ErrInvalidEvent.
var ErrMalformed = errors.New("malformed record")

// malformedError describes a value that could not be parsed. Its message
// starts with the format, e.g. "impression: bad JSON at offset 12: ...".
type malformedError struct {
	msg string
	err error // underlying error, if any
}

func (e *malformedError) Error() string        { return e.msg }
func (e *malformedError) Unwrap() error        { return e.err }
func (e *malformedError) Is(target error) bool { return target == ErrMalformed }

func malformed(what, msg string) error {
	return &malformedError{msg: what + ": " + msg}
}

// fieldError reports a field whose value has the wrong type or cannot be
// read, as a validation error naming the field.
func fieldError(field, problem string) error {
	return &attribution.ValidationError{Field: field, Problem: problem}
}

// finish normalizes and validates a decoded event; the validation error is
// returned as is.
func finish(ev *attribution.Event) error {
	ev.Normalize()
	return ev.Validate()
}

// quoteTrunc quotes s for an error message, cut to n bytes.
func quoteTrunc(s string, n int) string {
	if len(s) > n {
		s = s[:n] + "..."
	}
	return strconv.Quote(s)
}
