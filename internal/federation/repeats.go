package federation

import (
	"hash/maphash"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

// Registrations are gossiped once per peer and namespace per
// RepublishAfter. A Dusk client re-registers its 2 + K namespaces every
// 120 s; a receiving relay only logs what it gets, so each repeat cost a
// signature, a local verification and one at every peer relay for nothing
// (~100 µs of relay CPU per registration, 9 % of the daemon's CPU at
// 5,000 clients: README, "Dusk client load").
const (
	RepublishAfter = 10 * time.Minute
	// repeatKeys bounds the table: two generations of at most half this
	// many (peer, namespace) keys, 16 bytes each plus map overhead. A
	// relay at its default 10,000 connections with 5 namespaces per
	// client holds 50,000.
	repeatKeys = 1 << 18
)

// repeats remembers when each (peer, namespace) was last gossiped. Keys
// are seeded 64-bit hashes: a collision only delays one gossip by at most
// RepublishAfter, and the table cannot be grown by long namespaces.
type repeats struct {
	seed maphash.Seed

	mu        sync.Mutex
	cur, prev map[uint64]int64 // key -> unix nanos of the last gossip
}

func newRepeats() *repeats {
	return &repeats{seed: maphash.MakeSeed(), cur: make(map[uint64]int64), prev: make(map[uint64]int64)}
}

func (r *repeats) key(p peer.ID, ns string) uint64 {
	var h maphash.Hash
	h.SetSeed(r.seed)
	_, _ = h.Write([]byte{byte(len(p) >> 8), byte(len(p))}) // the split between the two strings is part of the key
	_, _ = h.WriteString(string(p))
	_, _ = h.WriteString(ns)
	return h.Sum64()
}

// due reports whether (p, ns) was not gossiped within RepublishAfter of
// now, and if so records now as its last gossip.
func (r *repeats) due(p peer.ID, ns string, now time.Time) bool {
	k, t := r.key(p, ns), now.UnixNano()
	r.mu.Lock()
	defer r.mu.Unlock()
	last, ok := r.cur[k]
	if !ok {
		last, ok = r.prev[k]
	}
	if ok && t-last < int64(RepublishAfter) && t >= last {
		return false
	}
	if _, inCur := r.cur[k]; !inCur && len(r.cur) >= repeatKeys/2 {
		r.prev, r.cur = r.cur, make(map[uint64]int64, repeatKeys/2)
	}
	r.cur[k] = t
	return true
}

// forget drops (p, ns) so its next registration is gossiped: the queue
// was full and this one was not.
func (r *repeats) forget(p peer.ID, ns string) {
	k := r.key(p, ns)
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.cur, k)
	delete(r.prev, k)
}
