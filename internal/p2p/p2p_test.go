package p2p

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kelseyhightower/envconfig"
	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	rcmgr "github.com/libp2p/go-libp2p/p2p/host/resource-manager"
	"github.com/libp2p/go-libp2p/p2p/net/connmgr"
	"github.com/libp2p/go-libp2p/p2p/net/swarm"
	"github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/client"
	pbv2 "github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/pb"
	"github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/relay"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/duskchat/dusk-relay/internal/config"
	leak "github.com/duskchat/dusk-relay/internal/testutil"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, leak.IgnoreLibp2p()...)
}

const echoProto = "/dusk/test/echo/1.0.0"

// defaults returns config.Relay with the real defaults (from the struct
// tags; the odd prefix keeps the test environment out).
func defaults(t testing.TB) config.Relay {
	t.Helper()
	var r config.Relay
	if err := envconfig.Process("DUSK_P2P_TEST_NO_SUCH_PREFIX", &r); err != nil {
		t.Fatal(err)
	}
	r.ListenAddrs = config.MultiaddrList{ma.StringCast("/ip4/127.0.0.1/tcp/0")}
	return r
}

type relayOpt struct {
	cfg  func(*config.Relay)
	opts Options
	reg  prometheus.Registerer
	log  *zap.Logger
}

func startRelay(t testing.TB, o relayOpt) *Node {
	t.Helper()
	cfg := defaults(t)
	if o.cfg != nil {
		o.cfg(&cfg)
	}
	key, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if o.opts.Version == "" {
		o.opts.Version = "1.2.3-test"
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	n, err := New(ctx, cfg, o.opts, key, o.log, o.reg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := n.Close(); err != nil {
			t.Errorf("close relay: %v", err)
		}
	})
	if err := n.Listen(ctx); err != nil {
		t.Fatal(err)
	}
	return n
}

