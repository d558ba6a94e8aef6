// Package turn runs the TURN/STUN server (github.com/pion/turn/v4) inside
// the daemon: UDP on several SO_REUSEPORT sockets and TCP on the TURN port,
// UDP relays in the configured port range, TURN REST credentials
// (turnauth) answered with a proper 401 on failure, per-peer, per-client-IP
// and global allocation quotas (486), and a peer filter that keeps relays out of
// loopback, private and other special address space.
package turn

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/turn/v4"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/duskchat/dusk-relay/internal/config"
	"github.com/duskchat/dusk-relay/internal/turnauth"
)

// closeWait bounds how long Close waits for pion's goroutines to let go of
// sockets.
const closeWait = 3 * time.Second

// Server is a running TURN server.
type Server struct {
	cfg    config.TURN
	secret []byte
	log    *zap.Logger
	filter *PeerFilter
	quota  *quota
	ctr    counters
	relays *relaySet
	chans  chanTable // bound UDP channels, relayed without pion (fastpath.go)
	clock  *monoClock
	rate   rateLimit // per allocation and direction (allocguard.go)
	// clients finds an allocation's relay socket by client address.
	clients clientRelays
	own     *ownWatcher

	udp  []*udpListener
	tcp  *tcpListener
	gate *gateState // answer budget, allocation owners, TCP slot classes (ratelimit.go)
	pion *turn.Server

	authLog *limiter
	permLog *limiter

	closed    atomic.Bool
	failure   atomic.Pointer[error]
	closeOnce sync.Once
	closeErr  error
	collector *collector
	reg       prometheus.Registerer
}

// New binds the TURN listeners now (so a port conflict stops the start
// with an error naming the port) and starts serving. secret is the shared
// secret from turnauth.LoadOrCreateSecret; reg may be nil.
func New(cfg config.TURN, secret []byte, log *zap.Logger, reg prometheus.Registerer) (*Server, error) {
	return newServer(cfg, secret, log, reg, tcpLimits{
		firstFrame: tcpFirstFrameTimeout,
		idle:       tcpIdleTimeout,
		maxConns:   cfg.MaxAllocations + tcpSpareConns,
		maxPerIP:   tcpMaxPerIP,
	})
}

