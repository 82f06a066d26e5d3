package ingest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync/atomic"
	"time"

	"github.com/lookback-dev/lookback/attribution"
)

// CSVSummary counts what loading a CSV batch file did.
type CSVSummary struct {
	File     string
	Rows     int // data rows read
	Produced int // acknowledged by Kafka
	Rejected int // bad rows, sent to the dead-letter topic
	Failed   int // good rows Kafka did not acknowledge
	// Rejects lists the bad rows' line numbers and reasons.
	Rejects []RowError
}

// CSVLoader produces the rows of CSV batch files.
type CSVLoader struct {
	Producer      *Producer
	DeadLetters   *DeadLetterWriter
	MaxFutureSkew time.Duration
	// Progress, if set, is called every ProgressEvery rows.
	Progress      func(CSVSummary)
	ProgressEvery int
	Now           func() time.Time
}

// Load reads a CSV file from r (named file in dead letters and
// summaries; typ TypeNone: the type comes from the file), produces each
// good row keyed by its user, sends each bad row to the dead-letter topic
// with its line number and reason, and returns once Kafka has acknowledged
// every row (or ctx ends). A header it cannot use is an error and nothing
// is produced.
func (l *CSVLoader) Load(ctx context.Context, r io.Reader, file string, typ attribution.Type) (CSVSummary, error) {
	sum := CSVSummary{File: file}
	reader, err := NewCSVFileReader(r, typ)
	if err != nil {
		return sum, fmt.Errorf("%s: %w", file, err)
	}
	now := l.Now
	if now == nil {
		now = time.Now
	}
	every := l.ProgressEvery
	if every <= 0 {
		every = 100_000
	}
	var acked, failed atomic.Int64
	var firstFailure atomic.Value
	var letters []DeadLetter
	flushLetters := func() error {
		if err := l.DeadLetters.Send(ctx, letters); err != nil {
			return fmt.Errorf("%s: dead-lettering rejected rows: %w", file, err)
		}
		letters = letters[:0]
		return nil
	}
	snapshot := func() CSVSummary {
		s := sum
		s.Produced, s.Failed = int(acked.Load()), int(failed.Load())
		return s
	}
	for {
		ev, line, raw, err := reader.Next()
		if err == io.EOF {
			break
		}
		var rowErr *RowError
		if err != nil && !errors.As(err, &rowErr) {
			return snapshot(), fmt.Errorf("%s: reading: %w", file, err)
		}
		sum.Rows++
		if err == nil {
			if terr := ev.CheckTime(now(), l.MaxFutureSkew); terr != nil {
				rowErr = &RowError{Line: line, Err: terr}
			}
		}
		if rowErr != nil {
			sum.Rejected++
			sum.Rejects = append(sum.Rejects, *rowErr)
			letters = append(letters, DeadLetter{File: file, Line: line, Offset: -1, Key: keyOf(&ev), Value: raw, Err: rowErr})
			if len(letters) >= 1000 {
				if err := flushLetters(); err != nil {
					return snapshot(), err
				}
			}
		} else {
			l.Producer.ProduceAsync(ctx, &ev, func(err error) {
				if err != nil {
					failed.Add(1)
					firstFailure.CompareAndSwap(nil, err)
					return
				}
				acked.Add(1)
			})
		}
		if l.Progress != nil && sum.Rows%every == 0 {
			l.Progress(snapshot())
		}
	}
	if err := flushLetters(); err != nil {
		return snapshot(), err
	}
	if err := l.Producer.Flush(ctx); err != nil {
		return snapshot(), fmt.Errorf("%s: waiting for Kafka: %w", file, err)
	}
	sum = snapshot()
	if sum.Failed > 0 {
		return sum, fmt.Errorf("%s: Kafka did not acknowledge %d rows: %v", file, sum.Failed, firstFailure.Load())
	}
	return sum, nil
}

func keyOf(ev *attribution.Event) []byte {
	if ev.UserID == "" {
		return nil
	}
	return []byte(ev.UserID)
}
