package turn

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// TURN over TCP: connection slots. Addresses are cheap, so the slots are
// bounded per client prefix (ipKey: IPv4 /32, IPv6 /56), and connections
// without an allocation — anyone can open those — have their own, smaller
// pool, a short idle timeout, and are evicted oldest first when a newcomer
// needs a slot: strangers holding every slot cannot keep an honest client
// out, they only push each other out. A connection holding an allocation is
// never evicted; allocations themselves are bounded by the quota.

const (
	// tcpFirstFrameTimeout: a TURN client speaks first, at once.
	tcpFirstFrameTimeout = 10 * time.Second
	// tcpIdleTimeout: a connection holding an allocation sends at least a
	// Refresh within the longest allocation lifetime pion grants (1 h).
	tcpIdleTimeout = time.Hour + time.Minute
	// tcpIdleNoAllocTimeout: a connection without an allocation is a STUN
	// client or a client between its 401 and its authenticated Allocate;
	// neither is silent for long.
	tcpIdleNoAllocTimeout = 30 * time.Second
	// tcpWriteTimeout bounds one write to a client that stopped reading
	// (otherwise pion's relay goroutine for it blocks for good).
	tcpWriteTimeout = 10 * time.Second
	// tcpMaxPerIP bounds connections from one client prefix (pion itself
	// puts no limit on TCP connections).
	tcpMaxPerIP = 64
	// tcpSpareConns: connections without an allocation (STUN-only clients
	// and Allocates in flight), all prefixes together.
	tcpSpareConns = 256
	// tcpMaxUnauthPerIP: connections without an allocation from one prefix;
	// a NAT with that many users all mid-handshake at once is unusual.
	tcpMaxUnauthPerIP = 16
)

// tcpLimits are the TCP connection bounds (fields so tests can shorten
// them; zero fields take the defaults above).
type tcpLimits struct {
	firstFrame  time.Duration // before the first frame
	idle        time.Duration // between frames, with an allocation
	idleNoAlloc time.Duration // between frames, without an allocation
	write       time.Duration // one write
	maxConns    int           // all connections
	maxPerIP    int           // per client prefix
	maxUnauth   int           // without an allocation, all prefixes
	maxUnauthIP int           // without an allocation, per client prefix
}

func (l tcpLimits) withDefaults() tcpLimits {
	set := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	seti := func(d *int, v int) {
		if *d <= 0 {
			*d = v
		}
	}
	set(&l.firstFrame, tcpFirstFrameTimeout)
	set(&l.idle, tcpIdleTimeout)
	set(&l.idleNoAlloc, tcpIdleNoAllocTimeout)
	set(&l.write, tcpWriteTimeout)
	seti(&l.maxConns, tcpSpareConns)
	seti(&l.maxPerIP, tcpMaxPerIP)
	seti(&l.maxUnauth, tcpSpareConns)
	seti(&l.maxUnauthIP, tcpMaxUnauthPerIP)
	return l
}

// prefixConns counts one prefix's connections.
type prefixConns struct{ all, unauth int }

// tcpListener caps and tracks TCP connections and frames and gates their
// traffic.
type tcpListener struct {
	net.Listener
	s   *Server
	lim tcpLimits

	mu     sync.Mutex
	conns  map[*tcpConn]struct{}
	byAddr map[netip.AddrPort]*tcpConn // for pion's allocation callbacks
	perIP  map[netip.Prefix]*prefixConns
	// unauth lists the connections without an allocation, oldest first
	// (by admission, or by when they lost their last allocation).
	unauthHead, unauthTail *tcpConn
	nUnauth                int
	closed                 bool
	wg                     sync.WaitGroup // one per connection until its reader has returned

	evicted       atomic.Uint64 // connections closed to make room for a newcomer
	badFrames     atomic.Uint64 // connections closed for a frame that cannot be TURN
	dropFrames    atomic.Uint64 // frames dropped (handOn)
	writeTimeouts atomic.Uint64 // connections closed because a write timed out
}

func newTCPListener(l net.Listener, s *Server, lim tcpLimits) *tcpListener {
	return &tcpListener{Listener: l, s: s, lim: lim.withDefaults(),
		conns: map[*tcpConn]struct{}{}, byAddr: map[netip.AddrPort]*tcpConn{},
		perIP: map[netip.Prefix]*prefixConns{}}
}

// Accept retries temporary errors (pion's accept loop gives up on the
// first error, e.g. EMFILE) and closes connections over the caps.
func (l *tcpListener) Accept() (net.Conn, error) {
	backoff := 5 * time.Millisecond
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || l.isClosed() {
				return nil, err
			}
			l.s.listenerTrouble("tcp", err)
			time.Sleep(backoff)
			if backoff *= 2; backoff > time.Second {
				backoff = time.Second
			}
			continue
		}
		backoff = 5 * time.Millisecond
		if tc := l.admit(c); tc != nil {
			return tc, nil
		}
		l.s.ctr.tcpRejected.Add(1)
		_ = c.Close()
	}
}

