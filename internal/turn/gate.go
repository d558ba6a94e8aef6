package turn

import (
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/pion/stun/v3"
	"github.com/pion/turn/v4"
	"go.uber.org/zap"
	"golang.org/x/net/ipv4"

	"github.com/duskchat/dusk-relay/internal/turnauth"
)

// Why a gate in front of pion: pion/turn v4.1.4 answers a request whose
// credentials fail (AuthHandler says no, or MESSAGE-INTEGRITY does not
// match) with 400 Bad Request, while RFC 5389 §10.2.2 and our spec require
// 401 Unauthorized with REALM and NONCE. So each listener checks the
// authenticated TURN requests before pion sees them and answers failures
// with a proper 401 itself; pion's AuthHandler repeats the check (defence
// in depth). Only control requests are decoded: ChannelData and Send
// indications pass after a two-byte type check.

// inspect returns a 401 response for an authenticated request whose REST
// credentials fail, and nil for everything pion should handle.
func (s *Server) inspect(b []byte, src net.Addr) []byte {
	if !stun.IsMessage(b) {
		return nil
	}
	var t stun.MessageType
	t.ReadValue(binary.BigEndian.Uint16(b[0:2]))
	if t.Class != stun.ClassRequest {
		return nil
	}
	switch t.Method {
	case stun.MethodAllocate, stun.MethodRefresh, stun.MethodCreatePermission, stun.MethodChannelBind:
	default:
		return nil
	}
	m := &stun.Message{Raw: append([]byte(nil), b...)}
	if err := m.Decode(); err != nil || !m.Contains(stun.AttrMessageIntegrity) {
		return nil // pion answers: no integrity -> 401 with a fresh nonce
	}
	var (
		user  stun.Username
		realm stun.Realm
		nonce stun.Nonce
	)
	if user.GetFrom(m) != nil || realm.GetFrom(m) != nil || nonce.GetFrom(m) != nil {
		return nil // pion answers 400, as RFC 5389 says for missing attributes
	}
	username := user.String()
	_, password, err := turnauth.Verify(s.secret, username, time.Now(), s.cfg.CredentialTTL)
	reason := -1
	if err != nil {
		reason = reasonOf(err)
	} else if stun.MessageIntegrity(turn.GenerateAuthKey(username, realm.String(), password)).Check(m) != nil {
		reason = reasonIntegrity
	}
	if reason < 0 {
		return nil
	}
	s.authFailed(reason, src, username)
	// The client's nonce passed pion's check moments ago on a previous
	// request, or it is stale, in which case the client gets the same 401 it
	// would get after refreshing it. No MESSAGE-INTEGRITY: the key is wrong.
	resp, err := stun.Build(
		stun.NewTransactionIDSetter(m.TransactionID),
		stun.NewType(t.Method, stun.ClassErrorResponse),
		stun.CodeUnauthorized,
		stun.NewRealm(s.cfg.Realm),
		nonce,
	)
	if err != nil {
		return nil
	}
	return resp.Raw
}

func reasonOf(err error) int {
	switch {
	case errors.Is(err, turnauth.ErrExpired):
		return reasonExpired
	case errors.Is(err, turnauth.ErrTooFarInFuture):
		return reasonFuture
	default:
		return reasonMalformed
	}
}

