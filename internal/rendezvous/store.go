package rendezvous

import (
	"container/heap"
	"errors"
	"sort"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

var (
	// errPeerLimit: the peer already holds maxPerPeer live registrations.
	errPeerLimit = errors.New("rendezvous: too many registrations for this peer")
	// errFull: the server holds maxTotal live registrations.
	errFull = errors.New("rendezvous: registration table full")
	// errNoMemory: storing the registration would exceed the byte budget.
	errNoMemory = errors.New("rendezvous: registration memory budget exhausted")
)

// entry is one live registration. Its fields are immutable after insertion
// except dead and heapIdx, which are guarded by the store's lock; ns and
// record are shared (never copied) with discover results.
type entry struct {
	id      uint64
	peer    peer.ID
	ns      string
	record  []byte
	expires time.Time
	heapIdx int
	dead    bool
}

// index keeps entries in ascending id order. Ids only grow, so inserting is
// an append and a cookie (the last id returned) is found by binary search:
// one discover page costs O(log n + page) however large the namespace.
// Removed entries stay in place (marked dead) until they make up half the
// slice; compaction is then amortized O(1) per removal.
type index struct {
	entries []*entry
	dead    int
}

func (ix *index) live() int { return len(ix.entries) - ix.dead }

func (ix *index) markDead() {
	ix.dead++
	if ix.dead > 64 && ix.dead*2 > len(ix.entries) {
		kept := make([]*entry, 0, ix.live())
		for _, e := range ix.entries {
			if !e.dead {
				kept = append(kept, e)
			}
		}
		ix.entries, ix.dead = kept, 0
	}
}

// expiryHeap orders entries by expiry so the sweeper touches only what expired.
type expiryHeap []*entry

func (h expiryHeap) Len() int { return len(h) }
func (h expiryHeap) Less(i, j int) bool {
	if h[i].expires.Equal(h[j].expires) {
		return h[i].id < h[j].id
	}
	return h[i].expires.Before(h[j].expires)
}
func (h expiryHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].heapIdx = i
	h[j].heapIdx = j
}
func (h *expiryHeap) Push(x any) {
	e := x.(*entry)
	e.heapIdx = len(*h)
	*h = append(*h, e)
}
func (h *expiryHeap) Pop() any {
	old := *h
	n := len(old)
	e := old[n-1]
	old[n-1] = nil
	*h = old[:n-1]
	e.heapIdx = -1
	return e
}

// store is the in-memory registration table. It is not safe for concurrent
// use; Server serializes access with its mutex.
type store struct {
	lastID     uint64
	byPeer     map[peer.ID]map[string]*entry
	byNS       map[string]*index
	all        index
	expiry     expiryHeap
	maxPerPeer int
	maxTotal   int
	// bytes is the sum of entrySize over live entries; maxBytes (0 =
	// unlimited) caps it. The entry count alone does not bound memory:
	// records may be up to MaxRecordSize each, and identities are free.
	bytes    int
	maxBytes int
}

// entrySize is what one registration costs in the byte budget: its
// payload plus a fixed estimate of the entry, map and index overhead.
func entrySize(ns string, record []byte) int { return len(ns) + len(record) + 256 }

func newStore(firstID uint64, maxPerPeer, maxTotal int) *store {
	return &store{
		lastID:     firstID,
		byPeer:     make(map[peer.ID]map[string]*entry),
		byNS:       make(map[string]*index),
		maxPerPeer: maxPerPeer,
		maxTotal:   maxTotal,
	}
}

func (s *store) len() int { return len(s.expiry) }

