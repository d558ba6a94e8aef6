package directory

import (
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"go.uber.org/zap"
)

// BenchmarkDirectoryEngines1M compares the two stores on the same data:
// 1,000,000 generated profiles (DUSK_DIRECTORY_BENCH_PROFILES overrides)
// loaded into a SQLite file, then copied into a fresh PostgreSQL database
// with ImportSQLite. Each query runs on both stores back to back (the
// order alternating), so both see the same machine load; figures are
// wall-clock latency as a client of the store sees it (PostgreSQL's
// include the loopback round trip).
//
//   - search: 3-6 character substrings of generated names;
//   - search_rare: 3+ character patterns with few or no matches (the
//     case a cached generic plan turns into a walk of the whole table);
//   - search_short: 1-2 character queries (bounded newest-first scan);
//   - import: ImportSQLite of the whole file, profiles per second.
//
// Run: .ci/engines.sh go test ./internal/directory -run '^$' -bench DirectoryEngines1M -benchtime 1x -timeout 60m -v
func BenchmarkDirectoryEngines1M(b *testing.B) {
	if testing.Short() {
		b.Skip("loads 1M profiles")
	}
	n := 1_000_000
	if v := os.Getenv("DUSK_DIRECTORY_BENCH_PROFILES"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 1000 {
			b.Fatalf("DUSK_DIRECTORY_BENCH_PROFILES=%q", v)
		}
	}
	ctx := context.Background()
	path := filepath.Join(b.TempDir(), FileName)
	lite, err := openWith(path, zap.NewNop(), compaction{tick: 24 * time.Hour, minGap: 24 * time.Hour})
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = lite.Close() }()
	st := time.Now()
	populate(b, lite, n, 1, time.Now().Unix(), true)
	if _, err := lite.Compact(ctx); err != nil {
		b.Fatal(err)
	}
	liteLoad := time.Since(st)
	pg := openPG(b)
	st = time.Now()
	imp, err := ImportSQLite(ctx, path, pg)
	if err != nil {
		b.Fatal(err)
	}
	importTook := time.Since(st)
	if imp.Written != int64(n) {
		b.Fatalf("imported %+v, want %d", imp, n)
	}
	// What autovacuum would do soon after a bulk load; the planner's
	// estimates need the statistics.
	if _, err := pg.pool.Exec(ctx, `VACUUM ANALYZE peer_profiles`); err != nil {
		b.Fatal(err)
	}
	var pgBytes int64
	_ = pg.pool.QueryRow(ctx, `SELECT pg_database_size(current_database())`).Scan(&pgBytes)
	fi, _ := os.Stat(path)
	b.Logf("%d profiles: SQLite load+index %v (%d MiB); import into PostgreSQL %v (%d MiB)", n,
		liteLoad.Round(time.Millisecond), fi.Size()>>20, importTook.Round(time.Millisecond), pgBytes>>20)

	r := rand.New(rand.NewPCG(7, 7))
	var common []string
	for len(common) < 1000 {
		rs := []rune(genName(r))
		l := 3 + r.IntN(4)
		if len(rs) < l {
			continue
		}
		o := r.IntN(len(rs) - l + 1)
		if q := normalizeQuery(string(rs[o : o+l])); len([]rune(q)) >= 3 {
			common = append(common, q)
		}
	}
	rare := []string{"qxz", "zzzz", "kaZoë9", "nobody here", "Ωmega", "ßeße", "日本語語", "🦀🦀🦀", "x_y%z", "12D3KooW"}
	for len(rare) < 200 { // real-looking names that mostly do not exist
		rare = append(rare, genName(r)+genName(r))
	}
	var short []string
	for len(short) < 200 {
		rs := []rune(genName(r))
		l := 1 + r.IntN(2)
		o := r.IntN(len(rs) - l + 1)
		short = append(short, string(rs[o:o+l]))
	}
	short = append(short, "qx", "zj", "Ωw", "9§")

	for _, q := range common[:200] { // warm both caches
		if _, err := lite.Search(ctx, q); err != nil {
			b.Fatal(err)
		}
		if _, err := pg.Search(ctx, q); err != nil {
			b.Fatal(err)
		}
	}
	compare := func(qs []string) []metric {
		var dl, dp []time.Duration
		hits := 0
		for i, q := range qs {
			var a, p []Profile
			var ta, tp time.Duration
			runLite := func() {
				t0 := time.Now()
				if a, err = lite.Search(ctx, q); err != nil {
					b.Fatal(err)
				}
				ta = time.Since(t0)
			}
			runPG := func() {
				t0 := time.Now()
				if p, err = pg.Search(ctx, q); err != nil {
					b.Fatal(err)
				}
				tp = time.Since(t0)
			}
			if i%2 == 0 {
				runLite()
				runPG()
			} else {
				runPG()
				runLite()
			}
			if !slices.Equal(names(a), names(p)) {
				b.Fatalf("%q: sqlite %q, postgres %q", q, names(a), names(p))
			}
			hits += len(a)
			dl, dp = append(dl, ta), append(dp, tp)
		}
		l50, l99 := percentiles(dl)
		p50, p99 := percentiles(dp)
		return []metric{
			{ms(l50), "sqlite-p50-ms"}, {ms(l99), "sqlite-p99-ms"}, {ms(slices.Max(dl)), "sqlite-max-ms"},
			{ms(p50), "pg-p50-ms"}, {ms(p99), "pg-p99-ms"}, {ms(slices.Max(dp)), "pg-max-ms"},
			{float64(p50) / float64(l50), "pg/sqlite-p50"}, {float64(p99) / float64(l99), "pg/sqlite-p99"},
			{float64(hits) / float64(len(qs)), "results/query"},
		}
	}
	// Each figure is one fixed sample, measured once whatever b.N.
	for _, c := range []struct {
		name string
		qs   []string
	}{{"search", common}, {"search_rare", rare}, {"search_short", short}} {
		var fig []metric
		b.Run(c.name, func(b *testing.B) {
			if fig == nil {
				fig = compare(c.qs)
			}
			for _, m := range fig {
				b.ReportMetric(m.v, m.unit)
			}
		})
	}
	b.Run("import", func(b *testing.B) {
		b.ReportMetric(float64(n)/importTook.Seconds(), "profiles/s")
		b.ReportMetric(importTook.Seconds(), "import-s")
	})
}