// authFailed counts and logs (debug, at most one line per second) an
// authentication failure. The password is never known here, let alone logged.
func (s *Server) authFailed(reason int, src net.Addr, username string) {
	s.ctr.authFailures[reason].Add(1)
	if !s.log.Core().Enabled(zap.DebugLevel) {
		return
	}
	if ok, suppressed := s.authLog.allow(time.Now()); ok {
		s.log.Debug("TURN authentication failed",
			zap.String("reason", reasonNames[reason]),
			zap.Stringer("client", src),
			zap.String("username", truncate(username, 160)),
			zap.Int("suppressed", suppressed))
	}
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

// udpListener is one UDP socket as pion sees it, with the auth gate and
// the channel fast path.
type udpListener struct {
	net.PacketConn
	s      *Server
	exited chan struct{} // closed when ReadFrom failed for good
	once   sync.Once

	pc4 *ipv4.PacketConn // nil unless a *net.UDPConn: then reads and fast-path sends are batched
	// Used by pion's reader goroutine only; made at its first read.
	in    *batchReader
	out   *batchWriter
	visit visitFunc // c.fromClient and c.out.flush, bound once
	flush func()
}

func newUDPListener(pc net.PacketConn, s *Server) *udpListener {
	l := &udpListener{PacketConn: pc, s: s, exited: make(chan struct{})}
	if uc, ok := pc.(*net.UDPConn); ok {
		l.pc4 = ipv4.NewPacketConn(uc)
	}
	return l
}

func (c *udpListener) ReadFrom(p []byte) (int, net.Addr, error) {
	if c.pc4 != nil && c.in == nil {
		in, err := newBatchReader(c.PacketConn.(*net.UDPConn), listenerBatch, len(p), 0)
		if err != nil {
			c.stopped(err)
			return 0, nil, err
		}
		c.in, c.out = in, newBatchWriter(listenerBatch)
		c.visit, c.flush = c.fromClient, c.out.flush
	}
	for {
		var (
			n    int
			addr net.Addr
			err  error
		)
		if c.in != nil {
			var data []byte
			var from netip.AddrPort
			data, _, from, err = c.in.read(c.visit, c.flush)
			c.out.flush()
			if err == nil {
				n, addr = copy(p, data), net.UDPAddrFromAddrPort(from)
			}
		} else {
			n, addr, err = c.PacketConn.ReadFrom(p)
		}
		if err != nil {
			c.stopped(err)
			return n, addr, err
		}
		if resp := c.s.inspect(p[:n], addr); resp != nil {
			_, _ = c.PacketConn.WriteTo(resp, addr)
			continue
		}
		return n, addr, nil
	}
}

// fromClient relays ChannelData of a bound channel to its peer; anything
// else goes to pion (through the auth gate).
func (c *udpListener) fromClient(data, _ []byte, from netip.AddrPort) (keep bool) {
	if number, payload, ok := channelData(data); ok {
		if bc := c.s.chans.lookup(from, number); bc != nil {
			bc.relay.queueToPeer(c.out, payload, bc)
			return false
		}
	}
	return true
}

// stopped records that the socket failed for good: pion's read loop ends
// on any error; Ready reports it.
func (c *udpListener) stopped(err error) {
	c.once.Do(func() {
		c.s.listenerStopped("udp", c.PacketConn.LocalAddr(), err)
		close(c.exited)
	})
}

const (
	// tcpFirstFrameTimeout: a TURN client speaks first, at once.
	tcpFirstFrameTimeout = 10 * time.Second
	// tcpIdleTimeout: a connection holding an allocation sends at least a
	// Refresh within the longest allocation lifetime pion grants (1 h).
	tcpIdleTimeout = time.Hour + time.Minute
	// tcpMaxPerIP bounds connections from one address (pion itself puts no
	// limit on TCP connections).
	tcpMaxPerIP = 64
	// tcpSpareConns: connections beyond one per allowed allocation, for
	// STUN-only clients and Allocates in flight.
	tcpSpareConns = 256
	// tcpMaxFrame: pion drops anything at or above its 1600-byte inbound MTU.
	tcpMaxFrame = 1600
)

// tcpLimits are the TCP connection bounds (fields so tests can shorten them).
type tcpLimits struct {
	firstFrame time.Duration
	idle       time.Duration
	maxConns   int
	maxPerIP   int
}

// tcpListener caps and tracks TCP connections and gates their frames.
type tcpListener struct {
	net.Listener
	s   *Server
	lim tcpLimits

	mu     sync.Mutex
	conns  map[*tcpConn]struct{}
	perIP  map[netip.Addr]int
	closed bool
	wg     sync.WaitGroup // one per connection until its reader has returned
}

func newTCPListener(l net.Listener, s *Server, lim tcpLimits) *tcpListener {
	return &tcpListener{Listener: l, s: s, lim: lim,
		conns: map[*tcpConn]struct{}{}, perIP: map[netip.Addr]int{}}
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

func (l *tcpListener) admit(c net.Conn) *tcpConn {
	ip := netip.Addr{}
	if ta, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		ip = ta.AddrPort().Addr().Unmap()
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed || len(l.conns) >= l.lim.maxConns || l.perIP[ip] >= l.lim.maxPerIP {
		return nil
	}
	_ = c.SetReadDeadline(time.Now().Add(l.lim.firstFrame))
	tc := &tcpConn{Conn: c, l: l, ip: ip, frames: turn.NewSTUNConn(c), buf: make([]byte, tcpMaxFrame)}
	l.conns[tc] = struct{}{}
	l.perIP[ip]++
	l.wg.Add(1)
	return tc
}

func (l *tcpListener) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.conns)
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

// tcpConn re-frames the stream (pion's own STUNConn framing), gates each
// frame, and hands pion whole frames.
type tcpConn struct {
	net.Conn
	l      *tcpListener
	ip     netip.Addr
	frames *turn.STUNConn
	buf    []byte
	rest   []byte // unread part of the current frame

	active    bool      // a frame arrived: idle timeout instead of first-frame timeout
	extended  time.Time // when the read deadline was last pushed out
	closeOnce sync.Once
	readOnce  sync.Once
}

func (c *tcpConn) Read(p []byte) (int, error) {
	if len(c.rest) > 0 {
		n := copy(p, c.rest)
		c.rest = c.rest[n:]
		return n, nil
	}
	for {
		n, _, err := c.frames.ReadFrom(c.buf)
		if err != nil {
			c.readOnce.Do(c.l.wg.Done)
			return 0, err
		}
		// Push the idle deadline out at most every idle/60 (a syscall-free
		// but not free timer update), so it fires between 59/60 and 1 idle.
		if now := time.Now(); !c.active || now.Sub(c.extended) > c.l.lim.idle/60 {
			c.active, c.extended = true, now
			_ = c.Conn.SetReadDeadline(now.Add(c.l.lim.idle))
		}
		if n > len(c.buf) {
			continue // oversized frame: pion would drop it too
		}
		frame := c.buf[:n]
		if resp := c.l.s.inspect(frame, c.Conn.RemoteAddr()); resp != nil {
			if _, err := c.Conn.Write(resp); err != nil {
				c.readOnce.Do(c.l.wg.Done)
				return 0, err
			}
			continue
		}
		k := copy(p, frame)
		c.rest = frame[k:]
		return k, nil
	}
}

// Close is idempotent: pion and Server.Close may both close a connection.
func (c *tcpConn) Close() error {
	var err error
	c.closeOnce.Do(func() {
		err = c.Conn.Close()
		c.l.mu.Lock()
		delete(c.l.conns, c)
		if c.l.perIP[c.ip]--; c.l.perIP[c.ip] <= 0 {
			delete(c.l.perIP, c.ip)
		}
		c.l.mu.Unlock()
	})
	return err
}
