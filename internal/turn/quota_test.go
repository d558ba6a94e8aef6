package turn

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/pion/turn/v4"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// ipCount returns the slots (live + pending) held by address prefix ip.
func (q *quota) ipCount(ip netip.Prefix) int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.perIP[ip]
}

// dialFrom is dialClient with the client socket bound to localIP, so tests
// can be several client addresses on loopback.
func dialFrom(t testing.TB, s *Server, network, localIP, user, pass string) *client {
	t.Helper()
	var pc net.PacketConn
	switch network {
	case "udp":
		c, err := net.ListenPacket("udp4", net.JoinHostPort(localIP, "0"))
		if err != nil {
			t.Fatal(err)
		}
		pc = c
	case "tcp":
		d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(localIP)}}
		c, err := d.Dial("tcp", s.TCPAddr().String())
		if err != nil {
			t.Fatal(err)
		}
		pc = turn.NewSTUNConn(c)
	default:
		t.Fatalf("network %q", network)
	}
	addr := s.UDPAddr().String()
	if network == "tcp" {
		addr = s.TCPAddr().String()
	}
	return clientOn(t, pc, addr, user, pass)
}

func TestIPKey(t *testing.T) {
	for _, tc := range []struct {
		addr net.Addr
		want string
	}{
		{&net.UDPAddr{IP: net.IPv4(192, 0, 2, 7), Port: 5}, "192.0.2.7/32"},
		{&net.UDPAddr{IP: net.ParseIP("::ffff:192.0.2.7"), Port: 5}, "192.0.2.7/32"},
		{&net.TCPAddr{IP: net.IPv4(192, 0, 2, 7).To4(), Port: 6}, "192.0.2.7/32"},
		{&net.UDPAddr{IP: net.ParseIP("2001:db8:1:2:3:4:5:6"), Port: 5}, "2001:db8:1::/56"},
		{&net.TCPAddr{IP: net.ParseIP("2001:db8:1:2:ffff::1"), Port: 5, Zone: "eth0"}, "2001:db8:1::/56"},
		// Another /64 of the same /56 (one subscriber's delegation) shares the bucket.
		{&net.UDPAddr{IP: net.ParseIP("2001:db8:1:ff::1"), Port: 5}, "2001:db8:1::/56"},
		{&net.UDPAddr{IP: net.ParseIP("2001:db8:1:100::1"), Port: 5}, "2001:db8:1:100::/56"},
		{&net.IPAddr{IP: net.IPv4(192, 0, 2, 7)}, "invalid Prefix"}, // no port: unparsable, shared bucket
		{nil, "invalid Prefix"},
	} {
		if got := ipKey(tc.addr).String(); got != tc.want {
			t.Errorf("ipKey(%v) = %s, want %s", tc.addr, got, tc.want)
		}
	}
}

// The per-IP count follows the per-peer count through every path: reserve,
// confirm, delete, failure and pending timeout.
func TestQuotaPerIP(t *testing.T) {
	q := newQuota(10, 2, 100)
	now := time.Unix(1000, 0)
	q.now = func() time.Time { return now }
	a := netip.MustParsePrefix("192.0.2.1/32")
	b := netip.MustParsePrefix("2001:db8::/64")

	if q.reserve("p1", "udp/192.0.2.1:1", a) != quotaOK || q.reserve("p2", "udp/192.0.2.1:2", a) != quotaOK {
		t.Fatal("reservations under the per-IP limit refused")
	}
	if got := q.reserve("p3", "udp/192.0.2.1:3", a); got != quotaIPFull {
		t.Fatalf("third reservation from one IP: scope %d, want quotaIPFull", got)
	}
	if q.reserve("p3", "udp/[2001:db8::1]:3", b) != quotaOK {
		t.Fatal("another prefix refused")
	}
	// Confirmed, then deleted: slot back.
	q.created("p1", "udp/192.0.2.1:1", a)
	q.deleted("p1", "udp/192.0.2.1:1", a)
	if n := q.ipCount(a); n != 1 {
		t.Fatalf("after delete: %d slots for %v, want 1", n, a)
	}
	// Failed allocation: slot back.
	q.failed("udp/192.0.2.1:2")
	if n := q.ipCount(a); n != 0 {
		t.Fatalf("after failure: %d slots for %v, want 0", n, a)
	}
	// Pending slots time out.
	if q.reserve("p4", "udp/192.0.2.1:4", a) != quotaOK || q.reserve("p5", "udp/192.0.2.1:5", a) != quotaOK {
		t.Fatal("reservations after release refused")
	}
	now = now.Add(pendingTTL + time.Second)
	if q.reserve("p6", "udp/192.0.2.1:6", a) != quotaOK {
		t.Fatal("timed-out reservations not reclaimed")
	}
	if n := q.ipCount(a); n != 1 {
		t.Fatalf("after timeout: %d slots for %v, want 1", n, a)
	}
	// The per-peer limit is checked first.
	q2 := newQuota(1, 1, 100)
	if q2.reserve("p", "k1", a) != quotaOK || q2.reserve("p", "k2", a) != quotaPeerFull {
		t.Fatal("per-peer limit not checked before the per-IP one")
	}
	// maxIP 0: no per-IP limit.
	q3 := newQuota(100, 0, 100)
	for i := 0; i < 50; i++ {
		if q3.reserve("p", "k", a) != quotaOK {
			t.Fatalf("reservation %d refused without a per-IP limit", i)
		}
	}
	q.reset()
	if n := q.ipCount(b); n != 0 {
		t.Fatalf("after reset: %d slots for %v", n, b)
	}
}

