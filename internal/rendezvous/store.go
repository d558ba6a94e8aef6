package rendezvous

import (
	"container/heap"
	"errors"
	"net/netip"
	"sort"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

var (
	// errPeerLimit: the peer already holds maxPerPeer live registrations.
	errPeerLimit = errors.New("rendezvous: too many registrations for this peer")
	// errPeerBytes: the peer's registrations would exceed maxPeerBytes.
	errPeerBytes = errors.New("rendezvous: registrations of this peer exceed its byte budget")
	// errSourceFull: the sender's address (IPv4) or /56 (IPv6) holds its
	// whole budget and the sender is already its largest holder.
	errSourceFull = errors.New("rendezvous: registration budget of this source address is exhausted")
	// errFull: the server holds maxTotal live registrations and the sender
	// is already among the largest holders.
	errFull = errors.New("rendezvous: registration table full")
	// errNoMemory: the byte budget is exhausted and the sender is already
	// among the largest holders.
	errNoMemory = errors.New("rendezvous: registration memory budget exhausted")
)

// maxEvictions bounds the registrations one add may evict. Each evicted
// entry frees at least entryOverhead bytes and a record is at most
// MaxRecordSize, so far fewer are ever needed.
const maxEvictions = 64

// entry is one live registration. Its fields are immutable after insertion
// except dead and heapIdx, which are guarded by the store's lock; ns and
// record are shared (never copied) with discover results.
type entry struct {
	id      uint64
	peer    peer.ID
	src     netip.Prefix // the sender's address prefix, see sourcePrefix
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

// limits bound the store; a zero byte limit means unlimited.
type limits struct {
	maxPerPeer   int // live registrations per peer
	maxTotal     int // live registrations in total
	maxBytes     int // entrySize sum in total
	maxPeerBytes int // entrySize sum per peer
	maxSrcBytes  int // entrySize sum per source prefix
}

// holder tracks what one source prefix, or one peer within a source
// prefix, holds, so that a full budget evicts from the largest holder.
type holder struct {
	bytes int
	idx   int // position in the parent holderHeap
	pfx   netip.Prefix
	peer  peer.ID
	// Only on prefix holders: the peers that registered from the prefix.
	peers  holderHeap
	byPeer map[peer.ID]*holder
}

// holderHeap is a max-heap on bytes.
type holderHeap []*holder

func (h holderHeap) Len() int           { return len(h) }
func (h holderHeap) Less(i, j int) bool { return h[i].bytes > h[j].bytes }
func (h holderHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].idx = i
	h[j].idx = j
}
func (h *holderHeap) Push(x any) {
	e := x.(*holder)
	e.idx = len(*h)
	*h = append(*h, e)
}
func (h *holderHeap) Pop() any {
	old := *h
	n := len(old)
	e := old[n-1]
	old[n-1] = nil
	*h = old[:n-1]
	e.idx = -1
	return e
}

// store is the in-memory registration table. It is not safe for concurrent
// use; Server serializes access with its mutex.
type store struct {
	lastID uint64
	byPeer map[peer.ID]map[string]*entry
	byNS   map[string]*index
	all    index
	expiry expiryHeap
	lim    limits
	// bytes is the sum of entrySize over live entries. The entry count
	// alone does not bound memory: records may be up to MaxRecordSize
	// each, and identities are free.
	bytes     int
	peerBytes map[peer.ID]int
	// Per source prefix, and per peer inside it: identities are free but
	// addresses are not, so the budget is shared fairly by address.
	bySrc   map[netip.Prefix]*holder
	srcHeap holderHeap
}

// entryOverhead estimates the entry, map and index memory of one
// registration beyond its namespace and record.
const entryOverhead = 256

// entrySize is what one registration costs in the byte budgets.
func entrySize(ns string, record []byte) int { return len(ns) + len(record) + entryOverhead }

func newStore(firstID uint64, lim limits) *store {
	return &store{
		lastID:    firstID,
		byPeer:    make(map[peer.ID]map[string]*entry),
		byNS:      make(map[string]*index),
		lim:       lim,
		peerBytes: make(map[peer.ID]int),
		bySrc:     make(map[netip.Prefix]*holder),
	}
}

// account adds delta bytes of e to every budget it counts against.
func (s *store) account(e *entry, delta int) {
	s.bytes += delta
	if n := s.peerBytes[e.peer] + delta; n > 0 {
		s.peerBytes[e.peer] = n
	} else {
		delete(s.peerBytes, e.peer)
	}
	src := s.bySrc[e.src]
	if src == nil {
		src = &holder{pfx: e.src, byPeer: make(map[peer.ID]*holder)}
		s.bySrc[e.src] = src
		heap.Push(&s.srcHeap, src)
	}
	ph := src.byPeer[e.peer]
	if ph == nil {
		ph = &holder{pfx: e.src, peer: e.peer}
		src.byPeer[e.peer] = ph
		heap.Push(&src.peers, ph)
	}
	src.bytes += delta
	ph.bytes += delta
	if ph.bytes <= 0 {
		heap.Remove(&src.peers, ph.idx)
		delete(src.byPeer, e.peer)
	} else {
		heap.Fix(&src.peers, ph.idx)
	}
	if src.bytes <= 0 {
		heap.Remove(&s.srcHeap, src.idx)
		delete(s.bySrc, e.src)
	} else {
		heap.Fix(&s.srcHeap, src.idx)
	}
}

// heldIn returns what p holds in bytes under source prefix src.
func (s *store) heldIn(src netip.Prefix, p peer.ID) (prefix, peer int) {
	h := s.bySrc[src]
	if h == nil {
		return 0, 0
	}
	if ph := h.byPeer[p]; ph != nil {
		peer = ph.bytes
	}
	return h.bytes, peer
}

// evictFrom removes the oldest registration that peer ph.peer made from
// prefix ph.pfx.
func (s *store) evictFrom(ph *holder) *entry {
	var victim *entry
	for _, e := range s.byPeer[ph.peer] {
		if e.src == ph.pfx && (victim == nil || e.id < victim.id) {
			victim = e
		}
	}
	if victim != nil {
		s.remove(victim)
	}
	return victim
}

func (s *store) len() int { return len(s.expiry) }

// add inserts or replaces p's registration under ns, made from source
// prefix src. A replacement gets a fresh id, so clients paging with a
// cookie see the refreshed record again (what the Rust server does too).
// replaced reports whether p already held a live registration there.
//
// The per-peer caps refuse (the peer asks for more than any client
// needs). A full source-prefix or global budget evicts the oldest
// registration of the largest holder instead: of the largest peer in the
// sender's prefix, or globally of the largest peer in the largest
// prefix. Newcomers are thus served while a few addresses holding many
// free identities lose their registrations; the sender is refused only
// when it would itself be the largest holder. evicted lists the
// registrations removed to make room.
func (s *store) add(p peer.ID, src netip.Prefix, ns string, record []byte, expires time.Time) (replaced bool, evicted []*entry, err error) {
	nsMap := s.byPeer[p]
	old := nsMap[ns]
	size := entrySize(ns, record)
	freed, freedSrc := 0, 0
	if old != nil {
		freed = entrySize(old.ns, old.record)
		if old.src == src {
			freedSrc = freed
		}
	}
	if old == nil && len(nsMap) >= s.lim.maxPerPeer {
		return false, nil, errPeerLimit
	}
	if s.lim.maxPeerBytes > 0 && s.peerBytes[p]-freed+size > s.lim.maxPeerBytes {
		return false, nil, errPeerBytes
	}
	check := func() error {
		srcBytes, _ := s.heldIn(src, p)
		switch {
		case s.lim.maxSrcBytes > 0 && srcBytes-freedSrc+size > s.lim.maxSrcBytes:
			return errSourceFull
		case s.lim.maxBytes > 0 && s.bytes-freed+size > s.lim.maxBytes:
			return errNoMemory
		case old == nil && s.len() >= s.lim.maxTotal:
			return errFull
		}
		return nil
	}
	for over := check(); over != nil; over = check() {
		if len(evicted) >= maxEvictions {
			return false, evicted, over
		}
		srcBytes, pBytes := s.heldIn(src, p)
		srcAfter, pAfter := srcBytes-freedSrc+size, pBytes-freedSrc+size
		// Globally, the largest prefix gives way if it is not the
		// sender's and holds more than the sender's would.
		var victim *holder
		if top := s.largestSrc(); over != errSourceFull && top != nil && top.pfx != src && top.bytes > srcAfter {
			victim = top.peers[0]
		} else if h := s.bySrc[src]; h != nil && len(h.peers) > 0 && h.peers[0].peer != p && h.peers[0].bytes > pAfter {
			// Else, within the sender's prefix, its largest peer gives way
			// if it holds more than the sender would.
			victim = h.peers[0]
		}
		if victim == nil || victim.peer == p {
			return false, evicted, over
		}
		e := s.evictFrom(victim)
		if e == nil {
			return false, evicted, over // unreachable: a holder with bytes has entries
		}
		evicted = append(evicted, e)
	}
	if old != nil {
		s.remove(old)
		nsMap = s.byPeer[p] // remove drops the map when it empties
	}
	s.lastID++
	e := &entry{id: s.lastID, peer: p, src: src, ns: ns, record: record, expires: expires}
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
	s.account(e, size)
	return old != nil, evicted, nil
}

func (s *store) largestSrc() *holder {
	if len(s.srcHeap) == 0 {
		return nil
	}
	return s.srcHeap[0]
}

// remove deletes e from every index.
func (s *store) remove(e *entry) {
	if e.dead {
		return
	}
	e.dead = true
	s.account(e, -entrySize(e.ns, e.record))
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
