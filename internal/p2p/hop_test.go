package p2p

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	pbv2 "github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/pb"
	"github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/util"

	"github.com/duskchat/dusk-relay/internal/bench/lightpeer"
	"github.com/duskchat/dusk-relay/internal/config"
)

// lightConnect sends a relay v2 CONNECT for dst on c. It returns the
// status and the stream, which is the circuit when the status is OK.
func lightConnect(ctx context.Context, c *lightpeer.Conn, dst peer.ID) (pbv2.Status, network.MuxedStream, error) {
	s, err := c.Stream(ctx, hopProto)
	if err != nil {
		return 0, nil, err
	}
	req := pbv2.HopMessage{Type: pbv2.HopMessage_CONNECT.Enum(), Peer: &pbv2.Peer{Id: []byte(dst)}}
	if err := util.NewDelimitedWriter(s).WriteMsg(&req); err != nil {
		_ = s.Reset()
		return 0, nil, err
	}
	var resp pbv2.HopMessage
	if err := util.NewDelimitedReader(s, maxHopMessage).ReadMsg(&resp); err != nil {
		_ = s.Reset()
		return 0, nil, err
	}
	return resp.GetStatus(), s, nil
}

func TestCircuitsPerAddress(t *testing.T) {
	for _, tc := range []struct {
		name                   string
		total, perPeer, wantIP int
	}{
		{"defaults", 1250, 4, 39},
		{"rust parity", 16, 4, 8},
		{"share above two peers", 3200, 4, 100},
		{"per peer 0", 0, 0, 1},
	} {
		if got := circuitsPerIP(config.Relay{MaxCircuits: tc.total, MaxCircuitsPerPeer: tc.perPeer}); got != tc.wantIP {
			t.Errorf("%s: circuitsPerIP = %d, want %d", tc.name, got, tc.wantIP)
		}
	}

	// 5 circuits per address; 4 targets × 2 per target leave room for more.
	n := startRelay(t, relayOpt{cfg: func(c *config.Relay) {
		c.MaxCircuits = 5 * 32
		c.MaxCircuitsPerPeer = 2
	}})
	if n.circPerIP != 5 {
		t.Fatalf("circuits per address = %d, want 5", n.circPerIP)
	}
	var targets []host.Host
	for range 4 {
		b := newClient(t)
		reserve(t, b, n)
		targets = append(targets, b)
	}
	ctx := ctxT(t, 30*time.Second)
	var conns []*lightpeer.Conn
	defer func() { closeAll(conns) }()
	connect := func(ip string, dst peer.ID) (pbv2.Status, network.MuxedStream) {
		t.Helper()
		c, err := lightFrom(ctx, n, ip) // a fresh identity each time: identities are free
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		st, s, err := lightConnect(ctx, c, dst)
		if err != nil {
			t.Fatalf("CONNECT from %s: %v", ip, err)
		}
		return st, s
	}

	addr := netip.MustParseAddr("127.0.0.5")
	var open []network.MuxedStream
	for i := range 5 {
		st, s := connect("127.0.0.5", targets[i%4].ID())
		if st != pbv2.Status_OK {
			t.Fatalf("circuit %d from 127.0.0.5: %v, want OK", i+1, st)
		}
		open = append(open, s)
	}
	if got := n.circuitsFrom(addr); got != 5 {
		t.Fatalf("counted %d circuits for 127.0.0.5, want 5", got)
	}
	// The 6th from the same address is refused though the relay and the
	// target (targets[1] holds 1 of 2) have room.
	if st, _ := connect("127.0.0.5", targets[1].ID()); st != pbv2.Status_RESOURCE_LIMIT_EXCEEDED {
		t.Fatalf("6th circuit from 127.0.0.5: %v, want RESOURCE_LIMIT_EXCEEDED", st)
	}
	if got := n.Circuits(); got != 5 {
		t.Fatalf("circuits = %d after a refusal, want 5", got)
	}
	// Another address is served.
	st, s := connect("127.0.0.6", targets[2].ID())
	if st != pbv2.Status_OK {
		t.Fatalf("circuit from 127.0.0.6: %v, want OK", st)
	}
	open = append(open, s)

	// A circuit's slot is given back when it ends.
	_ = open[0].Reset()
	eventually(t, "address slot released", func() bool { return n.circuitsFrom(addr) == 4 })
	if st, s := connect("127.0.0.5", targets[0].ID()); st != pbv2.Status_OK {
		t.Fatalf("circuit after a slot freed: %v, want OK", st)
	} else {
		open = append(open, s)
	}

	// Loopback is exempt, as from the connection caps.
	st, s = connect("127.0.0.1", targets[3].ID())
	if st != pbv2.Status_OK {
		t.Fatalf("circuit from 127.0.0.1: %v", st)
	}
	open = append(open, s)
	if got := n.circuitsFrom(netip.MustParseAddr("127.0.0.1")); got != 0 {
		t.Errorf("127.0.0.1 counted %d circuits, want 0 (exempt)", got)
	}
	for _, s := range open {
		_ = s.Reset()
	}
	closeAll(conns)
	conns = nil
	eventually(t, "every slot released", func() bool {
		return n.Circuits() == 0 && n.circuitsFrom(addr) == 0 && n.circuitsFrom(netip.MustParseAddr("127.0.0.6")) == 0
	})
}
