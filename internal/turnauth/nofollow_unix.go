//go:build unix

package turnauth

import "syscall"

// noFollow makes open fail on a symbolic link (closing the window between
// Lstat and open).
const noFollow = syscall.O_NOFOLLOW
