//go:build !unix

package turn

import "syscall"

// Without SO_REUSEPORT a single UDP socket serves the TURN port.
const reusePortSupported = false

func reusePort(_, _ string, _ syscall.RawConn) error { return nil }
