package directory

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"go.uber.org/zap"
	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

// FileName is the directory database's name inside the data dir (the Rust
// relay's name, so an operator's existing file is picked up).
const FileName = "directory.sqlite3"

var (
	// ErrCorrupt means the file exists but is not a readable SQLite database.
	// The file is left untouched for the operator.
	ErrCorrupt = errors.New("directory: database file is corrupt or not a SQLite database")
	// ErrClosed is returned after Close.
	ErrClosed = errors.New("directory: store closed")
	// ErrBadPeerID is returned for an empty peer ID.
	ErrBadPeerID = errors.New("directory: empty peer id")
)

// Ordering key. Every row's rowid is kept in [ls<<seqShift, (ls+1)<<seqShift)
// where ls is its (clamped) last_seen, so "ORDER BY rowid DESC" is "newest
// last_seen first" with a stable tie-break. That lets the FTS5 index (whose
// rowids are the table's) return matches already in result order and stop
// after 20, instead of collecting and sorting every match of a common
// trigram. rowids are not part of the Rust schema, so the file stays
// compatible. A bucket holds 2^24 registrations of one second; overflowing
// one would fail that insert (rowid conflict), far beyond the ~10^3/s a
// durable commit per registration allows.
const (
	seqShift = 24
	maxLS    = int64(1)<<(62-seqShift) - 1 // keeps ls<<seqShift inside int64
)

// busyTimeout bounds how long a statement waits for the write lock.
const busyTimeout = 5 * time.Second

// Store is the persistent profile index.
type Store struct {
	path string
	log  *zap.Logger
	w    *sql.DB // single connection: writes serialize in-process, BEGIN IMMEDIATE
	r    *sql.DB // readers; WAL lets them run beside the writer

	// Prepared on the reader pool (database/sql re-prepares per
	// connection as needed): saves parsing on every search.
	stIndex, stPeer, stScan, stRecent *sql.Stmt

	// shortScanRows is ShortScanRows (tests shrink it).
	shortScanRows int

	writes      atomic.Int64 // since the last compaction
	compactions atomic.Int64 // done by compactLoop (tests)

	closeOnce sync.Once
	closed    chan struct{}
	stop      context.CancelFunc // ends compactLoop
	wg        sync.WaitGroup
}

// Open opens (creating if needed) the directory database at path, migrating
// a Rust relay file (adds relay_addr, builds the search index). A file that
// is not a valid database yields an error wrapping ErrCorrupt; it is never
// deleted or recreated.
func Open(path string, log *zap.Logger) (*Store, error) {
	return openWith(path, log, defaultCompaction)
}

// compaction says when the background task merges the search index into
// one segment. Every write commits a small FTS5 segment; FTS5's automerge
// keeps them in levels, but a search probes every segment: at 1M profiles
// a few hundred writes after a merge double the CPU time of a search. A
// full merge rewrites the index (~40 MB, ~3 s at 1M profiles, ms for a
// small directory) in short steps that release the write lock. The task
// runs when anything was written and at least max(minGap, costFactor x
// the last merge's duration) has passed, so merging never takes more than
// 1/costFactor of one core.
type compaction struct {
	tick, minGap time.Duration
	costFactor   int64
}

var defaultCompaction = compaction{tick: 5 * time.Second, minGap: time.Minute, costFactor: 20}

// due reports whether a merge should run now.
func (cp compaction) due(writes int64, since, lastCost time.Duration) bool {
	return writes > 0 && since >= max(cp.minGap, time.Duration(cp.costFactor)*lastCost)
}

