package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/record"
	"github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/client"
	pbv2 "github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/pb"
	cproto "github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/proto"
	"github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/util"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/redis/go-redis/v9"
	pb "github.com/waku-org/go-libp2p-rendezvous/pb"
	"go.uber.org/zap"

	"github.com/duskchat/dusk-relay/internal/directory"
	"github.com/duskchat/dusk-relay/internal/identity"
	"github.com/duskchat/dusk-relay/internal/mesh"
	"github.com/duskchat/dusk-relay/internal/reservations"
	"github.com/duskchat/dusk-relay/internal/testutil"
)

const meshEchoProto = "/dusk/test/mesh-echo/1.0.0"

// meshCluster starts n daemons on fixed loopback ports, each listing every
// other in DUSK_PEER_RELAYS (their peer IDs come from keypairs written
// into the data directories first), sharing redisURL.
func meshCluster(t *testing.T, n int, redisURL string, extra ...string) []*daemon {
	t.Helper()
	dirs, addrs := make([]string, n), make([]string, n)
	for i := range n {
		dirs[i] = t.TempDir()
		key, err := identity.LoadOrCreate(dirs[i], zap.NewNop())
		if err != nil {
			t.Fatal(err)
		}
		id, err := peer.IDFromPrivateKey(key)
		if err != nil {
			t.Fatal(err)
		}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		_ = ln.Close()
		addrs[i] = fmt.Sprintf("/ip4/127.0.0.1/tcp/%d/p2p/%s", port, id)
	}
	ds := make([]*daemon, n)
	for i := range n {
		var peers []string
		for j := range n {
			if j != i {
				peers = append(peers, addrs[j])
			}
		}
		env := append(testEnv(dirs[i]),
			"DUSK_RELAY_LISTEN_ADDRS="+strings.SplitN(addrs[i], "/p2p/", 2)[0],
			"DUSK_PEER_RELAYS="+strings.Join(peers, ","),
			"DUSK_REDIS_URL="+redisURL)
		ds[i] = startDaemon(t, append(env, extra...))
	}
	for _, d := range ds {
		poll(t, "every member relay connected", 30*time.Second, func() bool {
			v, _ := sum(scrape(t, d.metrics), "dusk_federation_peer_relays_online")
			return v == float64(n-1)
		})
	}
	return ds
}

// meshClient is a client with the circuit relay transport, like the app.
func meshClient(t *testing.T) host.Host {
	t.Helper()
	h, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"), libp2p.ResourceManager(&network.NullResourceManager{}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

func viaRelay(d *daemon, p peer.ID) ma.Multiaddr {
	return d.addrs[0].Encapsulate(ma.StringCast("/p2p/" + d.peerID.String() + "/p2p-circuit/p2p/" + p.String()))
}

// meshEcho opens an echo stream from c to p and checks msg comes back.
func meshEcho(t *testing.T, c host.Host, p peer.ID, msg []byte) {
	t.Helper()
	s, err := c.NewStream(network.WithAllowLimitedConn(ctx10(t), "test"), p, meshEchoProto)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	_ = s.SetDeadline(time.Now().Add(10 * time.Second))
	go func() {
		_, _ = s.Write(msg)
		_ = s.CloseWrite()
	}()
	got, err := io.ReadAll(s)
	if err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("echo: %d bytes back (want %d), %v", len(got), len(msg), err)
	}
}

// meshHop sends one raw HOP CONNECT for dst to d and returns the status
// and how long the answer took.
func meshHop(t *testing.T, c host.Host, d *daemon, dst peer.ID) (pbv2.Status, time.Duration) {
	t.Helper()
	start := time.Now()
	connectTo(t, c, d)
	s, err := c.NewStream(ctx10(t), d.peerID, cproto.ProtoIDv2Hop)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Reset()
	_ = s.SetDeadline(time.Now().Add(60 * time.Second))
	if err := util.NewDelimitedWriter(s).WriteMsg(&pbv2.HopMessage{Type: pbv2.HopMessage_CONNECT.Enum(),
		Peer: &pbv2.Peer{Id: []byte(dst)}}); err != nil {
		t.Fatal(err)
	}
	rd := util.NewDelimitedReader(s, 4096)
	defer rd.Close()
	var resp pbv2.HopMessage
	if err := rd.ReadMsg(&resp); err != nil {
		t.Fatalf("no HOP answer after %v: %v", time.Since(start), err)
	}
	return resp.GetStatus(), time.Since(start)
}

