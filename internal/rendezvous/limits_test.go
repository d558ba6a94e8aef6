package rendezvous

import (
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
	pb "github.com/waku-org/go-libp2p-rendezvous/pb"
	"go.uber.org/zap"

	"github.com/duskchat/dusk-relay/internal/testutil"
)

// budgetOf is the sum the store must hold in bytes.
func budgetOf(s *Server) (tracked, want int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, m := range s.store.byPeer {
		for _, e := range m {
			want += entrySize(e.ns, e.record)
		}
	}
	return s.store.bytes, want
}

// The byte budget refuses new registrations with E_UNAVAILABLE once full,
// lets same-size refreshes through, and is freed by unregister and expiry.
func TestByteBudget(t *testing.T) {
	sk, id := testutil.FixedKey(1)
	rec := sealFixed(t, sk, id, nil)
	per := entrySize("ns-00", rec)
	clock := newFakeClock()
	s := New(testCfg, zap.NewNop(), nil, WithClock(clock.Now), WithMaxBytes(3*per))
	defer s.Close()
	reg := func(ns string, ttl uint64) pb.Message_ResponseStatus {
		return s.register(id, testSrc, registerMsg(ns, rec, u64(ttl)).Register).GetStatus()
	}
	for i, want := range []pb.Message_ResponseStatus{pb.Message_OK, pb.Message_OK, pb.Message_OK, pb.Message_E_UNAVAILABLE} {
		if got := reg(fmt.Sprintf("ns-%02d", i), 7200); got != want {
			t.Fatalf("registration %d: %v, want %v", i, got, want)
		}
	}
	if got := reg("ns-01", 7200); got != pb.Message_OK {
		t.Fatalf("refresh in a full budget: %v", got)
	}
	if tracked, want := budgetOf(s); tracked != want || tracked != 3*per {
		t.Fatalf("budget %d, entries sum to %d (3 × %d)", tracked, want, per)
	}
	s.unregister(id, "ns-00")
	if got := reg("ns-03", 7200); got != pb.Message_OK {
		t.Fatalf("after unregister: %v", got)
	}
	clock.Advance(3 * time.Hour)
	s.sweep()
	if tracked, _ := budgetOf(s); tracked != 0 || s.Registrations() != 0 {
		t.Fatalf("after expiry: %d bytes, %d registrations", tracked, s.Registrations())
	}
	if got := reg("ns-04", 7200); got != pb.Message_OK {
		t.Fatalf("after expiry: %v", got)
	}
	if s.StoredBytes() != per {
		t.Fatalf("StoredBytes %d, want %d", s.StoredBytes(), per)
	}
}

// The default budget is on and bounded: the worst case of the other caps
// (1,000,000 records of 8 KiB) would be ~8 GiB.
func TestDefaultByteBudget(t *testing.T) {
	s := New(testCfg, zap.NewNop(), nil)
	defer s.Close()
	if s.store.lim.maxBytes != DefaultMaxBytes || DefaultMaxBytes <= 0 || DefaultMaxBytes > 1<<30 {
		t.Fatalf("default budget %d", s.store.lim.maxBytes)
	}
	// Lowering only the total caps the per-address budget with it.
	cfg := testCfg
	cfg.MaxBytes = 2 << 20
	s2 := New(cfg, zap.NewNop(), nil)
	defer s2.Close()
	if s2.store.lim.maxBytes != 2<<20 || s2.store.lim.maxSrcBytes != 2<<20 || s2.store.lim.maxPeerBytes != DefaultMaxPeerBytes {
		t.Fatalf("total 2 MiB: limits %+v", s2.store.lim)
	}
}