func openWith(path string, log *zap.Logger, cp compaction) (*Store, error) {
	if log == nil {
		log = zap.NewNop()
	}
	if path == "" || strings.ContainsRune(path, '?') {
		// The driver splits the DSN at '?'.
		return nil, fmt.Errorf("directory: unusable database path %q", path)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("directory: create data dir: %w", err)
	}
	w, err := sql.Open("sqlite", dsn(path, true))
	if err != nil {
		return nil, fmt.Errorf("directory: open %s: %w", path, err)
	}
	w.SetMaxOpenConns(1)
	w.SetMaxIdleConns(1)
	w.SetConnMaxLifetime(0)
	w.SetConnMaxIdleTime(0)
	s := &Store{path: path, log: log, w: w, closed: make(chan struct{}), shortScanRows: ShortScanRows}
	start := time.Now()
	if err := s.migrate(context.Background()); err != nil {
		_ = w.Close()
		return nil, s.classify("open", err)
	}
	r, err := sql.Open("sqlite", dsn(path, false))
	if err != nil {
		_ = w.Close()
		return nil, fmt.Errorf("directory: open %s: %w", path, err)
	}
	r.SetMaxOpenConns(4)
	r.SetMaxIdleConns(4)
	s.r = r
	if err := s.prepare(context.Background()); err != nil {
		_ = s.Close()
		return nil, s.classify("open", err)
	}
	if err := s.Ping(context.Background()); err != nil {
		_ = s.Close()
		return nil, s.classify("open", err)
	}
	log.Info("directory db opened", zap.String("path", path), zap.Duration("took", time.Since(start)))
	ctx, cancel := context.WithCancel(context.Background())
	s.stop = cancel
	s.wg.Add(1)
	go s.compactLoop(ctx, cp)
	return s, nil
}

// compactLoop runs until Close, which cancels ctx: a merge step in
// progress is interrupted and rolls back.
func (s *Store) compactLoop(ctx context.Context, cp compaction) {
	defer s.wg.Done()
	t := time.NewTicker(cp.tick)
	defer t.Stop()
	last, lastCost := time.Now(), time.Duration(0)
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		n := s.writes.Load()
		if !cp.due(n, time.Since(last), lastCost) {
			continue
		}
		s.writes.Add(-n)
		last = time.Now()
		steps, err := s.Compact(ctx)
		lastCost = time.Since(last)
		switch {
		case err != nil && ctx.Err() != nil:
			return
		case err != nil:
			s.log.Warn("directory: index compaction failed", zap.Error(err))
		default:
			s.compactions.Add(1)
			s.log.Debug("directory: index compacted", zap.Int64("writes", n), zap.Int("steps", steps),
				zap.Duration("took", lastCost))
		}
	}
}

// compactStepPages bounds one merge step (FTS5 pages written), so the
// write lock is released between steps and registrations interleave.
const compactStepPages = 500

// Compact merges the search index into a single segment in bounded
// steps; it returns the number of steps that did work (0: already
// compact).
func (s *Store) Compact(ctx context.Context) (int, error) {
	if s.isClosed() {
		return 0, ErrClosed
	}
	// Bounded: concurrent writes keep adding segments, but each step
	// merges far more than a registration adds.
	const maxSteps = 10_000
	steps := 0
	for ; steps < maxSteps; steps++ {
		done, err := s.compactStep(ctx)
		if err != nil {
			return steps, s.classify("compact", err)
		}
		if done {
			break
		}
	}
	if steps > 0 {
		// The merge went through the WAL (the whole index at 1M profiles):
		// fold it into the main file and truncate it, so readers stop
		// searching a long WAL for every page they read.
		var busy, logFrames, checkpointed int
		if err := s.w.QueryRowContext(ctx, `PRAGMA wal_checkpoint(TRUNCATE)`).Scan(&busy, &logFrames, &checkpointed); err != nil {
			return steps, s.classify("checkpoint", err)
		}
	}
	return steps, nil
}

// compactStep runs one incremental full merge ('merge' with a negative
// page count). FTS5 reports whether it did anything only through
// total_changes(): a difference below 2 means no-op.
func (s *Store) compactStep(ctx context.Context) (done bool, err error) {
	conn, err := s.w.Conn(ctx) // total_changes() is per connection
	if err != nil {
		return false, err
	}
	defer func() { _ = conn.Close() }()
	var before, after int64
	if err := conn.QueryRowContext(ctx, `SELECT total_changes()`).Scan(&before); err != nil {
		return false, err
	}
	if _, err := conn.ExecContext(ctx, fmt.Sprintf(
		`INSERT INTO peer_profiles_fts(peer_profiles_fts, rank) VALUES ('merge', %d)`, -compactStepPages)); err != nil {
		return false, err
	}
	if err := conn.QueryRowContext(ctx, `SELECT total_changes()`).Scan(&after); err != nil {
		return false, err
	}
	return after-before < 2, nil
}