func newServer(cfg config.TURN, secret []byte, log *zap.Logger, reg prometheus.Registerer, lim tcpLimits) (*Server, error) {
	if len(secret) == 0 {
		return nil, errors.New("TURN: empty shared secret")
	}
	pub, err := netip.ParseAddr(cfg.PublicIP)
	if err != nil || !pub.Unmap().Is4() {
		// pion/turn v4 opens relay sockets as udp4 only.
		return nil, fmt.Errorf("TURN: DUSK_TURN_PUBLIC_IP=%q must be an IPv4 address (relays are IPv4)", cfg.PublicIP)
	}
	listenIP, err := netip.ParseAddr(cfg.ListenIP)
	if err != nil {
		return nil, fmt.Errorf("TURN: DUSK_TURN_LISTEN_IP=%q: %w", cfg.ListenIP, err)
	}
	relayBind := listenIP.Unmap()
	switch {
	case relayBind.Is4():
	case relayBind.IsUnspecified():
		relayBind = netip.IPv4Unspecified()
	default:
		return nil, fmt.Errorf("TURN: DUSK_TURN_LISTEN_IP=%q: relay sockets need an IPv4 (or unspecified) address", cfg.ListenIP)
	}
	if cfg.PortRangeStart == 0 || cfg.PortRangeEnd < cfg.PortRangeStart {
		return nil, fmt.Errorf("TURN: bad relay port range %d-%d", cfg.PortRangeStart, cfg.PortRangeEnd)
	}
	if cfg.MaxAllocations < 1 || cfg.MaxPerUser < 1 || cfg.MaxPerIP < 0 {
		return nil, fmt.Errorf("TURN: allocation quotas must be >= 1 (got %d total, %d per peer, %d per IP)",
			cfg.MaxAllocations, cfg.MaxPerUser, cfg.MaxPerIP)
	}
	if cfg.CredentialTTL < time.Second {
		return nil, fmt.Errorf("TURN: credential TTL %v < 1s", cfg.CredentialTTL)
	}
	threads := cfg.UDPThreads
	if threads < 1 || !reusePortSupported {
		threads = 1
	}

	s := &Server{
		cfg:     cfg,
		secret:  secret,
		log:     log,
		filter:  NewPeerFilter(cfg.AllowPeers, cfg.DenyPeers, hostAddrs(cfg.PublicIP, cfg.ListenIP)),
		quota:   newQuota(cfg.MaxPerUser, cfg.MaxPerIP, cfg.MaxAllocations),
		relays:  newRelaySet(),
		clock:   newMonoClock(),
		rate:    newRateLimit(cfg.MaxBPS),
		authLog: newLimiter(time.Second),
		permLog: newLimiter(time.Second),
	}

	udpConns, err := listenUDP(listenIP.String(), cfg.UDPPort, threads)
	if err != nil {
		return nil, err
	}
	tcpLn, err := listenTCP(listenIP.String(), cfg.TCPPort)
	if err != nil {
		closeAllPC(udpConns)
		return nil, err
	}
	s.tcp = newTCPListener(tcpLn, s, lim)
	s.gate = newGateState()
	s.gate.tcp = s.tcp

	gen := &relayGen{s: s, inner: &turn.RelayAddressGeneratorPortRange{
		RelayAddress: net.IP(pub.Unmap().AsSlice()),
		Address:      relayBind.String(),
		MinPort:      cfg.PortRangeStart,
		MaxPort:      cfg.PortRangeEnd,
		// Random picks collide with ports in use; 10 (pion's default) is
		// thin for small ranges.
		MaxRetries: 64,
	}}
	pcs := make([]turn.PacketConnConfig, 0, len(udpConns))
	for _, pc := range udpConns {
		ul := newUDPListener(pc, s)
		s.udp = append(s.udp, ul)
		pcs = append(pcs, turn.PacketConnConfig{PacketConn: ul, RelayAddressGenerator: gen, PermissionHandler: s.permit})
	}
	s.pion, err = turn.NewServer(turn.ServerConfig{
		PacketConnConfigs: pcs,
		ListenerConfigs:   []turn.ListenerConfig{{Listener: s.tcp, RelayAddressGenerator: gen, PermissionHandler: s.permit}},
		LoggerFactory:     pionLoggers{log: log.Named("pion"), lim: newLimiter(time.Second)},
		Realm:             cfg.Realm,
		AuthHandler:       s.authenticate,
		QuotaHandler:      s.admitAllocation,
		EventHandler: turn.EventHandler{
			OnAllocationCreated: s.onAllocationCreated,
			OnAllocationDeleted: s.onAllocationDeleted,
			OnAllocationError:   s.onAllocationError,
			OnPermissionCreated: s.onPermissionCreated,
			OnPermissionDeleted: s.onPermissionDeleted,
			OnChannelCreated:    s.onChannelCreated,
			OnChannelDeleted:    s.onChannelDeleted,
		},
	})
	if err != nil {
		closeAllPC(udpConns)
		_ = tcpLn.Close()
		return nil, fmt.Errorf("TURN: %w", err)
	}
	if reg != nil {
		s.collector = newCollector(s)
		if err := reg.Register(s.collector); err != nil {
			_ = s.Close()
			return nil, fmt.Errorf("TURN metrics: %w", err)
		}
		if err := reg.Register(s.gate); err != nil {
			reg.Unregister(s.collector)
			_ = s.Close()
			return nil, fmt.Errorf("TURN metrics: %w", err)
		}
		s.reg = reg
	}
	s.own = startOwnWatcher(s.filter, func() []netip.Addr { return hostAddrs(cfg.PublicIP, cfg.ListenIP) },
		ownRefreshInterval, log)
	log.Info("TURN server listening",
		zap.Stringer("udp", s.UDPAddr()), zap.Int("udp_sockets", len(s.udp)),
		zap.Stringer("tcp", s.TCPAddr()),
		zap.String("relay_ip", pub.Unmap().String()),
		zap.String("relay_ports", fmt.Sprintf("%d-%d", cfg.PortRangeStart, cfg.PortRangeEnd)),
		zap.String("realm", cfg.Realm),
		zap.Int("max_allocations", cfg.MaxAllocations), zap.Int("max_per_peer", cfg.MaxPerUser),
		zap.Int("max_per_ip", cfg.MaxPerIP), zap.Int("max_bps", cfg.MaxBPS),
		zap.Int("deny_peers", len(cfg.DenyPeers)))
	if len(cfg.AllowPeers) > 0 {
		allowed := make([]string, len(cfg.AllowPeers))
		for i, p := range cfg.AllowPeers {
			allowed[i] = p.String()
		}
		log.Warn("DUSK_TURN_ALLOW_PEERS: TURN clients may relay into these ranges despite the built-in deny list",
			zap.Strings("allow_peers", allowed))
	}
	return s, nil
}

