//go:build unix

package turn

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// reusePortSupported: several UDP sockets share the TURN port and the
// kernel spreads clients over them by 5-tuple hash.
const reusePortSupported = true

func reusePort(_, _ string, c syscall.RawConn) error {
	var opErr error
	if err := c.Control(func(fd uintptr) {
		opErr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
	}); err != nil {
		return err
	}
	return opErr
}
