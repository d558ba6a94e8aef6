package turn

import (
	"encoding/binary"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"

	"github.com/pion/turn/v4"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/net/ipv4"
	"golang.org/x/sys/cpu"
)

// Auth failure reasons (metric label values).
const (
	reasonMalformed = iota
	reasonExpired
	reasonFuture
	reasonIntegrity
	numReasons
)

var reasonNames = [numReasons]string{"malformed", "expired", "future", "integrity"}

// counters are plain atomics so the per-packet paths only do atomic adds;
// the collector turns them into Prometheus metrics at scrape time.
type counters struct {
	allocsCreated  atomic.Uint64
	quotaPeer      atomic.Uint64
	quotaIP        atomic.Uint64
	quotaGlobal    atomic.Uint64
	authFailures   [numReasons]atomic.Uint64
	permsCreated   atomic.Uint64
	permsDenied    atomic.Uint64
	ownHostDropped atomic.Uint64
	tcpRejected    atomic.Uint64
	permDropped    atomic.Uint64 // channel data for a lapsed permission
	rateDropped    atomic.Uint64 // over DUSK_TURN_MAX_BPS

	// Written for every relayed packet, by listener goroutines (to peer)
	// and relay socket readers (from peer), usually on different cores: a
	// cache line per direction, apart from the fields read per packet.
	_               cpu.CacheLinePad
	bytesToPeer     atomic.Uint64
	packetsToPeer   atomic.Uint64
	_               cpu.CacheLinePad
	bytesFromPeer   atomic.Uint64
	packetsFromPeer atomic.Uint64
	_               cpu.CacheLinePad
}

// Stats is a snapshot of the server's counters.
type Stats struct {
	Allocations, AllocationsTotal         uint64
	QuotaRejectedPeer, QuotaRejectedTotal uint64
	QuotaRejectedIP                       uint64
	AuthFailures                          map[string]uint64
	Permissions, PermissionsDenied        uint64
	BytesToPeer, BytesFromPeer            uint64
	PacketsToPeer, PacketsFromPeer        uint64
	OwnHostDropped                        uint64
	PermissionDropped, RateDropped        uint64
	TCPConns, TCPRejected                 uint64
}

type collector struct {
	s     *Server
	descs map[string]*prometheus.Desc
}

func newCollector(s *Server) *collector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(prometheus.BuildFQName("dusk", "turn", name), help, labels, nil)
	}
	return &collector{s: s, descs: map[string]*prometheus.Desc{
		"allocations":       d("allocations", "TURN allocations currently active."),
		"allocations_total": d("allocations_total", "TURN allocations created."),
		"quota":             d("allocation_quota_rejections_total", "Allocate requests refused with 486 (per-peer, per-IP or global quota).", "scope"),
		"auth":              d("auth_failures_total", "TURN requests refused with 401 (bad REST credentials).", "reason"),
		"perms":             d("permissions_total", "TURN permissions created."),
		"perms_denied":      d("permission_denials_total", "CreatePermission/ChannelBind refused by the peer filter."),
		"bytes":             d("relayed_bytes_total", "UDP payload bytes relayed.", "direction"),
		"packets":           d("relayed_packets_total", "UDP packets relayed.", "direction"),
		"own_dropped":       d("own_host_dropped_packets_total", "Packets to this host outside the relay port range, dropped."),
		"dropped":           d("dropped_packets_total", "Relayed packets dropped: permission lapsed (or never granted) or over DUSK_TURN_MAX_BPS.", "reason"),
		"tcp":               d("tcp_connections", "TURN TCP connections open."),
		"tcp_rejected":      d("tcp_rejected_connections_total", "TURN TCP connections closed at accept (connection caps)."),
	}}
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.descs {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	st := c.s.Stats()
	m := func(name string, t prometheus.ValueType, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(c.descs[name], t, float64(v), labels...)
	}
	m("allocations", prometheus.GaugeValue, st.Allocations)
	m("allocations_total", prometheus.CounterValue, st.AllocationsTotal)
	m("quota", prometheus.CounterValue, st.QuotaRejectedPeer, "peer")
	m("quota", prometheus.CounterValue, st.QuotaRejectedIP, "ip")
	m("quota", prometheus.CounterValue, st.QuotaRejectedTotal, "global")
	for _, r := range reasonNames {
		m("auth", prometheus.CounterValue, st.AuthFailures[r], r)
	}
	m("perms", prometheus.CounterValue, st.Permissions)
	m("perms_denied", prometheus.CounterValue, st.PermissionsDenied)
	m("bytes", prometheus.CounterValue, st.BytesToPeer, "to_peer")
	m("bytes", prometheus.CounterValue, st.BytesFromPeer, "from_peer")
	m("packets", prometheus.CounterValue, st.PacketsToPeer, "to_peer")
	m("packets", prometheus.CounterValue, st.PacketsFromPeer, "from_peer")
	m("own_dropped", prometheus.CounterValue, st.OwnHostDropped)
	m("dropped", prometheus.CounterValue, st.PermissionDropped, "permission")
	m("dropped", prometheus.CounterValue, st.RateDropped, "rate")
	m("tcp", prometheus.GaugeValue, st.TCPConns)
	m("tcp_rejected", prometheus.CounterValue, st.TCPRejected)
}