// listenUDP binds n sockets on one port with SO_REUSEPORT. A non-zero port
// is first probed without SO_REUSEPORT: otherwise a second relay of the
// same user would silently share the port instead of failing.
func listenUDP(ip string, port uint16, n int) ([]net.PacketConn, error) {
	addr := net.JoinHostPort(ip, strconv.Itoa(int(port)))
	wrap := func(err error) error { return fmt.Errorf("TURN UDP %s: %w", addr, opCause(err)) }
	if port != 0 && reusePortSupported && n > 1 {
		probe, err := net.ListenPacket("udp", addr)
		if err != nil {
			return nil, wrap(err)
		}
		_ = probe.Close()
	}
	lc := net.ListenConfig{}
	if n > 1 {
		lc.Control = reusePort
	}
	var out []net.PacketConn
	for i := 0; i < n; i++ {
		pc, err := lc.ListenPacket(context.Background(), "udp", addr)
		if err != nil {
			closeAllPC(out)
			return nil, wrap(err)
		}
		if i == 0 && port == 0 {
			// The rest join the port the kernel picked.
			addr = pc.LocalAddr().String()
		}
		if uc, ok := pc.(*net.UDPConn); ok {
			// Every client shares these sockets: a short stall of the
			// reader must not overflow them (coturn asks for the same; the
			// kernel caps it at net.core.rmem_max / wmem_max).
			_ = uc.SetReadBuffer(listenerSocketBuffer)
			_ = uc.SetWriteBuffer(listenerSocketBuffer)
		}
		out = append(out, pc)
	}
	return out, nil
}

// listenerSocketBuffer is the SO_RCVBUF/SO_SNDBUF asked for the UDP listeners.
const listenerSocketBuffer = 4 << 20

func listenTCP(ip string, port uint16) (net.Listener, error) {
	addr := net.JoinHostPort(ip, strconv.Itoa(int(port)))
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("TURN TCP %s: %w", addr, opCause(err))
	}
	return l, nil
}

// opCause drops net.OpError's repetition of the address ("listen udp
// 0.0.0.0:3478: bind: address already in use" -> "bind: address already
// in use"); errors.Is(err, syscall.EADDRINUSE) still holds.
func opCause(err error) error {
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Err != nil {
		return oe.Err
	}
	return err
}

func closeAllPC(pcs []net.PacketConn) {
	for _, pc := range pcs {
		_ = pc.Close()
	}
}

// UDPAddr is the bound UDP address (all sockets share it).
func (s *Server) UDPAddr() *net.UDPAddr {
	a, _ := s.udp[0].LocalAddr().(*net.UDPAddr)
	return a
}

// TCPAddr is the bound TCP address.
func (s *Server) TCPAddr() *net.TCPAddr {
	a, _ := s.tcp.Addr().(*net.TCPAddr)
	return a
}

// Filter is the peer filter in use.
func (s *Server) Filter() *PeerFilter { return s.filter }

// Ready reports whether every listener is still serving.
func (s *Server) Ready() error {
	if s.closed.Load() {
		return errors.New("TURN server closed")
	}
	if p := s.failure.Load(); p != nil {
		return *p
	}
	return nil
}

func (s *Server) listenerStopped(network string, addr net.Addr, err error) {
	if s.closed.Load() {
		return
	}
	e := fmt.Errorf("TURN %s listener %s stopped: %w", network, addr, err)
	s.failure.CompareAndSwap(nil, &e)
	s.log.Error("TURN listener stopped", zap.String("network", network), zap.Stringer("addr", addr), zap.Error(err))
}

func (s *Server) listenerTrouble(network string, err error) {
	if ok, suppressed := s.permLog.allow(time.Now()); ok {
		s.log.Warn("TURN accept failed; retrying", zap.String("network", network), zap.Error(err), zap.Int("suppressed", suppressed))
	}
}

// Close stops the listeners, ends every allocation and waits (bounded) for
// pion's goroutines to let go of their sockets.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		s.closed.Store(true)
		if s.own != nil {
			s.own.close()
		}
		if s.reg != nil {
			s.reg.Unregister(s.collector)
			s.reg.Unregister(s.gate)
		}
		s.closeErr = s.pion.Close()
		s.tcp.closeAll()
		deadline := time.NewTimer(closeWait)
		defer deadline.Stop()
		for _, u := range s.udp {
			select {
			case <-u.exited:
			case <-deadline.C:
			}
		}
		tcpDone := make(chan struct{})
		go func() { s.tcp.wg.Wait(); close(tcpDone) }()
		select {
		case <-tcpDone:
		case <-deadline.C:
		}
		select {
		case <-s.relays.drained():
		case <-deadline.C:
			s.relays.closeAll()
		}
		s.quota.reset()
	})
	return s.closeErr
}