func newClient(t testing.TB) host.Host {
	t.Helper()
	h, err := libp2p.New(
		libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"),
		libp2p.Transport(tcp.NewTCPTransport),
		libp2p.DisableMetrics(),
	)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

func relayInfo(n *Node) peer.AddrInfo {
	return peer.AddrInfo{ID: n.ID(), Addrs: n.ListenAddrs()}
}

func ctxT(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	for range 1000 { // 10 s at most
		if cond() {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s", what)
}

func reserve(t testing.TB, c host.Host, n *Node) *client.Reservation {
	t.Helper()
	if err := c.Connect(ctxT(t, 10*time.Second), relayInfo(n)); err != nil {
		t.Fatal(err)
	}
	rsv, err := client.Reserve(ctxT(t, 10*time.Second), c, relayInfo(n))
	if err != nil {
		t.Fatal(err)
	}
	return rsv
}

func circuitAddr(n *Node) ma.Multiaddr {
	return n.ListenAddrs()[0].Encapsulate(ma.StringCast("/p2p/" + n.ID().String() + "/p2p-circuit"))
}

// dialThrough connects a to b through the relay and opens an echo stream.
func dialThrough(t testing.TB, a, b host.Host, n *Node) (network.Stream, error) {
	t.Helper()
	ctx := ctxT(t, 10*time.Second)
	if err := a.Connect(ctx, peer.AddrInfo{ID: b.ID(), Addrs: []ma.Multiaddr{circuitAddr(n)}}); err != nil {
		return nil, err
	}
	return a.NewStream(network.WithAllowLimitedConn(ctx, "test"), b.ID(), echoProto)
}

func echo(s network.Stream) {
	defer s.Close()
	_, _ = io.Copy(s, s)
}

// (a) default config: the reservation carries addresses, loopback included.
func TestReservationCarriesAddresses(t *testing.T) {
	reg := prometheus.NewRegistry()
	n := startRelay(t, relayOpt{reg: reg})
	c := newClient(t)
	rsv := reserve(t, c, n)

	if len(rsv.Addrs) == 0 {
		t.Fatal("reservation has no addresses")
	}
	want := n.ListenAddrs()[0].String() + "/p2p/" + n.ID().String()
	var found bool
	for _, a := range rsv.Addrs {
		if !strings.HasSuffix(a.String(), "/p2p/"+n.ID().String()) {
			t.Errorf("reservation address %s lacks /p2p/<relay>", a)
		}
		found = found || a.String() == want
	}
	if !found {
		t.Fatalf("reservation addresses %v do not include %s", rsv.Addrs, want)
	}
	if rsv.LimitDuration != 2*time.Minute || rsv.LimitData != 131072 {
		t.Fatalf("limit %v / %d, want 2m / 131072", rsv.LimitDuration, rsv.LimitData)
	}
	if ttl := time.Until(rsv.Expiration); ttl < 58*time.Minute || ttl > 61*time.Minute {
		t.Fatalf("expiration in %v, want about 1h", ttl)
	}
	if rsv.Voucher == nil || rsv.Voucher.Relay != n.ID() || rsv.Voucher.Peer != c.ID() {
		t.Fatalf("bad voucher %+v", rsv.Voucher)
	}
	eventually(t, "reservation counted", func() bool { return n.Reservations() == 1 })
	// Our accounting runs after the relay wrote the answer: wait for it.
	eventually(t, "accepted counter", func() bool {
		return counterValue(n.m.reservationReqs.WithLabelValues("accepted")) == 1
	})
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, mf := range mfs {
		names[mf.GetName()] = true
	}
	for _, want := range []string{"dusk_relay_reservations", "dusk_relay_connections", "dusk_relay_circuits",
		"dusk_relay_reservation_requests_total", "libp2p_relaysvc_reservations_total"} {
		if !names[want] {
			t.Errorf("metric %s not registered", want)
		}
	}

	// Disconnecting drops the reservation.
	if err := c.Network().ClosePeer(n.ID()); err != nil {
		t.Fatal(err)
	}
	eventually(t, "reservation dropped", func() bool { return n.Reservations() == 0 })
}

// (a') the production listen set (0.0.0.0 and ::, no explicit addresses):
// loopback still ends up in the reservation.
func TestDefaultListenAnnouncesLoopback(t *testing.T) {
	n := startRelay(t, relayOpt{cfg: func(c *config.Relay) { c.ListenAddrs = nil; c.Port = 0 }})
	// With port 0 the v4 and v6 listeners get different ports: use the v4 one.
	var v4 ma.Multiaddr
	for _, a := range n.ListenAddrs() {
		if strings.HasPrefix(a.String(), "/ip4/0.0.0.0/tcp/") {
			v4 = a
		}
	}
	if v4 == nil {
		t.Fatalf("listen addrs %v lack /ip4/0.0.0.0", n.ListenAddrs())
	}
	port, err := tcpPort(v4)
	if err != nil {
		t.Fatal(err)
	}
	c := newClient(t)
	info := peer.AddrInfo{ID: n.ID(), Addrs: []ma.Multiaddr{ma.StringCast(fmt.Sprintf("/ip4/127.0.0.1/tcp/%d", port))}}
	if err := c.Connect(ctxT(t, 10*time.Second), info); err != nil {
		t.Fatal(err)
	}
	rsv, err := client.Reserve(ctxT(t, 10*time.Second), c, info)
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("/ip4/127.0.0.1/tcp/%d/p2p/%s", port, n.ID())
	var found bool
	for _, a := range rsv.Addrs {
		found = found || a.String() == want
		if strings.Contains(a.String(), "/ip4/0.0.0.0/") || strings.Contains(a.String(), "/ip6/::/") {
			t.Errorf("unspecified address %s in reservation", a)
		}
	}
	if !found {
		t.Fatalf("reservation %v lacks %s", rsv.Addrs, want)
	}
}

// (b) A reaches B through the relay and bytes flow both ways.
func TestCircuitRelaysBytes(t *testing.T) {
	core, logs := observer.New(zapcore.DebugLevel)
	n := startRelay(t, relayOpt{log: zap.New(core), reg: prometheus.NewRegistry()})
	a, b := newClient(t), newClient(t)
	b.SetStreamHandler(echoProto, echo)
	reserve(t, b, n)

	s, err := dialThrough(t, a, b, n)
	if err != nil {
		t.Fatal(err)
	}
	if !s.Conn().Stat().Limited {
		t.Error("relayed connection not marked limited")
	}
	if _, err := s.Conn().RemoteMultiaddr().ValueForProtocol(ma.P_CIRCUIT); err != nil {
		t.Errorf("connection %s is not relayed", s.Conn().RemoteMultiaddr())
	}
	msg := bytes.Repeat([]byte("dusk relay "), 1000)
	_ = s.SetDeadline(time.Now().Add(10 * time.Second))
	go func() {
		_, _ = s.Write(msg)
		_ = s.CloseWrite()
	}()
	got, err := io.ReadAll(s)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, msg) {
		t.Fatalf("echo returned %d bytes, want %d identical", len(got), len(msg))
	}
	_ = s.Close()

	if n.Circuits() != 1 {
		t.Fatalf("circuits = %d, want 1", n.Circuits())
	}
	eventually(t, "circuit opened log", func() bool { return logs.FilterMessage("circuit opened").Len() == 1 })
	opened := logs.FilterMessage("circuit opened").All()
	fields := opened[0].ContextMap()
	if fields["src"] != a.ID().String() || fields["dst"] != b.ID().String() {
		t.Fatalf("circuit log fields %v, want src %s dst %s", fields, a.ID(), b.ID())
	}
	eventually(t, "reservation log", func() bool {
		return logs.FilterMessage("reservation accepted").FilterField(zap.Stringer("peer", b.ID())).Len() == 1
	})

	// Closing the relayed connection ends the circuit.
	if err := a.Network().ClosePeer(b.ID()); err != nil {
		t.Fatal(err)
	}
	eventually(t, "circuit closed", func() bool { return n.Circuits() == 0 })
	eventually(t, "circuit closed log", func() bool { return logs.FilterMessage("circuit closed").Len() == 1 })
	if got := counterValue(n.m.relayedBytes); got < float64(2*len(msg)) {
		t.Fatalf("relayed bytes %v, want >= %d", got, 2*len(msg))
	}
}

// (c) the circuit is cut at the byte limit. The limit counts everything
// on the relayed connection (noise, yamux, identify between A and B), and
// a cut inside a noise frame loses that whole frame, so the application
// sees less than the limit (usually nothing of the big write).
func TestCircuitByteLimit(t *testing.T) {
	const limit = 16 << 10
	const sent = 256 << 10
	n := startRelay(t, relayOpt{cfg: func(c *config.Relay) { c.CircuitBytes = limit }})
	a, b := newClient(t), newClient(t)
	var received atomic.Int64
	b.SetStreamHandler(echoProto, func(s network.Stream) {
		defer s.Reset()
		_ = s.SetDeadline(time.Now().Add(20 * time.Second))
		hello := make([]byte, 5)
		if _, err := io.ReadFull(s, hello); err != nil {
			return
		}
		if _, err := s.Write(hello); err != nil {
			return
		}
		buf := make([]byte, 1024)
		for {
			k, err := s.Read(buf)
			received.Add(int64(k))
			if err != nil {
				return
			}
		}
	})
	rsv := reserve(t, b, n)
	if rsv.LimitData != limit {
		t.Fatalf("reservation limit %d, want %d", rsv.LimitData, limit)
	}
	s, err := dialThrough(t, a, b, n)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Reset()
	_ = s.SetDeadline(time.Now().Add(20 * time.Second))
	// The circuit works before the limit is reached.
	if _, err := s.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	hello := make([]byte, 5)
	if _, err := io.ReadFull(s, hello); err != nil || string(hello) != "hello" {
		t.Fatalf("echo before the limit: %q, %v", hello, err)
	}
	wrote := make(chan error, 1)
	go func() {
		_, err := s.Write(make([]byte, sent))
		wrote <- err
	}()
	// B sends nothing back, so a read only ends when the relay cuts the circuit.
	_, rerr := s.Read(make([]byte, 1))
	if rerr == nil {
		t.Fatal("read succeeded, want the circuit to be cut")
	}
	if errors.Is(rerr, os.ErrDeadlineExceeded) {
		t.Fatal("the test deadline expired before the relay cut the circuit")
	}
	if werr := <-wrote; werr == nil {
		t.Errorf("writing %d bytes through a %d-byte circuit succeeded", sent, limit)
	}
	eventually(t, "B disconnected from A", func() bool { return b.Network().Connectedness(a.ID()) != network.Connected })
	if got := received.Load(); got >= limit {
		t.Fatalf("B received %d bytes through a %d-byte circuit", got, limit)
	}
	t.Logf("B received %d of %d bytes before the %d-byte cut", received.Load(), sent, limit)
	eventually(t, "circuit released", func() bool { return n.Circuits() == 0 })
}

// (c) the circuit is cut at the duration limit.
func TestCircuitDurationLimit(t *testing.T) {
	n := startRelay(t, relayOpt{cfg: func(c *config.Relay) { c.CircuitDuration = 2 * time.Second }})
	a, b := newClient(t), newClient(t)
	b.SetStreamHandler(echoProto, echo)
	rsv := reserve(t, b, n)
	if rsv.LimitDuration != 2*time.Second {
		t.Fatalf("reservation duration %v, want 2s", rsv.LimitDuration)
	}
	s, err := dialThrough(t, a, b, n)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Reset()
	_ = s.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := s.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(s, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("echo before the limit: %q, %v", buf, err)
	}
	// Nothing more is sent; the relay must end the circuit on its own.
	_, err = s.Read(buf)
	if err == nil {
		t.Fatal("read succeeded, want the circuit to be cut")
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatal("the 20 s test deadline expired before the 2 s circuit limit cut the stream")
	}
	eventually(t, "circuit released", func() bool { return n.Circuits() == 0 })
}

// (d) identify reports our protocol version and agent.
func TestIdentify(t *testing.T) {
	core, logs := observer.New(zapcore.DebugLevel)
	n := startRelay(t, relayOpt{opts: Options{Version: "9.9.9"}, log: zap.New(core)})
	c := newClient(t)
	if err := c.Connect(ctxT(t, 10*time.Second), relayInfo(n)); err != nil {
		t.Fatal(err)
	}
	var pv, av any
	eventually(t, "identify", func() bool {
		var e1, e2 error
		pv, e1 = c.Peerstore().Get(n.ID(), "ProtocolVersion")
		av, e2 = c.Peerstore().Get(n.ID(), "AgentVersion")
		return e1 == nil && e2 == nil
	})
	if pv != "/dusk/relay/1.0.0" || av != "dusk-relay/9.9.9" {
		t.Fatalf("identify: protocol %v agent %v", pv, av)
	}
	protos, err := c.Peerstore().GetProtocols(n.ID())
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{"/libp2p/circuit/relay/0.2.0/hop": false, "/ipfs/ping/1.0.0": false, "/ipfs/id/1.0.0": false}
	for _, p := range protos {
		if _, ok := want[string(p)]; ok {
			want[string(p)] = true
		}
		if strings.Contains(string(p), "autonat") || strings.Contains(string(p), "holepunch") || strings.HasSuffix(string(p), "/stop") {
			t.Errorf("relay offers %s, which it should not run", p)
		}
	}
	for p, ok := range want {
		if !ok {
			t.Errorf("relay does not offer %s (offers %v)", p, protos)
		}
	}
	// Ping works.
	if err := pingOnce(c, n.ID()); err != nil {
		t.Fatal(err)
	}
	// The relay logs what the client identified as.
	eventually(t, "identified peer log", func() bool {
		return logs.FilterMessage("identified peer").FilterField(zap.Stringer("peer", c.ID())).Len() == 1
	})
}

// (e) total reservation limit; a second reservation by the same peer is a
// renewal and takes no slot.
func TestReservationLimits(t *testing.T) {
	n := startRelay(t, relayOpt{cfg: func(c *config.Relay) { c.MaxReservations = 2 }, reg: prometheus.NewRegistry()})
	c1, c2, c3 := newClient(t), newClient(t), newClient(t)
	reserve(t, c1, n)
	if _, err := client.Reserve(ctxT(t, 10*time.Second), c1, relayInfo(n)); err != nil {
		t.Fatalf("renewal refused: %v", err)
	}
	reserve(t, c2, n)
	eventually(t, "two reservations", func() bool { return n.Reservations() == 2 })

	if err := c3.Connect(ctxT(t, 10*time.Second), relayInfo(n)); err != nil {
		t.Fatal(err)
	}
	_, err := client.Reserve(ctxT(t, 10*time.Second), c3, relayInfo(n))
	var rerr client.ReservationError
	if !errors.As(err, &rerr) || rerr.Status != pbv2.Status_RESERVATION_REFUSED {
		t.Fatalf("third peer: err %v, want RESERVATION_REFUSED", err)
	}
	if got := n.Reservations(); got != 2 {
		t.Fatalf("reservations = %d, want 2", got)
	}
	for result, want := range map[string]float64{"accepted": 2, "renewed": 1, "refused": 1} {
		eventually(t, result+" counter", func() bool {
			return counterValue(n.m.reservationReqs.WithLabelValues(result)) == want
		})
	}
	// A slot frees when a holder leaves.
	if err := c1.Network().ClosePeer(n.ID()); err != nil {
		t.Fatal(err)
	}
	eventually(t, "slot freed", func() bool { return n.Reservations() == 1 })
	if _, err := client.Reserve(ctxT(t, 10*time.Second), c3, relayInfo(n)); err != nil {
		t.Fatalf("reservation after a slot freed: %v", err)
	}
}

// (e) circuit limits: per peer (go-libp2p counts both ends) and total.
func TestCircuitLimits(t *testing.T) {
	t.Run("per peer", func(t *testing.T) {
		n := startRelay(t, relayOpt{cfg: func(c *config.Relay) { c.MaxCircuitsPerPeer = 1 }})
		a1, a2, b := newClient(t), newClient(t), newClient(t)
		b.SetStreamHandler(echoProto, echo)
		reserve(t, b, n)
		if _, err := dialThrough(t, a1, b, n); err != nil {
			t.Fatal(err)
		}
		if _, err := dialThrough(t, a2, b, n); err == nil {
			t.Fatal("second circuit to the same destination accepted with MaxCircuitsPerPeer=1")
		}
	})
	t.Run("total", func(t *testing.T) {
		reg := prometheus.NewRegistry()
		n := startRelay(t, relayOpt{cfg: func(c *config.Relay) { c.MaxCircuits = 1 }, reg: reg})
		a1, a2, b1, b2 := newClient(t), newClient(t), newClient(t), newClient(t)
		for _, b := range []host.Host{b1, b2} {
			b.SetStreamHandler(echoProto, echo)
			reserve(t, b, n)
		}
		if _, err := dialThrough(t, a1, b1, n); err != nil {
			t.Fatal(err)
		}
		_, err := dialThrough(t, a2, b2, n)
		if err == nil {
			t.Fatal("second circuit accepted with MaxCircuits=1")
		}
		if !strings.Contains(err.Error(), "RESOURCE_LIMIT_EXCEEDED") {
			t.Logf("refusal error: %v", err)
		}
		eventually(t, "refused counter", func() bool { return counterValue(n.m.circuitReqs.WithLabelValues("refused")) == 1 })
		if n.Circuits() != 1 {
			t.Fatalf("circuits = %d, want 1", n.Circuits())
		}
		// Once the first circuit ends, the slot is free again.
		if err := a1.Network().ClosePeer(b1.ID()); err != nil {
			t.Fatal(err)
		}
		eventually(t, "circuit released", func() bool { return n.Circuits() == 0 })
		a2.Network().(*swarm.Swarm).Backoff().Clear(b2.ID())
		if _, err := dialThrough(t, a2, b2, n); err != nil {
			t.Fatalf("circuit after the slot freed: %v", err)
		}
	})
}

// (f) DUSK_RELAY_EXTERNAL_ADDR is exactly what reservations carry.
func TestExternalAddrs(t *testing.T) {
	ext := ma.StringCast("/dns4/relay.example.org/tcp/4001")
	n := startRelay(t, relayOpt{
		cfg:  func(c *config.Relay) { c.ExternalAddrs = config.MultiaddrList{ext} },
		opts: Options{PublicIP: "203.0.113.7"}, // ignored when external addresses are set
	})
	if got := n.AnnouncedAddrs(); len(got) != 1 || !got[0].Equal(ext) {
		t.Fatalf("announced %v, want only %s", got, ext)
	}
	rsv := reserve(t, newClient(t), n)
	want := ext.String() + "/p2p/" + n.ID().String()
	if len(rsv.Addrs) != 1 || rsv.Addrs[0].String() != want {
		t.Fatalf("reservation addrs %v, want exactly [%s]", rsv.Addrs, want)
	}
}

// The operator's public IP and host are announced next to the listen addresses.
func TestPublicIPAndHostAnnounced(t *testing.T) {
	core, logs := observer.New(zapcore.InfoLevel)
	n := startRelay(t, relayOpt{
		opts: Options{PublicIP: "203.0.113.7", PublicHost: "relay.example.org"},
		log:  zap.New(core),
	})
	port, err := tcpPort(n.ListenAddrs()[0])
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		fmt.Sprintf("/ip4/203.0.113.7/tcp/%d", port),
		fmt.Sprintf("/dns4/relay.example.org/tcp/%d", port),
		fmt.Sprintf("/ip4/127.0.0.1/tcp/%d", port),
	}
	rsv := reserve(t, newClient(t), n)
	for _, w := range want {
		if !containsAddr(n.AnnouncedAddrs(), w) {
			t.Errorf("announced %v lacks %s", n.AnnouncedAddrs(), w)
		}
		if !containsAddr(rsv.Addrs, w+"/p2p/"+n.ID().String()) {
			t.Errorf("reservation %v lacks %s", rsv.Addrs, w)
		}
		if logs.FilterMessage("announced address").FilterField(zap.String("addr", w+"/p2p/"+n.ID().String())).Len() != 1 {
			t.Errorf("no start-up log for %s", w)
		}
	}
}

func TestPublicAddrsForms(t *testing.T) {
	for _, tc := range []struct {
		ip, host string
		want     []string
	}{
		{"", "", nil},
		{"198.51.100.2", "", []string{"/ip4/198.51.100.2"}},
		{"2001:db8::1", "", []string{"/ip6/2001:db8::1"}},
		{"::ffff:198.51.100.2", "", []string{"/ip4/198.51.100.2"}},
		{"198.51.100.2", "198.51.100.2", []string{"/ip4/198.51.100.2"}},
		{"198.51.100.2", "relay.example.org", []string{"/ip4/198.51.100.2", "/dns4/relay.example.org"}},
		{"", "relay.example.org", []string{"/dns4/relay.example.org"}},
	} {
		got, err := publicAddrs(tc.ip, tc.host)
		if err != nil {
			t.Fatalf("%q %q: %v", tc.ip, tc.host, err)
		}
		var gs []string
		for _, a := range got {
			gs = append(gs, a.String())
		}
		if fmt.Sprint(gs) != fmt.Sprint(tc.want) {
			t.Errorf("%q %q: got %v, want %v", tc.ip, tc.host, gs, tc.want)
		}
	}
	if _, err := publicAddrs("", "bad/host"); err == nil {
		t.Error("a host with a slash was accepted")
	}
}

func containsAddr(as []ma.Multiaddr, s string) bool {
	for _, a := range as {
		if a.String() == s {
			return true
		}
	}
	return false
}

func pingOnce(h host.Host, p peer.ID) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := h.NewStream(ctx, p, "/ipfs/ping/1.0.0")
	if err != nil {
		return err
	}
	defer s.Reset()
	_ = s.SetDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 32)
	if _, err := rand.Read(buf); err != nil {
		return err
	}
	if _, err := s.Write(buf); err != nil {
		return err
	}
	back := make([]byte, 32)
	if _, err := io.ReadFull(s, back); err != nil {
		return err
	}
	if !bytes.Equal(buf, back) {
		return errors.New("ping payload mismatch")
	}
	return nil
}

