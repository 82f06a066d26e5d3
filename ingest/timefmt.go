package ingest

import (
	"time"

	"github.com/lookback-dev/lookback/attribution"
)

// Event times cross the wire as RFC 3339 text on every record, so their
// usual shape, UTC with "Z" and up to 9 fractional digits, is parsed and
// formatted here by hand; anything else goes to attribution.ParseTime and
// the time package.

// parseTime is attribution.ParseTime for bytes, without copying them.
func parseTime(b []byte) (int64, error) {
	if ms, ok := parseUTC(b); ok {
		return ms, nil
	}
	ms, err := attribution.ParseTime(tmpString(b))
	if err != nil {
		// Redo with a real copy so that the error never refers to b.
		_, err = attribution.ParseTime(string(b))
	}
	return ms, err
}

// parseUTC reads YYYY-MM-DDTHH:MM:SS[.fraction]Z as Unix milliseconds
// (truncated), reporting false for anything else, including dates and
// times out of range, which attribution.ParseTime then judges.
func parseUTC(b []byte) (int64, bool) {
	if len(b) < 20 || b[4] != '-' || b[7] != '-' || b[10] != 'T' || b[13] != ':' || b[16] != ':' || b[len(b)-1] != 'Z' {
		return 0, false
	}
	year, ok1 := digits(b[0:4])
	month, ok2 := digits(b[5:7])
	day, ok3 := digits(b[8:10])
	hour, ok4 := digits(b[11:13])
	minute, ok5 := digits(b[14:16])
	sec, ok6 := digits(b[17:19])
	if !(ok1 && ok2 && ok3 && ok4 && ok5 && ok6) ||
		month < 1 || month > 12 || day < 1 || day > daysIn(month, year) || hour > 23 || minute > 59 || sec > 59 {
		return 0, false
	}
	var ms int64
	switch frac := b[19 : len(b)-1]; {
	case len(frac) == 0:
	case frac[0] != '.' || len(frac) < 2 || len(frac) > 10:
		return 0, false
	default:
		frac = frac[1:]
		if _, ok := digits(frac); !ok {
			return 0, false
		}
		for i := 0; i < 3; i++ {
			ms *= 10
			if i < len(frac) {
				ms += int64(frac[i] - '0')
			}
		}
	}
	days := daysFromCivil(int64(year), int64(month), int64(day))
	return (days*86400+int64(hour)*3600+int64(minute)*60+int64(sec))*1000 + ms, true
}

func digits(b []byte) (int, bool) {
	n := 0
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int(c-'0')
	}
	return n, true
}

func daysIn(month, year int) int {
	switch month {
	case 2:
		if year%4 == 0 && (year%100 != 0 || year%400 == 0) {
			return 29
		}
		return 28
	case 4, 6, 9, 11:
		return 30
	}
	return 31
}

// daysFromCivil returns the days since 1970-01-01 of a proleptic Gregorian
// date (H. Hinnant's algorithm).
func daysFromCivil(y, m, d int64) int64 {
	if m <= 2 {
		y--
	}
	era := y
	if era < 0 {
		era -= 399
	}
	era /= 400
	yoe := y - era*400
	mp := (m + 9) % 12
	doy := (153*mp+2)/5 + d - 1
	doe := yoe*365 + yoe/4 - yoe/100 + doy
	return era*146097 + doe - 719468
}

// maxFastTime is 10000-01-01T00:00:00Z: later times, and times before
// 1970, are formatted by the time package.
const maxFastTime = 253402300800000

// appendTime appends attribution.FormatTime(ms): RFC 3339 with
// milliseconds, UTC.
func appendTime(dst []byte, ms int64) []byte {
	if ms < 0 || ms >= maxFastTime {
		return time.UnixMilli(ms).UTC().AppendFormat(dst, "2006-01-02T15:04:05.000Z07:00")
	}
	days, rem := ms/86_400_000, ms%86_400_000
	// civil from days (H. Hinnant)
	z := days + 719468
	era := z / 146097
	doe := z - era*146097
	yoe := (doe - doe/1460 + doe/36524 - doe/146096) / 365
	y := yoe + era*400
	doy := doe - (365*yoe + yoe/4 - yoe/100)
	mp := (5*doy + 2) / 153
	d := doy - (153*mp+2)/5 + 1
	m := mp + 3
	if mp >= 10 {
		m = mp - 9
	}
	if m <= 2 {
		y++
	}
	sec := rem / 1000
	var buf [24]byte
	put := func(i int, v int64, n int) {
		for j := i + n - 1; j >= i; j-- {
			buf[j] = byte('0' + v%10)
			v /= 10
		}
	}
	put(0, y, 4)
	buf[4] = '-'
	put(5, m, 2)
	buf[7] = '-'
	put(8, d, 2)
	buf[10] = 'T'
	put(11, sec/3600, 2)
	buf[13] = ':'
	put(14, sec/60%60, 2)
	buf[16] = ':'
	put(17, sec%60, 2)
	buf[19] = '.'
	put(20, rem%1000, 3)
	buf[23] = 'Z'
	return append(dst, buf[:]...)
}
