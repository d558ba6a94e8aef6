package netkey

import (
	"net"
	"net/netip"
	"testing"

	ma "github.com/multiformats/go-multiaddr"
)

func TestPrefix(t *testing.T) {
	for _, tc := range []struct {
		in, want string
		exempt   bool
	}{
		{"203.0.113.7", "203.0.113.7/32", false},
		{"::ffff:203.0.113.7", "203.0.113.7/32", false}, // IPv4-mapped counts as IPv4
		{"2001:db8:1:100::1", "2001:db8:1:100::/56", false},
		{"2001:db8:1:1ff:ffff::2", "2001:db8:1:100::/56", false}, // same /56
		{"2001:db8:1:200::1", "2001:db8:1:200::/56", false},
		{"2001:db8:1:2ff::1%eth0", "2001:db8:1:200::/56", false},
		{"2001:db8:aa:bbcc:1::1", "2001:db8:aa:bb00::/56", false},
		{"2001:db8:aa:bbff:ffff::9", "2001:db8:aa:bb00::/56", false},
		{"127.0.0.1", "127.0.0.1/32", true},
		{"::ffff:127.0.0.1", "127.0.0.1/32", true},
		{"::1", "::/56", true},
		{"127.0.0.2", "127.0.0.2/32", false},
		{"::2", "::/56", false},
	} {
		a := netip.MustParseAddr(tc.in)
		if got := Prefix(a).String(); got != tc.want {
			t.Errorf("Prefix(%s) = %s, want %s", tc.in, got, tc.want)
		}
		if got := Exempt(a); got != tc.exempt {
			t.Errorf("Exempt(%s) = %v", tc.in, got)
		}
	}
	if Prefix(netip.Addr{}).IsValid() || Exempt(netip.Addr{}) {
		t.Error("zero Addr")
	}
}

func TestFromMultiaddr(t *testing.T) {
	for _, tc := range []struct {
		in, want string
		ok       bool
	}{
		{"/ip4/203.0.113.7/tcp/4001", "203.0.113.7/32", true},
		{"/ip6/2001:db8:1:2ff:1::7/udp/4001/quic-v1", "2001:db8:1:200::/56", true},
		{"/ip6/::ffff:203.0.113.7/tcp/1", "203.0.113.7/32", true},
		{"/ip6zone/eth0/ip6/fe80::1/tcp/1", "fe80::/56", true},
		{"/ip4/127.0.0.3/tcp/5/p2p-circuit", "127.0.0.3/32", true},
		{"/ip4/198.51.100.9/tcp/4001/ws/p2p-circuit/ip4/1.1.1.1", "198.51.100.9/32", true}, // the relay's
		{"/dns4/example.org/tcp/1", "invalid Prefix", false},
		{"/dns4/example.org/tcp/1/p2p-circuit/ip4/1.1.1.1", "invalid Prefix", false},
	} {
		got, ok := FromMultiaddr(ma.StringCast(tc.in))
		if got.String() != tc.want || ok != tc.ok {
			t.Errorf("FromMultiaddr(%s) = %s, %v; want %s, %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
	if p, ok := FromMultiaddr(nil); ok || p.IsValid() {
		t.Error("nil multiaddr")
	}
}

func TestFromNetAddr(t *testing.T) {
	for _, tc := range []struct {
		in   net.Addr
		want string
		ok   bool
	}{
		{&net.UDPAddr{IP: net.IPv4(192, 0, 2, 7), Port: 5}, "192.0.2.7/32", true},
		{&net.UDPAddr{IP: net.ParseIP("::ffff:192.0.2.7"), Port: 5}, "192.0.2.7/32", true},
		{&net.TCPAddr{IP: net.IPv4(192, 0, 2, 7).To4(), Port: 6}, "192.0.2.7/32", true},
		{&net.UDPAddr{IP: net.ParseIP("2001:db8:1:2:3:4:5:6"), Port: 5}, "2001:db8:1::/56", true},
		{&net.TCPAddr{IP: net.ParseIP("2001:db8:1:2:ffff::1"), Port: 5, Zone: "eth0"}, "2001:db8:1::/56", true},
		{&net.UDPAddr{IP: net.ParseIP("2001:db8:1:100::1"), Port: 5}, "2001:db8:1:100::/56", true},
		{fakeAddr("[2001:db8:1:100::1]:7"), "2001:db8:1:100::/56", true},   // any host:port
		{&net.IPAddr{IP: net.IPv4(192, 0, 2, 7)}, "invalid Prefix", false}, // no port
		{&net.UDPAddr{}, "invalid Prefix", false},
		{nil, "invalid Prefix", false},
	} {
		got, ok := FromNetAddr(tc.in)
		if got.String() != tc.want || ok != tc.ok {
			t.Errorf("FromNetAddr(%v) = %s, %v; want %s, %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
}

type fakeAddr string

func (a fakeAddr) Network() string { return "fake" }
func (a fakeAddr) String() string  { return string(a) }

// The TURN packet path keys every unauthenticated answer by source.
func TestFromNetAddrAllocs(t *testing.T) {
	udp := &net.UDPAddr{IP: net.ParseIP("2001:db8::1"), Port: 5}
	if n := testing.AllocsPerRun(100, func() {
		a, _ := AddrOfNetAddr(udp)
		_ = Exempt(a)
		_ = Prefix(a)
	}); n != 0 {
		t.Errorf("%v allocs", n)
	}
}

func TestWide(t *testing.T) {
	for _, tc := range []struct {
		in, want string // want "" = no wide key
	}{
		{"2001:db8:1:100::1", "2001:db8:1::/48"},
		{"2001:db8:1:ff00::1", "2001:db8:1::/48"},
		{"2001:db8:2:100::1", "2001:db8:2::/48"},
		{"203.0.113.7", ""},
		{"::ffff:203.0.113.7", ""},
	} {
		w, ok := Wide(Prefix(netip.MustParseAddr(tc.in)))
		if got := map[bool]string{true: w.String(), false: ""}[ok]; got != tc.want {
			t.Errorf("Wide(Prefix(%s)) = %q, want %q", tc.in, got, tc.want)
		}
	}
	if _, ok := Wide(netip.Prefix{}); ok {
		t.Error("Wide of the zero prefix is valid")
	}
}
