package rendezvous

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/duskchat/dusk-relay/internal/testutil"
)

// newTestRedis connects to the test Redis (skipped on a laptop without
// one, failed in CI) under a key prefix of this test's own.
func newTestRedis(t testing.TB) (redis.UniversalClient, string) {
	t.Helper()
	url, prefix := testutil.RedisURL(t)
	opt, err := redis.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	rdb := redis.NewClient(opt)
	t.Cleanup(func() { _ = rdb.Close() })
	return rdb, prefix
}

// backendCase builds a Server on one implementation of the store.
type backendCase struct {
	name string
	mk   func(t testing.TB, opts ...Option) *Server
}

func backendCases() []backendCase {
	return []backendCase{
		{"memory", func(t testing.TB, opts ...Option) *Server {
			s := New(testCfg, zap.NewNop(), nil, opts...)
			t.Cleanup(func() { _ = s.Close() })
			return s
		}},
		{"redis", func(t testing.TB, opts ...Option) *Server {
			rdb, prefix := newTestRedis(t)
			s := New(testCfg, zap.NewNop(), nil, append(opts, WithRedis(rdb, prefix))...)
			t.Cleanup(func() { _ = s.Close() })
			return s
		}},
	}
}

// pid is a valid peer ID per n (Redis stores peers by their string form).
func pid(n int) peer.ID {
	_, id := testutil.FixedKey(byte(n))
	return id
}

var bg = context.Background()

func mustAdd(t testing.TB, s *Server, p peer.ID, src netip.Prefix, ns string, rec []byte, exp time.Time) []evictedReg {
	t.Helper()
	_, ev, err := s.be.add(bg, p, src, ns, rec, exp, s.now())
	if err != nil {
		t.Fatalf("add %s %s: %v", p, ns, err)
	}
	return ev
}

// pageAll pages through ns with the given page size and returns records
// in order, checking ids increase.
func pageAll(t testing.TB, s *Server, ns string, limit int) [][]byte {
	t.Helper()
	var out [][]byte
	after := uint64(0)
	for range 10_000 {
		hits, err := s.be.discover(bg, ns, after, limit, 1<<20, s.now())
		if err != nil {
			t.Fatal(err)
		}
		if len(hits) == 0 {
			return out
		}
		for _, h := range hits {
			if h.id <= after || h.ns != ns {
				t.Fatalf("hit %d after %d (ns %q)", h.id, after, h.ns)
			}
			after = h.id
			out = append(out, h.record)
		}
	}
	t.Fatal("paging did not end")
	return nil
}

