package directory

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"
	"unicode"

	"go.uber.org/zap"
)

var bg = context.Background()

func mustRegister(t testing.TB, s *Store, id, name, relay string, at int64) {
	t.Helper()
	if err := s.Register(bg, id, name, relay, time.Unix(at, 0)); err != nil {
		t.Fatalf("register %s %q: %v", id, name, err)
	}
}

func names(ps []Profile) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = p.DisplayName
	}
	return out
}

// searchBoth runs the public Search and, for 3+ character queries, checks
// that the index path and the scan path agree.
func searchBoth(t *testing.T, s *Store, q string) []Profile {
	t.Helper()
	got, err := s.Search(bg, q)
	if err != nil {
		t.Fatal(err)
	}
	scan, err := s.searchScan(bg, normalizeQuery(q))
	if err != nil {
		t.Fatal(err)
	}
	if strings.ContainsRune(q, 0) || len([]rune(normalizeQuery(q))) > MaxDisplayName {
		return got // those take neither path
	}
	if len(got) != 0 || len(scan) != 0 {
		if !reflect.DeepEqual(got, scan) {
			t.Fatalf("query %q: Search %v, scan %v", q, names(got), names(scan))
		}
	}
	return got
}

// TestRegisterUpsertKeepsRegisteredAt: the upsert, validation and remove
// answers are TestBackendRegisterUpsertRemove's (it runs on this store too);
// here the SQLite-only invariants after the same sequence: the index and a
// scan agree, and every row keeps its ordering key.
func TestRegisterUpsertKeepsRegisteredAt(t *testing.T) {
	s := openStore(t)
	mustRegister(t, s, "peerA", " Alice ", "", 1000)
	mustRegister(t, s, "peerA", "Alice2", vecRelay, 2000)
	mustRegister(t, s, "peerA", "Alice2", "", 2001)
	if res := searchBoth(t, s, "alice"); len(res) != 1 || res[0].LastSeen != 2001 {
		t.Fatalf("after upserts: %v", res)
	}
	if existed, err := s.Remove(bg, "peerA"); err != nil || !existed {
		t.Fatal(existed, err)
	}
	if res := searchBoth(t, s, "alice"); len(res) != 0 {
		t.Fatalf("removed profile found: %v", res)
	}
	assertOrderingKeys(t, s)
}

// assertOrderingKeys checks the invariant search relies on: every rowid
// lies in its last_seen's bucket, and the FTS index matches the table.
func assertOrderingKeys(t *testing.T, s *Store) {
	t.Helper()
	var bad int
	if err := s.r.QueryRow(`SELECT count(*) FROM peer_profiles WHERE (rowid >> 24) <> ` + clampSQL).Scan(&bad); err != nil || bad != 0 {
		t.Fatalf("%d rows break the ordering key (%v)", bad, err)
	}
	if _, err := s.w.Exec(`INSERT INTO peer_profiles_fts(peer_profiles_fts, rank) VALUES ('integrity-check', 1)`); err != nil {
		t.Fatalf("fts integrity-check: %v", err)
	}
}

func TestMaxLSMatchesSQL(t *testing.T) {
	if maxLS != 274877906943 || !strings.Contains(clampSQL, "274877906943") {
		t.Fatal("clampSQL and maxLS disagree")
	}
	if clampLS(-5) != 0 || clampLS(maxLS+1) != maxLS || clampLS(42) != 42 {
		t.Fatal("clampLS")
	}
}