// Close must not wait StreamTimeout for clients that never finish their
// request: shutdown would hang that long (seen as a 14 s SIGTERM in the
// daemon's fault suite). Their streams are reset, a finished request on
// another stream is still answered.
func TestCloseCutsHeldStreams(t *testing.T) {
	srv, sh := startServer(t, nil, WithStreamTimeout(10*time.Minute))
	c := clients(t, sh, 1)[0]
	var held []network.Stream
	for i := 0; i < 5; i++ {
		s := openStream(t, c, sh.ID())
		if _, err := s.Write([]byte{0x20, 0x08}); err != nil { // a length prefix, then nothing
			t.Fatal(err)
		}
		held = append(held, s)
	}
	eventually(t, "streams in flight", func() bool {
		srv.life.Lock()
		defer srv.life.Unlock()
		return len(srv.active) == len(held)
	})
	closed := make(chan struct{})
	go func() { _ = srv.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(30 * time.Second):
		t.Fatal("Close still waiting for held streams after 30 s (stream timeout 10 min)")
	}
	for i, s := range held {
		if _, err := io.ReadAll(s); err == nil {
			t.Errorf("held stream %d ended gracefully; want a reset", i)
		}
	}
}

// checkAccounting checks every budget's bookkeeping against the entries.
func checkAccounting(t *testing.T, st *store) {
	t.Helper()
	total, perPeer, perSrc := 0, map[peer.ID]int{}, map[netip.Prefix]int{}
	for p, m := range st.byPeer {
		for _, e := range m {
			n := entrySize(e.ns, e.record)
			total += n
			perPeer[p] += n
			perSrc[e.src] += n
		}
	}
	if total != st.bytes || len(perPeer) != len(st.peerBytes) || len(perSrc) != len(st.bySrc) || len(perSrc) != len(st.srcHeap) {
		t.Fatalf("accounting: %d bytes (want %d), %d peers (want %d), %d sources / %d in heap (want %d)",
			st.bytes, total, len(st.peerBytes), len(perPeer), len(st.bySrc), len(st.srcHeap), len(perSrc))
	}
	for p, n := range perPeer {
		if st.peerBytes[p] != n {
			t.Fatalf("peer %s: %d bytes, want %d", p, st.peerBytes[p], n)
		}
	}
	for src, n := range perSrc {
		if h := st.bySrc[src]; h == nil || h.bytes != n || st.srcHeap[h.idx] != h {
			t.Fatalf("source %s: %+v, want %d bytes", src, h, n)
		}
	}
	if len(st.srcHeap) > 0 {
		for _, h := range st.srcHeap {
			if h.bytes > st.srcHeap[0].bytes {
				t.Fatalf("heap top %d bytes < %d", st.srcHeap[0].bytes, h.bytes)
			}
		}
	}
}

var (
	srcA = netip.MustParsePrefix("198.51.100.1/32")
	srcB = netip.MustParsePrefix("198.51.100.2/32")
	srcC = netip.MustParsePrefix("2001:db8:0:100::/56")
)

// A source prefix at its budget: a newcomer from that prefix evicts the
// oldest registration of the prefix's largest peer; the largest peer
// itself is refused; other prefixes are untouched.
func TestSourceBudgetEvictsLargestPeer(t *testing.T) {
	rec := make([]byte, 744)
	per := entrySize("ns-000", rec)
	exp := time.Unix(2_000_000_000, 0)
	st := newStore(1, limits{maxPerPeer: 100, maxTotal: 1000, maxSrcBytes: 10 * per})
	for i := 0; i < 10; i++ {
		if _, ev, err := st.add("big", srcA, fmt.Sprintf("ns-%03d", i), rec, exp); err != nil || len(ev) != 0 {
			t.Fatalf("fill %d: %v, evicted %d", i, err, len(ev))
		}
	}
	if _, _, err := st.add("other", srcB, "ns-000", rec, exp); err != nil {
		t.Fatal(err)
	}
	if _, _, err := st.add("big", srcA, "ns-010", rec, exp); !errors.Is(err, errSourceFull) {
		t.Fatalf("largest holder over its prefix budget: %v, want errSourceFull", err)
	}
	// A same-size refresh of a full prefix passes without evicting.
	if _, ev, err := st.add("big", srcA, "ns-003", rec, exp); err != nil || len(ev) != 0 {
		t.Fatalf("refresh: %v, %d evicted", err, len(ev))
	}
	_, ev, err := st.add("newcomer", srcA, "ns-000", rec, exp)
	if err != nil || len(ev) != 1 || ev[0].peer != "big" || ev[0].ns != "ns-000" {
		t.Fatalf("newcomer in a full prefix: %v, evicted %v; want big's oldest (ns-000)", err, ev)
	}
	if a, _ := st.heldIn(srcA, "big"); a != 10*per || len(st.byPeer["big"]) != 9 || len(st.byPeer["other"]) != 1 {
		t.Fatalf("prefix holds %d (want %d), big %d registrations, other %d", a, 10*per, len(st.byPeer["big"]), len(st.byPeer["other"]))
	}
	checkAccounting(t, st)
}

