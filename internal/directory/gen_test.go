package directory

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
)

// Name generator for tests and benchmarks: syllable names with a mix of
// case, digits, separators and some non-ASCII letters, so trigram
// frequencies look like real display names rather than random bytes.
var (
	genSyllables = []string{"ka", "li", "mo", "ra", "ne", "to", "vi", "sa", "lu", "ze", "an", "el", "or", "is",
		"ma", "ri", "no", "ta", "be", "co", "da", "fi", "gu", "ha", "jo", "ke", "la", "mi", "pe", "qu",
		"Zoë", "ñe", "Ås", "ül", "日本", "語", "🦀", "Σο", "ця", "ße"}
	genSeps = []string{"", "", "", " ", " ", "_", ".", "-"}
)

func genName(r *rand.Rand) string {
	var b strings.Builder
	n := 2 + r.IntN(3)
	for i := 0; i < n; i++ {
		s := genSyllables[r.IntN(len(genSyllables))]
		if i == 0 || r.IntN(4) == 0 {
			rs := []rune(s)
			s = strings.ToUpper(string(rs[0])) + string(rs[1:])
		}
		b.WriteString(s)
		if i == n/2 {
			b.WriteString(genSeps[r.IntN(len(genSeps))])
		}
	}
	switch r.IntN(5) {
	case 0:
		fmt.Fprintf(&b, "%d", r.IntN(1000))
	case 1:
		b.WriteString([]string{"%", "_", "%_", "100%"}[r.IntN(4)])
	}
	return b.String()
}

// genPeerID makes a distinct peer-ID-shaped string.
func genPeerID(i int) string { return fmt.Sprintf("12D3KooW%044d", i) }

// populate bulk-loads n generated profiles in one transaction with
// last_seen spread over 30 days before base. It writes the rowid ordering
// key directly (as Register does). With bulk set, the FTS triggers are
// dropped during the load and the index is rebuilt once at the end (much
// faster); otherwise the triggers index each row.
func populate(tb testing.TB, s *Store, n int, seed uint64, base int64, bulk bool) {
	tb.Helper()
	ctx := context.Background()
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		tb.Fatal(err)
	}
	defer func() { _ = tx.Rollback() }()
	if bulk {
		for _, trg := range []string{"peer_profiles_fts_ai", "peer_profiles_fts_ad", "peer_profiles_fts_au"} {
			if _, err := tx.ExecContext(ctx, "DROP TRIGGER "+trg); err != nil {
				tb.Fatal(err)
			}
		}
	}
	stmt, err := tx.PrepareContext(ctx, `INSERT INTO peer_profiles
        (rowid, peer_id, display_name, last_seen, registered_at, relay_addr)
        VALUES (`+nextSeqSQL+`, ?2, ?3, ?1, ?1, ?4)`)
	if err != nil {
		tb.Fatal(err)
	}
	defer func() { _ = stmt.Close() }()
	// Ascending last_seen, as registrations arrive in production: rows are
	// appended to the table instead of scattered through it.
	lss := make([]int64, n)
	for i := range lss {
		lss[i] = base - int64(r.IntN(30*86400))
	}
	slices.Sort(lss)
	for i, ls := range lss {
		relay := ""
		if i%2 == 0 {
			relay = "/ip4/203.0.113.7/tcp/4001/p2p/12D3KooWQYhTNQdmr3ArTeUHRYzFg94BKyTkoWBDWez9kSCVe2Xo/p2p-circuit"
		}
		if _, err := stmt.ExecContext(ctx, ls, genPeerID(i), genName(r), relay); err != nil {
			tb.Fatal(err)
		}
	}
	if bulk {
		if _, err := tx.ExecContext(ctx, createTriggers); err != nil {
			tb.Fatal(err)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO peer_profiles_fts(peer_profiles_fts) VALUES ('rebuild')`); err != nil {
			tb.Fatal(err)
		}
	}
	if err := tx.Commit(); err != nil {
		tb.Fatal(err)
	}
}
