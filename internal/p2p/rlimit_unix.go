//go:build linux || darwin

package p2p

import "syscall"

// raiseFDLimit lifts the soft RLIMIT_NOFILE to the hard limit (Go does this
// at start on most systems already; this makes it explicit and reports it).
func raiseFDLimit() (soft, hard uint64, err error) {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		return 0, 0, err
	}
	if l.Cur < l.Max {
		want := l
		want.Cur = l.Max
		if syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want) == nil {
			l = want
		}
	}
	return l.Cur, l.Max, nil
}
