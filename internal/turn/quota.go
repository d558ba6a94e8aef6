package turn

import (
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/duskchat/dusk-relay/internal/netkey"
)

// pendingTTL bounds how long a quota slot reserved by QuotaHandler waits
// for pion to report the allocation created. pion creates it synchronously
// right after the quota check, so only a failed creation leaves a slot
// pending; OnAllocationError releases it at once, this TTL is the backstop.
const pendingTTL = 5 * time.Second

// quota counts allocations per peer ID (the part of the REST username after
// ':', so one peer holding several credentials shares one quota), per
// client address prefix (identities are free, so without it one address
// minting peer IDs could take the whole global quota) and in total. pion only offers a yes/no QuotaHandler before creating an
// allocation and lifecycle events after, so a slot is reserved in the
// handler (making concurrent Allocates on several UDP sockets race-free)
// and then confirmed by OnAllocationCreated, released by
// OnAllocationDeleted, or reclaimed by OnAllocationError / pendingTTL.
type quota struct {
	mu       sync.Mutex
	maxPeer  int
	maxIP    int // 0: no per-address limit
	maxTotal int
	now      func() time.Time

	total   int                  // live + pending
	live    int                  // allocations pion reported created and not deleted
	perPeer map[string]int       // live + pending, per peer ID
	perIP   map[netip.Prefix]int // live + pending, per client address prefix (ipKey)
	pending map[string][]pendingSlot
	byAddr  map[string][]string // client transport address -> peer IDs of its live allocations
}

type pendingSlot struct {
	peer     string
	ip       netip.Prefix
	deadline time.Time
}

// newQuota: maxIP 0 disables the per-address limit (config requires >= 1;
// 0 is for callers that build config.TURN by hand, e.g. benchmarks).
func newQuota(maxPeer, maxIP, maxTotal int) *quota {
	return &quota{
		maxPeer:  maxPeer,
		maxIP:    maxIP,
		maxTotal: maxTotal,
		now:      time.Now,
		perPeer:  map[string]int{},
		perIP:    map[netip.Prefix]int{},
		pending:  map[string][]pendingSlot{},
		byAddr:   map[string][]string{},
	}
}

// addrKey identifies a client transport address across UDP and TCP.
func addrKey(a net.Addr) string {
	if a == nil {
		return ""
	}
	return a.Network() + "/" + a.String()
}

// ipKey is the client address prefix an allocation, TCP connection or
// unauthenticated answer counts against (netkey.Prefix: IPv4 /32, IPv6
// /56). An address that cannot be parsed (pion always passes
// *net.UDPAddr or *net.TCPAddr) maps to the zero Prefix, one shared
// bucket. Allocation-free for those two types.
func ipKey(a net.Addr) netip.Prefix {
	p, _ := netkey.FromNetAddr(a)
	return p
}

type quotaScope uint8

const (
	quotaOK quotaScope = iota
	quotaPeerFull
	quotaIPFull
	quotaGlobalFull
)

// reserve takes a slot for peer's allocation from client address key
// (addrKey) within address prefix ip (ipKey).
func (q *quota) reserve(peer, key string, ip netip.Prefix) quotaScope {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.reclaimLocked()
	if q.perPeer[peer] >= q.maxPeer {
		return quotaPeerFull
	}
	if q.maxIP > 0 && q.perIP[ip] >= q.maxIP {
		return quotaIPFull
	}
	if q.total >= q.maxTotal {
		return quotaGlobalFull
	}
	q.total++
	q.perPeer[peer]++
	q.perIP[ip]++
	q.pending[key] = append(q.pending[key], pendingSlot{peer: peer, ip: ip, deadline: q.now().Add(pendingTTL)})
	return quotaOK
}

// created turns the pending slot into a live allocation. Without a pending
// slot (reclaimed by the TTL) the allocation is still counted: it exists.
func (q *quota) created(peer, key string, ip netip.Prefix) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if !q.takePendingLocked(peer, key) {
		q.total++
		q.perPeer[peer]++
		q.perIP[ip]++
	}
	q.live++
	q.byAddr[key] = append(q.byAddr[key], peer)
}

// deleted releases a live allocation's slot; key and ip come from the same
// client address as at creation.
func (q *quota) deleted(peer, key string, ip netip.Prefix) {
	q.mu.Lock()
	defer q.mu.Unlock()
	peers := q.byAddr[key]
	for i, p := range peers {
		if p != peer {
			continue
		}
		peers = append(peers[:i], peers[i+1:]...)
		if len(peers) == 0 {
			delete(q.byAddr, key)
		} else {
			q.byAddr[key] = peers
		}
		q.live--
		q.releaseLocked(peer, ip)
		return
	}
}

// failed releases the slots still pending for key: pion handles one
// source's requests in order on one goroutine, so a request that ended in
// an error while a slot was pending is the Allocate that did not complete.
func (q *quota) failed(key string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, p := range q.pending[key] {
		q.releaseLocked(p.peer, p.ip)
	}
	delete(q.pending, key)
}

func (q *quota) takePendingLocked(peer, key string) bool {
	slots := q.pending[key]
	for i, p := range slots {
		if p.peer != peer {
			continue
		}
		slots = append(slots[:i], slots[i+1:]...)
		if len(slots) == 0 {
			delete(q.pending, key)
		} else {
			q.pending[key] = slots
		}
		return true
	}
	return false
}

func (q *quota) releaseLocked(peer string, ip netip.Prefix) {
	q.total--
	if q.perPeer[peer]--; q.perPeer[peer] <= 0 {
		delete(q.perPeer, peer)
	}
	if q.perIP[ip]--; q.perIP[ip] <= 0 {
		delete(q.perIP, ip)
	}
}

func (q *quota) reclaimLocked() {
	if len(q.pending) == 0 {
		return
	}
	now := q.now()
	for key, slots := range q.pending {
		kept := slots[:0]
		for _, p := range slots {
			if now.After(p.deadline) {
				q.releaseLocked(p.peer, p.ip)
			} else {
				kept = append(kept, p)
			}
		}
		if len(kept) == 0 {
			delete(q.pending, key)
		} else {
			q.pending[key] = kept
		}
	}
}

// snapshot returns live allocations, reserved slots (live + pending) and
// the number of peers holding any.
func (q *quota) snapshot() (live, total, peers int) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.live, q.total, len(q.perPeer)
}

// reset forgets everything (server closed; pion reports no deletions then).
func (q *quota) reset() {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.total, q.live = 0, 0
	q.perPeer = map[string]int{}
	q.perIP = map[netip.Prefix]int{}
	q.pending = map[string][]pendingSlot{}
	q.byAddr = map[string][]string{}
}
