package mesh

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kelseyhightower/envconfig"
	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/client"
	pbv2 "github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/pb"
	cproto "github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/proto"
	"github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/util"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/goleak"

	"github.com/duskchat/dusk-relay/internal/config"
	"github.com/duskchat/dusk-relay/internal/p2p"
	leak "github.com/duskchat/dusk-relay/internal/testutil"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, leak.IgnoreLibp2p()...)
}

const echoProto = "/dusk/test/echo/1.0.0"

// memLocator is the reservation records kept in memory (the cluster uses
// Redis; the daemon tests cover that).
type memLocator struct {
	mu   sync.Mutex
	at   map[peer.ID]peer.ID
	err  error
	hang chan struct{} // non-nil: lookups wait for it or their deadline (a slow store)
}

func (l *memLocator) Locate(ctx context.Context, p peer.ID) (peer.ID, bool, error) {
	if l.hang != nil {
		select {
		case <-l.hang:
		case <-ctx.Done():
			return "", false, ctx.Err()
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.err != nil {
		return "", false, l.err
	}
	r, ok := l.at[p]
	return r, ok, nil
}

func (l *memLocator) set(p, relay peer.ID) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.at[p] = relay
}

type relay struct {
	node *p2p.Node
	mesh *Mesh
	reg  *prometheus.Registry
	key  crypto.PrivKey
	id   peer.ID
}

func (r *relay) info() peer.AddrInfo {
	return peer.AddrInfo{ID: r.id, Addrs: r.node.ListenAddrs()}
}

func (r *relay) circuitTo(p peer.ID) ma.Multiaddr {
	return r.node.ListenAddrs()[0].Encapsulate(ma.StringCast("/p2p/" + r.id.String() + "/p2p-circuit/p2p/" + p.String()))
}

func relayConfig(t testing.TB) config.Relay {
	t.Helper()
	var c config.Relay
	if err := envconfig.Process("DUSK_MESH_TEST_NO_SUCH_PREFIX", &c); err != nil {
		t.Fatal(err)
	}
	c.ListenAddrs = config.MultiaddrList{ma.StringCast("/ip4/127.0.0.1/tcp/0")}
	return c
}

// cluster starts n relays with meshes whose members are given by member
// (nil: everyone else), all sharing loc, and connects every pair.
func cluster(t testing.TB, n int, loc Locator, tune func(i int, c *config.Relay), member func(i, j int) bool) []*relay {
	t.Helper()
	rs := make([]*relay, n)
	for i := range rs {
		key, _, err := crypto.GenerateEd25519Key(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		id, _ := peer.IDFromPrivateKey(key)
		rs[i] = &relay{key: key, id: id, reg: prometheus.NewRegistry()}
	}
	for i, r := range rs {
		cfg := relayConfig(t)
		if tune != nil {
			tune(i, &cfg)
		}
		var members []peer.ID
		for j, o := range rs {
			if j != i && (member == nil || member(i, j)) {
				members = append(members, o.id)
				// Only the resource limits read it here (no federation).
				cfg.PeerRelays = append(cfg.PeerRelays, ma.StringCast("/ip4/127.0.0.1/tcp/9/p2p/"+o.id.String()))
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		opts := p2p.Options{Version: "test", ClusterProtocols: []protocol.ID{ProtocolID}}
		node, err := p2p.New(ctx, cfg, opts, r.key, nil, nil)
		if err != nil {
			cancel()
			t.Fatal(err)
		}
		m, err := New(node.Host(), node, loc, Config{Members: members, MaxCircuitsPerPeer: cfg.MaxCircuitsPerPeer}, nil, r.reg)
		if err != nil {
			cancel()
			t.Fatal(err)
		}
		m.Attach()
		node.SetForwarder(m)
		r.node, r.mesh = node, m
		t.Cleanup(func() {
			_ = m.Close()
			_ = node.Close()
		})
		if err := node.Listen(ctx); err != nil {
			cancel()
			t.Fatal(err)
		}
		cancel()
	}
	for i := range rs {
		for j := i + 1; j < n; j++ {
			if err := rs[i].node.Host().Connect(ctxT(t, 10*time.Second), rs[j].info()); err != nil {
				t.Fatal(err)
			}
		}
	}
	return rs
}

func newClient(t testing.TB) host.Host { return newClientAt(t, "127.0.0.1") }

// newClientAt listens on ip; its dials leave from there (reuseport).
func newClientAt(t testing.TB, ip string) host.Host {
	t.Helper()
	h, err := libp2p.New(
		libp2p.ListenAddrStrings("/ip4/"+ip+"/tcp/0"),
		libp2p.Transport(tcp.NewTCPTransport),
		libp2p.DisableMetrics(),
	)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return h
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

// reserveAt connects c to r and reserves a slot there.
func reserveAt(t testing.TB, c host.Host, r *relay) {
	t.Helper()
	if err := c.Connect(ctxT(t, 10*time.Second), r.info()); err != nil {
		t.Fatal(err)
	}
	if _, err := client.Reserve(ctxT(t, 10*time.Second), c, r.info()); err != nil {
		t.Fatal(err)
	}
	eventually(t, "reservation recorded", func() bool { return r.node.HasReservation(c.ID()) })
}

// echoHandler answers with what it reads and records who opened the stream.
func echoHandler(seen chan<- network.Conn) network.StreamHandler {
	return func(s network.Stream) {
		select {
		case seen <- s.Conn():
		default:
		}
		defer s.Close()
		_, _ = io.Copy(s, s)
	}
}

// roundTrip writes msg on a new echo stream from c to p and reads it back.
func roundTrip(t testing.TB, c host.Host, p peer.ID, msg []byte) {
	t.Helper()
	ctx := ctxT(t, 10*time.Second)
	s, err := c.NewStream(network.WithAllowLimitedConn(ctx, "test"), p, echoProto)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	_ = s.SetDeadline(time.Now().Add(10 * time.Second))
	errc := make(chan error, 1)
	go func() {
		_, err := s.Write(msg)
		if err == nil {
			err = s.CloseWrite()
		}
		errc <- err
	}()
	got, err := io.ReadAll(s)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, msg) {
		t.Fatalf("echo returned %d bytes, want %d identical", len(got), len(msg))
	}
}

// hopConnect sends one raw HOP CONNECT for dst to r and returns the answer.
func hopConnect(t testing.TB, c host.Host, r *relay, dst peer.ID) (*pbv2.HopMessage, network.Stream) {
	t.Helper()
	if err := c.Connect(ctxT(t, 10*time.Second), r.info()); err != nil {
		t.Fatal(err)
	}
	s, err := c.NewStream(ctxT(t, 10*time.Second), r.id, cproto.ProtoIDv2Hop)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Reset() })
	_ = s.SetDeadline(time.Now().Add(30 * time.Second))
	req := pbv2.HopMessage{Type: pbv2.HopMessage_CONNECT.Enum(), Peer: &pbv2.Peer{Id: []byte(dst)}}
	if err := util.NewDelimitedWriter(s).WriteMsg(&req); err != nil {
		t.Fatal(err)
	}
	rd := util.NewDelimitedReader(s, maxMessage)
	defer rd.Close()
	var resp pbv2.HopMessage
	if err := rd.ReadMsg(&resp); err != nil {
		t.Fatalf("no hop answer: %v", err)
	}
	return &resp, s
}

func counter(t testing.TB, r *relay, name string, labels ...string) float64 {
	t.Helper()
	var c prometheus.Collector
	switch name {
	case "circuits":
		c = r.mesh.m.circuits.WithLabelValues(labels...)
	case "bytes":
		c = r.mesh.m.bytes.WithLabelValues(labels...)
	}
	ch := make(chan prometheus.Metric, 1)
	c.Collect(ch)
	close(ch)
	var d dto.Metric
	if err := (<-ch).Write(&d); err != nil {
		t.Fatal(err)
	}
	return d.GetCounter().GetValue()
}

// A client on A dials a client reserved only at B through A, as the Dusk
// app does (<its relay>/p2p-circuit/p2p/<peer>): the circuit goes
// initiator -> A -> B -> target, the echo works both ways, the target sees
// the initiator's peer ID on a circuit via B, and the initiator sees an
// ordinary limited circuit via A.
func TestMeshCircuit(t *testing.T) {
	loc := &memLocator{at: map[peer.ID]peer.ID{}}
	rs := cluster(t, 3, loc, nil, nil)
	a, b := rs[0], rs[1]
	init, target := newClient(t), newClient(t)
	seen := make(chan network.Conn, 4)
	target.SetStreamHandler(echoProto, echoHandler(seen))
	init.SetStreamHandler(echoProto, echoHandler(nil))
	reserveAt(t, target, b)
	loc.set(target.ID(), b.id)
	if err := init.Connect(ctxT(t, 10*time.Second), a.info()); err != nil {
		t.Fatal(err)
	}

	ai := peer.AddrInfo{ID: target.ID(), Addrs: []ma.Multiaddr{a.circuitTo(target.ID())}}
	if err := init.Connect(ctxT(t, 15*time.Second), ai); err != nil {
		t.Fatalf("dial via A: %v", err)
	}
	msg := bytes.Repeat([]byte("dusk mesh "), 3000)
	roundTrip(t, init, target.ID(), msg)
	var conn network.Conn
	select {
	case conn = <-seen:
	case <-time.After(5 * time.Second):
		t.Fatal("target saw no stream")
	}
	if conn.RemotePeer() != init.ID() {
		t.Fatalf("target sees %s, want the initiator %s", conn.RemotePeer(), init.ID())
	}
	if !strings.Contains(conn.RemoteMultiaddr().String(), "/p2p/"+b.id.String()+"/p2p-circuit") {
		t.Fatalf("target's connection %s is not a circuit via B", conn.RemoteMultiaddr())
	}
	// And back: the target opens a stream to the initiator on the same circuit.
	roundTrip(t, target, init.ID(), []byte("back from the target"))

	conns := init.Network().ConnsToPeer(target.ID())
	if len(conns) != 1 || !conns[0].Stat().Limited ||
		!strings.Contains(conns[0].RemoteMultiaddr().String(), "/p2p/"+a.id.String()+"/p2p-circuit") {
		t.Fatalf("initiator's connections %v: want one limited circuit via A", conns)
	}
	if got := counter(t, a, "circuits", entry, "opened"); got != 1 {
		t.Fatalf("A entry opened = %v", got)
	}
	if got := counter(t, b, "circuits", exit, "opened"); got != 1 {
		t.Fatalf("B exit opened = %v", got)
	}
	if a.node.Circuits() != 1 || b.node.Circuits() != 1 || rs[2].node.Circuits() != 0 {
		t.Fatalf("circuits A=%d B=%d C=%d, want 1 1 0", a.node.Circuits(), b.node.Circuits(), rs[2].node.Circuits())
	}
	for _, r := range []*relay{a, b} {
		side := entry
		if r == b {
			side = exit
		}
		if up, down := counter(t, r, "bytes", side, "initiator_to_target"), counter(t, r, "bytes", side, "target_to_initiator"); up < float64(len(msg)) || down < float64(len(msg)) {
			t.Fatalf("%s bytes up %v down %v, want >= %d each", side, up, down, len(msg))
		}
	}

	// Closing the connection ends the circuit at both relays.
	if err := init.Network().ClosePeer(target.ID()); err != nil {
		t.Fatal(err)
	}
	eventually(t, "circuits closed", func() bool {
		return a.node.Circuits() == 0 && b.node.Circuits() == 0 && a.mesh.Circuits() == 0 && b.mesh.Circuits() == 0
	})
}

// The negative paths answer with the right HOP status within seconds.
func TestMeshRefusals(t *testing.T) {
	loc := &memLocator{at: map[peer.ID]peer.ID{}}
	// C does not list A: A forwards to C, C refuses.
	rs := cluster(t, 3, loc, nil, func(i, j int) bool { return !(i == 2 && j == 0) })
	a, b, c := rs[0], rs[1], rs[2]
	init := newClient(t)

	check := func(name string, dst peer.ID, want pbv2.Status) {
		t.Helper()
		start := time.Now()
		resp, _ := hopConnect(t, init, a, dst)
		if resp.GetType() != pbv2.HopMessage_STATUS || resp.GetStatus() != want {
			t.Fatalf("%s: answer %v %v, want STATUS %v", name, resp.GetType(), resp.GetStatus(), want)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Fatalf("%s: answered after %v", name, d)
		}
	}

	// Reserved nowhere.
	nobody := newClient(t)
	check("reserved nowhere", nobody.ID(), pbv2.Status_NO_RESERVATION)

	// A stale record: B holds no reservation for the peer.
	loc.set(nobody.ID(), b.id)
	check("stale record", nobody.ID(), pbv2.Status_NO_RESERVATION)
	if got := counter(t, b, "circuits", exit, "no_reservation"); got != 1 {
		t.Fatalf("B exit no_reservation = %v", got)
	}

	// Reserved at C, which does not accept A's mesh streams.
	atC := newClient(t)
	reserveAt(t, atC, c)
	loc.set(atC.ID(), c.id)
	check("member refuses", atC.ID(), pbv2.Status_CONNECTION_FAILED)
	eventually(t, "C counts the non-member", func() bool { return counter(t, c, "circuits", exit, "not_member") == 1 })

	// The record names a relay outside the cluster: as if reserved nowhere.
	outsider := newClient(t)
	loc.set(atC.ID(), outsider.ID())
	check("relay outside the cluster", atC.ID(), pbv2.Status_NO_RESERVATION)

	// The records cannot be read: as if reserved nowhere, counted.
	loc.mu.Lock()
	loc.err = fmt.Errorf("redis: connection refused")
	loc.mu.Unlock()
	check("lookup fails", atC.ID(), pbv2.Status_NO_RESERVATION)
	if got := counter(t, a, "circuits", entry, "locate_error"); got != 1 {
		t.Fatalf("A entry locate_error = %v", got)
	}
	loc.mu.Lock()
	loc.err = nil
	loc.mu.Unlock()

	// B goes away: A answers CONNECTION_FAILED at once, never hangs.
	atB := newClient(t)
	reserveAt(t, atB, b)
	loc.set(atB.ID(), b.id)
	resp, _ := hopConnect(t, init, a, atB.ID())
	if resp.GetStatus() != pbv2.Status_OK {
		t.Fatalf("before B stops: %v", resp.GetStatus())
	}
	_ = b.mesh.Close()
	_ = b.node.Close()
	eventually(t, "A sees B gone", func() bool {
		return a.node.Host().Network().Connectedness(b.id) != network.Connected
	})
	check("member down", atB.ID(), pbv2.Status_CONNECTION_FAILED)
	if got := counter(t, a, "circuits", entry, "unreachable"); got < 1 {
		t.Fatalf("A entry unreachable = %v", got)
	}
	eventually(t, "A's circuits drained", func() bool { return a.node.Circuits() == 0 && a.mesh.Circuits() == 0 })
}

// A member whose answer never comes: A gives up within answerTimeout and
// answers CONNECTION_FAILED.
func TestMeshMemberSilent(t *testing.T) {
	loc := &memLocator{at: map[peer.ID]peer.ID{}}
	rs := cluster(t, 2, loc, nil, nil)
	a, b := rs[0], rs[1]
	hold := make(chan struct{})
	defer close(hold)
	// B's handler is replaced by one that reads and never answers.
	b.node.Host().SetStreamHandler(ProtocolID, func(s network.Stream) {
		select {
		case <-hold:
		case <-time.After(30 * time.Second):
		}
		_ = s.Reset()
	})
	x := newClient(t)
	reserveAt(t, x, b)
	loc.set(x.ID(), b.id)
	start := time.Now()
	resp, _ := hopConnect(t, newClient(t), a, x.ID())
	if resp.GetStatus() != pbv2.Status_CONNECTION_FAILED {
		t.Fatalf("answer %v, want CONNECTION_FAILED", resp.GetStatus())
	}
	if d := time.Since(start); d < answerTimeout-time.Second || d > answerTimeout+3*time.Second {
		t.Fatalf("answered after %v, want about %v", d, answerTimeout)
	}
}

// A peer outside DUSK_PEER_RELAYS opening the mesh protocol is reset
// before anything is read, and counted.
func TestMeshNonMemberReset(t *testing.T) {
	loc := &memLocator{at: map[peer.ID]peer.ID{}}
	rs := cluster(t, 2, loc, nil, nil)
	b := rs[1]
	x := newClient(t)
	reserveAt(t, x, b)
	stranger := newClient(t)
	if err := stranger.Connect(ctxT(t, 10*time.Second), b.info()); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		s, err := stranger.NewStream(ctxT(t, 10*time.Second), b.id, ProtocolID)
		if err != nil {
			t.Fatal(err)
		}
		_ = s.SetDeadline(time.Now().Add(10 * time.Second))
		wr := util.NewDelimitedWriter(s)
		_ = wr.WriteMsg(&pbv2.HopMessage{Type: pbv2.HopMessage_CONNECT.Enum(), Peer: &pbv2.Peer{Id: []byte(x.ID())}})
		_ = wr.WriteMsg(&pbv2.StopMessage{Type: pbv2.StopMessage_CONNECT.Enum(), Peer: &pbv2.Peer{Id: []byte(stranger.ID())}})
		got, err := io.ReadAll(s)
		if err == nil || len(got) != 0 {
			t.Fatalf("stream %d: read %q, %v; want a reset", i, got, err)
		}
		_ = s.Reset()
	}
	eventually(t, "non-members counted", func() bool { return counter(t, b, "circuits", exit, "not_member") == 3 })
	if counter(t, b, "circuits", exit, "opened") != 0 || b.node.Circuits() != 0 {
		t.Fatal("a non-member opened a circuit")
	}
}

// Circuit limits apply at both relays: A reports B's tighter limit in
// its STATUS, the per-peer cap holds for mesh circuits, and B cuts the
// circuit at its byte cap.
func TestMeshLimits(t *testing.T) {
	loc := &memLocator{at: map[peer.ID]peer.ID{}}
	rs := cluster(t, 2, loc, func(i int, c *config.Relay) {
		c.MaxCircuitsPerPeer = 1
		if i == 1 { // B: tighter limits than A's defaults
			c.CircuitDuration = 30 * time.Second
			c.CircuitBytes = 20000
		}
	}, nil)
	a, b := rs[0], rs[1]
	x := newClient(t)
	x.SetStreamHandler(echoProto, echoHandler(nil))
	reserveAt(t, x, b)
	loc.set(x.ID(), b.id)
	init := newClient(t)
	resp, _ := hopConnect(t, init, a, x.ID())
	if resp.GetStatus() != pbv2.Status_OK {
		t.Fatalf("first CONNECT: %v", resp.GetStatus())
	}
	if l := resp.GetLimit(); l.GetDuration() != 30 || l.GetData() != 20000 {
		t.Fatalf("limit in A's STATUS: %v, want B's 30 s / 20000 bytes", l)
	}
	// The same target again: over the per-peer cap at A.
	resp, _ = hopConnect(t, newClient(t), a, x.ID())
	if resp.GetStatus() != pbv2.Status_RESOURCE_LIMIT_EXCEEDED {
		t.Fatalf("second CONNECT: %v, want RESOURCE_LIMIT_EXCEEDED", resp.GetStatus())
	}

	// B's byte cap cuts a real circuit: far less than 1 MB comes back.
	y := newClient(t)
	y.SetStreamHandler(echoProto, echoHandler(nil))
	reserveAt(t, y, b)
	loc.set(y.ID(), b.id)
	other := newClient(t)
	if err := other.Connect(ctxT(t, 15*time.Second), peer.AddrInfo{ID: y.ID(), Addrs: []ma.Multiaddr{a.circuitTo(y.ID())}}); err != nil {
		t.Fatal(err)
	}
	s, err := other.NewStream(network.WithAllowLimitedConn(ctxT(t, 10*time.Second), "test"), y.ID(), echoProto)
	if err != nil {
		t.Fatal(err)
	}
	_ = s.SetDeadline(time.Now().Add(10 * time.Second))
	go func() {
		_, _ = s.Write(make([]byte, 1<<20))
		_ = s.CloseWrite()
	}()
	got, _ := io.ReadAll(s)
	if len(got) >= 20000 {
		t.Fatalf("echoed %d bytes through a circuit capped at 20000", len(got))
	}
	_ = s.Reset()
	up := counter(t, b, "bytes", exit, "initiator_to_target")
	if up > 20000 {
		t.Fatalf("B forwarded %v bytes towards the target, cap 20000", up)
	}
}

// A member's malformed mesh requests get MALFORMED_MESSAGE and are
// counted; a target that does not take the STOP gets the initiator
// CONNECTION_FAILED. B keeps serving either way.
func TestMeshBadRequests(t *testing.T) {
	loc := &memLocator{at: map[peer.ID]peer.ID{}}
	rs := cluster(t, 2, loc, nil, nil)
	a, b := rs[0], rs[1]
	for i, payload := range [][]byte{
		{0x05, 0xff, 0xff, 0xff, 0xff, 0xff}, // not a protobuf
		{0xff, 0xff, 0xff, 0xff, 0x0f},       // announces 4 GiB
		{0x02, 0x08, 0x02},                   // a HopMessage STATUS, no StopMessage: EOF
	} {
		s, err := a.node.Host().NewStream(ctxT(t, 10*time.Second), b.id, ProtocolID)
		if err != nil {
			t.Fatal(err)
		}
		_ = s.SetDeadline(time.Now().Add(10 * time.Second))
		_, _ = s.Write(payload)
		_ = s.CloseWrite()
		rd := util.NewDelimitedReader(s, maxMessage)
		var resp pbv2.HopMessage
		err = rd.ReadMsg(&resp)
		rd.Close()
		if err != nil || resp.GetStatus() != pbv2.Status_MALFORMED_MESSAGE {
			t.Fatalf("payload %d: answer %v, %v; want MALFORMED_MESSAGE", i, resp.GetStatus(), err)
		}
		_ = s.Close()
	}
	if got := counter(t, b, "circuits", exit, "malformed"); got != 3 {
		t.Fatalf("B exit malformed = %v, want 3", got)
	}

	// A target without the STOP protocol (no relay transport).
	deaf, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"), libp2p.DisableRelay(), libp2p.DisableMetrics())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { deaf.Close() })
	reserveAt(t, deaf, b)
	loc.set(deaf.ID(), b.id)
	start := time.Now()
	resp, _ := hopConnect(t, newClient(t), a, deaf.ID())
	if resp.GetStatus() != pbv2.Status_CONNECTION_FAILED || time.Since(start) > 5*time.Second {
		t.Fatalf("target without STOP: %v after %v, want CONNECTION_FAILED at once", resp.GetStatus(), time.Since(start))
	}
	if got := counter(t, b, "circuits", exit, "failed"); got != 1 {
		t.Fatalf("B exit failed = %v, want 1", got)
	}
	eventually(t, "slots given back", func() bool {
		return a.node.Circuits() == 0 && b.node.Circuits() == 0 && counted(a.mesh) == 0 && counted(b.mesh) == 0
	})
}

// counted is the number of peers with mesh circuits counted against them.
func counted(m *Mesh) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.counts)
}

