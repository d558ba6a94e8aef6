package directory

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
	"go.uber.org/zap"

	"github.com/duskchat/dusk-relay/internal/config"
	"github.com/duskchat/dusk-relay/internal/reqresp"
)

// fakeNow is a settable clock for the service.
type fakeNow struct{ t time.Time }

func (f *fakeNow) now() time.Time { return f.t }

func limitService(t *testing.T, cfg config.Directory) (*Service, *Store, *fakeNow) {
	t.Helper()
	store := openStore(t)
	svc := NewService(store, cfg, zap.NewNop(), nil)
	clk := &fakeNow{t: time.Unix(1_800_000_000, 0)}
	svc.now = clk.now
	return svc, store, clk
}

func fromAddr(s string) context.Context {
	return reqresp.WithRemoteAddr(context.Background(), ma.StringCast(s))
}

func register(svc *Service, ctx context.Context, p peer.ID, name string) Response {
	return svc.Answer(ctx, p, Request{Kind: RequestRegister, DisplayName: name})
}

// At the row cap a newcomer is stored and the profile seen longest ago
// goes; nobody is refused.
func TestRowCapEvictsOldest(t *testing.T) {
	svc, store, clk := limitService(t, config.Directory{DirectoryMaxRows: 5})
	ctx := context.Background()
	for i := range 5 {
		if r := register(svc, ctx, peer.ID(fmt.Sprint("p", i)), fmt.Sprint("name", i)); r.Kind != ResponseOk {
			t.Fatalf("register %d: %#v", i, r)
		}
		clk.t = clk.t.Add(time.Minute)
	}
	// p0 comes back: a refresh of an existing profile evicts nobody.
	if r := register(svc, ctx, "p0", "name0 renamed"); r.Kind != ResponseOk {
		t.Fatalf("refresh: %#v", r)
	}
	clk.t = clk.t.Add(time.Minute)
	for i := 5; i < 8; i++ {
		if r := register(svc, ctx, peer.ID(fmt.Sprint("p", i)), fmt.Sprint("name", i)); r.Kind != ResponseOk {
			t.Fatalf("newcomer %d refused at the cap: %#v", i, r)
		}
		clk.t = clk.t.Add(time.Minute)
	}
	if n, _ := store.Count(ctx); n != 5 {
		t.Fatalf("%d profiles, want the cap 5", n)
	}
	// Oldest last_seen first: p1, p2, p3 went; p0 (refreshed) stayed.
	for p, want := range map[string]bool{"p0": true, "p1": false, "p2": false, "p3": false, "p4": true, "p5": true, "p7": true} {
		if _, _, ok, _ := store.Get(ctx, peer.ID(p).String()); ok != want {
			t.Errorf("%s present = %v, want %v", p, ok, want)
		}
	}
	if got := counterValue(t, svc, "evict", "ok"); got != 3 {
		t.Errorf("evict counter = %v, want 3", got)
	}
}

// The sweep deletes profiles not refreshed within the expiry and keeps
// the rest; the row count follows.
func TestExpirySweep(t *testing.T) {
	svc, store, clk := limitService(t, config.Directory{DirectoryExpiry: 30 * 24 * time.Hour})
	ctx := context.Background()
	const old = expiryBatch + 500 // more than one batch
	populate(t, store, old, 1, clk.t.Unix(), true)
	clk.t = clk.t.Add(20 * 24 * time.Hour)
	if r := register(svc, ctx, "fresh", "fresh"); r.Kind != ResponseOk {
		t.Fatal(r)
	}
	clk.t = clk.t.Add(11 * 24 * time.Hour) // old rows are 31 days old, fresh 11
	n, err := svc.Sweep(ctx)
	if err != nil || n != old {
		t.Fatalf("sweep expired %d (%v), want %d", n, err, old)
	}
	if c, _ := store.Count(ctx); c != 1 {
		t.Fatalf("%d profiles left, want 1", c)
	}
	if _, _, ok, _ := store.Get(ctx, peer.ID("fresh").String()); !ok {
		t.Fatal("fresh profile expired")
	}
	if svc.count != 1 || !svc.countKnown {
		t.Fatalf("service count %d (known %v) after the sweep", svc.count, svc.countKnown)
	}
}

