package turn

import (
	"maps"
	"net"
	"net/netip"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// Verdict is the peer filter's answer for one address.
type Verdict uint8

const (
	// Deny: no permission, no relaying.
	Deny Verdict = iota
	// Allow: an ordinary public address.
	Allow
	// OwnHost: one of this host's own addresses. A permission is granted so
	// that two clients of this server can relay to each other's relayed
	// addresses (both peers of a call usually use the same TURN server), but
	// packets are only sent there to ports with an open relay socket, never
	// to other services of the host (see relayConn.WriteTo).
	OwnHost
)

func (v Verdict) String() string {
	switch v {
	case Allow:
		return "allow"
	case OwnHost:
		return "own-host"
	default:
		return "deny"
	}
}

// builtinDeny lists every range a TURN relay must not send to by default:
// IANA special-purpose blocks that are not globally reachable, plus
// multicast and reserved space. Embedded IPv4 forms are canonicalized first
// (see Canonical), so the IPv4 entries also cover ::ffff:a.b.c.d etc.
var builtinDeny = mustPrefixes(
	// IPv4
	"0.0.0.0/8",        // "this network"; 0.0.0.0 reaches localhost on Linux
	"10.0.0.0/8",       // RFC 1918
	"100.64.0.0/10",    // CGNAT (RFC 6598)
	"127.0.0.0/8",      // loopback
	"169.254.0.0/16",   // link-local, incl. cloud metadata 169.254.169.254
	"168.63.129.16/32", // Azure platform DNS, DHCP and WireServer: reachable from every Azure VM, public-looking
	"172.16.0.0/12",    // RFC 1918
	"192.0.0.0/24",     // IETF protocol assignments
	"192.0.2.0/24",     // TEST-NET-1
	"192.88.99.0/24",   // deprecated 6to4 relay anycast
	"192.168.0.0/16",   // RFC 1918
	"198.18.0.0/15",    // benchmarking
	"198.51.100.0/24",  // TEST-NET-2
	"203.0.113.0/24",   // TEST-NET-3
	"224.0.0.0/4",      // multicast
	"240.0.0.0/4",      // reserved, incl. broadcast 255.255.255.255
	// IPv6
	"::/128",         // unspecified
	"::1/128",        // loopback
	"64:ff9b:1::/48", // local-use NAT64 (RFC 8215)
	"100::/64",       // discard-only
	"100:0:0:1::/64", // dummy prefix (RFC 9780)
	"2001::/32",      // Teredo: the embedded addresses are not ours to judge
	"2001:2::/48",    // benchmarking
	"2001:10::/28",   // ORCHID (deprecated)
	"2001:20::/28",   // ORCHIDv2: identifiers, not locators
	"2001:db8::/32",  // documentation
	"3fff::/20",      // documentation (RFC 9637)
	"5f00::/16",      // SRv6 SIDs
	"fc00::/7",       // unique local
	"fe80::/10",      // link-local
	"fec0::/10",      // site-local (deprecated)
	"ff00::/8",       // multicast
)

var (
	nat64     = netip.MustParsePrefix("64:ff9b::/96")
	sixToFour = netip.MustParsePrefix("2002::/16")
	siit      = netip.MustParsePrefix("::ffff:0:0:0/96") // IPv4-translated
	v4compat  = netip.MustParsePrefix("::/96")           // IPv4-compatible (deprecated)
)

func mustPrefixes(ss ...string) []netip.Prefix {
	out := make([]netip.Prefix, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParsePrefix(s)
	}
	return out
}

// Canonical returns the IPv4 address an IPv6 address stands for when it
// embeds one (IPv4-mapped ::ffff:a.b.c.d, IPv4-compatible ::a.b.c.d,
// IPv4-translated ::ffff:0:a.b.c.d, NAT64 64:ff9b::/96, 6to4 2002::/16);
// otherwise a itself. The zone is dropped. Matching on the canonical form
// stops ::ffff:127.0.0.1 or 64:ff9b::7f00:1 from reaching loopback.
func Canonical(a netip.Addr) netip.Addr {
	a = a.WithZone("")
	if !a.Is6() {
		return a
	}
	if a.Is4In6() {
		return a.Unmap()
	}
	b := a.As16()
	switch {
	case nat64.Contains(a), siit.Contains(a), v4compat.Contains(a):
		return netip.AddrFrom4([4]byte{b[12], b[13], b[14], b[15]})
	case sixToFour.Contains(a):
		return netip.AddrFrom4([4]byte{b[2], b[3], b[4], b[5]})
	}
	return a
}

// PeerFilter decides which peer addresses allocations may relay to. The
// configured lists are fixed at NewPeerFilter; the host's own addresses
// can be replaced (SetOwn) while it is in use. Safe for concurrent use.
type PeerFilter struct {
	allow []netip.Prefix // DUSK_TURN_ALLOW_PEERS: overrides the built-in list
	deny  []netip.Prefix // DUSK_TURN_DENY_PEERS: always wins
	own   atomic.Pointer[ownSet]
}

// ownSet is one generation of the host's addresses, replaced whole so the
// packet path reads it with one atomic load.
type ownSet struct {
	addrs map[netip.Addr]struct{}
	// restricted: own addresses whose verdict is OwnHost (not overridden
	// by the configured lists), precomputed for the per-packet check.
	restricted map[netip.Addr]struct{}
}

// NewPeerFilter builds a filter. own lists this host's addresses.
// Configured prefixes are canonicalized like addresses (a prefix written
// as ::ffff:10.0.0.0/104 means 10.0.0.0/8).
func NewPeerFilter(allow, deny []netip.Prefix, own []netip.Addr) *PeerFilter {
	f := &PeerFilter{
		allow: canonicalPrefixes(allow),
		deny:  canonicalPrefixes(deny),
	}
	f.SetOwn(own)
	return f
}

// SetOwn replaces the host's own addresses (interfaces change: DHCP, a
// new IPv6 privacy address, a floating IP attached later) and reports
// whether the set changed.
func (f *PeerFilter) SetOwn(own []netip.Addr) (changed bool) {
	o := &ownSet{addrs: make(map[netip.Addr]struct{}, len(own))}
	for _, a := range own {
		if a.IsValid() {
			o.addrs[Canonical(a)] = struct{}{}
		}
	}
	o.restricted = make(map[netip.Addr]struct{}, len(o.addrs))
	for a := range o.addrs {
		if f.verdict(a, o) == OwnHost {
			o.restricted[a] = struct{}{}
		}
	}
	old := f.own.Swap(o)
	return old == nil || !maps.Equal(old.addrs, o.addrs)
}

func canonicalPrefixes(ps []netip.Prefix) []netip.Prefix {
	out := make([]netip.Prefix, 0, len(ps))
	for _, p := range ps {
		if !p.IsValid() {
			continue
		}
		if a := p.Addr(); a.Is4In6() && p.Bits() >= 96 {
			p = netip.PrefixFrom(a.Unmap(), p.Bits()-96)
		}
		out = append(out, p.Masked())
	}
	return out
}

// Allowed reports whether relaying to a is allowed without restriction.
// Own-host addresses are not (see OwnHost).
func (f *PeerFilter) Allowed(a netip.Addr) bool { return f.Check(a) == Allow }

// Check classifies a. Order: invalid or unspecified (always denied) →
// configured deny → configured allow → built-in deny → own host → allow.
func (f *PeerFilter) Check(a netip.Addr) Verdict {
	return f.verdict(a, f.own.Load())
}

func (f *PeerFilter) verdict(a netip.Addr, own *ownSet) Verdict {
	if !a.IsValid() {
		return Deny
	}
	a = a.WithZone("")
	c := Canonical(a)
	if a.IsUnspecified() || c.IsUnspecified() {
		return Deny
	}
	if matchAny(f.deny, a, c) {
		return Deny
	}
	if matchAny(f.allow, a, c) {
		return Allow
	}
	if matchAny(builtinDeny, a, c) {
		return Deny
	}
	if _, ok := own.addrs[c]; ok {
		return OwnHost
	}
	return Allow
}

// ownRestricted reports whether packets to a are limited to relay sockets.
// Allocation-free: called for every relayed packet.
func (f *PeerFilter) ownRestricted(a netip.Addr) bool {
	o := f.own.Load()
	if len(o.restricted) == 0 {
		return false
	}
	_, ok := o.restricted[Canonical(a)]
	return ok
}

func matchAny(ps []netip.Prefix, a, c netip.Addr) bool {
	for _, p := range ps {
		if p.Contains(a) || (c != a && p.Contains(c)) {
			return true
		}
	}
	return false
}

// hostAddrs lists this host's interface addresses plus extra (the public
// IP, which behind 1:1 NAT is on no interface).
func hostAddrs(extra ...string) []netip.Addr {
	var out []netip.Addr
	if addrs, err := net.InterfaceAddrs(); err == nil {
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok {
				if ip, ok := netip.AddrFromSlice(n.IP); ok {
					out = append(out, ip.Unmap())
				}
			}
		}
	}
	for _, s := range extra {
		if ip, err := netip.ParseAddr(s); err == nil && !ip.IsUnspecified() {
			out = append(out, ip.Unmap())
		}
	}
	return out
}

// ownRefreshInterval is how often the host's addresses are re-read: a new
// address (DHCP renewal, IPv6 privacy address, an attached floating IP)
// stays reachable through the relay for at most this long.
const ownRefreshInterval = 30 * time.Second

// ownWatcher re-reads the host's addresses into a PeerFilter until closed.
type ownWatcher struct {
	stop chan struct{}
	done chan struct{}
}

func startOwnWatcher(f *PeerFilter, source func() []netip.Addr, every time.Duration, log *zap.Logger) *ownWatcher {
	w := &ownWatcher{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-w.stop:
				return
			case <-t.C:
			}
			if addrs := source(); f.SetOwn(addrs) {
				// Only the host's own changes get here, at most once per tick.
				log.Info("TURN own host addresses changed", zap.Int("addresses", len(addrs)))
			}
		}
	}()
	return w
}

func (w *ownWatcher) close() {
	close(w.stop)
	<-w.done
}