func TestBackendsRegisterDiscoverReplaceUnregister(t *testing.T) {
	for _, bc := range backendCases() {
		t.Run(bc.name, func(t *testing.T) {
			clock := newFakeClock()
			s := bc.mk(t, WithClock(clock.Now))
			exp := clock.Now().Add(3 * time.Hour)
			for i := 1; i <= 7; i++ {
				mustAdd(t, s, pid(i), testSrc, "dusk/peers", []byte{byte(i)}, exp)
			}
			mustAdd(t, s, pid(1), testSrc, "other", []byte("o"), exp)
			got := pageAll(t, s, "dusk/peers", 3)
			if want := [][]byte{{1}, {2}, {3}, {4}, {5}, {6}, {7}}; !slices.EqualFunc(got, want, bytes.Equal) {
				t.Fatalf("paged %v, want %v", got, want)
			}
			// Re-register replaces and moves to the end with a fresh id.
			replaced, _, err := s.be.add(bg, pid(2), testSrc, "dusk/peers", []byte{22}, exp, clock.Now())
			if err != nil || !replaced {
				t.Fatalf("re-register: replaced %v, %v", replaced, err)
			}
			got = pageAll(t, s, "dusk/peers", 100)
			if want := [][]byte{{1}, {3}, {4}, {5}, {6}, {7}, {22}}; !slices.EqualFunc(got, want, bytes.Equal) {
				t.Fatalf("after replace %v, want %v", got, want)
			}
			if n, err := s.be.unregister(bg, pid(3), "dusk/peers"); n != 1 || err != nil {
				t.Fatalf("unregister: %d, %v", n, err)
			}
			if n, err := s.be.unregister(bg, pid(1), ""); n != 2 || err != nil {
				t.Fatalf("unregister all: %d, %v", n, err)
			}
			got = pageAll(t, s, "dusk/peers", 100)
			if want := [][]byte{{4}, {5}, {6}, {7}, {22}}; !slices.EqualFunc(got, want, bytes.Equal) {
				t.Fatalf("after unregister %v, want %v", got, want)
			}
			if got := pageAll(t, s, "other", 10); len(got) != 0 {
				t.Fatalf("other namespace still holds %d", len(got))
			}
			if n := s.Registrations(); n != 5 {
				t.Fatalf("Registrations %d, want 5", n)
			}
			// A cookie beyond anything issued serves from the start.
			hits, err := s.be.discover(bg, "dusk/peers", ^uint64(0)>>1, 100, 1<<20, clock.Now())
			if err != nil || len(hits) != 5 {
				t.Fatalf("cookie from the future: %d hits, %v", len(hits), err)
			}
			// Expiry: remaining TTL is reported, then registrations vanish.
			clock.Advance(time.Hour)
			hits, _ = s.be.discover(bg, "dusk/peers", 0, 1, 1<<20, clock.Now())
			if len(hits) != 1 || hits[0].expires.Sub(clock.Now()) != 2*time.Hour {
				t.Fatalf("after 1h: %+v", hits)
			}
			mustAdd(t, s, pid(9), testSrc, "dusk/peers", []byte{9}, clock.Now().Add(5*time.Hour))
			clock.Advance(2 * time.Hour)
			if got := pageAll(t, s, "dusk/peers", 2); len(got) != 1 || got[0][0] != 9 {
				t.Fatalf("after expiry: %v", got)
			}
			if n := s.Registrations(); n != 1 {
				t.Fatalf("Registrations after expiry %d, want 1", n)
			}
			if b := s.StoredBytes(); b != entrySize("dusk/peers", []byte{9}) {
				t.Fatalf("StoredBytes %d", b)
			}
		})
	}
}

func TestBackendsDiscoverByteBudget(t *testing.T) {
	for _, bc := range backendCases() {
		t.Run(bc.name, func(t *testing.T) {
			s := bc.mk(t)
			rec := make([]byte, 1000)
			exp := time.Now().Add(time.Hour)
			for i := 1; i <= 10; i++ {
				mustAdd(t, s, pid(i), testSrc, "ns", rec, exp)
			}
			hits, err := s.be.discover(bg, "ns", 0, 100, 3*(1000+2+32), time.Now())
			if err != nil || len(hits) != 3 {
				t.Fatalf("byte-capped page: %d hits, %v", len(hits), err)
			}
			hits, _ = s.be.discover(bg, "ns", 0, 100, 10, time.Now())
			if len(hits) != 1 {
				t.Fatalf("a page always holds one: %d", len(hits))
			}
		})
	}
}

func TestBackendsPeerCaps(t *testing.T) {
	for _, bc := range backendCases() {
		t.Run(bc.name, func(t *testing.T) {
			rec := make([]byte, 100)
			per := entrySize("ns-0", rec)
			s := bc.mk(t, WithMaxPerPeer(3), WithMaxPeerBytes(5*per))
			exp := time.Now().Add(time.Hour)
			for i := range 3 {
				mustAdd(t, s, pid(1), testSrc, fmt.Sprintf("ns-%d", i), rec, exp)
			}
			if _, _, err := s.be.add(bg, pid(1), srcB, "ns-3", rec, exp, time.Now()); !errors.Is(err, errPeerLimit) {
				t.Fatalf("4th namespace: %v, want errPeerLimit", err)
			}
			// A refresh at the cap passes.
			mustAdd(t, s, pid(1), testSrc, "ns-1", rec, exp)
			s2 := bc.mk(t, WithMaxPeerBytes(2*per))
			mustAdd(t, s2, pid(1), srcA, "ns-0", rec, exp)
			mustAdd(t, s2, pid(1), srcB, "ns-1", rec, exp)
			if _, _, err := s2.be.add(bg, pid(1), srcC, "ns-2", rec, exp, time.Now()); !errors.Is(err, errPeerBytes) {
				t.Fatalf("over the peer's bytes from a third address: %v, want errPeerBytes", err)
			}
		})
	}
}