func TestSearchSemantics(t *testing.T) {
	s := openStore(t)
	base := int64(1_700_000_000)
	for i, n := range []string{"Alice", "ALICIA", "malice", "Bob", "Émile", "émile", "100% real", "1000 real",
		"a_b", "axb", `back\slash`, "50%", "Zoë 🦀 日本語", "ZOË"} {
		mustRegister(t, s, fmt.Sprintf("peer%02d", i), n, "", base+int64(i))
	}
	for _, tc := range []struct {
		q    string
		want []string // newest first
	}{
		{"alic", []string{"malice", "ALICIA", "Alice"}},
		{"  ALIC  ", []string{"malice", "ALICIA", "Alice"}},
		{"li", []string{"malice", "ALICIA", "Alice"}}, // scan path
		{"il", []string{"émile", "Émile"}},
		{"A", []string{`back\slash`, "axb", "a_b", "1000 real", "100% real", "malice", "ALICIA", "Alice"}},
		// ASCII-only folding, as the Rust relay's lower()/LIKE: É and é differ, ë and Ë differ.
		{"émile", []string{"émile"}},
		{"ÉMILE", []string{"Émile"}},
		{"mile", []string{"émile", "Émile"}},
		{"zoë", []string{"Zoë 🦀 日本語"}},
		{"ZOË", []string{"ZOË"}},
		{"🦀 日", []string{"Zoë 🦀 日本語"}},
		{"日本", []string{"Zoë 🦀 日本語"}},
		// % and _ are literal, on both paths.
		{"100%", []string{"100% real"}},
		{"%", []string{"50%", "100% real"}},
		{"0%", []string{"50%", "100% real"}},
		{"a_b", []string{"a_b"}},
		{"_", []string{"a_b"}},
		{`\`, []string{`back\slash`}},
		{`k\s`, []string{`back\slash`}},
		{`"`, nil},
		{`li"ce`, nil},
		{"peer03", []string{"Bob"}}, // exact peer ID
		{"peer0", nil},              // peer IDs never match partially
		{"", nil},
		{" \t ", nil},
		{"nobody", nil},
	} {
		got := names(searchBoth(t, s, tc.q))
		if len(got) == 0 && len(tc.want) == 0 {
			continue
		}
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("Search(%q) = %q, want %q", tc.q, got, tc.want)
		}
	}
	// A blank query answers an empty, non-nil list.
	if res, err := s.Search(bg, "  "); err != nil || res == nil || len(res) != 0 {
		t.Fatalf("blank: %#v %v", res, err)
	}
	// Longer than any name: only a peer ID can match; NUL never matches a name.
	long := strings.Repeat("a", 65)
	mustRegister(t, s, long, "zzz", "", base+100)
	if got := names(searchBoth(t, s, long)); !reflect.DeepEqual(got, []string{"zzz"}) {
		t.Fatalf("long query: %q", got)
	}
	if got, err := s.Search(bg, "Ali\x00ce"); err != nil || len(got) != 0 {
		t.Fatalf("NUL query: %v %v", got, err)
	}
}

func TestSearchOrderingAndLimit(t *testing.T) {
	s := openStore(t)
	base := int64(1_700_000_000)
	order := rand.New(rand.NewPCG(1, 2)).Perm(25)
	for _, i := range order { // registration order != last_seen order
		mustRegister(t, s, fmt.Sprintf("p%02d", i), fmt.Sprintf("match %02d", i), "", base+int64(i)*10)
	}
	mustRegister(t, s, "other", "unrelated", "", base+1000)
	for _, q := range []string{"match", "MATCH", "tch", "h"} {
		got := searchBoth(t, s, q)
		if len(got) != SearchLimit {
			t.Fatalf("%q: %d results", q, len(got))
		}
		for i, p := range got {
			if want := fmt.Sprintf("match %02d", 24-i); p.DisplayName != want || p.LastSeen != uint64(base+int64(24-i)*10) {
				t.Fatalf("%q result %d = %#v, want %s", q, i, p, want)
			}
		}
	}
	// Same-second registrations: the later one comes first, on both paths.
	mustRegister(t, s, "t1", "tie one", "", base+5000)
	mustRegister(t, s, "t2", "tie two", "", base+5000)
	mustRegister(t, s, "t1", "tie one", "", base+5000) // re-registered: now newest
	if got := names(searchBoth(t, s, "tie")); !reflect.DeepEqual(got, []string{"tie one", "tie two"}) {
		t.Fatalf("ties: %q", got)
	}
	// A peer-ID match older than 20 name matches is still in the top 20 by
	// age only: results are one list ordered by last_seen.
	mustRegister(t, s, "match", "zzz", "", base-1)
	got := searchBoth(t, s, "match")
	if len(got) != 20 || got[19].DisplayName != "match 05" {
		t.Fatalf("peer-id row should fall outside the top 20: %q", names(got))
	}
	mustRegister(t, s, "match", "zzz", "", base+3000)
	if got := searchBoth(t, s, "match"); got[0].DisplayName != "zzz" || len(got) != 20 {
		t.Fatalf("newest peer-id row first: %q", names(got))
	}
	assertOrderingKeys(t, s)
}

