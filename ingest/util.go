package ingest

import "unsafe"

// tmpString views b as a string without copying. The result must not be
// retained, and b must not change while it is in use: it is only for
// parsing calls whose result does not refer to their argument.
func tmpString(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	return unsafe.String(&b[0], len(b))
}