// dsn builds the driver DSN. synchronous=FULL: in WAL mode NORMAL already
// survives kill -9 (the WAL is in the OS page cache), but may lose the last
// commits on power loss or a kernel crash; an acknowledged Register must be
// durable, and registrations are rare (rate limited) so the per-commit fsync
// costs little. busy_timeout covers a second process (e.g. the sqlite3 CLI).
func dsn(path string, writer bool) string {
	q := url.Values{}
	q.Add("_pragma", fmt.Sprintf("busy_timeout(%d)", busyTimeout.Milliseconds()))
	q.Add("_pragma", "foreign_keys(0)")
	if writer {
		q.Add("_pragma", "journal_mode(WAL)")
		q.Add("_pragma", "synchronous(FULL)")
		q.Set("_txlock", "immediate") // take the write lock at BEGIN: no upgrade deadlocks
	} else {
		q.Add("_pragma", "query_only(1)")
		// 32 MiB page cache per reader (grown on demand): keeps the hot
		// part of the trigram index in process at 1M profiles.
		q.Add("_pragma", "cache_size(-32768)")
	}
	return path + "?" + q.Encode()
}

func (s *Store) classify(op string, err error) error {
	var se *sqlite.Error
	if errors.As(err, &se) {
		switch se.Code() & 0xff {
		case sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB:
			return fmt.Errorf("%w: %s: %s: %w", ErrCorrupt, op, s.path, err)
		}
	}
	return fmt.Errorf("directory: %s %s: %w", op, s.path, err)
}

// Schema. The table and idx_display_name are the Rust relay's, so its file
// opens unchanged (and the Rust relay could still read ours); relay_addr
// is added to older files. The FTS5 trigram table indexes display_name for
// substring search; triggers keep it in sync with every write.
const (
	createTable = `CREATE TABLE IF NOT EXISTS peer_profiles (
    peer_id       TEXT PRIMARY KEY,
    display_name  TEXT NOT NULL,
    last_seen     INTEGER NOT NULL,
    registered_at INTEGER NOT NULL,
    relay_addr    TEXT NOT NULL DEFAULT ''
)`
	createNameIndex = `CREATE INDEX IF NOT EXISTS idx_display_name
    ON peer_profiles(display_name COLLATE NOCASE)`
	// remove_diacritics 0: the index may only fold case, code point by
	// code point, so that it finds a superset of the exact matches.
	createFTS = `CREATE VIRTUAL TABLE IF NOT EXISTS peer_profiles_fts USING fts5(
    display_name,
    content='peer_profiles',
    content_rowid='rowid',
    tokenize='trigram remove_diacritics 0 case_sensitive 0'
)`
	createTriggers = `
CREATE TRIGGER IF NOT EXISTS peer_profiles_fts_ai AFTER INSERT ON peer_profiles BEGIN
    INSERT INTO peer_profiles_fts(rowid, display_name) VALUES (new.rowid, new.display_name);
END;
CREATE TRIGGER IF NOT EXISTS peer_profiles_fts_ad AFTER DELETE ON peer_profiles BEGIN
    INSERT INTO peer_profiles_fts(peer_profiles_fts, rowid, display_name) VALUES ('delete', old.rowid, old.display_name);
END;
CREATE TRIGGER IF NOT EXISTS peer_profiles_fts_au AFTER UPDATE ON peer_profiles BEGIN
    INSERT INTO peer_profiles_fts(peer_profiles_fts, rowid, display_name) VALUES ('delete', old.rowid, old.display_name);
    INSERT INTO peer_profiles_fts(rowid, display_name) VALUES (new.rowid, new.display_name);
END;`
)

