package federation

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/duskchat/dusk-relay/internal/config"
)

func TestLimiterBuckets(t *testing.T) {
	now := time.Unix(1000, 0)
	l := newClientLimiter(nil, "", nil, 1000, func(string) {}) // burst 32,000 B
	l.now = func() time.Time { return now }
	a := netip.MustParsePrefix("192.0.2.1/32")
	b := netip.MustParsePrefix("192.0.2.2/32")
	if !l.take(a, 32000) {
		t.Fatal("the burst must fit")
	}
	if l.take(a, 1) {
		t.Fatal("empty bucket accepted a byte")
	}
	if !l.take(b, 32000) {
		t.Fatal("another prefix has its own bucket")
	}
	now = now.Add(500 * time.Millisecond)
	if !l.take(a, 500) || l.take(a, 1) {
		t.Fatal("refill is rate x elapsed")
	}
	now = now.Add(time.Hour)
	if !l.take(a, 32000) || l.take(a, 1) {
		t.Fatal("refill is capped at the burst")
	}
}

func TestLimiterBoundedMemory(t *testing.T) {
	now := time.Unix(1000, 0)
	l := newClientLimiter(nil, "", nil, 1000, func(string) {})
	l.now = func() time.Time { return now }
	for i := range maxBuckets + 10 {
		p := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), 32)
		l.take(p, 1)
	}
	if n := l.buckets.Len(); n > maxBuckets {
		t.Fatalf("%d buckets, want <= %d", n, maxBuckets)
	}
}

// hostOn listens (and so dials, with reuseport) from ip.
func hostOn(t testing.TB, ip string) host.Host {
	t.Helper()
	h, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/"+ip+"/tcp/0"), libp2p.Transport(tcp.NewTCPTransport),
		libp2p.DisableMetrics(), libp2p.DisableRelay())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.Close() })
	return h
}

// Tiny messages cost at least minMessageCost each: a sender cannot turn
// its byte budget into hundreds of thousands of messages a second.
func TestTinyMessagesCostAtLeastMinimum(t *testing.T) {
	if got := messageCost(1); got != minMessageCost {
		t.Fatalf("messageCost(1) = %v, want %d", got, minMessageCost)
	}
	if got := messageCost(5000); got != 5000 {
		t.Fatalf("messageCost(5000) = %v, want 5000", got)
	}
	l := newClientLimiter(nil, "", nil, 1000, func(string) {}) // burst 32,000 B
	a := netip.MustParsePrefix("198.51.100.7/32")
	sent := 0
	for range 1000 {
		if !l.take(a, messageCost(1)) {
			break
		}
		sent++
	}
	if want := 32000 / minMessageCost; sent != want {
		t.Fatalf("%d one-byte messages fit a 32,000 B burst, want %d", sent, want)
	}
}

// TestClientRateLimit: a sender floods dusk/sync from one address; the
// relay forwards its burst and then stops forwarding its messages
// (counted), while a client on another address is still forwarded.
func TestClientRateLimit(t *testing.T) {
	k := newKey(t)
	hR := newHost(t, k, 0)
	f, err := New(context.Background(), hR, config.Relay{}, zap.NewNop(), prometheus.NewRegistry(),
		WithRelayTopics("dusk/sync"), WithClientRate(2048)) // burst 64 KiB
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = f.Close() }()
	relay := peer.AddrInfo{ID: hR.ID(), Addrs: hR.Addrs()}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	flooder := newAppClient(ctx, t, hostOn(t, "127.0.0.1"), relay, "dusk/sync")
	defer flooder.close()
	honest := newAppClient(ctx, t, hostOn(t, "127.0.0.2"), relay, "dusk/sync")
	defer honest.close()
	victim := newAppClient(ctx, t, hostOn(t, "127.0.0.3"), relay, "dusk/sync")
	defer victim.close()
	waitFor(t, "relay tracks the clients", func() bool { return len(f.ps.ListPeers("dusk/sync")) == 3 })
	probe := newClientLimiter(hR, hR.ID(), nil, 1, func(string) {})
	if p, ok := probe.prefixOf(honest.h.ID()); !ok || p.String() != "127.0.0.2/32" {
		t.Fatalf("honest client's prefix = %v %v, want 127.0.0.2/32", p, ok)
	}

	const n, size = 20, 10_000
	for i := range n {
		data := fmt.Appendf(make([]byte, 0, size), "flood-%02d", i)
		data = data[:size]
		if err := flooder.topics["dusk/sync"].Publish(ctx, data); err != nil {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := honest.topics["dusk/sync"].Publish(ctx, []byte("honest")); err != nil {
		t.Fatal(err)
	}
	floods := 0
	for {
		m := victim.next(ctx, t, "dusk/sync")
		if string(m.Data) == "honest" {
			break
		}
		floods++
	}
	// Give late IWANT answers a heartbeat and a half.
	time.Sleep(1500 * time.Millisecond)
	for {
		rctx, rcancel := context.WithTimeout(ctx, 100*time.Millisecond)
		_, err := victim.subs["dusk/sync"].Next(rctx)
		rcancel()
		if err != nil {
			break
		}
		floods++
	}
	// 65,536 B of burst = 6 messages, plus 2 KiB/s of refill.
	if floods > 7 {
		t.Fatalf("victim got %d of the flooder's %d messages through the relay, want <= 7", floods, n)
	}
	if floods < 5 {
		t.Fatalf("victim got only %d flood messages: the burst must pass", floods)
	}
	if got := metricValue(f.m.gossip.throttled.WithLabelValues("dusk/sync")); got < n-7 {
		t.Fatalf("throttled = %v, want >= %d", got, n-7)
	}
	if slices.Contains(f.limited, "dusk/sync") == false {
		t.Fatal("no validator registered")
	}
}
