//go:build !linux && !darwin

package p2p

// raiseFDLimit is a no-op where RLIMIT_NOFILE does not exist or differs.
func raiseFDLimit() (soft, hard uint64, err error) { return 0, 0, nil }