// Stats returns a snapshot of the counters.
func (s *Server) Stats() Stats {
	live, _, _ := s.quota.snapshot()
	st := Stats{
		Allocations:        uint64(live),
		AllocationsTotal:   s.ctr.allocsCreated.Load(),
		QuotaRejectedPeer:  s.ctr.quotaPeer.Load(),
		QuotaRejectedIP:    s.ctr.quotaIP.Load(),
		QuotaRejectedTotal: s.ctr.quotaGlobal.Load(),
		AuthFailures:       make(map[string]uint64, numReasons),
		Permissions:        s.ctr.permsCreated.Load(),
		PermissionsDenied:  s.ctr.permsDenied.Load(),
		BytesToPeer:        s.ctr.bytesToPeer.Load(),
		BytesFromPeer:      s.ctr.bytesFromPeer.Load(),
		PacketsToPeer:      s.ctr.packetsToPeer.Load(),
		PacketsFromPeer:    s.ctr.packetsFromPeer.Load(),
		OwnHostDropped:     s.ctr.ownHostDropped.Load(),
		PermissionDropped:  s.ctr.permDropped.Load(),
		RateDropped:        s.ctr.rateDropped.Load(),
		TCPConns:           uint64(s.tcp.count()),
		TCPRejected:        s.ctr.tcpRejected.Load(),
	}
	for i, name := range reasonNames {
		st.AuthFailures[name] = s.ctr.authFailures[i].Load()
	}
	return st
}

// authenticate is pion's AuthHandler: the long-term key for a valid REST
// username. The gate (inspect) has already answered bad credentials with
// 401; this repeats the check in case a request gets here another way.
func (s *Server) authenticate(username, realm string, src net.Addr) ([]byte, bool) {
	_, password, err := turnauth.Verify(s.secret, username, time.Now(), s.cfg.CredentialTTL)
	if err != nil {
		s.authFailed(reasonOf(err), src, username)
		return nil, false
	}
	return turn.GenerateAuthKey(username, realm, password), true
}

func peerOf(username string) string {
	if _, id, err := turnauth.Parse(username); err == nil {
		return id
	}
	return username
}

// admitAllocation is pion's QuotaHandler (false -> 486).
func (s *Server) admitAllocation(username, _ string, src net.Addr) bool {
	switch s.quota.reserve(peerOf(username), addrKey(src), ipKey(src)) {
	case quotaOK:
		return true
	case quotaPeerFull:
		s.ctr.quotaPeer.Add(1)
		s.log.Debug("TURN allocation refused: per-peer quota", zap.String("peer", peerOf(username)),
			zap.Int("max", s.cfg.MaxPerUser))
	case quotaIPFull:
		s.ctr.quotaIP.Add(1)
		s.log.Debug("TURN allocation refused: per-IP quota", zap.Stringer("client", src),
			zap.Int("max", s.cfg.MaxPerIP))
	default:
		s.ctr.quotaGlobal.Add(1)
		s.log.Debug("TURN allocation refused: global quota", zap.Int("max", s.cfg.MaxAllocations))
	}
	return false
}

func (s *Server) onAllocationCreated(src, _ net.Addr, _, username, _ string, relay net.Addr, _ int) {
	s.quota.created(peerOf(username), addrKey(src), ipKey(src))
	s.gate.allocationCreated(src, username)
	if rc := s.relayOf(relay); rc != nil {
		s.clients.set(addrKey(src), rc)
	}
	s.ctr.allocsCreated.Add(1)
	s.log.Debug("TURN allocation created", zap.String("peer", peerOf(username)),
		zap.Stringer("client", src), zap.Stringer("relay", relay))
}

func (s *Server) onAllocationDeleted(src, _ net.Addr, _, username, _ string) {
	s.quota.deleted(peerOf(username), addrKey(src), ipKey(src))
	s.gate.allocationDeleted(src)
	s.clients.remove(addrKey(src))
	s.log.Debug("TURN allocation deleted", zap.String("peer", peerOf(username)), zap.Stringer("client", src))
}

func (s *Server) onAllocationError(src, _ net.Addr, _, _ string) {
	s.quota.failed(addrKey(src))
}

// permit is pion's PermissionHandler for CreatePermission and ChannelBind.
func (s *Server) permit(client net.Addr, peerIP net.IP) bool {
	ip, ok := netip.AddrFromSlice(peerIP)
	if ok {
		if v := s.filter.Check(ip); v == Allow || v == OwnHost {
			// pion grants or refreshes the permission right after this.
			s.touchPermission(s.clients.get(addrKey(client)), peerIP)
			return true
		}
	}
	s.ctr.permsDenied.Add(1)
	if s.log.Core().Enabled(zap.DebugLevel) {
		if ok, suppressed := s.permLog.allow(time.Now()); ok {
			s.log.Debug("TURN permission denied by peer filter", zap.Stringer("client", client),
				zap.Stringer("peer", peerIP), zap.Int("suppressed", suppressed))
		}
	}
	return false
}