// An unchanged refresh within LastSeenRefresh is answered without a
// write; a change, or an older last_seen, is written.
func TestUnchangedRefreshSkipsWrite(t *testing.T) {
	svc, store, clk := limitService(t, config.Directory{})
	ctx := context.Background()
	start := clk.t
	if r := register(svc, ctx, "p", " Alice "); r.Kind != ResponseOk {
		t.Fatal(r)
	}
	written := store.writes.Load()
	for range 4 { // the app's 120 s ticks
		clk.t = clk.t.Add(2 * time.Minute)
		if r := register(svc, ctx, "p", "Alice"); r.Kind != ResponseOk {
			t.Fatal(r)
		}
	}
	if store.writes.Load() != written {
		t.Fatalf("unchanged refreshes wrote %d times", store.writes.Load()-written)
	}
	if p, _, _, _ := store.Get(ctx, peer.ID("p").String()); p.LastSeen != uint64(start.Unix()) {
		t.Fatalf("last_seen moved without a write: %d", p.LastSeen)
	}
	if got := counterValue(t, svc, "register", "unchanged"); got != 4 {
		t.Fatalf("unchanged counter = %v", got)
	}
	clk.t = clk.t.Add(2 * time.Minute) // 10 min since the write
	register(svc, ctx, "p", "Alice")
	if p, _, _, _ := store.Get(ctx, peer.ID("p").String()); p.LastSeen != uint64(clk.t.Unix()) {
		t.Fatalf("last_seen not refreshed after %v", LastSeenRefresh)
	}
	register(svc, ctx, "p", "Alice B")
	if p, _, _, _ := store.Get(ctx, peer.ID("p").String()); p.DisplayName != "Alice B" {
		t.Fatalf("changed name not written: %q", p.DisplayName)
	}
}

// Writes are limited per source address (IPv4 /32, IPv6 /56) whatever
// the peer IDs; unchanged refreshes do not count.
func TestRegisterLimitPerAddress(t *testing.T) {
	svc, _, _ := limitService(t, config.Directory{DirectoryRegisterPerMinute: 30, DirectoryRegisterPerAddrPerMinute: 3})
	a := fromAddr("/ip4/203.0.113.9/tcp/4001")
	for i := range 3 {
		if r := register(svc, a, peer.ID(fmt.Sprint("a", i)), "x"); r.Kind != ResponseOk {
			t.Fatalf("peer %d: %#v", i, r)
		}
	}
	if r := register(svc, a, "a3", "x"); r.Kind != ResponseError || r.Error != wireErrRateLimited {
		t.Fatalf("4th identity from one address: %#v", r)
	}
	if r := register(svc, a, "a0", "x"); r.Kind != ResponseOk {
		t.Fatalf("unchanged refresh from a limited address: %#v", r)
	}
	if r := register(svc, fromAddr("/ip4/203.0.113.10/tcp/4001"), "b0", "x"); r.Kind != ResponseOk {
		t.Fatalf("other address: %#v", r)
	}
	v6 := []string{"/ip6/2001:db8:1:100::1/tcp/1", "/ip6/2001:db8:1:1ff::2/tcp/1", "/ip6/2001:db8:1:1aa::3/tcp/1", "/ip6/2001:db8:1:180::4/tcp/1"}
	for i, addr := range v6 {
		r := register(svc, fromAddr(addr), peer.ID(fmt.Sprint("v6-", i)), "x")
		if want := i < 3; (r.Kind == ResponseOk) != want {
			t.Fatalf("IPv6 %s (same /56): %#v", addr, r)
		}
	}
}

func TestSearchLimit(t *testing.T) {
	svc, _, clk := limitService(t, config.Directory{DirectorySearchPerMinute: 2})
	a := fromAddr("/ip4/203.0.113.9/tcp/4001")
	search := func(p peer.ID) Response { return svc.Answer(a, p, Request{Kind: RequestSearch, Query: "ab"}) }
	if search("p").Kind != ResponseResults || search("p").Kind != ResponseResults {
		t.Fatal("burst of 2")
	}
	if r := search("p"); r.Kind != ResponseError || r.Error != wireErrRateLimited {
		t.Fatalf("3rd search: %#v", r)
	}
	// The address allows ten peers' worth (20), then nobody from it.
	for i := range 18 {
		if r := search(peer.ID(fmt.Sprint("q", i))); r.Kind != ResponseResults {
			t.Fatalf("peer q%d: %#v", i, r)
		}
	}
	if r := search("fresh-identity"); r.Kind != ResponseError {
		t.Fatalf("21st search from one address: %#v", r)
	}
	clk.t = clk.t.Add(30 * time.Second)
	if r := search("p"); r.Kind != ResponseResults {
		t.Fatalf("after refill: %#v", r)
	}
}