func TestCompaction(t *testing.T) {
	s, err := openWith(filepath.Join(t.TempDir(), FileName), zap.NewNop(),
		compaction{tick: 10 * time.Millisecond, minGap: 10 * time.Millisecond, costFactor: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = s.Close() }()
	for i := 0; i < 30; i++ { // each commit adds an FTS segment
		mustRegister(t, s, fmt.Sprint("p", i), fmt.Sprint("name ", i), "", 1_700_000_000+int64(i))
	}
	// The background loop merges after writes; afterwards a merge is a
	// no-op, i.e. the index is one segment.
	deadline := time.Now().Add(20 * time.Second)
	for s.compactions.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("background compaction never ran")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if steps, err := s.Compact(bg); err != nil || steps != 0 {
		t.Fatalf("index not compact after the loop ran: %d steps, %v", steps, err)
	}
	assertOrderingKeys(t, s)
	if got := names(searchBoth(t, s, "name 2")); len(got) != 11 || got[0] != "name 29" {
		t.Fatalf("search after compaction: %q", got)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Compact(bg); !errors.Is(err, ErrClosed) {
		t.Fatalf("Compact after Close: %v", err)
	}
}

func TestCompactionSchedule(t *testing.T) {
	cp := compaction{minGap: time.Minute, costFactor: 20}
	for _, tc := range []struct {
		writes          int64
		since, lastCost time.Duration
		want            bool
	}{
		{0, time.Hour, 0, false},                   // nothing written
		{1, 59 * time.Second, 0, false},            // too soon
		{1, time.Minute, 0, true},                  // minGap passed
		{500, time.Minute, time.Millisecond, true}, // cheap merges: every minGap
		{500, time.Minute, 4 * time.Second, false}, // 3 s merges: at most 1/20 of a core
		{500, 80 * time.Second, 4 * time.Second, true},
	} {
		if got := cp.due(tc.writes, tc.since, tc.lastCost); got != tc.want {
			t.Errorf("due(%d, %v, %v) = %v", tc.writes, tc.since, tc.lastCost, got)
		}
	}
	// No writes: the loop stays idle.
	s, err := openWith(filepath.Join(t.TempDir(), FileName), zap.NewNop(),
		compaction{tick: 5 * time.Millisecond, minGap: 5 * time.Millisecond, costFactor: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = s.Close() }()
	time.Sleep(50 * time.Millisecond)
	if n := s.compactions.Load(); n != 0 {
		t.Fatalf("%d compactions without writes", n)
	}
}

// The index query must be driven by the FTS table and need no sort: that
// is what makes a common trigram cost 20 rows instead of all its matches.
func TestSearchIndexPlan(t *testing.T) {
	s := openStore(t)
	rows, err := s.r.Query(`EXPLAIN QUERY PLAN `+indexQuerySQL, ftsPhrase("abc"), likeSubstring("abc"))
	if err != nil {
		t.Fatal(err)
	}
	var plan []string
	for rows.Next() {
		var id, parent, notused int
		var detail string
		if err := rows.Scan(&id, &parent, &notused, &detail); err != nil {
			t.Fatal(err)
		}
		plan = append(plan, detail)
	}
	_ = rows.Close()
	joined := strings.Join(plan, "; ")
	if len(plan) != 2 || !strings.HasPrefix(plan[0], "SCAN f VIRTUAL TABLE") ||
		!strings.Contains(plan[1], "INTEGER PRIMARY KEY") || strings.Contains(joined, "TEMP B-TREE") {
		t.Fatalf("unexpected plan: %s", joined)
	}
}

type refRow struct {
	rowid int64
	p     Profile
	lower string // asciiLower(p.DisplayName)
}

func asciiLower(s string) string {
	return strings.Map(func(r rune) rune {
		if r >= 'A' && r <= 'Z' {
			return r + 'a' - 'A'
		}
		return r
	}, s)
}

// refSearch is the specification in plain Go: ASCII-case-insensitive
// literal substring of the name, or exact peer ID; newest first; 20.
func refSearch(rows []refRow, q string) []Profile {
	q = strings.TrimFunc(q, unicode.IsSpace)
	if q == "" {
		return nil
	}
	var hit []refRow
	lq := asciiLower(q)
	for _, r := range rows {
		if r.p.PeerID == q || (!strings.ContainsRune(q, 0) && strings.Contains(r.lower, lq)) {
			hit = append(hit, r)
		}
	}
	sort.Slice(hit, func(i, j int) bool { return hit[i].rowid > hit[j].rowid })
	var out []Profile
	for i := 0; i < len(hit) && i < SearchLimit; i++ {
		out = append(out, hit[i].p)
	}
	return out
}

func allRows(t *testing.T, s *Store) []refRow {
	t.Helper()
	rows, err := s.r.Query(`SELECT ` + profileCols + ` FROM peer_profiles`)
	if err != nil {
		t.Fatal(err)
	}
	ks, err := scanProfiles(rows, nil)
	if err != nil {
		t.Fatal(err)
	}
	out := make([]refRow, len(ks))
	for i, k := range ks {
		out[i] = refRow{k.key, k.p, asciiLower(k.p.DisplayName)}
	}
	return out
}

// randomCase flips the case of some letters, ASCII and not, so queries
// exercise the gap between the index's Unicode folding and LIKE's ASCII one.
func randomCase(r *rand.Rand, s string) string {
	rs := []rune(s)
	for i, c := range rs {
		switch r.IntN(3) {
		case 0:
			rs[i] = unicode.ToUpper(c)
		case 1:
			rs[i] = unicode.ToLower(c)
		}
	}
	return string(rs)
}

func TestIndexEqualsScanRandomized(t *testing.T) {
	s := openStore(t)
	r := rand.New(rand.NewPCG(42, 4242))
	n, queries := 2000, 600
	if raceEnabled {
		n, queries = 300, 100
	}
	base := int64(1_700_000_000)
	populate(t, s, n, 42, base, false) // through the triggers
	for i := 0; i < queries/5; i++ {
		mustRegister(t, s, genPeerID(n+i), randomCase(r, genName(r)), "", base-int64(r.IntN(3*86400)))
	}
	check := func(round string, queries int) {
		rows := allRows(t, s)
		hits := 0
		for k := 0; k < queries; k++ {
			var q string
			switch r.IntN(6) {
			case 0: // random short string from the alphabet
				rs := []rune("aeiklmnorstAEIKLMOëËéÉ日本🦀%_ .-ΣσЦц")
				var b strings.Builder
				for j := 1 + r.IntN(5); j > 0; j-- {
					b.WriteRune(rs[r.IntN(len(rs))])
				}
				q = b.String()
			case 1: // exact peer ID
				q = rows[r.IntN(len(rows))].p.PeerID
			default: // substring of an existing name, case flipped
				rs := []rune(rows[r.IntN(len(rows))].p.DisplayName)
				l := 1 + r.IntN(min(8, len(rs)))
				o := r.IntN(len(rs) - l + 1)
				q = string(rs[o : o+l])
				if r.IntN(2) == 0 {
					q = randomCase(r, q)
				}
			}
			want := refSearch(rows, q)
			got, err := s.Search(bg, q)
			if err != nil {
				t.Fatal(err)
			}
			scan, err := s.searchScan(bg, normalizeQuery(q))
			if err != nil {
				t.Fatal(err)
			}
			if len(want) > 0 {
				hits++
			}
			if !(len(got) == 0 && len(want) == 0) && !reflect.DeepEqual(got, want) {
				t.Fatalf("%s: Search(%q)\n got %q\nwant %q", round, q, names(got), names(want))
			}
			if !(len(scan) == 0 && len(want) == 0) && !reflect.DeepEqual(scan, want) {
				t.Fatalf("%s: scan(%q)\n got %q\nwant %q", round, q, names(scan), names(want))
			}
		}
		if hits < queries/3 {
			t.Fatalf("%s: only %d/%d queries had results; test data too sparse", round, hits, queries)
		}
	}
	check("initial", queries)
	// Churn through the triggers: renames, re-registrations, removals.
	for i := 0; i < queries/2; i++ {
		id := genPeerID(r.IntN(n + 200))
		switch r.IntN(4) {
		case 0:
			if _, err := s.Remove(bg, id); err != nil {
				t.Fatal(err)
			}
		default:
			mustRegister(t, s, id, genName(r), "", base+int64(r.IntN(86400)))
		}
	}
	check("after churn", queries)
	assertOrderingKeys(t, s)
}

// rustSchemaBddcd12 is the Rust relay's table before relay_addr existed.
const rustSchemaBddcd12 = `PRAGMA journal_mode = WAL;
PRAGMA synchronous = NORMAL;
CREATE TABLE IF NOT EXISTS peer_profiles (
    peer_id       TEXT PRIMARY KEY,
    display_name  TEXT NOT NULL,
    last_seen     INTEGER NOT NULL,
    registered_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS idx_display_name
    ON peer_profiles(display_name COLLATE NOCASE);`

// rustSchemaBc893e8 is the later Rust table: relay_addr in the middle.
const rustSchemaBc893e8 = `PRAGMA journal_mode = WAL;
CREATE TABLE IF NOT EXISTS peer_profiles (
    peer_id       TEXT PRIMARY KEY,
    display_name  TEXT NOT NULL,
    relay_addr    TEXT NOT NULL DEFAULT '',
    last_seen     INTEGER NOT NULL,
    registered_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS idx_display_name
    ON peer_profiles(display_name COLLATE NOCASE);`

func makeRustDB(t *testing.T, path, schema string, rows [][4]any) {
	t.Helper()
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = db.Close() }()
	if _, err := db.Exec(schema); err != nil {
		t.Fatal(err)
	}
	for _, r := range rows {
		// The Rust relay's own insert statement (bddcd12).
		if _, err := db.Exec(`INSERT INTO peer_profiles (peer_id, display_name, last_seen, registered_at)
            VALUES (?1, ?2, ?3, ?4)`, r[0], r[1], r[2], r[3]); err != nil {
			t.Fatal(err)
		}
	}
}

func TestOpensRustDatabase(t *testing.T) {
	for _, tc := range []struct{ name, schema string }{{"bddcd12", rustSchemaBddcd12}, {"bc893e8", rustSchemaBc893e8}} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), FileName)
			// Insertion (rowid) order deliberately differs from last_seen order.
			makeRustDB(t, path, tc.schema, [][4]any{
				{"12D3KooWold1", "Alice", int64(1_700_000_300), int64(1_600_000_000)},
				{"12D3KooWold2", "alicia", int64(1_700_000_100), int64(1_600_000_001)},
				{"12D3KooWold3", "Bob", int64(1_700_000_200), int64(1_600_000_002)},
				{"12D3KooWold4", "malice", int64(1_700_000_100), int64(1_600_000_003)},
				{"12D3KooWold5", "x", int64(0), int64(0)},
			})
			s, err := Open(path, zap.NewNop())
			if err != nil {
				t.Fatal(err)
			}
			if n, _ := s.Count(bg); n != 5 {
				t.Fatalf("rows: %d", n)
			}
			p, regAt, ok, err := s.Get(bg, "12D3KooWold3")
			if err != nil || !ok || p != (Profile{PeerID: "12D3KooWold3", DisplayName: "Bob", LastSeen: 1_700_000_200}) || regAt != 1_600_000_002 {
				t.Fatalf("Bob: %#v %d %v %v", p, regAt, ok, err)
			}
			// Ties (same last_seen) keep the Rust rowid order: the later row first.
			if got := names(searchBoth(t, s, "ali")); !reflect.DeepEqual(got, []string{"Alice", "malice", "alicia"}) {
				t.Fatalf("search after migration: %q", got)
			}
			assertOrderingKeys(t, s)
			mustRegister(t, s, "12D3KooWold2", "alicia", vecRelay, 1_700_000_400)
			if _, regAt, _, _ := s.Get(bg, "12D3KooWold2"); regAt != 1_600_000_001 {
				t.Fatalf("registered_at lost: %d", regAt)
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			// The Rust relay (newer version) writes into the migrated file
			// with its own statement: auto rowid, no ordering key.
			db, err := sql.Open("sqlite", path)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := db.Exec(`INSERT INTO peer_profiles (peer_id, display_name, relay_addr, last_seen, registered_at)
                VALUES ('12D3KooWrust', 'Alice Rust', '', 1, 1)`); err != nil {
				t.Fatal(err)
			}
			_ = db.Close()
			s, err = Open(path, zap.NewNop())
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = s.Close() }()
			if got := names(searchBoth(t, s, "ali")); !reflect.DeepEqual(got, []string{"alicia", "Alice", "malice", "Alice Rust"}) {
				t.Fatalf("search after foreign write: %q", got)
			}
			assertOrderingKeys(t, s)
			var cols []string
			rows, _ := s.r.Query(`SELECT name FROM pragma_table_info('peer_profiles')`)
			for rows.Next() {
				var c string
				_ = rows.Scan(&c)
				cols = append(cols, c)
			}
			_ = rows.Close()
			sort.Strings(cols)
			if !reflect.DeepEqual(cols, []string{"display_name", "last_seen", "peer_id", "registered_at", "relay_addr"}) {
				t.Fatalf("columns: %v", cols)
			}
		})
	}
}