// The global budget full: a newcomer from a fresh prefix evicts from the
// largest prefix's largest peer; when the sender's own prefix is the
// largest it evicts there; a sender that is the largest holder is refused.
func TestGlobalBudgetEvictsLargestHolder(t *testing.T) {
	rec := make([]byte, 700)
	per := entrySize("ns-000", rec)
	exp := time.Unix(2_000_000_000, 0)
	st := newStore(1, limits{maxPerPeer: 100, maxTotal: 1000, maxBytes: 12 * per, maxSrcBytes: 10 * per})
	add := func(p peer.ID, src netip.Prefix, ns string) ([]*entry, error) {
		_, ev, err := st.add(p, src, ns, rec, exp)
		return ev, err
	}
	for i := 0; i < 4; i++ {
		for _, p := range []peer.ID{"a1", "a2"} {
			if _, err := add(p, srcA, fmt.Sprintf("ns-%03d", i)); err != nil {
				t.Fatal(err)
			}
		}
	}
	for i := 0; i < 4; i++ {
		if _, err := add("c1", srcC, fmt.Sprintf("ns-%03d", i)); err != nil {
			t.Fatal(err)
		}
	}
	// Full: 8 from srcA, 4 from srcC. A newcomer from srcB evicts a1's
	// oldest (srcA is the largest prefix; a1 and a2 tie, a1 was first).
	ev, err := add("b1", srcB, "ns-000")
	if err != nil || len(ev) != 1 || ev[0].src != srcA {
		t.Fatalf("newcomer from a fresh prefix: %v, evicted %v", err, ev)
	}
	// srcA 7, srcC 4: c1 grows srcC by evicting from srcA while srcA
	// holds more than srcC would.
	if ev, err := add("c1", srcC, "ns-004"); err != nil || len(ev) != 1 || ev[0].src != srcA {
		t.Fatalf("c1 registration 4: %v, evicted %v", err, ev)
	}
	// srcA 6, srcC 5, srcB 1: srcC would become the largest prefix and
	// c1 is its largest holder: refused, nothing evicted.
	if ev, err := add("c1", srcC, "ns-005"); !errors.Is(err, errNoMemory) || len(ev) != 0 {
		t.Fatalf("largest holder: %v, evicted %v; want errNoMemory", err, ev)
	}
	// A second peer in srcC evicts from c1, its prefix's largest holder.
	if ev, err := add("c2", srcC, "ns-000"); err != nil || len(ev) != 1 || ev[0].peer != "c1" {
		t.Fatalf("c2: %v, evicted %v", err, ev)
	}
	if st.bytes > 12*per {
		t.Fatalf("%d bytes > budget %d", st.bytes, 12*per)
	}
	checkAccounting(t, st)
	// The count cap evicts the same way.
	st2 := newStore(1, limits{maxPerPeer: 100, maxTotal: 3})
	for i := 0; i < 3; i++ {
		if _, _, err := st2.add("a", srcA, fmt.Sprintf("ns-%d", i), rec, exp); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, err := st2.add("a", srcA, "ns-3", rec, exp); !errors.Is(err, errFull) {
		t.Fatalf("largest holder at the count cap: %v", err)
	}
	if _, ev, err := st2.add("b", srcB, "ns-0", rec, exp); err != nil || len(ev) != 1 {
		t.Fatalf("newcomer at the count cap: %v, %v", err, ev)
	}
	checkAccounting(t, st2)
}

// The per-peer byte cap refuses with E_NOT_AUTHORIZED, however many
// addresses the peer uses.
func TestPeerByteBudget(t *testing.T) {
	sk, id := testutil.FixedKey(1)
	rec := sealFixed(t, sk, id, nil)
	per := entrySize("ns-00", rec)
	s := New(testCfg, zap.NewNop(), nil, WithMaxPeerBytes(3*per))
	defer s.Close()
	srcs := []netip.Prefix{srcA, srcB, srcC, srcA}
	for i, want := range []pb.Message_ResponseStatus{pb.Message_OK, pb.Message_OK, pb.Message_OK, pb.Message_E_NOT_AUTHORIZED} {
		r := s.register(id, srcs[i], registerMsg(fmt.Sprintf("ns-%02d", i), rec, nil).Register)
		if r.GetStatus() != want {
			t.Fatalf("registration %d: %v, want %v", i, r.GetStatus(), want)
		}
	}
}

// Random operations from a few peers and prefixes under small budgets:
// the bookkeeping always matches the entries and no budget is exceeded.
func TestBudgetsMatchModel(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	now := time.Unix(1_700_000_000, 0)
	lim := limits{maxPerPeer: 6, maxTotal: 40, maxBytes: 30 * 400, maxPeerBytes: 8 * 400, maxSrcBytes: 12 * 400}
	st := newStore(1, lim)
	peers := []peer.ID{"a", "b", "c", "d", "e", "f", "g"}
	srcs := []netip.Prefix{srcA, srcB, srcC, {}}
	for step := 0; step < 5000; step++ {
		p := peers[rng.IntN(len(peers))]
		ns := fmt.Sprintf("ns-%d", rng.IntN(8))
		switch rng.IntN(10) {
		case 0, 1, 2, 3, 4, 5:
			rec := make([]byte, 20+rng.IntN(200))
			_, _, err := st.add(p, srcs[rng.IntN(len(srcs))], ns, rec, now.Add(time.Duration(1+rng.IntN(100))*time.Second))
			if err != nil && !errors.Is(err, errPeerLimit) && !errors.Is(err, errPeerBytes) &&
				!errors.Is(err, errSourceFull) && !errors.Is(err, errNoMemory) && !errors.Is(err, errFull) {
				t.Fatal(err)
			}
		case 6, 7:
			st.unregister(p, ns)
		case 8:
			now = now.Add(time.Duration(rng.IntN(20)) * time.Second)
			st.expire(now, 1<<20)
		case 9:
			st.unregister(p, "")
		}
		checkAccounting(t, st)
		if st.bytes > lim.maxBytes || st.len() > lim.maxTotal {
			t.Fatalf("step %d: %d bytes, %d registrations", step, st.bytes, st.len())
		}
		for _, h := range st.bySrc {
			if h.bytes > lim.maxSrcBytes {
				t.Fatalf("step %d: source %s holds %d", step, h.pfx, h.bytes)
			}
		}
		for p, n := range st.peerBytes {
			if n > lim.maxPeerBytes || len(st.byPeer[p]) > lim.maxPerPeer {
				t.Fatalf("step %d: peer %s holds %d bytes in %d", step, p, n, len(st.byPeer[p]))
			}
		}
	}
}

func TestSourcePrefix(t *testing.T) {
	for in, want := range map[string]string{
		"/ip4/203.0.113.7/tcp/4001":                             "203.0.113.7/32",
		"/ip6/2001:db8:1:2ff:1::7/udp/4001/quic-v1":             "2001:db8:1:200::/56",
		"/ip6/::ffff:203.0.113.7/tcp/1":                         "203.0.113.7/32",
		"/ip4/127.0.0.3/tcp/5/p2p-circuit":                      "127.0.0.3/32",
		"/dns4/example.org/tcp/1":                               "invalid Prefix",
		"/ip4/198.51.100.9/tcp/4001/ws/p2p-circuit/ip4/1.1.1.1": "198.51.100.9/32",
	} {
		if got := sourcePrefix(ma.StringCast(in)).String(); got != want {
			t.Errorf("%s: %s, want %s", in, got, want)
		}
	}
}

// A Dusk client's record (Ed25519 key, relay circuit addresses and a few
// direct ones) stays far below MaxRecordSize.
func TestDuskRecordFitsMaxRecordSize(t *testing.T) {
	sk, id := testutil.FixedKey(7)
	_, relay := testutil.FixedKey(8)
	var addrs []ma.Multiaddr
	for _, a := range []string{
		"/dns4/relay.duskchat.app/tcp/4001/p2p/%s/p2p-circuit",
		"/ip4/203.0.113.7/tcp/4001/p2p/%s/p2p-circuit",
		"/ip6/2001:db8::7/tcp/4001/p2p/%s/p2p-circuit",
		"/ip4/198.51.100.20/tcp/53124",
		"/ip4/192.168.1.20/tcp/53124",
		"/ip6/2001:db8:1:2:a1b2:c3d4:e5f6:789a/tcp/53124",
		"/ip6/fd00::a1b2:c3d4:e5f6:789a/tcp/53124",
		"/ip4/10.8.0.2/tcp/53124",
	} {
		if strings.Contains(a, "%s") {
			a = fmt.Sprintf(a, relay)
		}
		addrs = append(addrs, ma.StringCast(a))
	}
	rec := sealFixed(t, sk, id, addrs)
	t.Logf("record with %d addresses: %d bytes (MaxRecordSize %d)", len(addrs), len(rec), MaxRecordSize)
	if len(rec) > MaxRecordSize/4 {
		t.Fatalf("a Dusk record of %d bytes is over a quarter of MaxRecordSize %d", len(rec), MaxRecordSize)
	}
	if _, err := parseRecord(rec); err != nil {
		t.Fatal(err)
	}
}

// dusk/peer/<id> is only for <id>; other namespaces and unregistering
// under another id (what the app does on remove_friend) are unaffected.
func TestPeerNamespaceBound(t *testing.T) {
	sk, id := testutil.FixedKey(1)
	_, other := testutil.FixedKey(2)
	rec := sealFixed(t, sk, id, nil)
	s := New(testCfg, zap.NewNop(), nil)
	defer s.Close()
	for ns, want := range map[string]pb.Message_ResponseStatus{
		"dusk/peer/" + id.String():            pb.Message_OK,
		"dusk/peer/" + other.String():         pb.Message_E_NOT_AUTHORIZED,
		"dusk/peer/" + id.String() + "/x":     pb.Message_E_NOT_AUTHORIZED,
		"dusk/peer/":                          pb.Message_E_NOT_AUTHORIZED,
		"dusk/peers":                          pb.Message_OK,
		"dusk/community/com_0123456789abcdef": pb.Message_OK,
	} {
		if got := s.register(id, testSrc, registerMsg(ns, rec, nil).Register).GetStatus(); got != want {
			t.Errorf("%s: %v, want %v", ns, got, want)
		}
	}
	s.unregister(id, "dusk/peer/"+other.String())
	if s.Registrations() != 3 {
		t.Fatalf("%d registrations after unregistering another peer's namespace, want 3", s.Registrations())
	}
}

// By default a discover without a namespace is refused with
// E_NOT_AUTHORIZED; with a namespace it is served.
func TestDiscoverAllOffByDefault(t *testing.T) {
	cfg := testCfg
	cfg.DiscoverAll = false
	sk, id := testutil.FixedKey(1)
	s := New(cfg, zap.NewNop(), nil)
	defer s.Close()
	if r := s.register(id, testSrc, registerMsg("dusk/peers", sealFixed(t, sk, id, nil), nil).Register); r.GetStatus() != pb.Message_OK {
		t.Fatal(r)
	}
	if d := s.discover(id, discoverMsg("", 0, nil).Discover); d.GetStatus() != pb.Message_E_NOT_AUTHORIZED || len(d.Registrations) != 0 {
		t.Fatalf("discover all: %v", d)
	}
	if d := s.discover(id, discoverMsg("dusk/peers", 0, nil).Discover); d.GetStatus() != pb.Message_OK || len(d.Registrations) != 1 {
		t.Fatalf("discover dusk/peers: %v", d)
	}
}
