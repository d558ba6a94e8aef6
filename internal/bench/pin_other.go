//go:build !linux

package bench

import "errors"

// PinProcess is Linux-only.
func PinProcess(pid, cpu int) error { return errors.New("pin: CPU affinity is only set on Linux") }
