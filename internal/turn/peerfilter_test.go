package turn

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
)

func TestPeerFilterDenyTable(t *testing.T) {
	f := NewPeerFilter(nil, nil, nil)
	for _, s := range []string{
		// The table.
		"127.0.0.1", "::1", "::ffff:127.0.0.1", "64:ff9b::7f00:1", "2002:7f00:1::",
		"0.0.0.0", "10.1.2.3", "100.64.0.1", "169.254.169.254", "192.168.1.1",
		"fd00::1", "fe80::1", "224.0.0.1",
		// More of the same families and the rest of the built-in list.
		"127.255.255.254", "0.1.2.3", "::", "::ffff:0.0.0.0", "::127.0.0.1", "::ffff:0:127.0.0.1",
		"172.16.0.1", "172.31.255.255", "100.127.255.255", "192.0.0.8", "192.0.2.1", "198.18.0.1",
		"198.19.255.255", "198.51.100.2", "203.0.113.3", "192.88.99.1", "239.255.255.250",
		"240.0.0.1", "255.255.255.255", "fe80::1%eth0", "fec0::1", "fc00::1", "ff02::1", "ff0e::1",
		"2001:db8::1", "3fff::1", "2001:2::1", "2001::1", "2001:10::1", "2001:20::1", "100::1",
		"64:ff9b:1::1", "5f00::1", "::ffff:10.0.0.1", "64:ff9b::a9fe:a9fe", "2002:a9fe:a9fe::1",
		"2002:c0a8:0101::", "64:ff9b::c0a8:101",
	} {
		a := netip.MustParseAddr(s)
		if f.Allowed(a) {
			t.Errorf("%s allowed, want denied", s)
		}
		if v := f.Check(a); v != Deny {
			t.Errorf("%s: verdict %v, want deny", s, v)
		}
	}
	for _, s := range []string{
		"8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700:4700::1111", "2a00:1450:4001::1",
		"::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1", "100.128.0.1", "172.32.0.1",
		"192.169.0.1", "198.20.0.1", "223.255.255.255",
	} {
		if !f.Allowed(netip.MustParseAddr(s)) {
			t.Errorf("%s denied, want allowed", s)
		}
	}
	if f.Allowed(netip.Addr{}) {
		t.Error("invalid address allowed")
	}
}