func (l *tcpListener) isClosed() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.closed
}

// admit takes c in, evicting the oldest connection without an allocation
// when a pool is full, or returns nil when c's own prefix is at its caps
// (or every slot holds an allocation).
func (l *tcpListener) admit(c net.Conn) *tcpConn {
	var ap netip.AddrPort
	if ta, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		a := ta.AddrPort()
		ap = netip.AddrPortFrom(a.Addr().Unmap(), a.Port())
	}
	pfx := ipKey(c.RemoteAddr())
	l.mu.Lock()
	pc := l.perIP[pfx]
	if l.closed || (pc != nil && (pc.all >= l.lim.maxPerIP || pc.unauth >= l.lim.maxUnauthIP)) {
		l.mu.Unlock()
		return nil
	}
	var victim *tcpConn
	if len(l.conns) >= l.lim.maxConns || l.nUnauth >= l.lim.maxUnauth {
		if victim = l.unauthHead; victim == nil {
			l.mu.Unlock()
			return nil
		}
		l.removeLocked(victim)
		l.evicted.Add(1)
	}
	tc := &tcpConn{Conn: c, l: l, ap: ap, prefix: pfx, buf: make([]byte, 2*tcpMaxFrame)}
	if pc = l.perIP[pfx]; pc == nil { // again: the victim may have been the prefix's last connection
		pc = &prefixConns{}
		l.perIP[pfx] = pc
	}
	pc.all++
	l.conns[tc] = struct{}{}
	l.byAddr[ap] = tc
	l.pushUnauthLocked(tc)
	l.wg.Add(1)
	l.mu.Unlock()
	_ = c.SetReadDeadline(time.Now().Add(l.lim.firstFrame))
	if victim != nil {
		_ = victim.Close()
	}
	return tc
}

func (l *tcpListener) pushUnauthLocked(c *tcpConn) {
	c.prev, c.next, c.listed = l.unauthTail, nil, true
	if l.unauthTail != nil {
		l.unauthTail.next = c
	} else {
		l.unauthHead = c
	}
	l.unauthTail = c
	l.nUnauth++
	l.perIP[c.prefix].unauth++
}

func (l *tcpListener) unlinkUnauthLocked(c *tcpConn) {
	if !c.listed {
		return
	}
	if c.prev != nil {
		c.prev.next = c.next
	} else {
		l.unauthHead = c.next
	}
	if c.next != nil {
		c.next.prev = c.prev
	} else {
		l.unauthTail = c.prev
	}
	c.prev, c.next, c.listed = nil, nil, false
	l.nUnauth--
	l.perIP[c.prefix].unauth--
}

// removeLocked forgets c (once); closing the socket is the caller's.
func (l *tcpListener) removeLocked(c *tcpConn) {
	if c.removed {
		return
	}
	c.removed = true
	l.unlinkUnauthLocked(c)
	delete(l.conns, c)
	if l.byAddr[c.ap] == c {
		delete(l.byAddr, c.ap)
	}
	if pc := l.perIP[c.prefix]; pc != nil {
		if pc.all--; pc.all <= 0 {
			delete(l.perIP, c.prefix)
		}
	}
}

// allocationChanged is called from pion's allocation callbacks: delta +1
// when the connection from src got an allocation, -1 when one ended.
func (l *tcpListener) allocationChanged(src net.Addr, delta int) {
	ta, ok := src.(*net.TCPAddr)
	if !ok {
		return
	}
	a := ta.AddrPort()
	ap := netip.AddrPortFrom(a.Addr().Unmap(), a.Port())
	l.mu.Lock()
	c := l.byAddr[ap]
	if c == nil || c.removed {
		l.mu.Unlock()
		return
	}
	was := c.allocs > 0
	if c.allocs += delta; c.allocs < 0 {
		c.allocs = 0
	}
	now := c.allocs > 0
	switch {
	case now && !was:
		l.unlinkUnauthLocked(c)
	case was && !now:
		l.pushUnauthLocked(c)
	}
	c.hasAlloc.Store(now)
	l.mu.Unlock()
	if now != was {
		c.extendReadDeadline(time.Now(), true)
	}
}

func (l *tcpListener) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.conns)
}

// unauthCount is the number of connections without an allocation.
func (l *tcpListener) unauthCount() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.nUnauth
}

// closeAll closes the listener and every connection (pion closes accepted
// connections only when their client goes away).
func (l *tcpListener) closeAll() {
	l.mu.Lock()
	l.closed = true
	conns := make([]*tcpConn, 0, len(l.conns))
	for c := range l.conns {
		conns = append(conns, c)
	}
	l.mu.Unlock()
	_ = l.Listener.Close()
	for _, c := range conns {
		_ = c.Close()
	}
}

