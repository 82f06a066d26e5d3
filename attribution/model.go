package attribution

import "math"

// Credits writes into dst (grown as needed) the credit of each touch of
// path, oldest first, for a conversion at convTime under model m, and
// returns it. An empty path (an organic conversion) gets one credit of 1.
// Credits are in [0, 1] and sum to 1.
func (r *Rules) Credits(m Model, convTime int64, path []PathTouch, dst []float64) []float64 {
	n := len(path)
	if n == 0 {
		return append(dst[:0], 1)
	}
	dst = grow(dst[:0], n)
	switch m {
	case FirstTouch:
		dst[0] = 1
	case Linear:
		c := 1 / float64(n)
		for i := range dst {
			dst[i] = c
		}
	case TimeDecay:
		// Weights 2^(-age/halfLife), scaled by the newest touch's weight so
		// that very old paths do not underflow to a zero sum; the ratios,
		// and so the credits, are unchanged.
		newest := path[n-1].Time
		sum := 0.0
		for i, t := range path {
			w := math.Exp2(-float64(newest-t.Time) / r.halfLife)
			dst[i] = w
			sum += w
		}
		for i := range dst {
			dst[i] /= sum
		}
	case PositionBased:
		switch n {
		case 1:
			dst[0] = 1
		case 2:
			dst[0], dst[1] = 0.5, 0.5
		default:
			mid := 0.2 / float64(n-2)
			for i := range dst {
				dst[i] = mid
			}
			dst[0], dst[n-1] = 0.4, 0.4
		}
	default: // LastTouch
		dst[n-1] = 1
	}
	return dst
}

// grow returns s (length 0) extended to length n with zeros.
func grow(s []float64, n int) []float64 {
	if cap(s) < n {
		return make([]float64, n)
	}
	s = s[:n]
	clear(s)
	return s
}
