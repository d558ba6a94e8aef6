package p2p

import (
	"net/netip"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/duskchat/dusk-relay/internal/netkey"
)

// Reservations per address: identities are free, so without a cap per
// source address a few addresses take every reservation. go-libp2p's relay
// counts per exact IP only; the node counts per IPv4 address and IPv6 /56
// (what one subscriber gets) and refuses a new reservation beyond
// reservationsPerIP. Renewals are always admitted.

type rsv struct {
	exp time.Time
	key netip.Prefix
}

// prefixCounts counts what each address prefix holds (reservations,
// circuits); the caller holds the lock that guards it. The zero prefix
// (exempt, see addrKey) is never counted. An IPv6 key also counts under
// its /48, capped at netkey.WideFactor times the per-key limit.
type prefixCounts map[netip.Prefix]int

// take counts one more for key unless key (or its /48) already holds its
// limit.
func (c prefixCounts) take(key netip.Prefix, limit int) bool {
	if !key.IsValid() {
		return true
	}
	if c[key] >= limit {
		return false
	}
	if wide, ok := netkey.Wide(key); ok {
		if c[wide] >= netkey.WideFactor*limit {
			return false
		}
		c[wide]++
	}
	c[key]++
	return true
}

func (c prefixCounts) give(key netip.Prefix) {
	if !key.IsValid() {
		return
	}
	c.dec(key)
	if wide, ok := netkey.Wide(key); ok {
		c.dec(wide)
	}
}

func (c prefixCounts) dec(key netip.Prefix) {
	if n := c[key] - 1; n > 0 {
		c[key] = n
	} else {
		delete(c, key)
	}
}

// addrKey is the prefix a connection's reservations are counted under
// (netkey.Prefix). The zero prefix (no IP, e.g. a relayed connection, or
// 127.0.0.1 and ::1, exempt as from the connection caps: netkey.Exempt)
// is not capped.
func addrKey(a ma.Multiaddr) netip.Prefix {
	addr, ok := netkey.AddrOfMultiaddr(a)
	if !ok || netkey.Exempt(addr) {
		return netip.Prefix{}
	}
	return netkey.Prefix(addr)
}

// admitReservation decides a RESERVE request before the relay sees it.
// A new reservation takes a slot of its address prefix at once (so
// concurrent requests cannot overshoot the cap); settleReservation gives
// it back when the relay refuses.
func (n *Node) admitReservation(p peer.ID, remote ma.Multiaddr) (renewal, ok bool) {
	now := time.Now()
	key := addrKey(remote)
	n.rsvMu.Lock()
	defer n.rsvMu.Unlock()
	if r, held := n.reserved[p]; held && now.Before(r.exp) {
		return true, true
	}
	if old, held := n.reserved[p]; held { // expired, not yet swept
		n.dropLocked(p, old)
	}
	if !n.perPrefix.take(key, n.rsvPerIP) {
		return false, false
	}
	n.reserved[p] = rsv{exp: now.Add(n.cfg.ReservationTTL), key: key}
	return false, true
}

// settleReservation records the relay's answer to an admitted request.
func (n *Node) settleReservation(p peer.ID, renewal, accepted bool) {
	// Asked before taking the lock, which the disconnect notification takes.
	gone := n.h.Network().Connectedness(p) != network.Connected
	n.rsvMu.Lock()
	defer n.rsvMu.Unlock()
	r, held := n.reserved[p]
	if !held {
		return // the peer disconnected meanwhile
	}
	switch {
	case accepted && gone:
		// The disconnect notification may have run before admitReservation.
		n.dropLocked(p, r)
	case accepted:
		r.exp = time.Now().Add(n.cfg.ReservationTTL)
		n.reserved[p] = r
		if n.rsvHook != nil {
			n.rsvHook.OnReserve(p, r.exp)
		}
	case !renewal:
		n.dropLocked(p, r)
	}
}

func (n *Node) dropLocked(p peer.ID, r rsv) {
	delete(n.reserved, p)
	if n.rsvHook != nil {
		n.rsvHook.OnEnd(p)
	}
	n.perPrefix.give(r.key)
}

// dropReservation forgets p's reservation (its last connection closed:
// the relay drops the reservation too).
func (n *Node) dropReservation(p peer.ID) {
	n.rsvMu.Lock()
	defer n.rsvMu.Unlock()
	if r, held := n.reserved[p]; held {
		n.dropLocked(p, r)
	}
}

// expireReservations forgets reservations that were not renewed in time.
func (n *Node) expireReservations(now time.Time) {
	n.rsvMu.Lock()
	defer n.rsvMu.Unlock()
	for p, r := range n.reserved {
		if !now.Before(r.exp) {
			n.dropLocked(p, r)
		}
	}
}

func (n *Node) hasReservation(p peer.ID, now time.Time) bool {
	n.rsvMu.Lock()
	defer n.rsvMu.Unlock()
	r, held := n.reserved[p]
	return held && now.Before(r.exp)
}

// reservationsFrom is the number of reservations counted under a's prefix.
func (n *Node) reservationsFrom(a netip.Addr) int {
	n.rsvMu.Lock()
	defer n.rsvMu.Unlock()
	return n.perPrefix[netkey.Prefix(a)]
}