// relayGen wraps pion's port-range generator so every relay socket is a
// relayConn (counting, own-host port guard) and is tracked for Close.
type relayGen struct {
	inner *turn.RelayAddressGeneratorPortRange
	s     *Server
}

func (g *relayGen) Validate() error { return g.inner.Validate() }

func (g *relayGen) AllocatePacketConn(network string, requestedPort int) (net.PacketConn, net.Addr, error) {
	conn, addr, err := g.inner.AllocatePacketConn(network, requestedPort)
	if err != nil {
		return nil, nil, err
	}
	rc := &relayConn{PacketConn: conn, s: g.s}
	if uc, ok := conn.(*net.UDPConn); ok {
		rc.udp, rc.pc4 = uc, ipv4.NewPacketConn(uc)
		// The kernel default (~208 KiB, ~90 datagrams of 1200 B) overflowed
		// in bursts of one fast peer (paced dusk-bench turn, 1 allocation:
		// 25 % loss, all on the relay socket). A buffer is a cap on queued
		// bytes, not an allocation: an idle allocation costs nothing more.
		_ = uc.SetReadBuffer(relaySocketBuffer)
	}
	if ua, ok := conn.LocalAddr().(*net.UDPAddr); ok {
		rc.port = uint16(ua.Port)
	}
	g.s.relays.add(rc)
	return rc, addr, nil
}

func (g *relayGen) AllocateConn(network string, requestedPort int) (net.Conn, net.Addr, error) {
	return g.inner.AllocateConn(network, requestedPort) // RFC 6062 TCP relaying: unsupported by pion v4
}

// relaySocketBuffer is the SO_RCVBUF asked for each relay socket (the
// kernel caps it at net.core.rmem_max).
const relaySocketBuffer = 1 << 20

// relayConn counts relayed traffic with atomic adds only, and lets packets
// for this host's own addresses reach only the relay sockets of other
// allocations (two clients of this server calling each other), never
// another service on the host. It also relays peer packets of bound
// channels straight to the client (fastpath.go).
type relayConn struct {
	net.PacketConn
	s         *Server
	port      uint16
	closeOnce sync.Once

	udp *net.UDPConn     // nil when the generator gave another kind
	pc4 *ipv4.PacketConn // udp, for batched sends from the listeners
	// Batched reads and sends of pion's reader goroutine, made at its first read.
	in    *batchReader
	out   *batchWriter
	visit visitFunc // c.fromPeer and c.out.flush, bound once
	flush func()

	chanMu      sync.Mutex
	chansClosed bool
	byPeer      atomic.Pointer[map[netip.AddrPort]*boundChan] // copy on write, under chanMu

	perms          permTable
	budgetToPeer   bucket
	budgetFromPeer bucket
}

