package p2p

import (
	"net/netip"
	"testing"

	"github.com/duskchat/dusk-relay/internal/netkey"
)

// TestPrefixCountsWideIPv6: one customer's /48 holds 256 /56s; each /56
// gets the per-prefix cap, the /48 together WideFactor times it, so a
// hosting customer cannot take a pool 256 caps deep. IPv4 keys have no
// wider aggregate.
func TestPrefixCountsWideIPv6(t *testing.T) {
	const limit = 3
	c := make(prefixCounts)
	key := func(s string) netip.Prefix { return netkey.Prefix(netip.MustParseAddr(s)) }
	sub := []netip.Prefix{ // five /56s of 2001:db8:1::/48
		key("2001:db8:1:100::1"), key("2001:db8:1:200::1"), key("2001:db8:1:300::1"),
		key("2001:db8:1:400::1"), key("2001:db8:1:500::1"),
	}
	taken := 0
	for _, k := range sub {
		for range limit {
			if c.take(k, limit) {
				taken++
			}
		}
		if c.take(k, limit) {
			t.Fatalf("%v: took more than the per-prefix cap %d", k, limit)
		}
	}
	if want := netkey.WideFactor * limit; taken != want {
		t.Fatalf("the /48 took %d, want %d (WideFactor x limit)", taken, want)
	}
	if c[sub[4]] != 0 {
		t.Fatalf("fifth /56 holds %d after the /48 was full, want 0", c[sub[4]])
	}
	// Another /48 and IPv4 addresses are unaffected.
	if !c.take(key("2001:db8:2::1"), limit) {
		t.Fatal("a /56 of another /48 was refused")
	}
	for i := range 10 {
		if v4 := key("192.0.2.1"); !c.take(v4, 10) {
			t.Fatalf("IPv4 take %d refused under its own cap", i)
		}
	}
	// Giving back frees the /48 for its other /56s.
	c.give(sub[0])
	if !c.take(sub[4], limit) {
		t.Fatal("freed /48 slot not reusable by another /56")
	}
	// Everything given back leaves no entries.
	c.give(sub[4])
	c.give(key("2001:db8:2::1"))
	for _, k := range sub[:4] {
		for range c[k] {
			c.give(k)
		}
	}
	for range 10 {
		c.give(key("192.0.2.1"))
	}
	if len(c) != 0 {
		t.Fatalf("after giving everything back %d entries remain: %v", len(c), c)
	}
	// The exempt (zero) key is never counted.
	for range 100 {
		if !c.take(netip.Prefix{}, 1) {
			t.Fatal("zero key refused")
		}
	}
	if len(c) != 0 {
		t.Fatalf("zero key counted: %v", c)
	}
}