func TestPeerFilterConfiguredLists(t *testing.T) {
	f := NewPeerFilter(
		[]netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::ffff:10.9.0.0/112")},
		[]netip.Prefix{netip.MustParsePrefix("8.8.8.0/24"), netip.MustParsePrefix("127.0.0.99/32")},
		nil)
	for s, want := range map[string]bool{
		"127.0.0.1":         true,  // allow overrides the built-in list
		"::ffff:127.0.0.1":  true,  // in every spelling
		"64:ff9b::7f00:1":   true,  // even NAT64
		"10.9.1.2":          true,  // mapped-form prefix canonicalized to 10.9.0.0/16
		"10.8.1.2":          false, // rest of 10/8 still denied
		"127.0.0.99":        false, // deny wins over allow
		"8.8.8.8":           false, // deny adds
		"::ffff:8.8.8.8":    false,
		"2002:808:808::":    false,
		"8.8.4.4":           true,
		"0.0.0.0":           false, // never, allow or not
		"::1":               false, // not in the allow list
		"::ffff:127.0.0.99": false,
	} {
		if got := f.Allowed(netip.MustParseAddr(s)); got != want {
			t.Errorf("%s: allowed %v, want %v", s, got, want)
		}
	}
	all := NewPeerFilter([]netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")}, nil, nil)
	if all.Allowed(netip.MustParseAddr("0.0.0.0")) || all.Allowed(netip.MustParseAddr("::")) {
		t.Error("unspecified address allowed by a catch-all allow list")
	}
}

func TestPeerFilterOwnHost(t *testing.T) {
	own := []netip.Addr{netip.MustParseAddr("8.8.4.4"), netip.MustParseAddr("127.0.0.1")}
	f := NewPeerFilter(nil, nil, own)
	if v := f.Check(netip.MustParseAddr("8.8.4.4")); v != OwnHost {
		t.Fatalf("own public address: %v", v)
	}
	if v := f.Check(netip.MustParseAddr("::ffff:8.8.4.4")); v != OwnHost {
		t.Fatalf("own public address, mapped: %v", v)
	}
	if f.Allowed(netip.MustParseAddr("8.8.4.4")) {
		t.Fatal("own address counts as allowed")
	}
	if !f.ownRestricted(netip.MustParseAddr("8.8.4.4")) || f.ownRestricted(netip.MustParseAddr("8.8.8.8")) {
		t.Fatal("ownRestricted wrong")
	}
	// Loopback stays denied, not merely restricted.
	if v := f.Check(netip.MustParseAddr("127.0.0.1")); v != Deny {
		t.Fatalf("own loopback: %v", v)
	}
	// An allow list covering an own address lifts the restriction.
	g := NewPeerFilter([]netip.Prefix{netip.MustParsePrefix("8.8.4.0/24")}, nil, own)
	if !g.Allowed(netip.MustParseAddr("8.8.4.4")) || g.ownRestricted(netip.MustParseAddr("8.8.4.4")) {
		t.Fatal("allow list does not override own-host restriction")
	}
}

func TestHostAddrsIncludesPublicIP(t *testing.T) {
	addrs := hostAddrs("198.51.100.9", "0.0.0.0")
	var sawPublic, sawLoopback bool
	for _, a := range addrs {
		sawPublic = sawPublic || a == netip.MustParseAddr("198.51.100.9")
		sawLoopback = sawLoopback || a.IsLoopback()
		if a.IsUnspecified() {
			t.Fatal("unspecified listen IP counted as own address")
		}
	}
	if !sawPublic || !sawLoopback {
		t.Fatalf("host addresses %v", addrs)
	}
}

// recordConn is a net.PacketConn that records writes instead of sending,
// so the own-host guard can be checked against a public address without
// any traffic leaving loopback.
type recordConn struct {
	net.PacketConn
	sent []string
}

func (r *recordConn) WriteTo(p []byte, a net.Addr) (int, error) {
	r.sent = append(r.sent, a.String())
	return len(p), nil
}

func (r *recordConn) Close() error { return nil }

func TestRelayConnOwnHostGuard(t *testing.T) {
	s := &Server{
		filter: NewPeerFilter(nil, nil, []netip.Addr{netip.MustParseAddr("8.8.4.4")}),
		relays: newRelaySet(),
		clock:  newMonoClock(),
	}
	other := &relayConn{PacketConn: &recordConn{}, s: s, port: 49152} // another allocation's relay
	s.relays.add(other)
	rec := &recordConn{}
	c := &relayConn{PacketConn: rec, s: s}
	permitForTest(c, "8.8.4.4", "8.8.8.8")
	for _, dst := range []string{"8.8.4.4:22", "8.8.4.4:3478", "8.8.4.4:49152", "8.8.4.4:49153", "8.8.8.8:22", "[::ffff:8.8.4.4]:53", "[::ffff:8.8.4.4]:49152"} {
		ap := netip.MustParseAddrPort(dst)
		if n, err := c.WriteTo([]byte("data"), net.UDPAddrFromAddrPort(ap)); n != 4 || err != nil {
			t.Fatalf("%s: %d %v", dst, n, err)
		}
	}
	want := []string{"8.8.4.4:49152", "8.8.8.8:22", "8.8.4.4:49152"} // net.IP prints mapped IPv4 as IPv4
	if fmt.Sprint(rec.sent) != fmt.Sprint(want) {
		t.Fatalf("sent to %v, want %v", rec.sent, want)
	}
	if got := s.ctr.ownHostDropped.Load(); got != 4 {
		t.Fatalf("dropped %d, want 4", got)
	}
	if got := s.ctr.packetsToPeer.Load(); got != 3 {
		t.Fatalf("counted %d sent packets, want 3", got)
	}
	// Once that relay is gone, its port is off limits too.
	_ = other.Close()
	if s.relays.isRelayPort(49152) {
		t.Fatal("closed relay port still marked")
	}
}

func TestRelayConnAllocationFree(t *testing.T) {
	s := &Server{filter: NewPeerFilter(nil, nil, []netip.Addr{netip.MustParseAddr("8.8.4.4")}), relays: newRelaySet(), clock: newMonoClock()}
	c := &relayConn{PacketConn: &recordConn{sent: make([]string, 0, 4096)}, s: s}
	permitForTest(c, "8.8.4.4")
	dropped := net.UDPAddrFromAddrPort(netip.MustParseAddrPort("8.8.4.4:22"))
	buf := []byte("payload")
	if n := testing.AllocsPerRun(1000, func() { _, _ = c.WriteTo(buf, dropped) }); n != 0 {
		t.Fatalf("%v allocations per dropped packet", n)
	}
}

func FuzzPeerFilter(f *testing.F) {
	for _, s := range []string{"127.0.0.1", "::ffff:127.0.0.1", "64:ff9b::7f00:1", "2002:7f00:1::", "8.8.8.8", "fe80::1", "::"} {
		b := netip.MustParseAddr(s).As16()
		f.Add(b[:])
	}
	plain := NewPeerFilter(nil, nil, nil)
	loop := NewPeerFilter([]netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}, []netip.Prefix{netip.MustParsePrefix("8.8.8.0/24")}, nil)
	f.Fuzz(func(t *testing.T, b []byte) {
		a, ok := netip.AddrFromSlice(b)
		if !ok {
			return
		}
		c := Canonical(a)
		for _, flt := range []*PeerFilter{plain, loop} {
			got := flt.Allowed(a)
			// Every spelling of an address gets the same answer.
			if got != flt.Allowed(c) {
				t.Fatalf("%v allowed=%v but canonical %v allowed=%v", a, got, c, flt.Allowed(c))
			}
			if c.Is4() && got != flt.Allowed(netip.AddrFrom16(c.As16())) {
				t.Fatalf("%v: mapped form disagrees", a)
			}
		}
		if plain.Allowed(a) {
			for _, p := range builtinDeny {
				if p.Contains(c) || p.Contains(a) {
					t.Fatalf("%v (canonical %v) allowed but in %v", a, c, p)
				}
			}
			if c.IsLoopback() || c.IsPrivate() || c.IsLinkLocalUnicast() || c.IsMulticast() || c.IsUnspecified() {
				t.Fatalf("%v (canonical %v) allowed", a, c)
			}
		}
	})
}