func looking(m *Mesh) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.looking
}

// rawConnect is hopConnect for goroutines: errors are returned.
func rawConnect(c host.Host, r *relay, dst peer.ID) (pbv2.Status, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := c.Connect(ctx, r.info()); err != nil {
		return 0, err
	}
	s, err := c.NewStream(ctx, r.id, cproto.ProtoIDv2Hop)
	if err != nil {
		return 0, err
	}
	defer s.Reset()
	_ = s.SetDeadline(time.Now().Add(20 * time.Second))
	req := pbv2.HopMessage{Type: pbv2.HopMessage_CONNECT.Enum(), Peer: &pbv2.Peer{Id: []byte(dst)}}
	if err := util.NewDelimitedWriter(s).WriteMsg(&req); err != nil {
		return 0, err
	}
	rd := util.NewDelimitedReader(s, maxMessage)
	defer rd.Close()
	var resp pbv2.HopMessage
	if err := rd.ReadMsg(&resp); err != nil {
		return 0, err
	}
	return resp.GetStatus(), nil
}

// A slow record store (lookups that take their whole 2 s) and 80 CONNECTs
// for unknown peers from 20 identities: the lookups hold no circuit slot
// (16 here), so an honest client's circuit to a peer reserved at A opens
// meanwhile (before, every slot was held by a waiting lookup and it got
// RESOURCE_LIMIT_EXCEEDED); lookups beyond 64 in flight, or 4 per
// initiator, are answered NO_RESERVATION at once and counted as busy.
func TestMeshSlowLookupsHoldNoSlots(t *testing.T) {
	loc := &memLocator{at: map[peer.ID]peer.ID{}, hang: make(chan struct{})}
	rs := cluster(t, 2, loc, nil, nil)
	a := rs[0]
	local := newClient(t)
	local.SetStreamHandler(echoProto, echoHandler(nil))
	reserveAt(t, local, a)

	const attackers, each = 20, 4
	type answer struct {
		st  pbv2.Status
		err error
	}
	answers := make(chan answer, attackers*each)
	var wg sync.WaitGroup
	for range attackers {
		c := newClient(t)
		for range each {
			wg.Add(1)
			go func() {
				defer wg.Done()
				st, err := rawConnect(c, a, newPeerID(t))
				answers <- answer{st, err}
			}()
		}
	}
	eventually(t, "64 lookups in flight", func() bool { return looking(a.mesh) == maxLookups })

	honest := newClient(t)
	if err := honest.Connect(ctxT(t, 10*time.Second), a.info()); err != nil {
		t.Fatal(err)
	}
	ai := peer.AddrInfo{ID: local.ID(), Addrs: []ma.Multiaddr{a.circuitTo(local.ID())}}
	if err := honest.Connect(ctxT(t, 10*time.Second), ai); err != nil {
		t.Fatalf("honest circuit while lookups wait: %v", err)
	}
	roundTrip(t, honest, local.ID(), []byte("served"))
	if looking(a.mesh) != maxLookups {
		t.Fatalf("lookups in flight = %d while the honest circuit opened, want %d still waiting", looking(a.mesh), maxLookups)
	}

	wg.Wait()
	close(answers)
	for ans := range answers {
		if ans.err != nil || ans.st != pbv2.Status_NO_RESERVATION {
			t.Fatalf("attacker CONNECT: %v, %v; want NO_RESERVATION", ans.st, ans.err)
		}
	}
	if busy, failed := counter(t, a, "circuits", entry, "busy"), counter(t, a, "circuits", entry, "locate_error"); busy != attackers*each-maxLookups || failed != maxLookups {
		t.Fatalf("busy %v, locate_error %v; want %d and %d", busy, failed, attackers*each-maxLookups, maxLookups)
	}
}

