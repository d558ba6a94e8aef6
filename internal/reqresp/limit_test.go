package reqresp

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	ma "github.com/multiformats/go-multiaddr"
)

func TestAddrKey(t *testing.T) {
	for in, want := range map[string]string{
		"/ip4/203.0.113.7/tcp/4001":                   "203.0.113.7",
		"/ip6/2001:db8:aa:bb01:1::1/tcp/4001":         "2001:db8:aa:bb00::/56",
		"/ip6/2001:db8:aa:bbff:ffff::9/udp/1/quic-v1": "2001:db8:aa:bb00::/56",
		"/ip6/::ffff:198.51.100.2/tcp/1":              "198.51.100.2",
		"/dns4/example.org/tcp/1":                     "",
		"/ip4/127.0.0.1/tcp/1":                        "",
		"/ip6/::1/tcp/1":                              "",
		"/ip4/127.0.0.2/tcp/1":                        "127.0.0.2",
	} {
		a, err := ma.NewMultiaddr(in)
		if err != nil {
			t.Fatal(err)
		}
		if got := AddrKey(a); got != want {
			t.Errorf("AddrKey(%s) = %q, want %q", in, got, want)
		}
	}
	if AddrKey(nil) != "" {
		t.Error("AddrKey(nil)")
	}
	if PrefixKey(netip.MustParseAddr("2001:db8::1")) != PrefixKey(netip.MustParseAddr("2001:db8:0:ff::2")) {
		t.Error("two addresses of one /56 have different keys")
	}
}

func TestLimiterRates(t *testing.T) {
	l := NewLimiter(3, 2, 100) // 3/min, burst 2
	now := time.Unix(1000, 0)
	if !l.Allow("a", now) || !l.Allow("a", now) || l.Allow("a", now) {
		t.Fatal("burst of 2")
	}
	if !l.Allow("b", now) {
		t.Fatal("other key affected")
	}
	if l.Allow("a", now.Add(19*time.Second)) || !l.Allow("a", now.Add(40*time.Second)) {
		t.Fatal("refill of one token per 20 s")
	}
}

func TestLimiterBounded(t *testing.T) {
	l := NewLimiter(60, 2, 100)
	now := time.Unix(1000, 0)
	for i := 0; i < 1000; i++ {
		if !l.Allow(fmt.Sprint("k", i), now) {
			t.Fatalf("fresh key %d refused", i)
		}
		if l.Len() > 100 {
			t.Fatalf("table grew to %d", l.Len())
		}
	}
	// Idle (refilled) buckets are the first to go.
	now = now.Add(time.Hour)
	l.Allow("new", now)
	if l.Len() != 1 {
		t.Fatalf("after idle sweep: %d buckets", l.Len())
	}
	// Clock stepping back never mints tokens.
	l2 := NewLimiter(60, 1, 10)
	if !l2.Allow("x", now) || l2.Allow("x", now.Add(-time.Hour)) {
		t.Fatal("clock step back")
	}
}
