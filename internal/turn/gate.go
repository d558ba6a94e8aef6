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

	"github.com/duskchat/dusk-relay/internal/netkey"
	"github.com/duskchat/dusk-relay/internal/turnauth"
)

// Why a gate in front of pion: pion/turn v4.1.4 answers a request whose
// credentials fail (AuthHandler says no, or MESSAGE-INTEGRITY does not
// match) with 400 Bad Request, while RFC 5389 §10.2.2 and docs/PROTOCOLS.md
// ("TURN/STUN server and credential format", Answers) require
// 401 Unauthorized with REALM and NONCE. So each listener checks the
// authenticated TURN requests before pion sees them and answers failures
// with a proper 401 itself; pion's AuthHandler repeats the check (defence
// in depth). The gate also does what pion does not: 441 for a request on
// an allocation with another username than the allocation's, and (UDP)
// a per-prefix budget for answers that need no credentials. Only control
// requests are decoded: ChannelData and Send indications pass after a
// two-byte type check.

// inspect returns the gate's own answer (401, 441) to a request, or nil
// for everything pion should handle. No answer budget: for TCP, and for
// the fuzz target.
func (s *Server) inspect(b []byte, src net.Addr) []byte {
	resp, _ := s.screen(b, src, false)
	return resp
}

// screen is inspect with the UDP answer budget (ratelimit.go) when budget
// is set: drop reports a request whose unauthenticated answer (Binding
// response, 401, 400) is over its source prefix's budget; it goes neither
// to pion nor gets an answer.
func (s *Server) screen(b []byte, src net.Addr, budget bool) (resp []byte, drop bool) {
	if !stun.IsMessage(b) {
		return nil, false
	}
	var t stun.MessageType
	t.ReadValue(binary.BigEndian.Uint16(b[0:2]))
	if t.Class != stun.ClassRequest {
		return nil, false
	}
	spend := func(kind int) bool {
		return budget && s.gate != nil && !budgetExempt(src) && !s.gate.answers.allow(ipKey(src), kind, time.Now())
	}
	switch t.Method {
	case stun.MethodAllocate, stun.MethodRefresh, stun.MethodCreatePermission, stun.MethodChannelBind:
	case stun.MethodBinding:
		return nil, spend(answerBinding)
	default:
		return nil, false
	}
	m := &stun.Message{Raw: append([]byte(nil), b...)}
	if err := m.Decode(); err != nil {
		return nil, false // pion does not answer what it cannot decode
	}
	if !m.Contains(stun.AttrMessageIntegrity) {
		return nil, spend(answerUnauth) // pion answers: no integrity -> 401 with a fresh nonce
	}
	var (
		user  stun.Username
		realm stun.Realm
		nonce stun.Nonce
	)
	if user.GetFrom(m) != nil || realm.GetFrom(m) != nil || nonce.GetFrom(m) != nil {
		return nil, spend(answerUnauth) // pion answers 400, as RFC 5389 says for missing attributes
	}
	username := user.String()
	_, password, err := turnauth.Verify(s.secret, username, time.Now(), s.cfg.CredentialTTL)
	reason := -1
	var key []byte
	if err != nil {
		reason = reasonOf(err)
	} else if key = turn.GenerateAuthKey(username, realm.String(), password); stun.MessageIntegrity(key).Check(m) != nil {
		reason = reasonIntegrity
	}
	if reason < 0 {
		return s.checkOwner(m, t, src, username, key), false
	}
	s.authFailed(reason, src, username)
	if spend(answerUnauth) {
		return nil, true
	}
	// The client's nonce passed pion's check moments ago on a previous
	// request, or it is stale, in which case the client gets the same 401 it
	// would get after refreshing it. No MESSAGE-INTEGRITY: the key is wrong.
	resp401, err := stun.Build(
		stun.NewTransactionIDSetter(m.TransactionID),
		stun.NewType(t.Method, stun.ClassErrorResponse),
		stun.CodeUnauthorized,
		stun.NewRealm(s.cfg.Realm),
		nonce,
	)
	if err != nil {
		return nil, false
	}
	return resp401.Raw, false
}

// budgetExempt: 127.0.0.1 and ::1 cannot be spoofed from outside the
// host (the kernel drops such packets from the wire), and local tools
// (dusk-bench) set up allocations far faster than any client; the same
// addresses are exempt from the libp2p connection limits.
func budgetExempt(src net.Addr) bool {
	if _, ok := src.(*net.UDPAddr); !ok {
		return false
	}
	a, _ := netkey.AddrOfNetAddr(src)
	return netkey.Exempt(a)
}

// sameUser: the user a REST username ("<expiry>:<peer ID>") names is its
// peer ID; the expiry changes every time the client fetches credentials,
// and a client renewing its credentials keeps its allocation (RFC 8656 §5
// is about another user, which another peer ID is: credentials are only
// issued for the requesting peer). Other usernames compare whole.
func sameUser(a, b string) bool {
	if a == b {
		return true
	}
	_, idA, errA := turnauth.Parse(a)
	_, idB, errB := turnauth.Parse(b)
	return errA == nil && errB == nil && idA == idB
}

// checkOwner answers 441 Wrong Credentials to a request with valid
// credentials on an allocation created with another username (RFC 8656
// §5): pion checks only that the credentials are valid, so any peer could
// otherwise refresh, delete or open permissions on another's allocation
// from its 5-tuple. nil when the request may go on to pion.
func (s *Server) checkOwner(m *stun.Message, t stun.MessageType, src net.Addr, username string, key []byte) []byte {
	if s.gate == nil {
		return nil
	}
	owner, ok := s.gate.owners.get(src)
	if !ok || sameUser(owner, username) {
		return nil
	}
	s.gate.wrongCreds.Add(1)
	if s.log.Core().Enabled(zap.DebugLevel) {
		if ok, suppressed := s.authLog.allow(time.Now()); ok {
			s.log.Debug("TURN request with another username than its allocation's: 441",
				zap.Stringer("client", src), zap.String("username", truncate(username, 160)),
				zap.Int("suppressed", suppressed))
		}
	}
	// Integrity with the request's own key: it verified (RFC 5389 §10.1.2).
	resp, err := stun.Build(
		stun.NewTransactionIDSetter(m.TransactionID),
		stun.NewType(t.Method, stun.ClassErrorResponse),
		stun.CodeWrongCredentials,
		stun.MessageIntegrity(key),
		stun.Fingerprint,
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
		if resp, drop := c.s.screen(p[:n], addr, true); resp != nil || drop {
			if resp != nil {
				_, _ = c.PacketConn.WriteTo(resp, addr)
			}
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