// add inserts or replaces p's registration under ns. A replacement gets a
// fresh id, so clients paging with a cookie see the refreshed record again
// (what the Rust server does too). replaced reports whether p already held
// a live registration there.
func (s *store) add(p peer.ID, ns string, record []byte, expires time.Time) (replaced bool, err error) {
	nsMap := s.byPeer[p]
	old := nsMap[ns]
	if s.maxBytes > 0 {
		freed := 0
		if old != nil {
			freed = entrySize(old.ns, old.record)
		}
		if s.bytes-freed+entrySize(ns, record) > s.maxBytes {
			return false, errNoMemory
		}
	}
	if old == nil {
		if len(nsMap) >= s.maxPerPeer {
			return false, errPeerLimit
		}
		if s.len() >= s.maxTotal {
			return false, errFull
		}
	} else {
		s.remove(old)
		nsMap = s.byPeer[p] // remove drops the map when it empties
	}
	s.lastID++
	e := &entry{id: s.lastID, peer: p, ns: ns, record: record, expires: expires}
	if nsMap == nil {
		nsMap = make(map[string]*entry)
		s.byPeer[p] = nsMap
	}
	nsMap[ns] = e
	ix := s.byNS[ns]
	if ix == nil {
		ix = &index{}
		s.byNS[ns] = ix
	}
	ix.entries = append(ix.entries, e)
	s.all.entries = append(s.all.entries, e)
	heap.Push(&s.expiry, e)
	s.bytes += entrySize(ns, record)
	return old != nil, nil
}

// remove deletes e from every index.
func (s *store) remove(e *entry) {
	if e.dead {
		return
	}
	e.dead = true
	s.bytes -= entrySize(e.ns, e.record)
	if nsMap := s.byPeer[e.peer]; nsMap != nil {
		delete(nsMap, e.ns)
		if len(nsMap) == 0 {
			delete(s.byPeer, e.peer)
		}
	}
	if ix := s.byNS[e.ns]; ix != nil {
		ix.markDead()
		if ix.live() == 0 {
			delete(s.byNS, e.ns)
		}
	}
	s.all.markDead()
	if e.heapIdx >= 0 && e.heapIdx < len(s.expiry) && s.expiry[e.heapIdx] == e {
		heap.Remove(&s.expiry, e.heapIdx)
	}
}

// unregister removes p's registration under ns; an empty ns removes all of
// p's registrations (the waku client's meaning; Rust clients always name one).
func (s *store) unregister(p peer.ID, ns string) int {
	nsMap := s.byPeer[p]
	if ns != "" {
		if e := nsMap[ns]; e != nil {
			s.remove(e)
			return 1
		}
		return 0
	}
	n := 0
	for _, e := range nsMap {
		s.remove(e)
		n++
	}
	return n
}

// expire removes up to max registrations that expired at or before now and
// returns them.
func (s *store) expire(now time.Time, max int) []*entry {
	var out []*entry
	for len(s.expiry) > 0 && len(out) < max && !s.expiry[0].expires.After(now) {
		e := s.expiry[0]
		s.remove(e)
		out = append(out, e)
	}
	return out
}

// hit is one discover result, copied out under the lock.
type hit struct {
	id      uint64
	ns      string
	record  []byte
	expires time.Time
}

// discover returns live registrations under ns ("" = every namespace) with
// id > after, in id order, at most limit of them and at most maxBytes of
// estimated encoded size (always at least one if any match). Expired but
// not yet swept entries are skipped.
func (s *store) discover(ns string, after uint64, limit, maxBytes int, now time.Time) []hit {
	ix := &s.all
	if ns != "" {
		ix = s.byNS[ns]
		if ix == nil {
			return nil
		}
	}
	// A cookie id beyond anything issued cannot come from this process
	// (e.g. forged, or from a run whose clock was ahead): serve from the
	// start, as the Rust server does with a cookie it does not know.
	if after > s.lastID {
		after = 0
	}
	start := sort.Search(len(ix.entries), func(i int) bool { return ix.entries[i].id > after })
	out := make([]hit, 0, min(limit, len(ix.entries)-start))
	size := 0
	for _, e := range ix.entries[start:] {
		if len(out) >= limit {
			break
		}
		if e.dead || !e.expires.After(now) {
			continue
		}
		sz := encodedSize(e)
		if len(out) > 0 && size+sz > maxBytes {
			break
		}
		size += sz
		out = append(out, hit{id: e.id, ns: e.ns, record: e.record, expires: e.expires})
	}
	return out
}

// encodedSize bounds the protobuf size of one Register inside a
// DiscoverResponse: ns, signedPeerRecord and ttl fields (tag + varint length
// each, lengths < 2 MiB) plus the repeated field's own tag and length.
func encodedSize(e *entry) int { return len(e.ns) + len(e.record) + 32 }