// Ported from TestSourceBudgetEvictsLargestPeer, on both stores.
func TestBackendsSourceBudgetEvictsLargestPeer(t *testing.T) {
	for _, bc := range backendCases() {
		t.Run(bc.name, func(t *testing.T) {
			rec := make([]byte, 744)
			per := entrySize("ns-000", rec)
			s := bc.mk(t, WithMaxPerPeer(100), WithMaxRegistrations(1000), WithMaxSourceBytes(10*per))
			exp := time.Now().Add(time.Hour)
			big, other, newcomer := pid(1), pid(2), pid(3)
			for i := range 10 {
				if ev := mustAdd(t, s, big, srcA, fmt.Sprintf("ns-%03d", i), rec, exp); len(ev) != 0 {
					t.Fatalf("fill %d evicted %d", i, len(ev))
				}
			}
			mustAdd(t, s, other, srcB, "ns-000", rec, exp)
			if _, _, err := s.be.add(bg, big, srcA, "ns-010", rec, exp, time.Now()); !errors.Is(err, errSourceFull) {
				t.Fatalf("largest holder over its prefix budget: %v", err)
			}
			if ev := mustAdd(t, s, big, srcA, "ns-003", rec, exp); len(ev) != 0 {
				t.Fatalf("refresh evicted %d", len(ev))
			}
			ev := mustAdd(t, s, newcomer, srcA, "ns-000", rec, exp)
			if len(ev) != 1 || ev[0].peer != big || ev[0].ns != "ns-000" || ev[0].src != srcA {
				t.Fatalf("newcomer in a full prefix evicted %+v; want big's oldest (ns-000)", ev)
			}
			// The evicted registration is gone from its namespace too.
			got := pageAll(t, s, "ns-000", 100)
			if len(got) != 2 {
				t.Fatalf("ns-000 holds %d registrations, want other's and newcomer's", len(got))
			}
			if n := s.Registrations(); n != 11 {
				t.Fatalf("Registrations %d, want 11", n)
			}
			if b := s.StoredBytes(); b != 11*per {
				t.Fatalf("StoredBytes %d, want %d", b, 11*per)
			}
		})
	}
}

// Ported from TestGlobalBudgetEvictsLargestHolder, on both stores: one
// address holding most of the budget never locks newcomers out.
func TestBackendsGlobalBudgetEvictsLargestHolder(t *testing.T) {
	for _, bc := range backendCases() {
		t.Run(bc.name, func(t *testing.T) {
			rec := make([]byte, 700)
			per := entrySize("ns-000", rec)
			s := bc.mk(t, WithMaxPerPeer(100), WithMaxRegistrations(1000), WithMaxBytes(12*per), WithMaxSourceBytes(10*per))
			exp := time.Now().Add(time.Hour)
			add := func(p peer.ID, src netip.Prefix, ns string) ([]evictedReg, error) {
				_, ev, err := s.be.add(bg, p, src, ns, rec, exp, time.Now())
				return ev, err
			}
			a1, a2, b1, c1, c2 := pid(1), pid(2), pid(3), pid(4), pid(5)
			for i := range 4 {
				for _, p := range []peer.ID{a1, a2} {
					if _, err := add(p, srcA, fmt.Sprintf("ns-%03d", i)); err != nil {
						t.Fatal(err)
					}
				}
			}
			for i := range 4 {
				if _, err := add(c1, srcC, fmt.Sprintf("ns-%03d", i)); err != nil {
					t.Fatal(err)
				}
			}
			if ev, err := add(b1, srcB, "ns-000"); err != nil || len(ev) != 1 || ev[0].src != srcA {
				t.Fatalf("newcomer from a fresh prefix: %v, evicted %+v", err, ev)
			}
			if ev, err := add(c1, srcC, "ns-004"); err != nil || len(ev) != 1 || ev[0].src != srcA {
				t.Fatalf("c1 registration 4: %v, evicted %+v", err, ev)
			}
			if ev, err := add(c1, srcC, "ns-005"); !errors.Is(err, errNoMemory) || len(ev) != 0 {
				t.Fatalf("largest holder: %v, evicted %+v; want errNoMemory", err, ev)
			}
			if ev, err := add(c2, srcC, "ns-000"); err != nil || len(ev) != 1 || ev[0].peer != c1 {
				t.Fatalf("c2: %v, evicted %+v", err, ev)
			}
			if b := s.StoredBytes(); b > 12*per {
				t.Fatalf("%d bytes > budget %d", b, 12*per)
			}
			s2 := bc.mk(t, WithMaxPerPeer(100), WithMaxRegistrations(3))
			for i := range 3 {
				mustAdd(t, s2, a1, srcA, fmt.Sprintf("ns-%d", i), rec, exp)
			}
			if _, _, err := s2.be.add(bg, a1, srcA, "ns-3", rec, exp, time.Now()); !errors.Is(err, errFull) {
				t.Fatalf("largest holder at the count cap: %v", err)
			}
			if _, ev, err := s2.be.add(bg, b1, srcB, "ns-0", rec, exp, time.Now()); err != nil || len(ev) != 1 {
				t.Fatalf("newcomer at the count cap: %v, %+v", err, ev)
			}
		})
	}
}

