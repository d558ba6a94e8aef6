package turn

import (
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/cpu"
)

// Two per-allocation rules that both of pion's data paths and the channel
// fast path must apply alike, so they are applied in relayConn, which every
// relayed datagram passes in either direction:
//
//   - Permissions (RFC 8656 §9): a permission lives 300 s unless refreshed
//     by CreatePermission or ChannelBind; a channel lives 600 s. pion checks
//     permissions for Send and Data indications only, so ChannelData kept
//     flowing both ways for up to 5 minutes after the permission lapsed.
//     We track each permission's expiry ourselves (created and refreshed
//     through pion's PermissionHandler and OnPermissionCreated, ended by
//     OnPermissionDeleted) and drop what has none.
//   - Bandwidth (DUSK_TURN_MAX_BPS, like coturn's max-bps): bytes of UDP
//     payload per second per allocation, each direction on its own budget.
//     Packets over it are dropped, as a congested link would drop them;
//     WebRTC's congestion control backs off from loss.

// permissionLifetime is RFC 8656's permission lifetime (pion's
// permissionTimeout).
const permissionLifetime = 5 * time.Minute

// bucketBurst is how far ahead of its rate an allocation may send, so a
// video key frame (100-200 KB) passes at line rate.
const bucketBurst = 250 * time.Millisecond

// minBurstBytes keeps the burst above a few full datagrams at low rates.
const minBurstBytes = 64 << 10

// monoClock is monotonic time in nanoseconds since the server started.
// Tests move it forward (skew) to pass a 5-minute permission lifetime
// without waiting; pion's own timers keep real time.
type monoClock struct {
	base time.Time
	skew atomic.Int64
}

func newMonoClock() *monoClock { return &monoClock{base: time.Now()} }

func (c *monoClock) now() int64 { return int64(time.Since(c.base)) + c.skew.Load() }

// rateLimit is the per-allocation budget: a generic cell rate algorithm
// (a token bucket kept as one timestamp, so one CAS updates it).
type rateLimit struct {
	perByte int64 // nanoseconds of budget per byte, << rateShift; 0: no limit
	burst   int64 // nanoseconds a sender may be ahead of its rate
}

const rateShift = 16

func newRateLimit(bytesPerSec int) rateLimit {
	if bytesPerSec <= 0 {
		return rateLimit{}
	}
	// The burst is bucketBurst of the rate, or minBurstBytes if longer;
	// computed in time so no product overflows at any rate.
	return rateLimit{
		perByte: max((int64(time.Second)<<rateShift)/int64(bytesPerSec), 1),
		burst:   max(int64(bucketBurst), minBurstBytes*int64(time.Second)/int64(bytesPerSec)),
	}
}

// bucket is one direction's budget: tat is the time at which the bytes
// taken so far are paid for. Padded: the listener goroutines write the to-peer
// bucket and the relay reader the from-peer one, on different cores.
type bucket struct {
	tat atomic.Int64
	_   cpu.CacheLinePad
}

// take reports whether n bytes fit at now, and takes them if so.
func (b *bucket) take(l *rateLimit, now int64, n int) bool {
	if l.perByte == 0 {
		return true
	}
	cost := int64(n) * l.perByte >> rateShift
	for {
		tat := b.tat.Load()
		next := max(tat, now) + cost
		if next-now > l.burst {
			return false
		}
		if b.tat.CompareAndSwap(tat, next) {
			return true
		}
	}
}

// permEntry is one permission of an allocation (per peer IP, as pion keys
// them). Channels point at their peer's entry, so the fast path checks it
// with one atomic load.
type permEntry struct {
	expires atomic.Int64 // monoClock time; 0: lapsed
	chans   int          // bound channels pointing here, under relayConn.permMu
}

func (e *permEntry) live(now int64) bool { return e != nil && now < e.expires.Load() }

// permTable is a relayConn's permissions. Lookups on pion's path and
// changes take the mutex; the fast path reads through boundChan.perm.
type permTable struct {
	mu      sync.Mutex
	m       map[netip.Addr]*permEntry
	pruneAt int
}