// channelHeader is the ChannelData header length.
const channelHeader = 4

func (c *relayConn) ReadFrom(p []byte) (int, net.Addr, error) {
	if c.udp == nil {
		for {
			n, addr, err := c.PacketConn.ReadFrom(p)
			if err != nil {
				return n, addr, err
			}
			c.countFromPeer(n)
			if from, ok := unmappedAddrPort(addr); !ok || c.admitFromPeer(n, from, nil) {
				return n, addr, err
			}
		}
	}
	if c.in == nil {
		// Buffers as long as pion's, with room for the ChannelData header
		// in front: whatever pion would take whole still fits.
		in, err := newBatchReader(c.udp, relayBatch, len(p), channelHeader)
		if err != nil {
			return 0, nil, err
		}
		c.in, c.out = in, newBatchWriter(relayBatch)
		c.visit, c.flush = c.fromPeer, c.out.flush
	}
	data, _, from, err := c.in.read(c.visit, c.flush)
	c.out.flush()
	if err != nil {
		return 0, nil, err
	}
	return copy(p, data), net.UDPAddrFromAddrPort(from), nil
}

// fromPeer relays a peer's datagram to the client as ChannelData when the
// peer has a bound channel; anything else that may pass goes to pion.
func (c *relayConn) fromPeer(data, framed []byte, from netip.AddrPort) (keep bool) {
	c.countFromPeer(len(data))
	var bc *boundChan
	if m := c.byPeer.Load(); m != nil {
		bc = (*m)[from]
	}
	if !c.admitFromPeer(len(data), from, bc) {
		return false
	}
	if bc != nil {
		binary.BigEndian.PutUint16(framed[0:2], bc.key.number)
		binary.BigEndian.PutUint16(framed[2:4], uint16(len(data)))
		c.out.add(bc.out, bc.outUDP, nil, framed, bc.clientUDP)
		return false
	}
	return true
}

// admitFromPeer applies the permission and the bandwidth limit to n bytes
// from a peer (bc: its bound channel, if any). Only permitted packets are
// charged: strangers spraying the relay port cannot spend the budget.
// Packets without a permission never reach pion, which would drop them
// too (logging each).
func (c *relayConn) admitFromPeer(n int, from netip.AddrPort, bc *boundChan) bool {
	now := c.s.clock.now()
	var ok bool
	if bc != nil {
		ok = bc.perm.live(now)
	} else {
		ok = c.perms.live(from.Addr(), now)
	}
	if !ok {
		c.s.ctr.permDropped.Add(1)
		return false
	}
	if !c.budgetFromPeer.take(&c.s.rate, now, n) {
		c.s.ctr.rateDropped.Add(1)
		return false
	}
	return true
}

func (c *relayConn) countFromPeer(n int) {
	c.s.ctr.packetsFromPeer.Add(1)
	c.s.ctr.bytesFromPeer.Add(uint64(n))
}

// WriteTo is pion's send to a peer (ChannelData from TCP clients or from
// UDP clients before the fast path has the channel, Send indications).
// Dropped packets report success: an error here only makes pion log per packet.
func (c *relayConn) WriteTo(p []byte, addr net.Addr) (int, error) {
	ap, ok := unmappedAddrPort(addr)
	if !ok {
		return len(p), nil // pion only relays to UDP peers
	}
	now := c.s.clock.now()
	// pion checks the permission of Send indications, not of ChannelData.
	if !c.perms.live(ap.Addr(), now) {
		c.s.ctr.permDropped.Add(1)
		return len(p), nil
	}
	if c.ownHostDenied(ap) {
		return len(p), nil
	}
	if !c.budgetToPeer.take(&c.s.rate, now, len(p)) {
		c.s.ctr.rateDropped.Add(1)
		return len(p), nil
	}
	n, err := c.PacketConn.WriteTo(p, addr)
	if err == nil {
		c.countToPeer(n)
	}
	return n, err
}