// Many peer IDs from one client address cannot take more than MaxPerIP
// allocations; another address still allocates, and a deallocation frees
// the slot.
func TestPerIPQuota(t *testing.T) {
	cfg := testConfig()
	cfg.MaxPerIP = 3
	reg := prometheus.NewRegistry()
	s, err := New(cfg, testSecret, zap.NewNop(), reg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })

	var held []net.PacketConn
	for i := 0; i < 3; i++ {
		// A new identity each time, UDP and TCP: the cap is per address.
		u, p := creds(peerA + string(rune('a'+i)))
		r, err := dialFrom(t, s, []string{"udp", "tcp"}[i%2], "127.0.0.1", u, p).Allocate()
		if err != nil {
			t.Fatalf("allocation %d: %v", i+1, err)
		}
		held = append(held, r)
	}
	u, p := creds(peerA + "d")
	if _, err := dialFrom(t, s, "udp", "127.0.0.1", u, p).Allocate(); turnCode(err) != 486 {
		t.Fatalf("4th allocation from one IP: %v, want 486", err)
	}
	if _, err := dialFrom(t, s, "tcp", "127.0.0.1", u, p).Allocate(); turnCode(err) != 486 {
		t.Fatalf("4th allocation from one IP over tcp: %v, want 486", err)
	}
	ub, pb := creds(peerB)
	if _, err := dialFrom(t, s, "udp", "127.0.0.2", ub, pb).Allocate(); err != nil {
		t.Fatalf("client from 127.0.0.2: %v", err)
	}
	st := s.Stats()
	if st.Allocations != 4 || st.QuotaRejectedIP != 2 || st.QuotaRejectedPeer != 0 || st.QuotaRejectedTotal != 0 {
		t.Fatalf("stats %+v", st)
	}
	if got := quotaMetric(t, reg, "ip"); got != 2 {
		t.Fatalf(`allocation_quota_rejections_total{scope="ip"} = %v, want 2`, got)
	}
	lo := netip.MustParsePrefix("127.0.0.1/32")
	if n := s.quota.ipCount(lo); n != 3 {
		t.Fatalf("%d slots held by %v, want 3", n, lo)
	}

	// Deallocating (Refresh lifetime 0) gives the slot back.
	_ = held[1].Close()
	waitFor(t, "allocation deleted", func() bool { return s.quota.ipCount(lo) == 2 })
	if _, err := dialFrom(t, s, "udp", "127.0.0.1", u, p).Allocate(); err != nil {
		t.Fatalf("after release: %v", err)
	}
	if _, err := dialFrom(t, s, "udp", "127.0.0.1", u, p).Allocate(); turnCode(err) != 486 {
		t.Fatalf("over the per-IP quota again: %v, want 486", err)
	}
}

func quotaMetric(t *testing.T, reg *prometheus.Registry, scope string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "dusk_turn_allocation_quota_rejections_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "scope" && l.GetValue() == scope {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	t.Fatalf("no allocation_quota_rejections_total{scope=%q}", scope)
	return 0
}
