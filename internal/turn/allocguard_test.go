package turn

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"
)

// permitForTest grants c live permissions to ips (hand-built relayConns
// have no pion behind them).
func permitForTest(c *relayConn, ips ...string) {
	now := c.s.clock.now()
	for _, ip := range ips {
		c.perms.touch(netip.MustParseAddr(ip), now+int64(permissionLifetime), now)
	}
}

// The bucket passes the burst at once, then exactly the rate, per
// direction; 0 disables it.
func TestBucketRate(t *testing.T) {
	const rate = 100_000 // bytes/s: burst is minBurstBytes (64 KiB > 25 kB)
	l := newRateLimit(rate)
	var b bucket
	passed := 0
	// 10 simulated seconds, 1000-byte packets offered at 10x the rate.
	for now := int64(0); now < int64(10*time.Second); now += int64(time.Millisecond) {
		if b.take(&l, now, 1000) {
			passed += 1000
		}
	}
	want := 10*rate + minBurstBytes
	if passed < want-2000 || passed > want+1000 {
		t.Fatalf("passed %d bytes in 10 s at %d B/s, want ~%d (rate x 10 s + burst)", passed, rate, want)
	}
	// An idle bucket refills to the burst, not beyond.
	now := int64(time.Hour)
	got := 0
	for b.take(&l, now, 1000) {
		got += 1000
	}
	if got > minBurstBytes || got < minBurstBytes-1000 {
		t.Fatalf("after an hour idle %d bytes pass at once, want the burst %d", got, minBurstBytes)
	}
	off := newRateLimit(0)
	for i := 0; i < 1000; i++ {
		if !b.take(&off, now, 1<<16) {
			t.Fatal("disabled limit dropped a packet")
		}
	}
	// At a rate in the gigabytes the per-byte cost still is not zero, and
	// no rate overflows the burst.
	for _, r := range []int{3_000_000_000, 1 << 40, 1<<63 - 1} {
		if l := newRateLimit(r); l.perByte <= 0 || l.burst != int64(bucketBurst) {
			t.Fatalf("rate %d: %+v", r, l)
		}
	}
	if l := newRateLimit(1_000_000); l.burst != int64(bucketBurst) {
		t.Fatalf("default rate: burst %v, want %v", time.Duration(l.burst), bucketBurst)
	}
}

func TestPermTableBounded(t *testing.T) {
	var p permTable
	now := int64(time.Hour)
	// Permissions pion never confirmed (ChannelBind failed after the check):
	// they expire and are pruned as new ones come.
	for i := 0; i < 10_000; i++ {
		ip := netip.AddrFrom4([4]byte{8, 8, byte(i >> 8), byte(i)})
		p.touch(ip, now+int64(permissionLifetime), now)
		now += int64(time.Second)
	}
	if n := len(p.m); n > 2*int(permissionLifetime/time.Second)+16 {
		t.Fatalf("%d entries kept, want about the %d still live", n, int(permissionLifetime/time.Second))
	}
	// A lapsed entry a channel points at stays (a refresh must revive the
	// channel's entry), then goes with the channel.
	ip := netip.MustParseAddr("9.9.9.9")
	p.touch(ip, now+1, now)
	e := p.ref(ip, now)
	p.lapse(ip)
	if p.m[ip] != e || e.live(now) {
		t.Fatal("lapsed entry of a bound channel dropped or still live")
	}
	p.touch(ip, now+10, now)
	if !e.live(now) {
		t.Fatal("refresh did not revive the channel's entry")
	}
	p.lapse(ip)
	p.unref(ip, e, now)
	if _, ok := p.m[ip]; ok {
		t.Fatal("lapsed entry kept after its channel went")
	}
}

// expectRelay sends a unique message from one relayed conn to another's
// address and reports whether it arrived.
func expectRelay(t *testing.T, from, to net.PacketConn, arrive bool, tag string) {
	t.Helper()
	msg := []byte(fmt.Sprintf("%s %d", tag, time.Now().UnixNano()))
	if _, err := from.WriteTo(msg, to.LocalAddr()); err != nil {
		t.Fatal(err)
	}
	wait := 300 * time.Millisecond
	if arrive {
		wait = 5 * time.Second
	}
	buf := make([]byte, 1500)
	deadline := time.Now().Add(wait)
	for {
		_ = to.SetReadDeadline(deadline)
		n, _, err := to.ReadFrom(buf)
		if err != nil {
			if arrive {
				t.Fatalf("%s: not relayed: %v", tag, err)
			}
			return
		}
		if bytes.Equal(buf[:n], msg) {
			if !arrive {
				t.Fatalf("%s: relayed although the permission lapsed", tag)
			}
			return
		}
	}
}