// The same random operations on the in-memory and the Redis store give
// the same answers: registrations, order, TTLs, refusals, counts.
func TestBackendParity(t *testing.T) {
	cases := backendCases()
	clock := newFakeClock()
	rec := func(i int) []byte { return bytes.Repeat([]byte{byte(i)}, 50+i*37%400) }
	opts := []Option{WithClock(clock.Now), WithMaxPerPeer(3), WithMaxPeerBytes(1500), WithMaxSourceBytes(5000), WithMaxBytes(1 << 30)}
	mem, rds := cases[0].mk(t, opts...), cases[1].mk(t, opts...)
	rng := rand.New(rand.NewPCG(7, 11))
	peers := make([]peer.ID, 12)
	for i := range peers {
		peers[i] = pid(i + 1)
	}
	srcs := []netip.Prefix{srcA, srcB, srcC}
	nss := []string{"dusk/peers", "dusk/community/com_0123456789abcdef", "x", "{tag}", "ü"}
	type page struct {
		ids  int
		recs [][]byte
		ttls []time.Duration
	}
	discoverAll := func(s *Server, ns string, limit int) page {
		var p page
		after := uint64(0)
		for range 1000 {
			hits, err := s.be.discover(bg, ns, after, limit, 1<<20, clock.Now())
			if err != nil {
				t.Fatal(err)
			}
			if len(hits) == 0 {
				return p
			}
			p.ids += len(hits)
			for _, h := range hits {
				after = h.id
				p.recs = append(p.recs, h.record)
				p.ttls = append(p.ttls, h.expires.Sub(clock.Now()))
			}
		}
		return p
	}
	refused, served := 0, 0
	for step := range 1500 {
		p := peers[rng.IntN(len(peers))]
		ns := nss[rng.IntN(len(nss))]
		src := srcs[rng.IntN(len(srcs))]
		switch op := rng.IntN(10); {
		case op < 5:
			r := rec(rng.IntN(40))
			exp := clock.Now().Add(time.Duration(1+rng.IntN(300)) * time.Second)
			r1, _, e1 := mem.be.add(bg, p, src, ns, r, exp, clock.Now())
			r2, _, e2 := rds.be.add(bg, p, src, ns, r, exp, clock.Now())
			if r1 != r2 || !errors.Is(e2, e1) && (e1 != nil || e2 != nil) {
				t.Fatalf("step %d add: memory (%v, %v), redis (%v, %v)", step, r1, e1, r2, e2)
			}
			if e1 != nil {
				refused++
			}
		case op < 7:
			one := ns
			if op == 6 {
				one = ""
			}
			// The counts may differ by registrations expired but not yet
			// dropped (each store drops them at other times); what stays
			// visible is compared by the discovers.
			_, _ = mem.be.unregister(bg, p, one)
			if _, err := rds.be.unregister(bg, p, one); err != nil {
				t.Fatalf("step %d unregister %q: %v", step, one, err)
			}
		case op == 7:
			clock.Advance(time.Duration(rng.IntN(60)) * time.Second)
		default:
			limit := 1 + rng.IntN(5)
			a, b := discoverAll(mem, ns, limit), discoverAll(rds, ns, limit)
			if a.ids != b.ids || !slices.EqualFunc(a.recs, b.recs, bytes.Equal) || !slices.Equal(a.ttls, b.ttls) {
				t.Fatalf("step %d discover %q: memory %d %v, redis %d %v", step, ns, a.ids, a.ttls, b.ids, b.ttls)
			}
			served += a.ids
			if mem.Registrations() != rds.Registrations() || mem.StoredBytes() != rds.StoredBytes() {
				t.Fatalf("step %d: memory %d/%d, redis %d/%d", step, mem.Registrations(), mem.StoredBytes(), rds.Registrations(), rds.StoredBytes())
			}
		}
	}
	// The run must have exercised both paths, not just agreed on nothing.
	if refused < 20 || served < 500 {
		t.Fatalf("weak run: %d refusals, %d registrations discovered", refused, served)
	}
	t.Logf("%d refusals, %d registrations discovered, identical", refused, served)
}

