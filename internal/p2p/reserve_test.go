package p2p

import (
	"testing"

	ma "github.com/multiformats/go-multiaddr"

	"github.com/duskchat/dusk-relay/internal/config"
)

func TestAddrKey(t *testing.T) {
	for _, tc := range []struct{ addr, want string }{
		{"/ip4/203.0.113.7/tcp/4001", "203.0.113.7/32"},
		{"/ip6/2001:db8:1:100::1/tcp/4001", "2001:db8:1:100::/56"},
		{"/ip6/2001:db8:1:1ff:ffff::2/tcp/1", "2001:db8:1:100::/56"}, // same /56
		{"/ip6/2001:db8:1:200::1/tcp/1", "2001:db8:1:200::/56"},
		{"/ip6/::ffff:203.0.113.7/tcp/1", "203.0.113.7/32"}, // IPv4-mapped counts as IPv4
		{"/dns4/example.org/tcp/1", "invalid Prefix"},
		{"/ip4/127.0.0.1/tcp/1", "invalid Prefix"}, // exempt, as from the connection caps
		{"/ip6/::1/tcp/1", "invalid Prefix"},
		{"/ip4/127.0.0.2/tcp/1", "127.0.0.2/32"},
	} {
		if got := addrKey(ma.StringCast(tc.addr)).String(); got != tc.want {
			t.Errorf("addrKey(%s) = %s, want %s", tc.addr, got, tc.want)
		}
	}
}

func TestPerAddressDefaults(t *testing.T) {
	for _, tc := range []struct {
		name                    string
		maxConns, perIP, rsv    int
		wantConns, wantRsvPerIP int
	}{
		{"defaults", 10000, 64, 0, 64, 64},
		{"rust parity total", 10000, 64, 128, 64, 2},
		{"small total", 10000, 64, 40, 64, 2},
		{"big total", 100000, 64, 0, 64, 64},
		{"per-IP below share", 10000, 3, 0, 3, 3},
		{"tiny relay", 10, 64, 0, 10, 2},
		{"per-IP unset", 10000, 0, 0, defaultConnsPerIP, 64},
	} {
		c := config.Relay{MaxConns: tc.maxConns, MaxConnsPerIP: tc.perIP, MaxReservations: tc.rsv}
		if got := connsPerIP(c); got != tc.wantConns {
			t.Errorf("%s: connsPerIP = %d, want %d", tc.name, got, tc.wantConns)
		}
		if got := reservationsPerIP(c); got != tc.wantRsvPerIP {
			t.Errorf("%s: reservationsPerIP = %d, want %d", tc.name, got, tc.wantRsvPerIP)
		}
	}
	if got := maxReservations(config.Relay{MaxConns: 777}); got != 777 {
		t.Errorf("maxReservations with 0 = %d, want DUSK_MAX_CONNECTIONS (777)", got)
	}
}
