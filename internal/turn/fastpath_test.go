package turn

import (
	"bytes"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/duskchat/dusk-relay/internal/config"
	"golang.org/x/net/ipv4"
)

func TestChannelDataParse(t *testing.T) {
	for _, tc := range []struct {
		in      []byte
		number  uint16
		payload string
		ok      bool
	}{
		{[]byte{0x40, 0x00, 0, 3, 'a', 'b', 'c'}, 0x4000, "abc", true},
		{[]byte{0x4f, 0xff, 0, 0}, 0x4fff, "", true},
		{[]byte{0x40, 0x01, 0, 2, 'a', 'b', 0, 0}, 0x4001, "ab", true}, // padded, as over TCP
		{[]byte{0x40, 0x01, 0, 3, 'a', 'b'}, 0, "", false},             // length past the datagram
		{[]byte{0x00, 0x01, 0, 0}, 0, "", false},                       // STUN binding request
		{[]byte{0x80, 0x00, 0, 0}, 0, "", false},
		{[]byte{0x40, 0x00, 0}, 0, "", false},
		{nil, 0, "", false},
	} {
		n, p, ok := channelData(tc.in)
		if ok != tc.ok || n != tc.number || string(p) != tc.payload {
			t.Errorf("%x: got %#x %q %v, want %#x %q %v", tc.in, n, p, ok, tc.number, tc.payload, tc.ok)
		}
	}
}

// boundChannels waits until s has n channels on the fast path.
func boundChannels(t *testing.T, s *Server, n int) []*boundChan {
	t.Helper()
	var got []*boundChan
	waitFor(t, "channels on the fast path", func() bool {
		got = got[:0]
		s.chans.m.Range(func(_, v any) bool {
			got = append(got, v.(*boundChan))
			return true
		})
		return len(got) == n
	})
	return got
}

// Once pion's client has bound its channels, traffic takes the fast path
// both ways, byte for byte, up to the largest datagram pion's own path
// carries; closing the allocations empties the table.
func TestChannelFastPathRelays(t *testing.T) {
	t.Run("loopback", func(t *testing.T) { fastPathRelays(t, testConfig()) })
	// A wildcard listener is a dual-stack IPv6 socket: batched sends carry
	// IPv4 client addresses on it.
	t.Run("all interfaces", func(t *testing.T) {
		cfg := testConfig()
		cfg.ListenIP = "0.0.0.0"
		fastPathRelays(t, cfg)
	})
}

func fastPathRelays(t *testing.T, cfg config.TURN) {
	s := startServer(t, cfg)
	ua, pa := creds(peerA)
	ub, pb := creds(peerB)
	a := dialClient(t, s, "udp", ua, pa)
	b := dialClient(t, s, "udp", ub, pb)
	relayBetween(t, a, b, 3) // binds a channel each way

	chans := boundChannels(t, s, 2)
	for _, bc := range chans {
		if bc.relay.port != bc.peer.Port() && !s.relays.isRelayPort(bc.peer.Port()) {
			t.Fatalf("channel %#x to %v: peer is not a relay", bc.key.number, bc.peer)
		}
	}
	ra, rb := a.relays[0], b.relays[0]
	buf := make([]byte, 2048)
	for i, size := range []int{0, 1, 200, 1200, 1400, 1500} {
		msg := bytes.Repeat([]byte{byte(i + 1)}, size)
		if _, err := ra.WriteTo(msg, rb.LocalAddr()); err != nil {
			t.Fatal(err)
		}
		_ = rb.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, from, err := rb.ReadFrom(buf)
		if err != nil {
			t.Fatalf("size %d a->b: %v", size, err)
		}
		if !bytes.Equal(buf[:n], msg) || from.String() != ra.LocalAddr().String() {
			t.Fatalf("size %d a->b: got %d bytes from %v", size, n, from)
		}
		if _, err := rb.WriteTo(msg, ra.LocalAddr()); err != nil {
			t.Fatal(err)
		}
		_ = ra.SetReadDeadline(time.Now().Add(5 * time.Second))
		if n, _, err = ra.ReadFrom(buf); err != nil || !bytes.Equal(buf[:n], msg) {
			t.Fatalf("size %d b->a: %d bytes, %v", size, n, err)
		}
	}
	// 6 from relayBetween, 12 here; a count lands just after its datagram.
	waitFor(t, "18 packets counted to peers", func() bool { return s.ctr.packetsToPeer.Load() == 18 })

	_ = ra.Close()
	_ = rb.Close()
	boundChannels(t, s, 0)
}

// The own-host guard holds on the fast path: a channel to a port of this
// host that is not a relay socket carries nothing. The socket is closed, so
// a guard that let a packet through fails the count without sending it.
func TestChannelFastPathOwnHostGuard(t *testing.T) {
	s := &Server{
		filter: NewPeerFilter(nil, nil, []netip.Addr{netip.MustParseAddr("8.8.4.4")}),
		relays: newRelaySet(),
		clock:  newMonoClock(),
	}
	other := &relayConn{PacketConn: &recordConn{}, s: s, port: 49152}
	s.relays.add(other)
	closed, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	_ = closed.Close()
	c := &relayConn{PacketConn: closed, udp: closed, pc4: ipv4.NewPacketConn(closed), s: s}
	permitForTest(c, "8.8.4.4")
	w := newBatchWriter(listenerBatch)
	send := func(dst string) {
		ap := netip.MustParseAddrPort(dst)
		c.queueToPeer(w, []byte("data"), &boundChan{peer: ap, peerUDP: net.UDPAddrFromAddrPort(ap), relay: c,
			perm: c.perms.ref(ap.Addr().Unmap(), s.clock.now())})
	}
	for _, dst := range []string{"8.8.4.4:22", "8.8.4.4:3478", "8.8.4.4:49153", "[::ffff:8.8.4.4]:53"} {
		send(dst)
	}
	if len(w.msgs) != 0 {
		t.Fatalf("%d packets queued past the guard", len(w.msgs))
	}
	send("8.8.4.4:49152") // another allocation's relay: passes the guard
	if len(w.msgs) != 1 {
		t.Fatalf("%d packets queued to the relay port, want 1", len(w.msgs))
	}
	w.flush() // fails on the closed socket: nothing leaves, nothing is counted
	if got := s.ctr.ownHostDropped.Load(); got != 4 {
		t.Fatalf("dropped %d, want 4", got)
	}
	if got := s.ctr.packetsToPeer.Load(); got != 0 {
		t.Fatalf("counted %d packets sent on a closed socket", got)
	}
}
