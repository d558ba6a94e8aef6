package gif

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/duskchat/dusk-relay/internal/config"
	"github.com/duskchat/dusk-relay/internal/reqresp"
)

func TestCanonical(t *testing.T) {
	long := strings.Repeat("é", 200) // 400 bytes
	for _, c := range []struct{ in, want GifRequest }{
		{GifRequest{"search", "  Cat ", 20}, GifRequest{"search", "cat", 20}},
		{GifRequest{"search", " \t", 20}, GifRequest{"trending", "", 20}},
		{GifRequest{"trending", "ignored", 0}, GifRequest{"trending", "", 1}},
		{GifRequest{"TRENDING", "x", 99}, GifRequest{"trending", "", 50}},
		{GifRequest{strings.Repeat("k", 1000), strings.Repeat("q", 1000), 7}, GifRequest{"trending", "", 7}},
		{GifRequest{"search", long, 5}, GifRequest{"search", strings.Repeat("é", 128), 5}},
		{GifRequest{"search", "a" + long, 5}, GifRequest{"search", "a" + strings.Repeat("é", 127), 5}},
	} {
		if got := Canonical(c.in); got != c.want {
			t.Errorf("Canonical(%.80v) = %.80v, want %.80v", c.in, got, c.want)
		}
		if got := Canonical(c.in); len(got.Query) > MaxQueryBytes {
			t.Errorf("query of %d bytes", len(got.Query))
		}
	}
}

// The attack: trending requests with huge, distinct queries (and bogus
// kinds). Each used to cost an upstream call and a cache entry holding
// the query; now they are all one request.
func TestTrendingWithHugeQueriesIsOneEntry(t *testing.T) {
	k := newFakeKlipy(t, nil)
	s, _ := newService(t, k.srv.URL, testKey, false)
	ctx := ctxT(t)
	for i := range 200 {
		q := fmt.Sprint(i) + strings.Repeat("x", 64<<10)
		kind := []string{"trending", "featured", "", "xyz"}[i%4]
		if got := s.Search(ctx, GifRequest{Kind: kind, Query: q, Limit: 20}); len(got.Results) != 2 {
			t.Fatalf("request %d: %d results", i, len(got.Results))
		}
	}
	if n := k.calls.Load(); n != 1 {
		t.Fatalf("upstream calls = %d, want 1", n)
	}
	if n, b := s.cache.len(), s.cache.size(); n != 1 || b > 4<<10 {
		t.Fatalf("cache: %d entries, %d bytes", n, b)
	}
	// Long search queries are cut before keying: distinct tails share one.
	for i := range 50 {
		s.Search(ctx, GifRequest{Kind: "search", Query: strings.Repeat("cat ", 100) + fmt.Sprint(i), Limit: 20})
	}
	if n := k.calls.Load(); n != 2 {
		t.Fatalf("upstream calls after long searches = %d, want 2", n)
	}
}

func TestCacheBoundedInBytes(t *testing.T) {
	const budget = 64 << 10
	c := newCache(1000, budget)
	exp := time.Now().Add(time.Hour)
	page := make([]GifResult, 20)
	for i := range page {
		page[i] = GifResult{ID: fmt.Sprint(i), URL: strings.Repeat("u", 100), Preview: strings.Repeat("p", 100)}
	}
	for i := range 500 {
		c.put(fmt.Sprint("k", i), page, exp)
		if c.size() > budget {
			t.Fatalf("after %d puts: %d bytes > budget %d", i+1, c.size(), budget)
		}
	}
	if _, ok := c.get("k499", time.Now()); !ok {
		t.Fatal("newest entry missing")
	}
	if _, ok := c.get("k0", time.Now()); ok {
		t.Fatal("oldest entry kept past the budget")
	}
	// One answer larger than an eighth of the budget is not cached.
	huge := []GifResult{{URL: strings.Repeat("u", budget/4)}}
	c.put("huge", huge, exp)
	if _, ok := c.get("huge", time.Now()); ok {
		t.Fatal("oversized entry cached")
	}
	// Accounting survives replacement and expiry.
	c.put("k499", page[:1], exp)
	c.evictExpired(exp.Add(time.Second))
	if c.len() != 0 || c.size() != 0 {
		t.Fatalf("after expiry: %d entries, %d bytes", c.len(), c.size())
	}
}

func limitedService(t *testing.T, base string, perMinute, perPeer int, clk *clock) *Service {
	t.Helper()
	s := New(config.Gif{KlipyAPIKey: testKey, GifAPIBase: base, GifUpstreamPerMinute: perMinute,
		GifUpstreamPerPeerPerMinute: perPeer}, zap.NewNop(), prometheus.NewRegistry(), WithClock(clk.Now))
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// Misses are limited per peer, per address (ten peers' worth) and
// overall; cache hits are never limited.
func TestUpstreamLimits(t *testing.T) {
	k := newFakeKlipy(t, nil)
	clk := newClock()
	s := limitedService(t, k.srv.URL, 1000, 2, clk)
	ctx := reqresp.WithRemoteAddr(ctxT(t), ma.StringCast("/ip4/203.0.113.5/tcp/1"))
	ask := func(p peer.ID, q string) int {
		return len(s.answer(ctx, p, GifRequest{Kind: "search", Query: q, Limit: 5}).Results)
	}
	if ask("a", "q1") != 2 || ask("a", "q2") != 2 {
		t.Fatal("burst of 2")
	}
	if ask("a", "q3") != 0 {
		t.Fatal("third miss of one peer served")
	}
	if ask("a", "q1") != 2 {
		t.Fatal("cache hit refused to a limited peer")
	}
	// Same address, fresh identities: 20 per address in all.
	served := 0
	for i := range 30 {
		served += min(ask(peer.ID(fmt.Sprint("id", i)), fmt.Sprint("w", i)), 1)
	}
	if served != 18 {
		t.Fatalf("fresh identities on one address got %d misses served, want 18", served)
	}
	other := reqresp.WithRemoteAddr(ctxT(t), ma.StringCast("/ip4/203.0.113.6/tcp/1"))
	if len(s.answer(other, "b", GifRequest{Kind: "search", Query: "z", Limit: 5}).Results) != 2 {
		t.Fatal("other address refused")
	}
	if n := k.calls.Load(); n != 2+18+1 {
		t.Fatalf("upstream calls = %d", n)
	}
	clk.Add(30 * time.Second) // one token per 30 s at 2/min
	if ask("a", "q3") != 2 {
		t.Fatal("after refill")
	}

	// Overall: 600/min with a burst of 60, whatever the addresses.
	k2 := newFakeKlipy(t, nil)
	s2 := limitedService(t, k2.srv.URL, 600, 1000, newClock())
	for i := range 100 {
		c := reqresp.WithRemoteAddr(ctxT(t), ma.StringCast(fmt.Sprintf("/ip4/198.51.100.%d/tcp/1", i)))
		s2.answer(c, peer.ID(fmt.Sprint("p", i)), GifRequest{Kind: "search", Query: fmt.Sprint("o", i), Limit: 5})
	}
	if n := k2.calls.Load(); n != 60 {
		t.Fatalf("overall: %d upstream calls, want the burst of 60", n)
	}
	if got := metricValue(s2.m.limited); got != 40 {
		t.Fatalf("rate_limited = %v, want 40", got)
	}
}