// migrate brings any file (new, Rust-made with or without relay_addr, or
// ours) to the current schema in one transaction.
func (s *Store) migrate(ctx context.Context) error {
	// A cheap read of page 1 first: a file that is not a database fails
	// here with SQLITE_NOTADB before anything is written.
	var n int
	if err := s.w.QueryRowContext(ctx, `SELECT count(*) FROM sqlite_master`).Scan(&n); err != nil {
		return fmt.Errorf("read schema: %w", err)
	}
	var check string
	if err := s.w.QueryRowContext(ctx, `PRAGMA quick_check(1)`).Scan(&check); err != nil {
		return fmt.Errorf("quick_check: %w", err)
	}
	if check != "ok" {
		return fmt.Errorf("%w: quick_check: %s", ErrCorrupt, check)
	}
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	defer func() { _ = tx.Rollback() }()
	if _, err := tx.ExecContext(ctx, createTable); err != nil {
		return fmt.Errorf("create table: %w", err)
	}
	var hasRelayAddr int
	if err := tx.QueryRowContext(ctx,
		`SELECT count(*) FROM pragma_table_info('peer_profiles') WHERE name = 'relay_addr'`).Scan(&hasRelayAddr); err != nil {
		return fmt.Errorf("inspect table: %w", err)
	}
	if hasRelayAddr == 0 {
		if _, err := tx.ExecContext(ctx, `ALTER TABLE peer_profiles ADD COLUMN relay_addr TEXT NOT NULL DEFAULT ''`); err != nil {
			return fmt.Errorf("add relay_addr: %w", err)
		}
		s.log.Info("directory: migrated peer_profiles table (added relay_addr column)")
	}
	if _, err := tx.ExecContext(ctx, createNameIndex); err != nil {
		return fmt.Errorf("create index: %w", err)
	}
	var hasFTS int
	if err := tx.QueryRowContext(ctx,
		`SELECT count(*) FROM sqlite_master WHERE name = 'peer_profiles_fts'`).Scan(&hasFTS); err != nil {
		return fmt.Errorf("inspect fts: %w", err)
	}
	// Renumber rows whose rowid does not encode their last_seen (all rows
	// of a Rust file; rows another program wrote since). Done before the
	// FTS table exists on first migration, so the rebuild below indexes
	// final rowids once; later, the update trigger keeps the index right.
	moved, err := renumber(ctx, tx)
	if err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, createFTS); err != nil {
		return fmt.Errorf("create fts: %w", err)
	}
	if _, err := tx.ExecContext(ctx, createTriggers); err != nil {
		return fmt.Errorf("create triggers: %w", err)
	}
	if hasFTS == 0 {
		// rebuild leaves a stack of segments; optimize makes it one
		// (searches probe every segment).
		if _, err := tx.ExecContext(ctx, `INSERT INTO peer_profiles_fts(peer_profiles_fts) VALUES ('rebuild')`); err != nil {
			return fmt.Errorf("build fts: %w", err)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO peer_profiles_fts(peer_profiles_fts) VALUES ('optimize')`); err != nil {
			return fmt.Errorf("optimize fts: %w", err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit migration: %w", err)
	}
	if moved > 0 || hasFTS == 0 {
		s.log.Info("directory: search index ready", zap.Int("renumbered", moved), zap.Bool("built", hasFTS == 0))
	}
	return nil
}

// clampSQL is clampLS in SQL.
const clampSQL = `max(0, min(last_seen, 274877906943))`

func clampLS(ls int64) int64 { return max(0, min(ls, maxLS)) }

// nextSeqSQL yields the next free rowid in last_seen ?1's bucket. A range
// max() on the rowid b-tree is one seek.
const nextSeqSQL = `(SELECT coalesce(max(rowid), (?1 << 24) - 1) + 1 FROM peer_profiles
    WHERE rowid BETWEEN (?1 << 24) AND (((?1 + 1) << 24) - 1))`

func renumber(ctx context.Context, tx *sql.Tx) (int, error) {
	rows, err := tx.QueryContext(ctx, `SELECT rowid, `+clampSQL+` FROM peer_profiles
        WHERE (rowid >> 24) <> `+clampSQL+` ORDER BY last_seen, rowid`)
	if err != nil {
		return 0, fmt.Errorf("scan ordering keys: %w", err)
	}
	type mv struct{ rowid, ls int64 }
	var todo []mv
	for rows.Next() {
		var m mv
		if err := rows.Scan(&m.rowid, &m.ls); err != nil {
			_ = rows.Close()
			return 0, fmt.Errorf("scan ordering keys: %w", err)
		}
		todo = append(todo, m)
	}
	if err := rows.Close(); err != nil {
		return 0, fmt.Errorf("scan ordering keys: %w", err)
	}
	if err := rows.Err(); err != nil {
		return 0, fmt.Errorf("scan ordering keys: %w", err)
	}
	if len(todo) == 0 {
		return 0, nil
	}
	stmt, err := tx.PrepareContext(ctx, `UPDATE peer_profiles SET rowid = `+nextSeqSQL+` WHERE rowid = ?2`)
	if err != nil {
		return 0, fmt.Errorf("renumber: %w", err)
	}
	defer func() { _ = stmt.Close() }()
	for _, m := range todo {
		if _, err := stmt.ExecContext(ctx, m.ls, m.rowid); err != nil {
			return 0, fmt.Errorf("renumber: %w", err)
		}
	}
	return len(todo), nil
}

func (s *Store) prepare(ctx context.Context) error {
	var err error
	if s.stIndex, err = s.r.PrepareContext(ctx, indexQuerySQL); err != nil {
		return fmt.Errorf("prepare: %w", err)
	}
	if s.stPeer, err = s.r.PrepareContext(ctx, peerQuerySQL); err != nil {
		return fmt.Errorf("prepare: %w", err)
	}
	if s.stScan, err = s.r.PrepareContext(ctx, scanQuerySQL); err != nil {
		return fmt.Errorf("prepare: %w", err)
	}
	if s.stRecent, err = s.r.PrepareContext(ctx, recentQuerySQL); err != nil {
		return fmt.Errorf("prepare: %w", err)
	}
	return nil
}

// Close closes the database. Safe to call more than once.
func (s *Store) Close() error {
	var err error
	s.closeOnce.Do(func() {
		close(s.closed)
		if s.stop != nil {
			s.stop()
		}
		s.wg.Wait()
		for _, st := range []*sql.Stmt{s.stIndex, s.stPeer, s.stScan, s.stRecent} {
			if st != nil {
				err = errors.Join(err, st.Close())
			}
		}
		if s.r != nil {
			err = errors.Join(err, s.r.Close())
		}
		err = errors.Join(err, s.w.Close())
	})
	return err
}

func (s *Store) isClosed() bool {
	select {
	case <-s.closed:
		return true
	default:
		return false
	}
}

// Ping reports whether the database answers (readiness).
func (s *Store) Ping(ctx context.Context) error {
	if s.isClosed() {
		return ErrClosed
	}
	var n int
	if err := s.r.QueryRowContext(ctx, `SELECT count(*) FROM (SELECT 1 FROM peer_profiles LIMIT 1)`).Scan(&n); err != nil {
		return fmt.Errorf("directory: ping: %w", err)
	}
	return nil
}

// Register validates and upserts peerID's profile: registered_at is kept,
// display_name, relay_addr and last_seen (now, unix seconds) are replaced.
// It returns after the commit (synchronous=FULL: durable).
func (s *Store) Register(ctx context.Context, peerID, displayName, relayAddr string, now time.Time) error {
	if s.isClosed() {
		return ErrClosed
	}
	if peerID == "" {
		return ErrBadPeerID
	}
	name, err := NormalizeDisplayName(displayName)
	if err != nil {
		return err
	}
	if err := ValidateRelayAddr(relayAddr); err != nil {
		return err
	}
	ls := clampLS(now.Unix())
	// One autocommit statement: atomic, and committed when it returns.
	_, err = s.w.ExecContext(ctx, `INSERT INTO peer_profiles
        (rowid, peer_id, display_name, last_seen, registered_at, relay_addr)
        VALUES (`+nextSeqSQL+`, ?2, ?3, ?1, ?1, ?4)
        ON CONFLICT(peer_id) DO UPDATE SET
            rowid = excluded.rowid,
            display_name = excluded.display_name,
            last_seen = excluded.last_seen,
            relay_addr = excluded.relay_addr`,
		ls, peerID, name, relayAddr)
	if err != nil {
		return s.classify("register", err)
	}
	s.writes.Add(1)
	return nil
}

// Remove deletes peerID's profile; it reports whether one existed.
func (s *Store) Remove(ctx context.Context, peerID string) (bool, error) {
	if s.isClosed() {
		return false, ErrClosed
	}
	res, err := s.w.ExecContext(ctx, `DELETE FROM peer_profiles WHERE peer_id = ?1`, peerID)
	if err != nil {
		return false, s.classify("remove", err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return false, s.classify("remove", err)
	}
	if n > 0 {
		s.writes.Add(1)
	}
	return n > 0, nil
}

// Count returns the number of profiles.
func (s *Store) Count(ctx context.Context) (int64, error) {
	if s.isClosed() {
		return 0, ErrClosed
	}
	var n int64
	if err := s.r.QueryRowContext(ctx, `SELECT count(*) FROM peer_profiles`).Scan(&n); err != nil {
		return 0, s.classify("count", err)
	}
	return n, nil
}

// Get returns peerID's profile, or ok=false.
func (s *Store) Get(ctx context.Context, peerID string) (p Profile, registeredAt int64, ok bool, err error) {
	if s.isClosed() {
		return Profile{}, 0, false, ErrClosed
	}
	var ls int64
	err = s.r.QueryRowContext(ctx, `SELECT peer_id, display_name, last_seen, registered_at, relay_addr
        FROM peer_profiles WHERE peer_id = ?1`, peerID).Scan(&p.PeerID, &p.DisplayName, &ls, &registeredAt, &p.RelayAddr)
	if errors.Is(err, sql.ErrNoRows) {
		return Profile{}, 0, false, nil
	}
	if err != nil {
		return Profile{}, 0, false, s.classify("get", err)
	}
	p.LastSeen = uint64(max(ls, 0))
	return p, registeredAt, true, nil
}

// Search returns the profiles whose display name contains query (trimmed)
// as an ASCII-case-insensitive substring, or whose peer ID equals it;
// newest last_seen first, at most SearchLimit. '%' and '_' are literal.
//
// "Case-insensitive" is SQLite's LIKE folding: ASCII letters only, other
// characters compare exactly; that is what the Rust relay's
// `lower(display_name) LIKE lower(?)` did (SQLite's lower() is ASCII-only).
// Queries of 3+ code points use the trigram index, which folds case more
// broadly (Unicode) and so yields a superset; the same LIKE predicate then
// filters it, so both paths return identical rows.
func (s *Store) Search(ctx context.Context, query string) ([]Profile, error) {
	if s.isClosed() {
		return nil, ErrClosed
	}
	q := normalizeQuery(query)
	if q == "" {
		return []Profile{}, nil
	}
	n := utf8.RuneCountInString(q)
	switch {
	case n > MaxDisplayName || strings.ContainsRune(q, 0):
		// Longer than any name: only the peer ID can match (this also keeps
		// huge queries away from the FTS parser). A NUL cannot be in a
		// valid name and would cut LIKE patterns and FTS queries short.
		return s.searchPeerOnly(ctx, q)
	case n >= 3:
		return s.searchIndex(ctx, q)
	default:
		return s.searchRecent(ctx, q)
	}
}

// ShortScanRows bounds the rows a 1-2 character name search examines: the
// trigram index cannot serve it, and a query matching nothing would
// otherwise read the whole table (~0.3 s of CPU at 1M profiles). It looks
// at the most recently seen ShortScanRows profiles (newest first, as the
// results are ordered anyway); an exact peer-ID match is found anywhere.
const ShortScanRows = 100_000

// recentQuerySQL is scanQuerySQL restricted to the newest ?3 rows.
const recentQuerySQL = `SELECT ` + profileCols + ` FROM (
        SELECT ` + profileCols + ` FROM peer_profiles ORDER BY rowid DESC LIMIT ?3)
        WHERE ` + nameMatchSQL + `
        ORDER BY rowid DESC LIMIT 20`

// searchRecent is the bounded scan for 1-2 character queries, merged with
// the exact peer-ID match.
func (s *Store) searchRecent(ctx context.Context, q string) ([]Profile, error) {
	tx, err := s.r.BeginTx(ctx, nil) // one snapshot for both statements
	if err != nil {
		return nil, s.classify("search", err)
	}
	defer func() { _ = tx.Rollback() }()
	ks, err := s.searchRows(tx.StmtContext(ctx, s.stRecent).QueryContext(ctx, q, likeSubstring(q), s.shortScanRows))
	if err != nil {
		return nil, err
	}
	byID, err := s.searchRows(tx.StmtContext(ctx, s.stPeer).QueryContext(ctx, q))
	if err != nil {
		return nil, err
	}
	for _, k := range byID {
		ks = mergeKeyed(ks, k)
	}
	return strip(ks), nil
}

// EvictOldest deletes up to n profiles with the oldest last_seen and
// returns how many went.
func (s *Store) EvictOldest(ctx context.Context, n int) (int, error) {
	if s.isClosed() {
		return 0, ErrClosed
	}
	if n <= 0 {
		return 0, nil
	}
	// rowid order is last_seen order (see seqShift): one b-tree walk.
	res, err := s.w.ExecContext(ctx, `DELETE FROM peer_profiles WHERE rowid IN
        (SELECT rowid FROM peer_profiles ORDER BY rowid LIMIT ?1)`, n)
	if err != nil {
		return 0, s.classify("evict", err)
	}
	return s.deleted(res, "evict")
}

// ExpireBefore deletes up to batch profiles whose last_seen is before
// cutoff and returns how many went; callers repeat while it returns batch,
// so the write lock is released between batches.
func (s *Store) ExpireBefore(ctx context.Context, cutoff time.Time, batch int) (int, error) {
	if s.isClosed() {
		return 0, ErrClosed
	}
	ls := clampLS(cutoff.Unix())
	// The rowid range finds the candidates without a last_seen index;
	// the last_seen test keeps a row another program wrote (rowid not yet
	// renumbered) from going early.
	res, err := s.w.ExecContext(ctx, `DELETE FROM peer_profiles WHERE rowid IN
        (SELECT rowid FROM peer_profiles WHERE rowid < (?1 << 24) AND last_seen < ?1 ORDER BY rowid LIMIT ?2)`, ls, batch)
	if err != nil {
		return 0, s.classify("expire", err)
	}
	return s.deleted(res, "expire")
}

func (s *Store) deleted(res sql.Result, op string) (int, error) {
	n, err := res.RowsAffected()
	if err != nil {
		return 0, s.classify(op, err)
	}
	if n > 0 {
		s.writes.Add(n)
	}
	return int(n), nil
}

// likeSubstring is the LIKE pattern matching q as a literal substring.
func likeSubstring(q string) string {
	return "%" + strings.NewReplacer(`\`, `\\`, `%`, `\%`, `_`, `\_`).Replace(q) + "%"
}

// nameMatchSQL is the one definition of a name match, shared by both paths.
const nameMatchSQL = `display_name LIKE ?2 ESCAPE '\'`

const profileCols = `rowid, peer_id, display_name, last_seen, relay_addr`

type keyed struct {
	key int64
	p   Profile
}

func scanProfiles(rows *sql.Rows, out []keyed) ([]keyed, error) {
	defer func() { _ = rows.Close() }()
	for rows.Next() {
		var k keyed
		var ls int64
		if err := rows.Scan(&k.key, &k.p.PeerID, &k.p.DisplayName, &ls, &k.p.RelayAddr); err != nil {
			return nil, err
		}
		k.p.LastSeen = uint64(max(ls, 0))
		out = append(out, k)
	}
	return out, rows.Err()
}

func strip(ks []keyed) []Profile {
	out := make([]Profile, len(ks))
	for i, k := range ks {
		out[i] = k.p
	}
	return out
}

const (
	peerQuerySQL = `SELECT ` + profileCols + ` FROM peer_profiles WHERE peer_id = ?1`
	scanQuerySQL = `SELECT ` + profileCols + ` FROM peer_profiles
        WHERE ` + nameMatchSQL + ` OR peer_id = ?1
        ORDER BY rowid DESC LIMIT 20`
)

// searchScan is the plain scan: walks the table newest-first (rowid order)
// and stops at the 20th match. It is the reference both bounded paths are
// tested against.
func (s *Store) searchScan(ctx context.Context, q string) ([]Profile, error) {
	if q == "" {
		return []Profile{}, nil // LIKE '%%' would match everything
	}
	ks, err := s.searchRows(s.stScan.QueryContext(ctx, q, likeSubstring(q)))
	if err != nil {
		return nil, err
	}
	return strip(ks), nil
}

func (s *Store) searchPeerOnly(ctx context.Context, q string) ([]Profile, error) {
	ks, err := s.searchRows(s.stPeer.QueryContext(ctx, q))
	if err != nil {
		return nil, err
	}
	return strip(ks), nil
}

// ftsPhrase quotes q as one FTS5 phrase: every character literal.
func ftsPhrase(q string) string { return `"` + strings.ReplaceAll(q, `"`, `""`) + `"` }

// indexQuerySQL drives the join from the FTS table in descending rowid
// order (which FTS5 serves natively, so there is no sort and the LIMIT
// stops the walk early) and filters candidates with the exact predicate.
const indexQuerySQL = `SELECT p.rowid, p.peer_id, p.display_name, p.last_seen, p.relay_addr
        FROM peer_profiles_fts f JOIN peer_profiles p ON p.rowid = f.rowid
        WHERE peer_profiles_fts MATCH ?1 AND p.` + nameMatchSQL + `
        ORDER BY f.rowid DESC LIMIT 20`

// searchIndex walks the trigram index in rowid (= result) order and stops
// at the 20th exact match; the peer-ID match is merged in.
func (s *Store) searchIndex(ctx context.Context, q string) ([]Profile, error) {
	tx, err := s.r.BeginTx(ctx, nil) // one snapshot for both statements
	if err != nil {
		return nil, s.classify("search", err)
	}
	defer func() { _ = tx.Rollback() }()
	ks, err := s.searchRows(tx.StmtContext(ctx, s.stIndex).QueryContext(ctx, ftsPhrase(q), likeSubstring(q)))
	if err != nil {
		return nil, err
	}
	byID, err := s.searchRows(tx.StmtContext(ctx, s.stPeer).QueryContext(ctx, q))
	if err != nil {
		return nil, err
	}
	for _, k := range byID {
		ks = mergeKeyed(ks, k)
	}
	return strip(ks), nil
}

// searchRows reads the profiles of one search query (called with the
// query's results); every failure is a classified "search" error.
func (s *Store) searchRows(rows *sql.Rows, err error) ([]keyed, error) {
	if err != nil {
		return nil, s.classify("search", err)
	}
	ks, err := scanProfiles(rows, nil)
	if err != nil {
		return nil, s.classify("search", err)
	}
	return ks, nil
}

// mergeKeyed inserts k into ks (sorted by key, descending) unless present,
// keeping at most SearchLimit entries.
func mergeKeyed(ks []keyed, k keyed) []keyed {
	i := 0
	for i < len(ks) && ks[i].key > k.key {
		i++
	}
	if i < len(ks) && ks[i].key == k.key {
		return ks // already a name match
	}
	if i >= SearchLimit {
		return ks
	}
	ks = append(ks, keyed{})
	copy(ks[i+1:], ks[i:])
	ks[i] = k
	if len(ks) > SearchLimit {
		ks = ks[:SearchLimit]
	}
	return ks
}

// searchRustLike is the Rust relay's query, kept for the benchmark
// baseline only (it treats % and _ as wildcards).
func (s *Store) searchRustLike(ctx context.Context, q string) ([]Profile, error) {
	q = normalizeQuery(q)
	ks, err := s.searchRows(s.r.QueryContext(ctx, `SELECT `+profileCols+` FROM peer_profiles
        WHERE lower(display_name) LIKE lower(?1) OR peer_id = ?2
        ORDER BY last_seen DESC LIMIT 20`, "%"+q+"%", q))
	if err != nil {
		return nil, err
	}
	return strip(ks), nil
}