// Channel data stops both ways once its permission lapses (300 s) although
// the channel itself lives 600 s, on the fast path (UDP clients) and on
// pion's path (a TCP client: pion relays its ChannelData and the peer's
// answers); a refresh (CreatePermission) brings it back, and refreshes keep
// it flowing past the first 300 s. Real pion clients, real sockets; only
// the server's clock is moved forward.
func TestPermissionLapseStopsChannelData(t *testing.T) {
	for _, network := range []string{"udp", "tcp"} {
		t.Run(network, func(t *testing.T) {
			s := startServer(t, testConfig())
			ua, pa := creds(peerA)
			ub, pb := creds(peerB)
			a := dialClient(t, s, network, ua, pa)
			b := dialClient(t, s, "udp", ub, pb)
			relayBetween(t, a, b, 3) // channels bound both ways
			want := 2
			if network == "tcp" {
				want = 1 // only UDP clients' channels take the fast path
			}
			boundChannels(t, s, want)
			ra, rb := a.relays[0], b.relays[0]
			expectRelay(t, ra, rb, true, "a->b fresh")
			expectRelay(t, rb, ra, true, "b->a fresh")

			// 4 minutes, a refresh from both, 4 more: 8 minutes in, alive.
			s.clock.skew.Add(int64(4 * time.Minute))
			if err := a.CreatePermission(rb.LocalAddr()); err != nil {
				t.Fatal(err)
			}
			if err := b.CreatePermission(ra.LocalAddr()); err != nil {
				t.Fatal(err)
			}
			s.clock.skew.Add(int64(4 * time.Minute))
			expectRelay(t, ra, rb, true, "a->b refreshed")
			expectRelay(t, rb, ra, true, "b->a refreshed")

			// Past the refreshed lifetime: nothing either way.
			s.clock.skew.Add(int64(permissionLifetime))
			dropped := s.ctr.permDropped.Load()
			expectRelay(t, ra, rb, false, "a->b lapsed")
			expectRelay(t, rb, ra, false, "b->a lapsed")
			if got := s.ctr.permDropped.Load() - dropped; got < 2 {
				t.Fatalf("%d packets dropped for the lapsed permission, want >= 2", got)
			}
			if len(boundChannels(t, s, want)) != want {
				t.Fatal("channels gone: the test would not show what it claims")
			}

			// A new CreatePermission (or ChannelBind) revives the channel.
			if err := a.CreatePermission(rb.LocalAddr()); err != nil {
				t.Fatal(err)
			}
			if err := b.CreatePermission(ra.LocalAddr()); err != nil {
				t.Fatal(err)
			}
			expectRelay(t, ra, rb, true, "a->b renewed")
			expectRelay(t, rb, ra, true, "b->a renewed")
		})
	}
}

// pion's permission timer ending a permission (OnPermissionDeleted) ends
// our record of it at once.
func TestPermissionDeletedByPion(t *testing.T) {
	s := &Server{filter: NewPeerFilter(nil, nil, nil), relays: newRelaySet(), clock: newMonoClock()}
	c := &relayConn{PacketConn: &recordConn{}, s: s, port: 49200}
	s.relays.add(c)
	relay := &net.UDPAddr{IP: net.IPv4(203, 0, 113, 1), Port: 49200}
	s.onPermissionCreated(nil, nil, "UDP", "", "", relay, net.ParseIP("8.8.8.8"))
	peer := net.UDPAddrFromAddrPort(netip.MustParseAddrPort("8.8.8.8:5000"))
	if _, err := c.WriteTo([]byte("x"), peer); err != nil || len(c.PacketConn.(*recordConn).sent) != 1 {
		t.Fatalf("permitted packet not sent: %v", err)
	}
	s.onPermissionDeleted(nil, nil, "UDP", "", "", relay, net.ParseIP("::ffff:8.8.8.8"))
	_, _ = c.WriteTo([]byte("x"), peer)
	if n := len(c.PacketConn.(*recordConn).sent); n != 1 || s.ctr.permDropped.Load() != 1 {
		t.Fatalf("after pion deleted the permission: %d sent, %d dropped", n, s.ctr.permDropped.Load())
	}
}

// The per-packet cost of the permission check and the bandwidth limiter
// (the work relayConn adds to every relayed datagram), limiter off and on.
func BenchmarkAllocGuard(b *testing.B) {
	for _, bps := range []int{0, 1 << 40} {
		b.Run(fmt.Sprintf("bps=%d", bps), func(b *testing.B) {
			s := &Server{filter: NewPeerFilter(nil, nil, nil), relays: newRelaySet(), clock: newMonoClock(), rate: newRateLimit(bps)}
			c := &relayConn{PacketConn: &recordConn{}, s: s}
			from := netip.MustParseAddrPort("8.8.8.8:5000")
			permitForTest(c, "8.8.8.8")
			bc := &boundChan{peer: from, relay: c, perm: c.perms.ref(from.Addr(), s.clock.now())}
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				if !c.admitFromPeer(1200, from, bc) {
					b.Fatal("dropped")
				}
			}
		})
	}
}