// touch creates or refreshes the permission for ip until expires.
func (t *permTable) touch(ip netip.Addr, expires, now int64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	e := t.m[ip]
	if e == nil {
		e = t.insertLocked(ip, now)
	}
	e.expires.Store(expires)
}

// insertLocked adds a lapsed entry. Entries whose permission pion never
// confirmed (a ChannelBind that failed after the permission check) are
// pruned once expired, so the table stays as small as pion's own.
func (t *permTable) insertLocked(ip netip.Addr, now int64) *permEntry {
	if t.m == nil {
		t.m = map[netip.Addr]*permEntry{}
	}
	if len(t.m) >= t.pruneAt {
		for k, e := range t.m {
			if e.chans == 0 && !e.live(now) {
				delete(t.m, k)
			}
		}
		t.pruneAt = max(16, 2*len(t.m))
	}
	e := &permEntry{}
	t.m[ip] = e
	return e
}

// lapse ends the permission for ip (pion's timer expired it).
func (t *permTable) lapse(ip netip.Addr) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if e := t.m[ip]; e != nil {
		e.expires.Store(0)
		if e.chans == 0 {
			delete(t.m, ip)
		}
	}
}

func (t *permTable) live(ip netip.Addr, now int64) bool {
	t.mu.Lock()
	e := t.m[ip]
	t.mu.Unlock()
	return e.live(now)
}

// ref returns ip's entry for a new channel (lapsed if pion bound a channel
// without our having seen its permission, which its order of events rules out).
func (t *permTable) ref(ip netip.Addr, now int64) *permEntry {
	t.mu.Lock()
	defer t.mu.Unlock()
	e := t.m[ip]
	if e == nil {
		e = t.insertLocked(ip, now)
	}
	e.chans++
	return e
}

func (t *permTable) unref(ip netip.Addr, e *permEntry, now int64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	e.chans--
	if e.chans <= 0 && !e.live(now) && t.m[ip] == e {
		delete(t.m, ip)
	}
}

// relayOf finds the relay socket of a relayed address.
func (s *Server) relayOf(relay net.Addr) *relayConn {
	r, ok := unmappedAddrPort(relay)
	if !ok {
		return nil
	}
	return s.relays.byPort(r.Port())
}

func peerIP(ip net.IP) (netip.Addr, bool) {
	a, ok := netip.AddrFromSlice(ip)
	return a.Unmap(), ok
}

// touchPermission records a permission created or refreshed now. pion
// calls the PermissionHandler (permit) before every CreatePermission and
// ChannelBind it grants, refreshes included, and reports only creations.
func (s *Server) touchPermission(rc *relayConn, ip net.IP) {
	a, ok := peerIP(ip)
	if rc == nil || !ok {
		return
	}
	now := s.clock.now()
	rc.perms.touch(a, now+int64(permissionLifetime), now)
}

func (s *Server) onPermissionCreated(_, _ net.Addr, _, _, _ string, relay net.Addr, ip net.IP) {
	s.ctr.permsCreated.Add(1)
	s.touchPermission(s.relayOf(relay), ip)
}

func (s *Server) onPermissionDeleted(_, _ net.Addr, _, _, _ string, relay net.Addr, ip net.IP) {
	a, ok := peerIP(ip)
	if rc := s.relayOf(relay); rc != nil && ok {
		rc.perms.lapse(a)
	}
}

// clientRelays maps a client's transport address (addrKey) to its
// allocation's relay socket: the PermissionHandler names only the client.
type clientRelays struct {
	mu sync.Mutex
	m  map[string]*relayConn
}

func (c *clientRelays) set(key string, rc *relayConn) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = map[string]*relayConn{}
	}
	c.m[key] = rc
}

func (c *clientRelays) get(key string) *relayConn {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.m[key]
}

func (c *clientRelays) remove(key string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.m, key)
}
