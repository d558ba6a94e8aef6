package directory

import (
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"go.uber.org/zap"
)

// TestImportSQLite: a relay's file (ours, with same-second ties and
// relay_addr) imported into PostgreSQL answers every query exactly as the
// file does; a second run writes nothing; a profile the cluster has seen
// since the file was written is kept.
func TestImportSQLite(t *testing.T) {
	path := filepath.Join(t.TempDir(), FileName)
	lite, err := Open(path, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = lite.Close() }()
	r := rand.New(rand.NewPCG(3, 33))
	base := int64(1_700_000_000)
	n := 3000
	if raceEnabled {
		n = 600
	}
	for i := 0; i < n; i++ {
		relay := ""
		if i%3 == 0 {
			relay = vecRelay
		}
		// ~5 writes per second of last_seen: ties everywhere.
		reg(t, lite, genPeerID(i), genName(r), relay, base+int64(r.IntN(n/5)))
	}
	for i := 0; i < n/10; i++ { // re-registrations move rows within their second
		reg(t, lite, genPeerID(r.IntN(n)), genName(r), "", base+int64(r.IntN(n/5)))
	}
	pg := openPG(t)
	// A peer that registered on the cluster after the file's last write.
	reg(t, pg, genPeerID(0), "Seen on the cluster", "", base+1_000_000)

	st, err := ImportSQLite(bg, path, pg)
	if err != nil {
		t.Fatal(err)
	}
	// Profile 0 is written too: only its registered_at (the file's is older).
	if st.Read != int64(n) || st.Written != int64(n) || st.Skipped != 0 {
		t.Fatalf("first import: %+v, want read and written %d", st, n)
	}
	check := func(round string) {
		t.Helper()
		if c, _ := pg.Count(bg); c != int64(n) {
			t.Fatalf("%s: %d rows in postgres, want %d", round, c, n)
		}
		p, regAt, ok, err := pg.Get(bg, genPeerID(0))
		if err != nil || !ok || p.DisplayName != "Seen on the cluster" || p.LastSeen != uint64(base+1_000_000) {
			t.Fatalf("%s: the cluster's newer profile was overwritten: %v %v %v", round, p, ok, err)
		}
		_, liteRegAt, _, _ := lite.Get(bg, genPeerID(0))
		if regAt != min(liteRegAt, base+1_000_000) {
			t.Fatalf("%s: registered_at %d", round, regAt)
		}
		for i := 1; i < n; i += 7 {
			a, ra, oka, _ := lite.Get(bg, genPeerID(i))
			b, rb, okb, err := pg.Get(bg, genPeerID(i))
			if err != nil || a != b || ra != rb || oka != okb {
				t.Fatalf("%s: Get(%d): sqlite %v %d, postgres %v %d (%v)", round, i, a, ra, b, rb, err)
			}
		}
		rows := allRows(t, lite)
		for k := 0; k < 300; k++ {
			rs := []rune(rows[r.IntN(len(rows))].p.DisplayName)
			l := 1 + r.IntN(min(6, len(rs)))
			o := r.IntN(len(rs) - l + 1)
			q := string(rs[o : o+l])
			a := search(t, lite, q)
			b := search(t, pg, q)
			// Profile 0 differs on purpose (newer on the cluster): compare
			// the rest, as far as both pages reach.
			drop := func(ps []Profile) ([]Profile, bool) {
				out, had := []Profile{}, false
				for _, p := range ps {
					if p.PeerID == genPeerID(0) {
						had = true
						continue
					}
					out = append(out, p)
				}
				return out, had
			}
			da, hadA := drop(a)
			db, hadB := drop(b)
			if hadA || hadB {
				k := min(len(da), len(db))
				da, db = da[:k], db[:k]
			}
			if !reflect.DeepEqual(da, db) {
				t.Fatalf("%s: Search(%q)\nsqlite   %q\npostgres %q", round, q, names(a), names(b))
			}
		}
	}
	check("first import")
	st, err = ImportSQLite(bg, path, pg)
	if err != nil {
		t.Fatal(err)
	}
	if st.Read != int64(n) || st.Written != 0 {
		t.Fatalf("second import: %+v, want nothing written", st)
	}
	check("second import")
}

// TestImportRustFile: the Rust relay's file (no relay_addr column, rowid
// order unrelated to last_seen) imports with the same answers as our
// store gives after migrating it; the file itself is not modified.
func TestImportRustFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), FileName)
	makeRustDB(t, path, rustSchemaBddcd12, [][4]any{
		{"12D3KooWold1", "Alice", int64(1_700_000_300), int64(1_600_000_000)},
		{"12D3KooWold2", "alicia", int64(1_700_000_100), int64(1_600_000_001)},
		{"12D3KooWold3", "Bob", int64(1_700_000_200), int64(1_600_000_002)},
		{"12D3KooWold4", "malice", int64(1_700_000_100), int64(1_600_000_003)},
		{"12D3KooWold5", "x", int64(0), int64(0)},
	})
	before, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	pg := openPG(t)
	st, err := ImportSQLite(bg, path, pg)
	if err != nil || st.Read != 5 || st.Written != 5 {
		t.Fatalf("import: %+v %v", st, err)
	}
	after, _ := os.ReadFile(path)
	if !reflect.DeepEqual(before, after) {
		t.Fatal("import modified the source file")
	}
	if got := names(search(t, pg, "ali")); !reflect.DeepEqual(got, []string{"Alice", "malice", "alicia"}) {
		t.Fatalf("search: %q", got)
	}
	p, regAt, ok, err := pg.Get(bg, "12D3KooWold3")
	if err != nil || !ok || p != (Profile{PeerID: "12D3KooWold3", DisplayName: "Bob", LastSeen: 1_700_000_200}) || regAt != 1_600_000_002 {
		t.Fatalf("Bob: %#v %d %v %v", p, regAt, ok, err)
	}

	// Not a directory file: typed errors, nothing written.
	bad := filepath.Join(t.TempDir(), "junk")
	if err := os.WriteFile(bad, []byte("not sqlite"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := ImportSQLite(bg, bad, pg); err == nil {
		t.Fatal("junk file imported")
	}
	if _, err := ImportSQLite(bg, filepath.Join(t.TempDir(), "missing.sqlite3"), pg); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing file: %v", err)
	}
	if c, _ := pg.Count(bg); c != 5 {
		t.Fatalf("rows after failed imports: %d", c)
	}
}

// TestImportChunks: more rows than one chunk keep their order across
// chunk boundaries.
func TestImportChunks(t *testing.T) {
	if testing.Short() {
		t.Skip("25k rows")
	}
	path := filepath.Join(t.TempDir(), FileName)
	lite, err := Open(path, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = lite.Close() }()
	total := importChunk*2 + 500
	populate(t, lite, total, 9, time.Now().Unix(), true)
	pg := openPG(t)
	st, err := ImportSQLite(bg, path, pg)
	if err != nil || st.Written != int64(total) {
		t.Fatalf("import: %+v %v", st, err)
	}
	for _, q := range []string{"ka", "Zoë", "100%", "mo", "li", "e"} {
		if a, b := search(t, lite, q), search(t, pg, q); !reflect.DeepEqual(a, b) {
			t.Fatalf("Search(%q)\nsqlite   %q\npostgres %q", q, names(a), names(b))
		}
	}
}