// Two Servers on one Redis share registrations, and a cookie from one
// continues at the other.
func TestRedisSharedAcrossServers(t *testing.T) {
	rdb, prefix := newTestRedis(t)
	a := New(testCfg, zap.NewNop(), nil, WithRedis(rdb, prefix))
	b := New(testCfg, zap.NewNop(), nil, WithRedis(rdb, prefix))
	defer a.Close()
	defer b.Close()
	exp := time.Now().Add(3 * time.Hour)
	for i := 1; i <= 6; i++ {
		srv := a
		if i%2 == 0 {
			srv = b
		}
		mustAdd(t, srv, pid(i), testSrc, "ns", []byte{byte(i)}, exp)
	}
	hits, err := a.be.discover(bg, "ns", 0, 4, 1<<20, time.Now())
	if err != nil || len(hits) != 4 {
		t.Fatalf("page 1 at A: %d, %v", len(hits), err)
	}
	rest, err := b.be.discover(bg, "ns", hits[3].id, 100, 1<<20, time.Now())
	if err != nil || len(rest) != 2 || rest[0].record[0] != 5 || rest[1].record[0] != 6 {
		t.Fatalf("page 2 at B: %+v, %v", rest, err)
	}
	if a.Registrations() != 6 || b.Registrations() != 6 {
		t.Fatalf("counts: %d, %d", a.Registrations(), b.Registrations())
	}
	// The budgets count across relays: a peer at its cap through A and B
	// is refused at either.
	ca := New(testCfg, zap.NewNop(), nil, WithRedis(rdb, prefix+"caps:"), WithMaxPerPeer(3))
	cb := New(testCfg, zap.NewNop(), nil, WithRedis(rdb, prefix+"caps:"), WithMaxPerPeer(3))
	defer ca.Close()
	defer cb.Close()
	mustAdd(t, ca, pid(1), testSrc, "n1", []byte("r"), exp)
	mustAdd(t, cb, pid(1), testSrc, "n2", []byte("r"), exp)
	mustAdd(t, ca, pid(1), testSrc, "n3", []byte("r"), exp)
	for _, srv := range []*Server{ca, cb} {
		if _, _, err := srv.be.add(bg, pid(1), testSrc, "n4", []byte("r"), exp, time.Now()); !errors.Is(err, errPeerLimit) {
			t.Fatalf("4th registration across two relays: %v, want errPeerLimit", err)
		}
	}
}

// With Redis unreachable every operation fails with ErrUnavailable, fast.
func TestRedisUnreachableIsTyped(t *testing.T) {
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", MaxRetries: -1, DialerRetries: 1, DialTimeout: time.Second})
	defer rdb.Close()
	s := New(testCfg, zap.NewNop(), nil, WithRedis(rdb, "x:"))
	defer s.Close()
	start := time.Now()
	if _, _, err := s.be.add(bg, pid(1), testSrc, "ns", []byte("r"), time.Now().Add(time.Hour), time.Now()); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("add: %v", err)
	}
	if _, err := s.be.discover(bg, "ns", 0, 10, 1<<20, time.Now()); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("discover: %v", err)
	}
	if _, err := s.be.unregister(bg, pid(1), "ns"); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("unregister: %v", err)
	}
	if err := s.Ping(bg); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("ping: %v", err)
	}
	if s.Registrations() != -1 {
		t.Fatal("Registrations should say -1 when Redis is down")
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("took %v", d)
	}
}

