package reqresp

import (
	"net/netip"
	"sync"
	"time"

	ma "github.com/multiformats/go-multiaddr"

	"github.com/duskchat/dusk-relay/internal/netkey"
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

// Limiter is a keyed token bucket with a bounded number of keys. When the
// table is full, buckets that have refilled completely (the same as a
// fresh one) are dropped first; if every bucket is still draining,
// arbitrary ones are dropped down to 90 % so the O(n) sweep runs at most
// once per n/10 new keys. Losing a bucket only hands that key a fresh
// burst, so the bound trades exactness for memory, never availability.
type Limiter struct {
	mu      sync.Mutex
	rate    float64 // tokens per second
	burst   float64
	max     int
	buckets map[string]*bucket
}

type bucket struct {
	tokens float64
	last   time.Time
}

// NewLimiter allows burst requests at once and perMinute per minute after
// that for each key, tracking at most maxKeys keys.
func NewLimiter(perMinute, burst float64, maxKeys int) *Limiter {
	return &Limiter{rate: perMinute / 60, burst: max(burst, 1), max: max(maxKeys, 1),
		buckets: make(map[string]*bucket)}
}

func (l *Limiter) level(b *bucket, now time.Time) float64 {
	el := now.Sub(b.last).Seconds()
	if el < 0 {
		el = 0 // clock stepped back
	}
	return min(l.burst, b.tokens+el*l.rate)
}

// Allow takes one token from key's bucket if it has one.
func (l *Limiter) Allow(key string, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.buckets[key]
	if b == nil {
		if len(l.buckets) >= l.max {
			l.sweep(now)
		}
		b = &bucket{tokens: l.burst, last: now}
		l.buckets[key] = b
	}
	b.tokens = l.level(b, now)
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

func (l *Limiter) sweep(now time.Time) {
	for k, b := range l.buckets {
		if l.level(b, now) >= l.burst {
			delete(l.buckets, k)
		}
	}
	target := l.max * 9 / 10
	for k := range l.buckets {
		if len(l.buckets) <= target {
			break
		}
		delete(l.buckets, k)
	}
}

// Len is the number of tracked keys.
func (l *Limiter) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.buckets)
}
