package directory

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode"

	"github.com/jackc/pgx/v5"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/duskchat/dusk-relay/internal/config"
	"github.com/duskchat/dusk-relay/internal/testutil"
)

// openPG opens a PGStore on a fresh database of the test PostgreSQL.
func openPG(t testing.TB) *PGStore {
	t.Helper()
	return openPGAt(t, testutil.PostgresURL(t))
}

func openPGAt(t testing.TB, u string) *PGStore {
	t.Helper()
	s, err := OpenPG(bg, u, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// backends is the table every backend test runs over.
var backends = []struct {
	name string
	open func(t testing.TB) Storage
}{
	{"sqlite", func(t testing.TB) Storage { return openStore(t) }},
	{"postgres", func(t testing.TB) Storage { return openPG(t) }},
	// Every 3+ character search through the trigram branch.
	{"postgres-index", func(t testing.TB) Storage { s := openPG(t); s.recentRows = 0; return s }},
}

func forEachBackend(t *testing.T, fn func(t *testing.T, s Storage)) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) { fn(t, b.open(t)) })
	}
}

func reg(t testing.TB, s Backend, id, name, relay string, at int64) {
	t.Helper()
	if err := s.Register(bg, id, name, relay, time.Unix(at, 0)); err != nil {
		t.Fatalf("register %s %q: %v", id, name, err)
	}
}

func search(t testing.TB, s Backend, q string) []Profile {
	t.Helper()
	got, err := s.Search(bg, q)
	if err != nil {
		t.Fatalf("Search(%q): %v", q, err)
	}
	if got == nil {
		t.Fatalf("Search(%q): nil slice", q)
	}
	return got
}

