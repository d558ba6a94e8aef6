package reqresp

import (
	"net/netip"

	ma "github.com/multiformats/go-multiaddr"

	"github.com/duskchat/dusk-relay/internal/netkey"
	"github.com/duskchat/dusk-relay/internal/ratelimit"
)

// AddrKey is the per-address limit key of a remote multiaddr: the IPv4
// address, or its /56 for IPv6 (netkey.Prefix). "" means no per-address
// limit applies: a has no IP, or it is 127.0.0.1 or ::1, which the
// connection limits exempt as well (netkey.Exempt).
func AddrKey(a ma.Multiaddr) string {
	addr, ok := netkey.AddrOfMultiaddr(a)
	if !ok || netkey.Exempt(addr) {
		return ""
	}
	return PrefixKey(addr)
}

// PrefixKey is AddrKey for an IP address.
func PrefixKey(addr netip.Addr) string {
	p := netkey.Prefix(addr)
	switch {
	case !p.IsValid():
		return ""
	case p.Addr().Is4():
		return p.Addr().String()
	}
	return p.String()
}

// Limiter is a token bucket per string key (peer ID or AddrKey) with a
// bounded number of keys (ratelimit.Sweep).
type Limiter = ratelimit.Keyed[string]

// NewLimiter allows burst requests at once and perMinute per minute after
// that for each key, tracking at most maxKeys keys.
func NewLimiter(perMinute, burst float64, maxKeys int) *Limiter {
	return ratelimit.New[string](perMinute/60, max(burst, 1), maxKeys, ratelimit.Sweep)
}
