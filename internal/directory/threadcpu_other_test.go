//go:build !linux

package directory

import (
	"testing"
	"time"
)

// threadCPU is not measured off Linux (the cpu-* metrics read 0).
func threadCPU(testing.TB) time.Duration { return 0 }