func TestBackendRegisterUpsertRemove(t *testing.T) {
	forEachBackend(t, func(t *testing.T, s Storage) {
		reg(t, s, "peerA", " Alice ", "", 1000)
		reg(t, s, "peerA", "Alice2", vecRelay, 2000)
		p, regAt, ok, err := s.Get(bg, "peerA")
		if err != nil || !ok {
			t.Fatal(ok, err)
		}
		if want := (Profile{PeerID: "peerA", DisplayName: "Alice2", LastSeen: 2000, RelayAddr: vecRelay}); p != want || regAt != 1000 {
			t.Fatalf("got %#v registered_at %d", p, regAt)
		}
		reg(t, s, "peerA", "Alice2", "", 2001)
		if p, _, _, _ := s.Get(bg, "peerA"); p.RelayAddr != "" {
			t.Fatalf("relay_addr kept: %q", p.RelayAddr)
		}
		for _, tc := range []struct {
			name, relay string
			want        error
		}{
			{"", "", ErrDisplayNameEmpty},
			{strings.Repeat("x", 65), "", ErrDisplayNameTooLong},
			{"a\tb", "", ErrDisplayNameInvalid},
			{"a\x00b", "", ErrDisplayNameInvalid},
			{"\xff\xfe", "", ErrDisplayNameInvalid},
			{"ok", "/nope", ErrRelayAddrInvalid},
		} {
			if err := s.Register(bg, "peerB", tc.name, tc.relay, time.Unix(3000, 0)); !errors.Is(err, tc.want) {
				t.Errorf("Register(%q, %q) = %v, want %v", tc.name, tc.relay, err, tc.want)
			}
		}
		if err := s.Register(bg, "", "x", "", time.Now()); !errors.Is(err, ErrBadPeerID) {
			t.Errorf("empty peer id: %v", err)
		}
		if _, _, ok, err := s.Get(bg, "nobody"); ok || err != nil {
			t.Fatalf("Get(nobody) = %v %v", ok, err)
		}
		if n, err := s.Count(bg); n != 1 || err != nil {
			t.Fatalf("count %d %v", n, err)
		}
		if existed, err := s.Remove(bg, "peerA"); err != nil || !existed {
			t.Fatal(existed, err)
		}
		if existed, err := s.Remove(bg, "peerA"); err != nil || existed {
			t.Fatal(existed, err)
		}
		if res := search(t, s, "alice"); len(res) != 0 {
			t.Fatalf("removed profile found: %v", res)
		}
		if err := s.Ping(bg); err != nil {
			t.Fatal(err)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Search(bg, "alice"); !errors.Is(err, ErrClosed) {
			t.Fatalf("Search after Close: %v", err)
		}
		if err := s.Register(bg, "p", "x", "", time.Now()); !errors.Is(err, ErrClosed) {
			t.Fatalf("Register after Close: %v", err)
		}
		if err := s.Close(); err != nil {
			t.Fatal("second Close:", err)
		}
	})
}

// The SQLite store's semantics table (TestSearchSemantics), on every backend.
func TestBackendSearchSemantics(t *testing.T) {
	forEachBackend(t, func(t *testing.T, s Storage) {
		base := int64(1_700_000_000)
		for i, n := range []string{"Alice", "ALICIA", "malice", "Bob", "Émile", "émile", "100% real", "1000 real",
			"a_b", "axb", `back\slash`, "50%", "Zoë 🦀 日本語", "ZOË"} {
			reg(t, s, fmt.Sprintf("peer%02d", i), n, "", base+int64(i))
		}
		for _, tc := range []struct {
			q    string
			want []string
		}{
			{"alic", []string{"malice", "ALICIA", "Alice"}},
			{"  ALIC  ", []string{"malice", "ALICIA", "Alice"}},
			{"li", []string{"malice", "ALICIA", "Alice"}},
			{"il", []string{"émile", "Émile"}},
			{"A", []string{`back\slash`, "axb", "a_b", "1000 real", "100% real", "malice", "ALICIA", "Alice"}},
			{"émile", []string{"émile"}},
			{"ÉMILE", []string{"Émile"}},
			{"mile", []string{"émile", "Émile"}},
			{"zoë", []string{"Zoë 🦀 日本語"}},
			{"ZOË", []string{"ZOË"}},
			{"🦀 日", []string{"Zoë 🦀 日本語"}},
			{"日本", []string{"Zoë 🦀 日本語"}},
			{"100%", []string{"100% real"}},
			{"%", []string{"50%", "100% real"}},
			{"0%", []string{"50%", "100% real"}},
			{"a_b", []string{"a_b"}},
			{"_", []string{"a_b"}},
			{`\`, []string{`back\slash`}},
			{`k\s`, []string{`back\slash`}},
			{`"`, nil},
			{`li"ce`, nil},
			{"peer03", []string{"Bob"}},
			{"peer0", nil},
			{"", nil},
			{" \t ", nil},
			{"nobody", nil},
			{"Ali\x00ce", nil},
			{"\xff", nil},
			{"\xe6\x97", nil}, // half of 日
		} {
			got := names(search(t, s, tc.q))
			if len(got) == 0 && len(tc.want) == 0 {
				continue
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("Search(%q) = %q, want %q", tc.q, got, tc.want)
			}
		}
		long := strings.Repeat("a", 65)
		reg(t, s, long, "zzz", "", base+100)
		if got := names(search(t, s, long)); !reflect.DeepEqual(got, []string{"zzz"}) {
			t.Fatalf("long query: %q", got)
		}
	})
}

func TestBackendOrderingLimitEvictExpire(t *testing.T) {
	forEachBackend(t, func(t *testing.T, s Storage) {
		base := int64(1_700_000_000)
		for _, i := range rand.New(rand.NewPCG(1, 2)).Perm(25) {
			reg(t, s, fmt.Sprintf("p%02d", i), fmt.Sprintf("match %02d", i), "", base+int64(i)*10)
		}
		for _, q := range []string{"match", "MATCH", "tch", "h"} {
			got := search(t, s, q)
			if len(got) != SearchLimit {
				t.Fatalf("%q: %d results", q, len(got))
			}
			for i, p := range got {
				if want := fmt.Sprintf("match %02d", 24-i); p.DisplayName != want || p.LastSeen != uint64(base+int64(24-i)*10) {
					t.Fatalf("%q result %d = %#v, want %s", q, i, p, want)
				}
			}
		}
		// Same second: the most recent write first.
		reg(t, s, "t1", "tie one", "", base+5000)
		reg(t, s, "t2", "tie two", "", base+5000)
		reg(t, s, "t1", "tie one", "", base+5000)
		if got := names(search(t, s, "tie")); !reflect.DeepEqual(got, []string{"tie one", "tie two"}) {
			t.Fatalf("ties: %q", got)
		}
		// Expiry: everything seen before base+100 goes, in batches.
		total := 0
		for {
			n, err := s.ExpireBefore(bg, time.Unix(base+100, 0), 3)
			if err != nil {
				t.Fatal(err)
			}
			total += n
			if n < 3 {
				break
			}
		}
		if total != 10 { // p00..p09 (last_seen base..base+90)
			t.Fatalf("expired %d, want 10", total)
		}
		// Eviction: oldest first; within a second, the oldest write first.
		if n, err := s.EvictOldest(bg, 15); n != 15 || err != nil { // p10..p24
			t.Fatal(n, err)
		}
		if n, err := s.EvictOldest(bg, 1); n != 1 || err != nil {
			t.Fatal(n, err)
		}
		if got := names(search(t, s, "tie")); !reflect.DeepEqual(got, []string{"tie one"}) {
			t.Fatalf("after evicting the older write of the second: %q", got)
		}
		if n, err := s.Count(bg); n != 1 || err != nil {
			t.Fatal(n, err)
		}
	})
}

// TestBackendParityRandomized performs the same random operations on both
// backends and requires identical answers to every query.
func TestBackendParityRandomized(t *testing.T) {
	u := testutil.PostgresURL(t)
	lite, pg := openStore(t), openPGAt(t, u)
	stores := []Backend{lite, pg}
	// The same database through the other paths: the trigram branch
	// alone, and a short recent walk that often falls back to it.
	pgIdx, pgShort := openPGAt(t, u), openPGAt(t, u)
	pgIdx.recentRows, pgShort.recentRows = 0, 50
	// 1-2 character searches look at the newest rows only: a bound the
	// data exceeds, so both stores must cut at the same row.
	lite.shortScanRows = 400
	for _, p := range []*PGStore{pg, pgIdx, pgShort} {
		p.shortScanRows = 400
	}
	r := rand.New(rand.NewPCG(7, 77))
	n, rounds, queries := 1500, 3, 300
	if raceEnabled {
		n, rounds, queries = 300, 2, 100
	}
	base := int64(1_700_000_000)
	var known []string // display names ever registered, for queries
	do := func(f func(s Backend) error) {
		for _, s := range stores {
			if err := f(s); err != nil {
				t.Fatal(err)
			}
		}
	}
	for round := 0; round < rounds; round++ {
		for i := 0; i < n; i++ {
			id := genPeerID(r.IntN(n * 2))
			switch k := r.IntN(20); {
			case k == 0:
				do(func(s Backend) error { _, err := s.Remove(bg, id); return err })
			default:
				name := genName(r)
				if r.IntN(3) == 0 {
					name = randomCase(r, name)
				}
				if r.IntN(10) == 0 {
					name = "  " + name + "\u3000"
				}
				known = append(known, name)
				// Many writes share a second: the tie-break must agree too.
				at := time.Unix(base+int64(round*1000+r.IntN(200)), 0)
				relay := ""
				if r.IntN(2) == 0 {
					relay = vecRelay
				}
				do(func(s Backend) error { return s.Register(bg, id, name, relay, at) })
			}
		}
		hits, full := 0, 0
		for k := 0; k < queries; k++ {
			var q string
			switch r.IntN(7) {
			case 0:
				rs := []rune("aeiklmnorstAEIKLMOëËéÉ日本🦀%_ .-ΣσЦц\\")
				var b strings.Builder
				for j := 1 + r.IntN(5); j > 0; j-- {
					b.WriteRune(rs[r.IntN(len(rs))])
				}
				q = b.String()
			case 1:
				q = genPeerID(r.IntN(n * 2))
			default:
				rs := []rune(strings.TrimSpace(known[r.IntN(len(known))]))
				l := 1 + r.IntN(min(8, len(rs)))
				o := r.IntN(len(rs) - l + 1)
				q = string(rs[o : o+l])
				if r.IntN(2) == 0 {
					q = randomCase(r, q)
				}
			}
			a, err := lite.Search(bg, q)
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range []*PGStore{pg, pgIdx, pgShort} {
				b, err := p.Search(bg, q)
				if err != nil {
					t.Fatal(err)
				}
				if !reflect.DeepEqual(a, b) {
					t.Fatalf("round %d: Search(%q) (recent rows %d)\nsqlite   %q\npostgres %q", round, q, p.recentRows, names(a), names(b))
				}
			}
			if len(a) > 0 {
				hits++
			}
			if len(a) == SearchLimit {
				full++
			}
		}
		if hits < queries/2 || full < queries/20 {
			t.Fatalf("round %d: %d/%d queries had results, %d a full page: test data too sparse", round, hits, queries, full)
		}
		// Expire a slice of the oldest, evict a few: same rows must go.
		cut := time.Unix(base+int64(round*1000+20), 0)
		var counts [2]int
		for i, s := range stores {
			m, err := s.ExpireBefore(bg, cut, 50)
			if err != nil {
				t.Fatal(err)
			}
			e, err := s.EvictOldest(bg, 7)
			if err != nil {
				t.Fatal(err)
			}
			counts[i] = m*1000 + e
		}
		if counts[0] != counts[1] {
			t.Fatalf("expire/evict differ: %v", counts)
		}
		ca, _ := lite.Count(bg)
		cb, _ := pg.Count(bg)
		if ca != cb {
			t.Fatalf("count sqlite %d postgres %d", ca, cb)
		}
		for i := 0; i < 50; i++ { // spot-check whole rows
			id := genPeerID(r.IntN(n * 2))
			pa, ra, oka, err := lite.Get(bg, id)
			if err != nil {
				t.Fatal(err)
			}
			pb, rb, okb, err := pg.Get(bg, id)
			if err != nil {
				t.Fatal(err)
			}
			if pa != pb || ra != rb || oka != okb {
				t.Fatalf("Get(%s): sqlite %v %d %v, postgres %v %d %v", id, pa, ra, oka, pb, rb, okb)
			}
		}
	}
}

// viaProxy rewrites u to go through the proxy.
func viaProxy(t testing.TB, u string) (*testutil.CutProxy, string) {
	cfg, err := pgx.ParseConfig(u)
	if err != nil {
		t.Fatal(err)
	}
	p := testutil.NewCutProxy(t, net.JoinHostPort(cfg.Host, fmt.Sprint(cfg.Port)))
	return p, strings.Replace(u, fmt.Sprintf("%s:%d", cfg.Host, cfg.Port), p.Addr(), 1)
}

// TestPGEngineDownMidRun: the engine goes away under a running store and
// comes back. Meanwhile every call returns a typed error quickly (no
// panic, no hang), the service answers "internal error", and the store
// serves again by itself once the engine answers.
func TestPGEngineDownMidRun(t *testing.T) {
	u := testutil.PostgresURL(t)
	proxy, viaURL := viaProxy(t, u)
	s := openPGAt(t, viaURL)
	svc := NewService(s, config.Directory{}, zap.NewNop(), nil)
	reg(t, s, "peerA", "Alice", vecRelay, 1_700_000_000)
	if got := names(search(t, s, "ali")); len(got) != 1 {
		t.Fatalf("before: %q", got)
	}

	proxy.Down()
	for _, call := range []struct {
		name string
		f    func(ctx context.Context) error
	}{
		{"search", func(ctx context.Context) error { _, err := s.Search(ctx, "alice"); return err }},
		{"search short", func(ctx context.Context) error { _, err := s.Search(ctx, "al"); return err }},
		{"register", func(ctx context.Context) error {
			return s.Register(ctx, "peerB", "Bob", "", time.Unix(1_700_000_001, 0))
		}},
		{"remove", func(ctx context.Context) error { _, err := s.Remove(ctx, "peerA"); return err }},
		{"get", func(ctx context.Context) error { _, _, _, err := s.Get(ctx, "peerA"); return err }},
		{"count", func(ctx context.Context) error { _, err := s.Count(ctx); return err }},
		{"ping", s.Ping},
	} {
		ctx, cancel := context.WithTimeout(bg, 15*time.Second)
		t0 := time.Now()
		err := call.f(ctx)
		cancel()
		if !errors.Is(err, ErrUnavailable) {
			t.Fatalf("%s with the engine down: %v, want ErrUnavailable", call.name, err)
		}
		if d := time.Since(t0); d > 10*time.Second {
			t.Fatalf("%s took %v with the engine down", call.name, d)
		}
	}
	if r := svc.Answer(bg, "p", Request{Kind: RequestSearch, Query: "alice"}); r.Kind != ResponseError || r.Error != "internal error" {
		t.Fatalf("service with the engine down: %#v", r)
	}

	proxy.Up() // the engine is back at the same address
	deadline := time.Now().Add(20 * time.Second)
	for {
		res, err := s.Search(bg, "ali")
		if err == nil {
			if len(res) != 1 || res[0].RelayAddr != vecRelay {
				t.Fatalf("after recovery: %#v", res)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no recovery: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if r := svc.Answer(bg, "p", Request{Kind: RequestSearch, Query: "alice"}); r.Kind != ResponseResults || len(r.Results) != 1 {
		t.Fatalf("service after recovery: %#v", r)
	}
}

// TestPGBackendsTerminated: the server drops every connection of the
// store (restart, failover, pg_terminate_backend): the next calls succeed,
// the dead pooled connections are replaced without an error reaching the
// caller.
func TestPGBackendsTerminated(t *testing.T) {
	u := testutil.PostgresURL(t)
	s := openPGAt(t, u)
	reg(t, s, "peerA", "Alice", "", 1_700_000_000)
	admin, err := pgx.Connect(bg, u)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = admin.Close(bg) }()
	for round := 0; round < 3; round++ {
		// Hold several pooled connections open, then kill them all.
		var wg sync.WaitGroup
		for i := 0; i < 4; i++ {
			wg.Add(1)
			go func() { defer wg.Done(); _, _ = s.Search(bg, "alice") }()
		}
		wg.Wait()
		var killed int
		if err := admin.QueryRow(bg, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
            WHERE datname = current_database() AND pid <> pg_backend_pid()`).Scan(&killed); err != nil {
			t.Fatal(err)
		}
		if killed == 0 {
			t.Fatal("no connection to terminate")
		}
		for i := 0; i < 4; i++ {
			if got, err := s.Search(bg, "alice"); err != nil || len(got) != 1 {
				t.Fatalf("round %d after %d terminated: %v %v", round, killed, got, err)
			}
		}
		if err := s.Register(bg, "peerB", fmt.Sprint("Bob ", round), "", time.Unix(1_700_000_001, 0)); err != nil {
			t.Fatal(err)
		}
	}
}

// TestPGOpen: an unreachable engine at start is not fatal (typed errors,
// schema created once it answers); a bad URL is; no error text carries
// the password.
func TestPGOpen(t *testing.T) {
	// A port nothing listens on.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	_ = ln.Close()
	const pw = "s3cret-Pa55"
	s, err := OpenPG(bg, "postgres://dusk:"+pw+"@"+dead+"/dir?connect_timeout=2", zap.NewNop())
	if err != nil {
		t.Fatalf("unreachable at start: %v", err)
	}
	defer func() { _ = s.Close() }()
	_, err = s.Search(bg, "alice")
	if !errors.Is(err, ErrUnavailable) || strings.Contains(err.Error(), pw) {
		t.Fatalf("search on an unreachable engine: %v", err)
	}
	if err := s.Ping(bg); !errors.Is(err, ErrUnavailable) || strings.Contains(err.Error(), pw) {
		t.Fatalf("ping: %v", err)
	}
	for _, bad := range []string{"postgres://dusk:" + pw + "@127.0.0.1:notaport/x", "postgres://dusk:" + pw + "@127.0.0.1/x?pool_max_conns=zero"} {
		if _, err := OpenPG(bg, bad, zap.NewNop()); err == nil || errors.Is(err, ErrUnavailable) || strings.Contains(err.Error(), pw) {
			t.Fatalf("OpenPG(bad URL) = %v", err)
		}
	}
	// Wrong password against the real server: the server rejects it (trust
	// auth accepts any, so use a role that does not exist instead).
	u := testutil.PostgresURL(t)
	cfg, err := pgx.ParseConfig(u)
	if err != nil {
		t.Fatal(err)
	}
	noRole := fmt.Sprintf("postgres://no_such_role_dusk:%s@%s:%d/%s", pw, cfg.Host, cfg.Port, cfg.Database)
	s2, err := OpenPG(bg, noRole, zap.NewNop())
	if err == nil {
		_ = s2.Close()
		t.Fatal("a role that does not exist opened")
	}
	if strings.Contains(err.Error(), pw) {
		t.Fatalf("error shows the password: %v", err)
	}
	// Created on first contact: a second store on the same database sees
	// the schema and the data.
	a := openPGAt(t, u)
	reg(t, a, "peerA", "Alice", "", 1_700_000_000)
	b := openPGAt(t, u)
	if got := names(search(t, b, "lic")); !reflect.DeepEqual(got, []string{"Alice"}) {
		t.Fatalf("second store: %q", got)
	}
}

// TestPGConcurrentSchemaCreation: relays of a cluster starting together
// create the schema at the same time without failing.
func TestPGConcurrentSchemaCreation(t *testing.T) {
	u := testutil.PostgresURL(t)
	var wg sync.WaitGroup
	errs := make(chan error, 6)
	for i := 0; i < 6; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := OpenPG(bg, u, zap.NewNop())
			if err == nil {
				err = s.Register(bg, genPeerID(i), "name", "", time.Now())
				_ = s.Close()
			}
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
}

// TestPGMigratesOldTable: a table made without relay_addr (or by an older
// build) gains the columns and indexes, rows kept.
func TestPGMigratesOldTable(t *testing.T) {
	u := testutil.PostgresURL(t)
	c, err := pgx.Connect(bg, u)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Close(bg) }()
	if _, err := c.Exec(bg, `CREATE TABLE peer_profiles (peer_id TEXT PRIMARY KEY, display_name TEXT NOT NULL,
        last_seen BIGINT NOT NULL, registered_at BIGINT NOT NULL);
        INSERT INTO peer_profiles VALUES ('old1', 'Old One', 100, 50), ('old2', 'Old Two', 200, 60)`); err != nil {
		t.Fatal(err)
	}
	s := openPGAt(t, u)
	if got := names(search(t, s, "OLD")); !reflect.DeepEqual(got, []string{"Old Two", "Old One"}) {
		t.Fatalf("migrated rows: %q", got)
	}
	p, regAt, ok, err := s.Get(bg, "old1")
	if err != nil || !ok || regAt != 50 || p.LastSeen != 100 || p.RelayAddr != "" {
		t.Fatalf("old1: %v %d %v %v", p, regAt, ok, err)
	}
	var idx int
	if err := c.QueryRow(bg, `SELECT count(*) FROM pg_indexes WHERE tablename = 'peer_profiles'
        AND indexname IN ('peer_profiles_name_key_trgm', 'peer_profiles_last_seen')`).Scan(&idx); err != nil || idx != 2 {
		t.Fatalf("indexes: %d %v", idx, err)
	}
}

// The trigram key maps every printable ASCII character that is not a
// letter or digit to its own letter, anything else that is not a letter
// or digit to one more, and leaves letters and digits alone.
func TestPGKeyMapping(t *testing.T) {
	from, to := []rune(keyFrom), []rune(keyTo)
	if len(from) != len(to) {
		t.Fatalf("%d characters mapped to %d", len(from), len(to))
	}
	seen := map[rune]bool{}
	for _, c := range append(to, []rune(keyOther)...) {
		if seen[c] || !unicode.IsLetter(c) || unicode.ToLower(c) != c {
			t.Fatalf("target %q repeated, not a letter or not lower case", c)
		}
		seen[c] = true
	}
	var want []rune
	for c := rune(' '); c <= '~'; c++ {
		if !unicode.IsLetter(c) && !unicode.IsDigit(c) {
			want = append(want, c)
		}
	}
	if string(want) != keyFrom {
		t.Fatalf("keyFrom = %q, want %q", keyFrom, string(want))
	}
	s := openPG(t)
	var got string
	if err := s.pool.QueryRow(bg, `SELECT `+keyOf(foldSQL("$1::text")), `A-%_\ bZoë🦀日本9`).Scan(&got); err != nil {
		t.Fatal(err)
	}
	if w := "a" + string(to[13]) + string(to[5]) + string(to[27]) + string(to[24]) + string(to[0]) + "bzoë" + keyOther + "日本9"; got != w {
		t.Fatalf("key = %q, want %q", got, w)
	}
}

// TestPGSearchPlans: every execution is planned for its own pattern
// (force_custom_plan: a generic plan cannot see the pattern and walks the
// whole last_seen index for a rare one), and a rare pattern, punctuation
// included, is looked up in the trigram index.
func TestPGSearchPlans(t *testing.T) {
	s := openPG(t)
	var mode string
	if err := s.pool.QueryRow(bg, `SHOW plan_cache_mode`).Scan(&mode); err != nil || mode != "force_custom_plan" {
		t.Fatalf("plan_cache_mode = %q (%v)", mode, err)
	}
	if raceEnabled {
		t.Skip("loads 100k rows; the plan does not depend on the race detector")
	}
	// Below ~50k rows a sequential scan is cheaper and rightly chosen.
	n := 100_000
	rows := make([][]any, 0, n)
	r := rand.New(rand.NewPCG(5, 55))
	for i := 0; i < n; i++ {
		rows = append(rows, []any{int64(i), genPeerID(i), genName(r), int64(1_700_000_000 + i), int64(1_700_000_000), ""})
	}
	for len(rows) > 0 {
		k := min(len(rows), importChunk)
		if _, err := s.importRows(bg, rows[:k]); err != nil {
			t.Fatal(err)
		}
		rows = rows[k:]
	}
	if _, err := s.pool.Exec(bg, `ANALYZE peer_profiles`); err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{"zzq", "a-%x", "e_1", "日本語語", "o🦀🦀"} {
		// Run it often enough for a generic plan to be chosen if allowed.
		for i := 0; i < 8; i++ {
			if _, err := s.Search(bg, q); err != nil {
				t.Fatal(err)
			}
		}
		var plan []string
		rs, err := s.pool.Query(bg, `EXPLAIN `+pgIndexSQL, q, likeSubstring(foldASCII(q)), s.recentRows)
		if err != nil {
			t.Fatal(err)
		}
		for rs.Next() {
			var l string
			if err := rs.Scan(&l); err != nil {
				t.Fatal(err)
			}
			plan = append(plan, l)
		}
		rs.Close()
		if p := strings.Join(plan, "\n"); !strings.Contains(p, "peer_profiles_name_key_trgm") || strings.Contains(p, "Seq Scan") {
			t.Fatalf("%q: plan without the trigram index:\n%s", q, p)
		}
	}
}

// A database with LC_CTYPE=C gives the same answers (non-ASCII patterns
// just cannot use the index), and the relay says so once at start.
func TestPGCtypeC(t *testing.T) {
	u := testutil.PostgresURL(t)
	admin, err := pgx.Connect(bg, u)
	if err != nil {
		t.Fatal(err)
	}
	name := "dusk_test_c_" + fmt.Sprint(time.Now().UnixNano())
	if _, err := admin.Exec(bg, `CREATE DATABASE `+name+` TEMPLATE template0 ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C'`); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_, _ = admin.Exec(bg, `DROP DATABASE IF EXISTS `+name+` WITH (FORCE)`)
		_ = admin.Close(bg)
	})
	cfg, err := pgx.ParseConfig(u)
	if err != nil {
		t.Fatal(err)
	}
	cURL := strings.Replace(u, "/"+cfg.Database, "/"+name, 1)
	core, logs := observer.New(zap.WarnLevel)
	s, err := OpenPG(bg, cURL, zap.New(core))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = s.Close() }()
	if logs.FilterMessageSnippet("LC_CTYPE").Len() != 1 {
		t.Fatalf("no ctype warning: %v", logs.All())
	}
	lite := openStore(t)
	for i, n := range []string{"Zoë 🦀 日本語", "ZOË", "Émile", "émile", "日本", "a_b%"} {
		reg(t, s, fmt.Sprint("p", i), n, "", 1_700_000_000+int64(i))
		reg(t, lite, fmt.Sprint("p", i), n, "", 1_700_000_000+int64(i))
	}
	s.recentRows = 0 // the trigram branch
	for _, q := range []string{"zoë", "ZOË", "日本", "日本語", "émile", "mile", "🦀 日", "a_b", "_b%"} {
		if a, b := search(t, lite, q), search(t, s, q); !reflect.DeepEqual(a, b) {
			t.Fatalf("%q: sqlite %q, postgres (C ctype) %q", q, names(a), names(b))
		}
	}
}