// tcpConn frames the stream (tcpframe.go), gates each frame, and hands
// pion whole frames, one per Read.
type tcpConn struct {
	net.Conn
	l      *tcpListener
	ap     netip.AddrPort
	prefix netip.Prefix

	// Under l.mu.
	prev, next *tcpConn // in l's unauth list while listed
	listed     bool
	removed    bool
	allocs     int

	hasAlloc atomic.Bool // allocs > 0, for the deadline code

	// Used by pion's reader goroutine only.
	buf        []byte // stream bytes buf[start:end] not yet framed
	start, end int
	rest       []byte // unread part of the current frame
	rerr       error  // a read error held back until buffered frames are out

	dlMu     sync.Mutex
	active   bool      // a frame arrived: idle timeout instead of first-frame timeout
	dlAlloc  bool      // the idle timeout in force is the one with an allocation
	extended time.Time // when the read deadline was last pushed out

	wdl       atomic.Int64 // unix nanos when the write deadline was last pushed out
	closeOnce sync.Once
	readOnce  sync.Once
}

// tcpMaxEmptyReads bounds consecutive (0, nil) reads from the socket, which
// a net.Conn should not return but must not make us spin.
const tcpMaxEmptyReads = 100

func (c *tcpConn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		// (0, nil) is what made pion's STUNConn recurse; it never asks for 0 bytes.
		return 0, io.ErrShortBuffer
	}
	if len(c.rest) > 0 {
		n := copy(p, c.rest)
		c.rest = c.rest[n:]
		return n, nil
	}
	empty := 0
	for {
		n, err := nextFrame(c.buf[c.start:c.end], tcpMaxFrame)
		if err != nil {
			c.l.badFrames.Add(1)
			_ = c.Close()
			return c.fail(err)
		}
		if n == 0 {
			if c.rerr != nil {
				return c.fail(c.rerr)
			}
			if len(c.buf)-c.start < tcpMaxFrame {
				c.end = copy(c.buf, c.buf[c.start:c.end])
				c.start = 0
			}
			m, err := c.Conn.Read(c.buf[c.end:])
			c.end += m
			c.rerr = err
			if m == 0 && err == nil {
				if empty++; empty > tcpMaxEmptyReads {
					_ = c.Close()
					return c.fail(io.ErrNoProgress)
				}
			}
			continue
		}
		frame := c.buf[c.start : c.start+n]
		if c.start += n; c.start == c.end {
			c.start, c.end = 0, 0 // frame stays valid: nothing is read before it is handed on
		}
		c.extendReadDeadline(time.Now(), false)
		if !handOn(frame) {
			c.l.dropFrames.Add(1)
			continue
		}
		if resp := c.l.s.inspect(frame, c.Conn.RemoteAddr()); resp != nil {
			if _, err := c.Write(resp); err != nil {
				return c.fail(err)
			}
			continue
		}
		k := copy(p, frame)
		c.rest = frame[k:]
		return k, nil
	}
}

// fail ends the reader: pion's read loop stops at the first error.
func (c *tcpConn) fail(err error) (int, error) {
	c.readOnce.Do(c.l.wg.Done)
	return 0, err
}

// extendReadDeadline pushes the read deadline out after a frame (at most
// every timeout/60: a syscall-free but not free timer update, so it fires
// between 59/60 and 1 timeout) or, with force, when the connection gained
// or lost its allocation.
func (c *tcpConn) extendReadDeadline(now time.Time, force bool) {
	alloc := c.hasAlloc.Load()
	d := c.l.lim.idleNoAlloc
	if alloc {
		d = c.l.lim.idle
	}
	c.dlMu.Lock()
	defer c.dlMu.Unlock()
	if force && !c.active {
		return // still on the first-frame deadline
	}
	if force || !c.active || alloc != c.dlAlloc || now.Sub(c.extended) > d/60 {
		c.active, c.dlAlloc, c.extended = true, alloc, now
		_ = c.Conn.SetReadDeadline(now.Add(d))
	}
}

// Write has a deadline: a client that stops reading must not block pion's
// goroutines. After a failed write the stream is unusable (a frame may be
// cut), so the connection is closed.
func (c *tcpConn) Write(p []byte) (int, error) {
	now := time.Now()
	if last := c.wdl.Load(); now.UnixNano()-last > int64(c.l.lim.write/4) {
		c.wdl.Store(now.UnixNano())
		_ = c.Conn.SetWriteDeadline(now.Add(c.l.lim.write))
	}
	q := withReasonPhrase(p)
	n, err := c.Conn.Write(q)
	if n == len(q) {
		n = len(p) // the caller's bytes, whatever the phrase added
	}
	if err != nil {
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			c.l.writeTimeouts.Add(1)
		}
		_ = c.Close()
	}
	return n, err
}

// Close is idempotent: pion, eviction and Server.Close may all close a
// connection.
func (c *tcpConn) Close() error {
	var err error
	c.closeOnce.Do(func() {
		err = c.Conn.Close()
		c.l.mu.Lock()
		c.l.removeLocked(c)
		c.l.mu.Unlock()
	})
	return err
}