// Malformed hop requests are refused by the relay, not by a crash or hang,
// and leave no circuit accounted.
func TestMalformedHop(t *testing.T) {
	n := startRelay(t, relayOpt{})
	c := newClient(t)
	if err := c.Connect(ctxT(t, 10*time.Second), relayInfo(n)); err != nil {
		t.Fatal(err)
	}
	for name, payload := range map[string][]byte{
		"garbage":        {0x05, 0xff, 0xff, 0xff, 0xff, 0xff},
		"oversized":      {0xff, 0xff, 0x03},
		"truncated":      {0x10, 0x08},
		"connect no dst": {0x02, 0x08, 0x01},
	} {
		t.Run(name, func(t *testing.T) {
			s, err := c.NewStream(ctxT(t, 10*time.Second), n.ID(), hopProto)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Reset()
			_ = s.SetDeadline(time.Now().Add(10 * time.Second))
			if _, err := s.Write(payload); err != nil {
				t.Fatal(err)
			}
			_ = s.CloseWrite()
			resp, _ := io.ReadAll(s)
			if len(resp) > 0 {
				raw, msg := readHop(bytes.NewReader(resp))
				if msg == nil {
					t.Fatalf("bad answer %x (%d bytes decoded)", resp, len(raw))
				}
				if msg.GetStatus() == pbv2.Status_OK {
					t.Fatalf("malformed request answered OK")
				}
			}
		})
	}
	if n.Circuits() != 0 || n.Reservations() != 0 {
		t.Fatalf("circuits %d reservations %d after malformed requests", n.Circuits(), n.Reservations())
	}
}