func TestCorruptFileFailsOpenAndIsKept(t *testing.T) {
	dir := t.TempDir()
	garbage := filepath.Join(dir, "garbage.sqlite3")
	content := bytes.Repeat([]byte("this is not a database "), 400)
	if err := os.WriteFile(garbage, content, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(garbage, zap.NewNop()); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("garbage file: %v", err)
	}
	if b, _ := os.ReadFile(garbage); !bytes.Equal(b, content) {
		t.Fatal("garbage file was modified")
	}

	// A real database with a damaged page past the header.
	damaged := filepath.Join(dir, FileName)
	s, err := Open(damaged, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	populate(t, s, 400, 3, 1_700_000_000, false)
	if err := s.Close(); err != nil { // checkpoints the WAL into the file
		t.Fatal(err)
	}
	b, err := os.ReadFile(damaged)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) < 8*4096 {
		t.Fatalf("database unexpectedly small: %d", len(b))
	}
	for i := 4096 + 100; i < 4096*4; i++ {
		b[i] ^= 0x5a
	}
	if err := os.WriteFile(damaged, b, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = Open(damaged, zap.NewNop())
	if !errors.Is(err, ErrCorrupt) {
		t.Fatalf("damaged file: %v", err)
	}
	if !strings.Contains(err.Error(), damaged) {
		t.Fatalf("error does not name the file: %v", err)
	}
	if after, _ := os.ReadFile(damaged); !bytes.Equal(after, b) {
		t.Fatal("damaged file was modified")
	}
}

func TestOpenErrors(t *testing.T) {
	if _, err := Open("", nil); err == nil {
		t.Fatal("empty path")
	}
	if _, err := Open(filepath.Join(t.TempDir(), "a?b"), nil); err == nil {
		t.Fatal("path with ?")
	}
	s := openStore(t)
	if err := s.Ping(bg); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal("second Close:", err)
	}
	if err := s.Ping(bg); !errors.Is(err, ErrClosed) {
		t.Fatalf("Ping after Close: %v", err)
	}
}