// A 1-2 character search examines only the most recently seen rows; the
// exact peer-ID match and 3+ character searches still find anything.
func TestShortSearchIsBounded(t *testing.T) {
	store := openStore(t)
	store.shortScanRows = 10
	ctx := context.Background()
	base := time.Unix(1_800_000_000, 0)
	mustRegister(t, store, "old-peer", "Qx old", "", base.Unix())
	for i := range 30 {
		mustRegister(t, store, fmt.Sprint("p", i), fmt.Sprint("name", i), "", base.Unix()+int64(i+1))
	}
	if got, _ := store.Search(ctx, "Qx"); len(got) != 0 {
		t.Fatalf("short search reached past the newest 10 rows: %v", names(got))
	}
	if got, _ := store.searchScan(ctx, "Qx"); len(got) != 1 {
		t.Fatalf("reference scan: %v", names(got))
	}
	if got, _ := store.Search(ctx, "Qx "); len(got) != 0 {
		t.Fatal("trimmed query")
	}
	if got, _ := store.Search(ctx, "Qx o"); len(got) != 1 {
		t.Fatalf("index search: %v", names(got))
	}
	if got, _ := store.Search(ctx, "29"); len(got) != 1 || got[0].PeerID != "p29" {
		t.Fatalf("short search inside the window: %v", names(got))
	}
	// Peer-ID match anywhere, even for a short ID.
	mustRegister(t, store, "zz", "ancient", "", base.Unix()-1000)
	if got, _ := store.Search(ctx, "zz"); len(got) != 1 || got[0].PeerID != "zz" {
		t.Fatalf("short peer-ID search: %v", names(got))
	}
}

// The largest valid Register fits the protocol's request cap with room.
func TestMaxRequestSizeFitsLargestRegister(t *testing.T) {
	name := ""
	for range MaxDisplayName {
		name += "𝔄" // 4 bytes in UTF-8
	}
	addr := "/dns4/" + fmt.Sprintf("%0245d", 0) + "/tcp/4001/p2p/12D3KooWQYhTNQdmr3ArTeUHRYzFg94BKyTkoWBDWez9kSCVe2Xo/p2p-circuit"
	for len(addr) < MaxRelayAddr {
		addr = "/ip4/1.2.3.4/tcp/1" + addr
	}
	addr = addr[len(addr)-MaxRelayAddr:]
	b, err := reqresp.Marshal(Request{Kind: RequestRegister, DisplayName: name, RelayAddr: addr})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("largest Register: %d bytes (cap %d)", len(b), MaxRequestSize)
	if len(b) > MaxRequestSize/4 {
		t.Fatalf("largest Register is %d bytes; cap %d leaves too little room", len(b), MaxRequestSize)
	}
}

// BenchmarkRefresh compares an online client's periodic Register as
// before (a durable write every time) with the service's path for an
// unchanged profile (one read), in the same run; ratio = write/read.
func BenchmarkRefresh(b *testing.B) {
	store := openStore(b)
	svc := NewService(store, config.Directory{}, zap.NewNop(), nil)
	ctx := context.Background()
	p := peer.ID("client")
	if r := register(svc, ctx, p, "Alice"); r.Kind != ResponseOk {
		b.Fatal(r)
	}
	var write, skip time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		start := time.Now()
		if err := store.Register(ctx, p.String(), "Alice", "", time.Now()); err != nil {
			b.Fatal(err)
		}
		write += time.Since(start)
		start = time.Now()
		if r := register(svc, ctx, p, "Alice"); r.Kind != ResponseOk {
			b.Fatal(r)
		}
		skip += time.Since(start)
	}
	b.ReportMetric(float64(write.Nanoseconds())/float64(b.N), "write-ns/op")
	b.ReportMetric(float64(skip.Nanoseconds())/float64(b.N), "unchanged-ns/op")
	b.ReportMetric(float64(write)/float64(skip), "ratio")
}