func TestLimitConfigFitsMaxConns(t *testing.T) {
	for _, mc := range []int{1, 100, 10000, 50000} {
		cfg := defaults(t)
		cfg.MaxConns = mc
		l := limitConfig(cfg).ToPartialLimitConfig()
		sys := l.System
		if int(sys.ConnsInbound) < mc || int(sys.Conns) < mc || int(sys.FD) < mc {
			t.Errorf("MaxConns %d: system limits in %d total %d fd %d", mc, sys.ConnsInbound, sys.Conns, sys.FD)
		}
		if int(sys.StreamsInbound) < mc {
			t.Errorf("MaxConns %d: system inbound streams %d", mc, sys.StreamsInbound)
		}
		if int64(sys.Memory) < int64(mc)*streamWindow {
			t.Errorf("MaxConns %d: memory %d cannot hold one stream window per connection", mc, sys.Memory)
		}
		// Every circuit the cap allows gets its buffers: the relay books
		// them at high priority, refused above 80 % of its service budget.
		cfg.MaxCircuits = config.DefaultMaxCircuits(mc)
		rl := limitConfig(cfg).ToPartialLimitConfig().Service[relay.ServiceName]
		if held := int64(cfg.MaxCircuits) * 2 * relayBufferSize; float64(held) > 0.8*float64(rl.Memory) {
			t.Errorf("MaxConns %d: %d circuits hold %d bytes of buffers, over 80 %% of the relay budget %d", mc, cfg.MaxCircuits, held, rl.Memory)
		}
		cm, err := newConnManager(mc)
		if err != nil {
			t.Fatalf("MaxConns %d: connmgr: %v", mc, err)
		}
		// Never trims what the resource manager admits inbound, and never
		// above what it admits in total (go-libp2p warns then).
		info := cm.GetInfo()
		if info.LowWater < mc || info.HighWater <= mc || info.HighWater > int(sys.Conns) {
			t.Errorf("MaxConns %d: connmgr low %d high %d, system conns %d", mc, info.LowWater, info.HighWater, sys.Conns)
		}
		_ = cm.Close()
	}
}

