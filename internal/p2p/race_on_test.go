//go:build race

package p2p

// raceEnabled: the race detector makes each noise handshake ~30x slower.
const raceEnabled = true