// queueToPeer is WriteTo for the channel fast path: p goes out with w's
// next flush.
func (c *relayConn) queueToPeer(w *batchWriter, p []byte, bc *boundChan) {
	now := c.s.clock.now()
	if !bc.perm.live(now) {
		c.s.ctr.permDropped.Add(1)
		return
	}
	if c.ownHostDenied(bc.peer) {
		return
	}
	if !c.budgetToPeer.take(&c.s.rate, now, len(p)) {
		c.s.ctr.rateDropped.Add(1)
		return
	}
	w.add(c.pc4, c.udp, c, p, bc.peerUDP)
}

func (c *relayConn) ownHostDenied(to netip.AddrPort) bool {
	if c.s.filter.ownRestricted(to.Addr()) && !c.s.relays.isRelayPort(to.Port()) {
		c.s.ctr.ownHostDropped.Add(1)
		return true
	}
	return false
}

func (c *relayConn) countToPeer(n int) {
	c.s.ctr.packetsToPeer.Add(1)
	c.s.ctr.bytesToPeer.Add(uint64(n))
}

// Close is idempotent: pion's Manager.Close stops at the first error, so a
// second close must not report one.
func (c *relayConn) Close() error {
	var err error
	c.closeOnce.Do(func() {
		c.dropChans()
		err = c.PacketConn.Close()
		c.s.relays.remove(c)
	})
	return err
}

// relaySet tracks open relay sockets so Close can wait for pion's
// allocation goroutines to let go of them.
type relaySet struct {
	mu    sync.Mutex
	conns map[*relayConn]struct{}
	ports map[uint16]*relayConn // open UDP relay sockets by port
	empty chan struct{}         // closed and replaced when the set drains

	// portBits is a bitmap of the UDP ports with an open relay socket, read
	// lock-free on the packet path.
	portBits [65536 / 64]atomic.Uint64
}

func (r *relaySet) isRelayPort(p uint16) bool {
	return r.portBits[p/64].Load()&(1<<(p%64)) != 0
}

func newRelaySet() *relaySet {
	return &relaySet{conns: map[*relayConn]struct{}{}, ports: map[uint16]*relayConn{}}
}

func (r *relaySet) byPort(p uint16) *relayConn {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.ports[p]
}

func (r *relaySet) add(c *relayConn) {
	r.mu.Lock()
	r.conns[c] = struct{}{}
	if c.port != 0 {
		r.portBits[c.port/64].Or(1 << (c.port % 64))
		r.ports[c.port] = c
	}
	r.mu.Unlock()
}

func (r *relaySet) remove(c *relayConn) {
	r.mu.Lock()
	delete(r.conns, c)
	if c.port != 0 {
		r.portBits[c.port/64].And(^uint64(1 << (c.port % 64)))
		if r.ports[c.port] == c {
			delete(r.ports, c.port)
		}
	}
	if len(r.conns) == 0 && r.empty != nil {
		close(r.empty)
		r.empty = nil
	}
	r.mu.Unlock()
}

// drained returns a channel closed once no relay socket is open.
func (r *relaySet) drained() <-chan struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	ch := make(chan struct{})
	if len(r.conns) == 0 {
		close(ch)
		return ch
	}
	if r.empty == nil {
		r.empty = make(chan struct{})
	}
	return r.empty
}

// closeAll closes every tracked relay socket (pion does not on Close for
// allocations whose listener goroutine is still winding down).
func (r *relaySet) closeAll() {
	r.mu.Lock()
	conns := make([]*relayConn, 0, len(r.conns))
	for c := range r.conns {
		conns = append(conns, c)
	}
	r.mu.Unlock()
	for _, c := range conns {
		_ = c.Close()
	}
}