// A full relay keeps its connections past the connection manager's grace
// period: DUSK_MAX_CONNECTIONS refuses new ones, it never sheds held ones.
func TestFullRelayKeepsConnections(t *testing.T) {
	const mc = 12
	n := startRelay(t, relayOpt{
		cfg:  func(c *config.Relay) { c.MaxConns = mc },
		opts: Options{connMgr: []connmgr.Option{connmgr.WithGracePeriod(0), connmgr.WithSilencePeriod(20 * time.Millisecond)}},
	})
	clients := make([]host.Host, mc)
	for i := range clients {
		clients[i] = newClient(t)
		if err := clients[i].Connect(ctxT(t, 10*time.Second), relayInfo(n)); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(300 * time.Millisecond) // 15 trim rounds past the grace period
	for i, c := range clients {
		if c.Network().Connectedness(n.ID()) != network.Connected {
			t.Fatalf("client %d of %d was disconnected from a relay at its cap", i+1, mc)
		}
	}
	if got := len(n.h.Network().Conns()); got != mc {
		t.Fatalf("relay holds %d connections, want %d", got, mc)
	}
}

func TestRelayLimit(t *testing.T) {
	if relayLimit(0, 0) != nil {
		t.Error("0/0 should be unlimited (nil)")
	}
	if l := relayLimit(0, 100); l == nil || l.Data != 100 || l.Duration < 100*365*24*time.Hour {
		t.Errorf("0 duration: %+v", l)
	}
	if l := relayLimit(time.Minute, 0); l == nil || l.Duration != time.Minute || l.Data < 1<<60 {
		t.Errorf("0 bytes: %+v", l)
	}
}

// (g) many real connections from loopback (noise + yamux, distinct peers)
// all succeed and stay. 300 exceeds stock go-libp2p's inbound limit on
// machines below ~8 GiB of RAM and its connection manager's 192 trim mark;
// under the race detector handshakes are ~30x slower, so fewer are made
// there and TestResourceManagerAdmitsMaxConns covers the full count.
func TestManyConnections(t *testing.T) {
	clients := 300
	if raceEnabled {
		clients = 120
	}
	n := startRelay(t, relayOpt{})
	addr := n.ListenAddrs()[0]

	conns := make([]io.Closer, clients)
	errs := make([]error, clients)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 32)
	for i := range clients {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			conns[i], errs[i] = rawDial(addr, n.ID())
		}()
	}
	wg.Wait()
	t.Cleanup(func() {
		for _, c := range conns {
			if c != nil {
				_ = c.Close()
			}
		}
	})
	var failed int
	for _, err := range errs {
		if err != nil {
			failed++
			if failed == 1 {
				t.Errorf("dial: %v", err)
			}
		}
	}
	if failed > 0 {
		t.Fatalf("%d of %d connections failed", failed, clients)
	}
	eventually(t, "all connections counted", func() bool { return n.Connections() == clients })
	if got := len(n.Host().Network().Conns()); got != clients {
		t.Fatalf("relay holds %d connections, want %d", got, clients)
	}
}