// Azure's platform address (DNS, DHCP, WireServer) is public-looking but
// reachable only from inside Azure: never a peer.
func TestPeerFilterDeniesAzureWireServer(t *testing.T) {
	f := NewPeerFilter(nil, nil, nil)
	for _, a := range []string{"168.63.129.16", "::ffff:168.63.129.16", "64:ff9b::a83f:8110"} {
		if v := f.Check(netip.MustParseAddr(a)); v != Deny {
			t.Errorf("%s: %v, want deny", a, v)
		}
	}
	for _, a := range []string{"168.63.129.15", "168.63.129.17"} {
		if v := f.Check(netip.MustParseAddr(a)); v != Allow {
			t.Errorf("%s: %v, want allow (only the /32 is Azure's)", a, v)
		}
	}
}

// An address the host gains after start (DHCP, a floating IP) becomes own
// host at the next refresh: its other services are off limits to relayed
// packets, and one it loses is an ordinary peer again.
func TestOwnAddressesRefreshed(t *testing.T) {
	added := netip.MustParseAddr("8.8.4.4")
	var mu sync.Mutex
	addrs := []netip.Addr{netip.MustParseAddr("203.0.113.9")}
	source := func() []netip.Addr {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(addrs)
	}
	s := &Server{filter: NewPeerFilter(nil, nil, source()), relays: newRelaySet(), clock: newMonoClock()}
	rec := &recordConn{}
	c := &relayConn{PacketConn: rec, s: s}
	permitForTest(c, added.String())
	to := net.UDPAddrFromAddrPort(netip.AddrPortFrom(added, 22))
	_, _ = c.WriteTo([]byte("x"), to)
	if len(rec.sent) != 1 || s.filter.Check(added) != Allow {
		t.Fatalf("before the host has %v: sent %v, verdict %v", added, rec.sent, s.filter.Check(added))
	}

	w := startOwnWatcher(s.filter, source, 10*time.Millisecond, zap.NewNop())
	defer w.close()
	mu.Lock()
	addrs = append(addrs, added)
	mu.Unlock()
	waitFor(t, "new own address picked up", func() bool { return s.filter.Check(added) == OwnHost })
	_, _ = c.WriteTo([]byte("x"), to)
	if len(rec.sent) != 1 || s.ctr.ownHostDropped.Load() != 1 {
		t.Fatalf("after refresh: sent %v, own-host drops %d; want the packet to port 22 dropped", rec.sent, s.ctr.ownHostDropped.Load())
	}

	mu.Lock()
	addrs = addrs[:1]
	mu.Unlock()
	waitFor(t, "lost address released", func() bool { return s.filter.Check(added) == Allow })
}

func TestSetOwnReportsChange(t *testing.T) {
	a, b := netip.MustParseAddr("8.8.4.4"), netip.MustParseAddr("8.8.8.8")
	f := NewPeerFilter(nil, nil, []netip.Addr{a})
	if f.SetOwn([]netip.Addr{a}) {
		t.Fatal("same set reported as changed")
	}
	if !f.SetOwn([]netip.Addr{a, b}) || !f.SetOwn([]netip.Addr{b}) {
		t.Fatal("change not reported")
	}
}