// TestClusterMesh: three daemons (A, B, C) sharing Redis and PostgreSQL,
// every one listing the other two. A client reserved only at B registers a
// rendezvous namespace and a profile there; a client on A discovers it at
// A, one on C finds the profile at C. Each dials the target through its
// own relay (/p2p/A/p2p-circuit/p2p/X, as the app does) and an echo works
// both ways; the target sees the initiator's peer ID on a circuit via B.
// Before the mesh, A answered NO_RESERVATION. Gossip a client on B
// publishes on dusk/sync reaches a client on A. A stranger opening the
// mesh protocol is reset and counted. B killed: A answers within seconds
// (never hangs) and /readyz at A stays 200.
func TestClusterMesh(t *testing.T) {
	redisURL, _ := testutil.RedisURL(t)
	ds := meshCluster(t, 3, redisURL, "DUSK_DIRECTORY_URL="+testutil.PostgresURL(t))
	a, b, c := ds[0], ds[1], ds[2]

	target := meshClient(t)
	seen := make(chan network.Conn, 4)
	target.SetStreamHandler(meshEchoProto, func(s network.Stream) {
		select {
		case seen <- s.Conn():
		default:
		}
		defer s.Close()
		_, _ = io.Copy(s, s)
	})
	connectTo(t, target, b)
	if _, err := client.Reserve(ctx10(t), target, peer.AddrInfo{ID: b.peerID, Addrs: b.addrs}); err != nil {
		t.Fatal(err)
	}
	opt, err := redis.ParseURL(redisURL)
	if err != nil {
		t.Fatal(err)
	}
	rdb := redis.NewClient(opt)
	defer rdb.Close()
	poll(t, "B's reservation record", 10*time.Second, func() bool {
		recs, err := reservations.Lookup(context.Background(), rdb, "dusk:", target.ID())
		return err == nil && len(recs) == 1 && recs[0].Relay == b.peerID
	})

	// The target announces itself at B as the app does: a rendezvous
	// registration (its record names B's circuit address) and a profile
	// with B's relay_addr. A discovers the one, C finds the other.
	atB := b.addrs[0].Encapsulate(ma.StringCast("/p2p/" + b.peerID.String() + "/p2p-circuit"))
	ns := "dusk/community/mesh-" + target.ID().String()[:12]
	if r, err := rdvCall(ctx10(t), target, b.peerID, rdvRegister(ns, sealRecord(t, target, []ma.Multiaddr{atB}, 1))); err != nil ||
		r.GetRegisterResponse().GetStatus() != pb.Message_OK {
		t.Fatalf("register at B: %v %v", r, err)
	}
	if r := dirCall(t, target, b, directory.Request{Kind: directory.RequestRegister, DisplayName: "Mesh Target", RelayAddr: atB.String()}); r.Kind != directory.ResponseOk {
		t.Fatalf("directory register at B: %#v", r)
	}
	inits := map[*daemon]host.Host{}
	for _, via := range []*daemon{a, c} {
		init := meshClient(t)
		init.SetStreamHandler(meshEchoProto, func(s network.Stream) { defer s.Close(); _, _ = io.Copy(s, s) })
		connectTo(t, init, via)
		inits[via] = init
	}
	r, err := rdvCall(ctx10(t), inits[a], a.peerID, rdvDiscover(ns))
	if err != nil || len(r.GetDiscoverResponse().GetRegistrations()) != 1 {
		t.Fatalf("discover at A: %v %v", r, err)
	}
	_, rec, err := record.ConsumeEnvelope(r.GetDiscoverResponse().GetRegistrations()[0].GetSignedPeerRecord(), peer.PeerRecordEnvelopeDomain)
	if err != nil || rec.(*peer.PeerRecord).PeerID != target.ID() {
		t.Fatalf("discovered record: %v %v", rec, err)
	}
	if r := dirCall(t, inits[c], c, directory.Request{Kind: directory.RequestSearch, Query: "mesh tar"}); r.Kind != directory.ResponseResults ||
		len(r.Results) != 1 || r.Results[0].PeerID != target.ID().String() || r.Results[0].RelayAddr != atB.String() {
		t.Fatalf("directory search at C: %#v", r)
	}

	// Each dials the target through its own relay, as the app does.
	for _, via := range []*daemon{a, c} {
		init := inits[via]
		if err := init.Connect(ctx10(t), peer.AddrInfo{ID: target.ID(), Addrs: []ma.Multiaddr{viaRelay(via, target.ID())}}); err != nil {
			t.Fatalf("dial the target via its own relay: %v", err)
		}
		meshEcho(t, init, target.ID(), bytes.Repeat([]byte("dusk mesh "), 2000))
		conn := <-seen
		if conn.RemotePeer() != init.ID() || !strings.Contains(conn.RemoteMultiaddr().String(), "/p2p/"+b.peerID.String()+"/p2p-circuit") {
			t.Fatalf("target sees %s at %s, want the initiator %s via B", conn.RemotePeer(), conn.RemoteMultiaddr(), init.ID())
		}
		meshEcho(t, target, init.ID(), []byte("and back"))
		if cs := init.Network().ConnsToPeer(target.ID()); len(cs) != 1 ||
			!strings.Contains(cs[0].RemoteMultiaddr().String(), "/p2p/"+via.peerID.String()+"/p2p-circuit") {
			t.Fatalf("initiator's connection: %v, want one circuit via its own relay", cs)
		}
		_ = init.Network().ClosePeer(target.ID())
	}
	for _, d := range []*daemon{a, c} {
		if v, _ := sum(scrape(t, d.metrics), `dusk_mesh_circuits_total{result="opened",side="entry"}`); v != 1 {
			t.Fatalf("entry circuits opened = %v, want 1", v)
		}
	}
	m := scrape(t, b.metrics)
	if v, _ := sum(m, `dusk_mesh_circuits_total{result="opened",side="exit"}`); v != 2 {
		t.Fatalf("B exit circuits opened = %v, want 2", v)
	}
	if v, _ := sum(m, `dusk_mesh_bytes_total{direction="initiator_to_target",side="exit"}`); v < 20000 {
		t.Fatalf("B spliced %v bytes towards the target", v)
	}

	// Gossip: a client on B publishes on dusk/sync, a client on A gets it.
	gctx, gcancel := context.WithCancel(context.Background())
	defer gcancel()
	onA := appGossip(gctx, t, newUnlimitedClient(t), a, "dusk/sync")["dusk/sync"]
	onB := appGossip(gctx, t, newUnlimitedClient(t), b, "dusk/sync")["dusk/sync"]
	time.Sleep(500 * time.Millisecond) // the relays learn the subscriptions
	for i := 0; onA.received("from B") == 0; i++ {
		if i == 20 {
			t.Fatal("gossip published on B never reached the client on A")
		}
		if err := onB.topic.Publish(gctx, fmt.Appendf(nil, `{"RequestSync":"from B %d"}`, i)); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Second)
	}

	// A stranger opening the mesh protocol at B is reset.
	stranger := newUnlimitedClient(t)
	connectTo(t, stranger, b)
	s, err := stranger.NewStream(ctx10(t), b.peerID, mesh.ProtocolID)
	if err != nil {
		t.Fatal(err)
	}
	_ = s.SetDeadline(time.Now().Add(10 * time.Second))
	_ = util.NewDelimitedWriter(s).WriteMsg(&pbv2.HopMessage{Type: pbv2.HopMessage_CONNECT.Enum(), Peer: &pbv2.Peer{Id: []byte(target.ID())}})
	if got, err := io.ReadAll(s); err == nil || len(got) != 0 {
		t.Fatalf("stranger's mesh stream: read %q, %v; want a reset", got, err)
	}
	poll(t, "the stranger counted", 5*time.Second, func() bool {
		v, _ := sum(scrape(t, b.metrics), `dusk_mesh_circuits_total{result="not_member",side="exit"}`)
		return v == 1
	})

	// Reserved nowhere: NO_RESERVATION, as from one relay.
	if st, _ := meshHop(t, meshClient(t), a, newUnlimitedClient(t).ID()); st != pbv2.Status_NO_RESERVATION {
		t.Fatalf("CONNECT for a peer reserved nowhere: %v", st)
	}

	// B dies; its record is still in Redis.
	b.kill9(t)
	st, took := meshHop(t, meshClient(t), a, target.ID())
	if (st != pbv2.Status_CONNECTION_FAILED && st != pbv2.Status_NO_RESERVATION) || took > 5*time.Second {
		t.Fatalf("CONNECT via A with B dead: %v after %v, want CONNECTION_FAILED or NO_RESERVATION within 5 s", st, took)
	}
	t.Logf("B dead: A answered %v in %v", st, took)
	if code, body := readyz(t, a); code != http.StatusOK {
		t.Fatalf("/readyz at A with a member down = %d %s", code, body)
	}
	// A and C still relay between their clients.
	x := meshClient(t)
	x.SetStreamHandler(meshEchoProto, func(s network.Stream) { defer s.Close(); _, _ = io.Copy(s, s) })
	connectTo(t, x, c)
	if _, err := client.Reserve(ctx10(t), x, peer.AddrInfo{ID: c.peerID, Addrs: c.addrs}); err != nil {
		t.Fatal(err)
	}
	poll(t, "C's reservation record", 10*time.Second, func() bool {
		recs, err := reservations.Lookup(context.Background(), rdb, "dusk:", x.ID())
		return err == nil && len(recs) == 1
	})
	// A stale record at the dead B that outlives C's (as when x moved to
	// C after B died and B's TTL was longer): A picks the live relay.
	stale := fmt.Sprintf("%d %s", time.Now().Add(2*time.Hour).UnixMilli(), b.addrs[0])
	if err := rdb.HSet(context.Background(), "dusk:rsv{"+x.ID().String()+"}", b.peerID.String(), stale).Err(); err != nil {
		t.Fatal(err)
	}
	if recs, err := reservations.Lookup(context.Background(), rdb, "dusk:", x.ID()); err != nil || len(recs) != 2 || recs[0].Relay != b.peerID {
		t.Fatalf("records %v, %v: want B's stale one first", recs, err)
	}
	y := meshClient(t)
	connectTo(t, y, a)
	if err := y.Connect(ctx10(t), peer.AddrInfo{ID: x.ID(), Addrs: []ma.Multiaddr{viaRelay(a, x.ID())}}); err != nil {
		t.Fatalf("A -> C with B down: %v", err)
	}
	meshEcho(t, y, x.ID(), []byte("still meshed"))
}