func newPeerID(t testing.TB) peer.ID {
	t.Helper()
	_, pub, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	id, err := peer.IDFromPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// holdConnect sends a raw HOP CONNECT and leaves the circuit open.
func holdConnect(t testing.TB, c host.Host, r *relay, dst peer.ID) pbv2.Status {
	t.Helper()
	s, err := c.NewStream(ctxT(t, 10*time.Second), r.id, cproto.ProtoIDv2Hop)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Reset() })
	_ = s.SetDeadline(time.Now().Add(20 * time.Second))
	req := pbv2.HopMessage{Type: pbv2.HopMessage_CONNECT.Enum(), Peer: &pbv2.Peer{Id: []byte(dst)}}
	if err := util.NewDelimitedWriter(s).WriteMsg(&req); err != nil {
		t.Fatal(err)
	}
	rd := util.NewDelimitedReader(s, maxMessage)
	defer rd.Close()
	var resp pbv2.HopMessage
	if err := rd.ReadMsg(&resp); err != nil {
		t.Fatal(err)
	}
	return resp.GetStatus()
}

// With DUSK_RELAY_MAX_CIRCUITS raised, two relays hold that many mesh
// circuits at once: 200 here (before, the 129th got CONNECTION_FAILED:
// the resource manager's default cap of 128 streams of one protocol per
// peer reset the mesh stream at B).
func TestMeshManyCircuits(t *testing.T) {
	loc := &memLocator{at: map[peer.ID]peer.ID{}}
	rs := cluster(t, 2, loc, func(_ int, c *config.Relay) { c.MaxCircuits, c.MaxCircuitsPerPeer = 300, 300 }, nil)
	a, b := rs[0], rs[1]
	var targets []peer.ID
	var inits []host.Host
	for range 10 {
		x := newClient(t)
		reserveAt(t, x, b)
		loc.set(x.ID(), b.id)
		targets = append(targets, x.ID())
		c := newClient(t)
		if err := c.Connect(ctxT(t, 10*time.Second), a.info()); err != nil {
			t.Fatal(err)
		}
		inits = append(inits, c)
	}
	for i := range 200 {
		if st := holdConnect(t, inits[i%10], a, targets[(i/10)%10]); st != pbv2.Status_OK {
			t.Fatalf("mesh circuit %d: %v", i+1, st)
		}
	}
	// B counts a circuit once its splice starts, just after it answered A.
	eventually(t, "200 mesh circuits at both relays", func() bool {
		return a.mesh.Circuits() == 200 && b.mesh.Circuits() == 200
	})
}

