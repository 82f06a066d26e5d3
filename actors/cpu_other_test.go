//go:build !unix

package actors

import (
	"testing"
	"time"
)

// processCPU is not measured here: the benchmark reports 0 cores.
func processCPU(testing.TB) time.Duration { return 0 }
