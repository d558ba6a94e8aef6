// Package netkey names the address prefix a remote address is budgeted
// under: every per-address limit of the relay (connections, reservations,
// rendezvous bytes, request rates, TURN allocations and answers, gossip
// bytes) counts an IPv4 address as itself and an IPv6 address by its /56.
// A /56 is what ISPs commonly delegate to one subscriber (some give a
// /48), so per /64 or per address one subscriber would count as up to 256
// or 2^72 sources and multiply every budget by hopping inside it.
package netkey

import (
	"net"
	"net/netip"

	ma "github.com/multiformats/go-multiaddr"
)

// IPv6Bits is the prefix length IPv6 sources are aggregated to.
const IPv6Bits = 56

// IPv6WideBits is a second, wider IPv6 aggregate: a /48 is what some ISPs
// and most hosting providers give one customer, who would otherwise count
// as 256 sources of /56. Pools that are scarce relay-wide (connections,
// reservations, circuits) also cap each /48 at WideFactor times the
// per-prefix cap.
const (
	IPv6WideBits = 48
	WideFactor   = 4
)

// Wide is the /48 an IPv6 budget key (from Prefix) also counts under;
// false for IPv4 keys and the zero Prefix.
func Wide(p netip.Prefix) (netip.Prefix, bool) {
	if !p.IsValid() || !p.Addr().Is6() || p.Bits() < IPv6WideBits {
		return netip.Prefix{}, false
	}
	w, err := p.Addr().Prefix(IPv6WideBits)
	return w, err == nil
}

// Prefix is a's budget key: a/32 for IPv4 (IPv4-mapped IPv6 included),
// its /56 for IPv6, without zone. The zero Prefix for an invalid a.
func Prefix(a netip.Addr) netip.Prefix {
	a = a.Unmap()
	bits := IPv6Bits
	if a.Is4() {
		bits = 32
	}
	p, err := a.Prefix(bits) // also drops an IPv6 zone
	if err != nil {
		return netip.Prefix{}
	}
	return p
}

// Exempt reports 127.0.0.1 and ::1 (IPv4-mapped included): they cannot be
// spoofed from outside the host (the kernel drops such packets from the
// wire), and local tools and benchmarks on the relay's host go far beyond
// any client's rate. The rest of 127.0.0.0/8 is not exempt, so the limits
// can be exercised from several loopback addresses. Which limits honour
// the exemption is each caller's choice.
func Exempt(a netip.Addr) bool {
	a = a.Unmap()
	return a == netip.AddrFrom4([4]byte{127, 0, 0, 1}) || a == netip.IPv6Loopback()
}

// AddrOfMultiaddr is the IP a multiaddr starts with (after an optional
// /ip6zone), unmapped and without zone; false when it does not start with
// one (DNS names, a nil address). For a relayed connection
// (/ip4/R/.../p2p-circuit) that is the relay's address.
func AddrOfMultiaddr(m ma.Multiaddr) (netip.Addr, bool) {
	for _, c := range m {
		switch c.Code() {
		case ma.P_IP6ZONE:
			continue
		case ma.P_IP4, ma.P_IP6:
			a, ok := netip.AddrFromSlice(c.RawValue())
			return a.Unmap(), ok
		}
		return netip.Addr{}, false
	}
	return netip.Addr{}, false
}

// FromMultiaddr is Prefix of AddrOfMultiaddr.
func FromMultiaddr(m ma.Multiaddr) (netip.Prefix, bool) {
	a, ok := AddrOfMultiaddr(m)
	if !ok {
		return netip.Prefix{}, false
	}
	return Prefix(a), true
}

// AddrOfNetAddr is the IP of a *net.UDPAddr or *net.TCPAddr without
// allocating (the TURN packet path calls it), else of any net.Addr whose
// String is host:port; unmapped, without zone.
func AddrOfNetAddr(a net.Addr) (netip.Addr, bool) {
	var (
		ip netip.Addr
		ok bool
	)
	switch v := a.(type) {
	case *net.UDPAddr:
		ip, ok = netip.AddrFromSlice(v.IP)
	case *net.TCPAddr:
		ip, ok = netip.AddrFromSlice(v.IP)
	case nil:
	default:
		if ap, err := netip.ParseAddrPort(a.String()); err == nil {
			ip, ok = ap.Addr(), true
		}
	}
	return ip.Unmap().WithZone(""), ok
}

// FromNetAddr is Prefix of AddrOfNetAddr.
func FromNetAddr(a net.Addr) (netip.Prefix, bool) {
	ip, ok := AddrOfNetAddr(a)
	if !ok {
		return netip.Prefix{}, false
	}
	return Prefix(ip), true
}