// A circuit forwarded to another relay counts against its source address
// at the first relay, as a local one does: strangers on one address cannot
// take every circuit slot by asking for peers reserved elsewhere.
func TestMeshPerAddressCap(t *testing.T) {
	loc := &memLocator{at: map[peer.ID]peer.ID{}}
	rs := cluster(t, 2, loc, func(_ int, c *config.Relay) {
		c.MaxCircuits, c.MaxCircuitsPerPeer = 16, 4 // 8 per address
	}, nil)
	a, b := rs[0], rs[1]
	var targets []host.Host
	for range 3 {
		x := newClient(t)
		x.SetStreamHandler(echoProto, echoHandler(nil))
		reserveAt(t, x, b)
		loc.set(x.ID(), b.id)
		targets = append(targets, x)
	}
	for i := range 8 {
		resp, _ := hopConnect(t, newClientAt(t, "127.0.0.8"), a, targets[i%3].ID())
		if resp.GetStatus() != pbv2.Status_OK {
			t.Fatalf("mesh circuit %d from 127.0.0.8: %v, want OK", i+1, resp.GetStatus())
		}
	}
	// targets[2] holds 2 of its 4: only the address cap is left to refuse.
	resp, _ := hopConnect(t, newClientAt(t, "127.0.0.8"), a, targets[2].ID())
	if resp.GetStatus() != pbv2.Status_RESOURCE_LIMIT_EXCEEDED {
		t.Fatalf("9th mesh circuit from 127.0.0.8: %v, want RESOURCE_LIMIT_EXCEEDED", resp.GetStatus())
	}
	// Another address still gets one.
	if resp, _ := hopConnect(t, newClient(t), a, targets[2].ID()); resp.GetStatus() != pbv2.Status_OK {
		t.Fatalf("mesh circuit from 127.0.0.1: %v, want OK", resp.GetStatus())
	}
}