func counterValue(c prometheus.Collector) float64 {
	ch := make(chan prometheus.Metric, 1)
	c.Collect(ch)
	close(ch)
	var total float64
	for m := range ch {
		var d dto.Metric
		if err := m.Write(&d); err == nil {
			total += d.GetCounter().GetValue()
		}
	}
	return total
}

// (g) the resource manager admits DUSK_MAX_CONNECTIONS inbound connections
// (each attached to its own peer, as after a handshake) and refuses the
// next one; go-libp2p's stock limits refuse long before.
func TestResourceManagerAdmitsMaxConns(t *testing.T) {
	cfg := defaults(t)
	mc := cfg.MaxConns // 10000 by default
	rm, err := newResourceManager(cfg, true)
	if err != nil {
		t.Fatal(err)
	}
	defer rm.Close()
	ep := ma.StringCast("/ip4/127.0.0.1/tcp/4001")
	var scopes []network.ConnManagementScope
	defer func() {
		for _, s := range scopes {
			s.Done()
		}
	}()
	for i := range mc {
		s, err := rm.OpenConnection(network.DirInbound, true, ep)
		if err != nil {
			t.Fatalf("connection %d of %d refused: %v", i+1, mc, err)
		}
		scopes = append(scopes, s)
		if err := s.SetPeer(peer.ID(fmt.Sprintf("peer-%d", i))); err != nil {
			t.Fatalf("connection %d of %d: attach to peer: %v", i+1, mc, err)
		}
	}
	if s, err := rm.OpenConnection(network.DirInbound, true, ep); err == nil {
		s.Done()
		t.Fatalf("connection %d accepted beyond DUSK_MAX_CONNECTIONS=%d", mc+1, mc)
	}

	stock := rcmgr.DefaultLimits
	libp2p.SetDefaultServiceLimits(&stock)
	srm, err := rcmgr.NewResourceManager(rcmgr.NewFixedLimiter(stock.AutoScale()), rcmgr.WithMetricsDisabled())
	if err != nil {
		t.Fatal(err)
	}
	defer srm.Close()
	var admitted int
	for i := range mc {
		s, err := srm.OpenConnection(network.DirInbound, true, ep)
		if err != nil {
			break
		}
		defer s.Done()
		if s.SetPeer(peer.ID(fmt.Sprintf("peer-%d", i))) != nil {
			break
		}
		admitted++
	}
	t.Logf("stock go-libp2p limits admit %d inbound connections on this machine; ours admit %d", admitted, mc)
}

// A taken port stops start-up with an error (no silent port sharing).
func TestPortInUse(t *testing.T) {
	first := startRelay(t, relayOpt{})
	key, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	cfg := defaults(t)
	cfg.ListenAddrs = config.MultiaddrList{first.ListenAddrs()[0]}
	n, err := New(context.Background(), cfg, Options{}, key, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	if err = n.Listen(context.Background()); err == nil {
		t.Fatalf("second relay started on %s", first.ListenAddrs()[0])
	}
	if !strings.Contains(err.Error(), first.ListenAddrs()[0].String()) {
		t.Fatalf("error %q does not name the address", err)
	}
}