// The sweep drops expired registrations from their namespaces too, not
// only from the budgets: a namespace nobody touches again must not keep
// them until its keys expire.
func TestRedisSweepCleansNamespaces(t *testing.T) {
	rdb, prefix := newTestRedis(t)
	clock := newFakeClock()
	s := New(testCfg, zap.NewNop(), nil, WithRedis(rdb, prefix), WithClock(clock.Now))
	defer s.Close()
	rb := s.be.(*redisBackend)
	for i := 1; i <= 5; i++ {
		mustAdd(t, s, pid(i), testSrc, "quiet", []byte{byte(i)}, clock.Now().Add(2*time.Hour))
	}
	mustAdd(t, s, pid(6), testSrc, "quiet", []byte{6}, clock.Now().Add(5*time.Hour))
	mustAdd(t, s, pid(7), testSrc, "busy", []byte{7}, clock.Now().Add(2*time.Hour))
	quiet, busy := rb.nsKeys(nsTag("quiet"))[0], rb.nsKeys(nsTag("busy"))[0]
	clock.Advance(3 * time.Hour)
	// Another namespace's register drops the expired from the budgets
	// (they wait in gc for their namespaces)...
	mustAdd(t, s, pid(8), testSrc, "elsewhere", []byte{8}, clock.Now().Add(2*time.Hour))
	// ...and pid(7) registers again in "busy" before the sweep: kept.
	mustAdd(t, s, pid(7), testSrc, "busy", []byte{77}, clock.Now().Add(2*time.Hour))
	if n := rdb.ZCard(bg, quiet).Val(); n != 6 {
		t.Fatalf("quiet namespace holds %d before the sweep", n)
	}
	s.sweep()
	if n := rdb.ZCard(bg, quiet).Val(); n != 1 {
		t.Fatalf("quiet namespace holds %d after the sweep, want its 1 live registration", n)
	}
	if got := pageAll(t, s, "busy", 10); len(got) != 1 || got[0][0] != 77 || rdb.ZCard(bg, busy).Val() != 1 {
		t.Fatalf("busy namespace after the sweep: %v", got)
	}
	if n := rdb.ZCard(bg, rb.budgetBase()+"gc").Val(); n != 0 {
		t.Fatalf("%d left to collect", n)
	}
	if n := s.Registrations(); n != 3 {
		t.Fatalf("Registrations %d, want 3", n)
	}
}

// A namespace whose registrations are all gone leaves no key behind, not
// even its counter: an attacker cycling register/unregister through fresh
// namespaces costs Redis nothing once done. Ids keep growing across it.
func TestRedisEmptyNamespaceLeavesNoKeys(t *testing.T) {
	rdb, prefix := newTestRedis(t)
	s := New(testCfg, zap.NewNop(), nil, WithRedis(rdb, prefix))
	defer s.Close()
	exp := time.Now().Add(3 * time.Hour)
	var last uint64
	for round := range 3 {
		for i := range 50 {
			mustAdd(t, s, pid(1), testSrc, fmt.Sprintf("cycle/%d", i), []byte("r"), exp)
		}
		hits, err := s.be.discover(bg, "cycle/7", 0, 10, 1<<20, time.Now())
		if err != nil || len(hits) != 1 || hits[0].id <= last {
			t.Fatalf("round %d: %+v %v (last id %d)", round, hits, err, last)
		}
		last = hits[0].id
		if n, err := s.be.unregister(bg, pid(1), ""); n != 50 || err != nil {
			t.Fatalf("unregister all: %d %v", n, err)
		}
		keys, err := rdb.Keys(bg, prefix+"rv{*").Result()
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range keys {
			if !strings.HasPrefix(k, prefix+"rv{b}:") {
				t.Fatalf("round %d: key %s left behind", round, k)
			}
		}
		if n := s.StoredBytes(); n != 0 {
			t.Fatalf("round %d: %d bytes still counted", round, n)
		}
	}
}
