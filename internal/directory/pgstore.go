package directory

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"
)

// ErrUnavailable means the database engine could not be reached (down,
// restarting, connection cut). The store reconnects by itself; the caller
// answers its protocol's typed error meanwhile.
var ErrUnavailable = errors.New("directory: database unavailable")

// PGStore is the directory in PostgreSQL, shared by every relay of a
// cluster. It gives the same answers as Store on the same data.
//
// Search mirrors Store's rules exactly:
//   - ASCII-only case folding (SQLite's LIKE): name_fold is display_name
//     with A-Z mapped to a-z, a generated column; queries are folded the
//     same way and matched case-sensitively against it;
//   - '%', '_' and '\' are literal (escaped for LIKE; strpos needs none);
//   - order: last_seen descending, then most recent write first (seq, from
//     a sequence on every upsert, plays the role of Store's rowid
//     sequence within a second).
type PGStore struct {
	pool   *pgxpool.Pool
	log    *zap.Logger
	secret string // the URL's password, scrubbed from every error text

	schemaMu sync.Mutex
	schemaOK atomic.Bool

	// shortScanRows is ShortScanRows, recentRows RecentRows (tests
	// change them to reach every path with little data).
	shortScanRows, recentRows int

	lastWarn  atomic.Int64 // unix nanos of the last "unavailable" warning
	closeOnce sync.Once
	closed    atomic.Bool
}

// pgSchemaLock serialises schema migration between relays starting at the
// same time (concurrent CREATE ... IF NOT EXISTS can still collide in the
// catalog). Any constant works; this one spells "dusk-dir".
const pgSchemaLock = 0x6475736b2d646972

// The schema. Columns and their meaning are the SQLite file's; seq and
// name_fold exist for ordering and for matching (see PGStore).
var pgSchema = []string{
	`CREATE EXTENSION IF NOT EXISTS pg_trgm`,
	`CREATE SEQUENCE IF NOT EXISTS peer_profiles_seq`,
	`CREATE TABLE IF NOT EXISTS peer_profiles (
    peer_id       TEXT PRIMARY KEY,
    display_name  TEXT NOT NULL,
    last_seen     BIGINT NOT NULL,
    registered_at BIGINT NOT NULL,
    relay_addr    TEXT NOT NULL DEFAULT ''
)`,
	`ALTER TABLE peer_profiles ADD COLUMN IF NOT EXISTS relay_addr TEXT NOT NULL DEFAULT ''`,
	`ALTER TABLE peer_profiles ADD COLUMN IF NOT EXISTS seq BIGINT NOT NULL DEFAULT nextval('peer_profiles_seq')`,
	`ALTER TABLE peer_profiles ADD COLUMN IF NOT EXISTS name_fold TEXT
    GENERATED ALWAYS AS (` + foldSQL("display_name") + `) STORED`,
	// Substring search: see keyOf. pg_trgm extracts trigrams with the
	// database's ctype: with LC_CTYPE=C, non-ASCII letters yield none and
	// such patterns fall back to walking last_seen (still correct);
	// C.UTF-8 indexes them.
	`DROP INDEX IF EXISTS peer_profiles_name_trgm`,
	`DROP INDEX IF EXISTS peer_profiles_name_key_trgm`,
	`DROP INDEX IF EXISTS peer_profiles_key_trgm`,
	// Stored, so the index recheck of each candidate is a plain LIKE.
	`ALTER TABLE peer_profiles ADD COLUMN IF NOT EXISTS name_key TEXT
    GENERATED ALWAYS AS (` + keyOf(foldSQL("display_name")) + `) STORED`,
	`CREATE INDEX IF NOT EXISTS peer_profiles_name_key_trgm ON peer_profiles USING gin (name_key gin_trgm_ops)`,
	// Result order, and the walk for short or very common patterns.
	`CREATE INDEX IF NOT EXISTS peer_profiles_last_seen ON peer_profiles (last_seen DESC, seq DESC)`,
}

// The trigram key. pg_trgm only takes trigrams from runs of letters and
// digits, so a pattern such as "a-%", "e_1" or "o🦀🦀" gives it little or
// nothing to look up and the search reads the whole table (the SQLite
// store's FTS5 trigrams cover every character). The index is therefore
// built on a key of name_fold in which each printable ASCII
// non-alphanumeric character (space included) becomes its own Georgian
// letter and any other character that is not a letter or digit (emoji,
// symbols) becomes one more letter. The query's key is computed by the
// same SQL expression, so both always agree. A name can really contain
// those letters, so the exact predicate on name_fold always follows: the
// key only narrows the candidates.
const (
	keyFrom  = " !\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"
	keyTo    = "აბგდევზთიკლმნოპჟრსტუფქღყშჩცძწჭხჯჰ"
	keyOther = "ჸ"
)

// keyOf is the SQL expression of the key of the folded text expression x.
func keyOf(x string) string {
	return `regexp_replace(translate(` + x + `, '` + strings.ReplaceAll(keyFrom, "'", "''") + `', '` + keyTo +
		`'), '[^[:alnum:]]', '` + keyOther + `', 'g')`
}

// foldSQL folds the text expression x as name_fold is folded.
func foldSQL(x string) string {
	return `translate(` + x + `, 'ABCDEFGHIJKLMNOPQRSTUVWXYZ', 'abcdefghijklmnopqrstuvwxyz')`
}

// OpenPG connects to the PostgreSQL directory at rawURL (postgres:// or
// postgresql://) and creates or migrates the schema. An engine that does
// not answer at start is not fatal: the store is returned, every call
// answers ErrUnavailable and the schema is created on the first call that
// reaches the engine. Other failures (bad URL, missing privileges) are.
// Errors never contain the URL's password.
func OpenPG(ctx context.Context, rawURL string, log *zap.Logger) (*PGStore, error) {
	if log == nil {
		log = zap.NewNop()
	}
	secret := ""
	if u, err := url.Parse(rawURL); err == nil && u.User != nil {
		secret, _ = u.User.Password()
	}
	cfg, err := pgxpool.ParseConfig(rawURL)
	if err != nil {
		return nil, redact(fmt.Errorf("directory: postgres URL: %w", err), secret)
	}
	// Custom plans on every execution: a cached generic plan cannot see
	// the pattern, and for a rare one it walks the whole last_seen index
	// (seconds at 1M profiles) instead of using the trigram index.
	cfg.ConnConfig.RuntimeParams["plan_cache_mode"] = "force_custom_plan"
	if cfg.ConnConfig.RuntimeParams["application_name"] == "" {
		cfg.ConnConfig.RuntimeParams["application_name"] = "dusk-relay"
	}
	if cfg.ConnConfig.ConnectTimeout == 0 {
		cfg.ConnConfig.ConnectTimeout = 5 * time.Second
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, redact(fmt.Errorf("directory: postgres: %w", err), secret)
	}
	s := &PGStore{pool: pool, log: log, secret: secret, shortScanRows: ShortScanRows, recentRows: RecentRows}
	start := time.Now()
	mctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := s.ensureSchema(mctx); err != nil {
		if !errors.Is(err, ErrUnavailable) {
			pool.Close()
			return nil, err
		}
		log.Warn("directory: PostgreSQL unreachable at start; directory requests fail until it answers", zap.Error(err))
		return s, nil
	}
	log.Info("directory db opened", zap.String("engine", "postgres"),
		zap.String("database", cfg.ConnConfig.Database), zap.Duration("took", time.Since(start)))
	return s, nil
}

// ensureSchema runs the migration once per store, on the first call that
// reaches the engine.
func (s *PGStore) ensureSchema(ctx context.Context) error {
	if s.schemaOK.Load() {
		return nil
	}
	s.schemaMu.Lock()
	defer s.schemaMu.Unlock()
	if s.schemaOK.Load() {
		return nil
	}
	var ctype string
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, int64(pgSchemaLock)); err != nil {
			return err
		}
		if err := tx.QueryRow(ctx, `SELECT datctype FROM pg_database WHERE datname = current_database()`).Scan(&ctype); err != nil {
			return err
		}
		for _, stmt := range pgSchema {
			if _, err := tx.Exec(ctx, stmt); err != nil {
				return fmt.Errorf("%s: %w", firstLine(stmt), err)
			}
		}
		return nil
	})
	if err != nil {
		return s.classify("migrate", err)
	}
	if !utf8Ctype(ctype) {
		s.log.Warn("directory: the database's LC_CTYPE is not UTF-8: searches for non-ASCII names cannot use the trigram index and read the whole table (create the database with LC_CTYPE 'C.UTF-8')",
			zap.String("lc_ctype", ctype))
	}
	s.schemaOK.Store(true)
	return nil
}

// utf8Ctype reports whether a database ctype classifies non-ASCII
// letters (C.UTF-8, en_US.utf8, ...); C and POSIX do not.
func utf8Ctype(ctype string) bool {
	c := strings.ToLower(ctype)
	return strings.Contains(c, "utf8") || strings.Contains(c, "utf-8")
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

// Engine names the storage engine (readiness check, logs).
func (s *PGStore) Engine() string { return "postgres" }

// Close closes the pool. Safe to call more than once.
func (s *PGStore) Close() error {
	s.closeOnce.Do(func() {
		s.closed.Store(true)
		s.pool.Close()
	})
	return nil
}

// classify maps an engine error to the store's typed errors: anything
// that says the engine is unreachable wraps ErrUnavailable; the rest is
// a storage error naming the operation. The password never appears.
func (s *PGStore) classify(op string, err error) error {
	if s.closed.Load() {
		return ErrClosed
	}
	if isUnavailable(err) {
		s.warnUnavailable(op, err)
		return redact(fmt.Errorf("%w: %s: %w", ErrUnavailable, op, err), s.secret)
	}
	return redact(fmt.Errorf("directory: %s (postgres): %w", op, err), s.secret)
}

// warnUnavailable logs an outage at most once per 30 s: requests during
// an outage must not multiply log lines.
func (s *PGStore) warnUnavailable(op string, err error) {
	now := time.Now().UnixNano()
	last := s.lastWarn.Load()
	if now-last < int64(30*time.Second) || !s.lastWarn.CompareAndSwap(last, now) {
		return
	}
	s.log.Warn("directory: PostgreSQL unavailable", zap.String("op", op), zap.Error(redact(err, s.secret)))
}

// isUnavailable reports connection-level failures: the request may succeed
// once the engine answers again.
func isUnavailable(err error) bool {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		switch {
		case strings.HasPrefix(pe.Code, "08"), // connection exception
			pe.Code == "57P01", pe.Code == "57P02", pe.Code == "57P03", // shutdown, crash, starting up
			pe.Code == "53300": // too many connections
			return true
		}
		return false
	}
	var ce *pgconn.ConnectError
	var ne net.Error
	return errors.As(err, &ce) || errors.As(err, &ne) || pgconn.Timeout(err) || pgconn.SafeToRetry(err) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) ||
		errors.Is(err, context.DeadlineExceeded)
}

// redactedError hides a secret in an error's text but keeps the chain
// for errors.Is/As.
type redactedError struct {
	err    error
	secret string
}

func (e *redactedError) Error() string {
	return strings.ReplaceAll(e.err.Error(), e.secret, "xxxxx")
}

func (e *redactedError) Unwrap() error { return e.err }

func redact(err error, secret string) error {
	if err == nil || secret == "" {
		return err
	}
	return &redactedError{err: err, secret: secret}
}

// do runs fn once the schema exists. A connection failure means the
// pooled connections may all be dead (server restart, failover,
// pg_terminate_backend): the pool drops them and fn is retried once on a
// fresh connection, so an engine that is back is invisible to the caller.
func (s *PGStore) do(ctx context.Context, op string, fn func(ctx context.Context) error) error {
	if s.closed.Load() {
		return ErrClosed
	}
	if err := s.ensureSchema(ctx); err != nil {
		return err
	}
	err := fn(ctx)
	if err != nil && isUnavailable(err) && ctx.Err() == nil && !s.closed.Load() {
		s.pool.Reset()
		err = fn(ctx)
	}
	if err != nil {
		return s.classify(op, err)
	}
	return nil
}

// Ping reports whether the engine answers and the table exists (readiness).
func (s *PGStore) Ping(ctx context.Context) error {
	return s.do(ctx, "ping", func(ctx context.Context) error {
		var n int
		return s.pool.QueryRow(ctx, `SELECT count(*) FROM (SELECT 1 FROM peer_profiles LIMIT 1) t`).Scan(&n)
	})
}

// storable reports whether PostgreSQL can hold s as text (UTF-8, no NUL).
// Registered names and peer IDs always are, so a query that is not can
// match nothing.
func storable(s string) bool { return utf8.ValidString(s) && !strings.ContainsRune(s, 0) }

// Register validates and upserts peerID's profile, as Store.Register.
func (s *PGStore) Register(ctx context.Context, peerID, displayName, relayAddr string, now time.Time) error {
	if s.closed.Load() {
		return ErrClosed
	}
	if peerID == "" || !storable(peerID) {
		return ErrBadPeerID
	}
	name, err := NormalizeDisplayName(displayName)
	if err != nil {
		return err
	}
	if err := ValidateRelayAddr(relayAddr); err != nil {
		return err
	}
	if !storable(relayAddr) {
		return ErrRelayAddrInvalid
	}
	ls := clampLS(now.Unix())
	return s.do(ctx, "register", func(ctx context.Context) error {
		_, err := s.pool.Exec(ctx, `INSERT INTO peer_profiles
        (peer_id, display_name, last_seen, registered_at, relay_addr, seq)
        VALUES ($1, $2, $3, $3, $4, nextval('peer_profiles_seq'))
        ON CONFLICT (peer_id) DO UPDATE SET
            display_name = excluded.display_name,
            last_seen = excluded.last_seen,
            relay_addr = excluded.relay_addr,
            seq = excluded.seq`, peerID, name, ls, relayAddr)
		return err
	})
}

// Remove deletes peerID's profile; it reports whether one existed.
func (s *PGStore) Remove(ctx context.Context, peerID string) (bool, error) {
	if s.closed.Load() {
		return false, ErrClosed
	}
	if !storable(peerID) {
		return false, nil
	}
	var n int64
	err := s.do(ctx, "remove", func(ctx context.Context) error {
		tag, err := s.pool.Exec(ctx, `DELETE FROM peer_profiles WHERE peer_id = $1`, peerID)
		n = tag.RowsAffected()
		return err
	})
	return n > 0, err
}

// Count returns the number of profiles.
func (s *PGStore) Count(ctx context.Context) (int64, error) {
	var n int64
	err := s.do(ctx, "count", func(ctx context.Context) error {
		return s.pool.QueryRow(ctx, `SELECT count(*) FROM peer_profiles`).Scan(&n)
	})
	return n, err
}

// Get returns peerID's profile, or ok=false.
func (s *PGStore) Get(ctx context.Context, peerID string) (p Profile, registeredAt int64, ok bool, err error) {
	if s.closed.Load() {
		return Profile{}, 0, false, ErrClosed
	}
	if !storable(peerID) {
		return Profile{}, 0, false, nil
	}
	err = s.do(ctx, "get", func(ctx context.Context) error {
		var ls int64
		err := s.pool.QueryRow(ctx, `SELECT peer_id, display_name, last_seen, registered_at, relay_addr
        FROM peer_profiles WHERE peer_id = $1`, peerID).Scan(&p.PeerID, &p.DisplayName, &ls, &registeredAt, &p.RelayAddr)
		if errors.Is(err, pgx.ErrNoRows) {
			ok = false
			return nil
		}
		if err != nil {
			return err
		}
		p.LastSeen, ok = uint64(max(ls, 0)), true
		return nil
	})
	if err != nil || !ok {
		return Profile{}, 0, false, err
	}
	return p, registeredAt, true, nil
}

const pgProfileCols = `peer_id, display_name, last_seen, relay_addr`

// The search statements. The name match and the exact peer-ID match are
// separate branches of one statement (one snapshot, one round trip), so
// each branch uses its own index: an OR would force one plan for both.
//
// Index path (3+ characters). Two name branches: "recent" filters the newest recentRows profiles, walking
// the last_seen index; when it finds SearchLimit matches they are the
// answer (no older row can rank before them) and the second branch is
// skipped by its one-time condition. Otherwise the second branch looks
// the key up in the trigram index, checks the exact predicate and sorts
// the matches. A common pattern thus costs a short walk instead of
// fetching and sorting thousands of matches; a rare one costs one walk
// of RecentRows plus an index lookup. The planner cannot be left to pick
// between the two: its estimate for a leading-% LIKE is a constant.
var pgIndexSQL = `WITH recent AS (
    SELECT ` + pgProfileCols + `, seq FROM (
        SELECT ` + pgProfileCols + `, seq, name_fold FROM peer_profiles ORDER BY last_seen DESC, seq DESC LIMIT $3
    ) r WHERE name_fold LIKE $2` + pgOrder + `
)
SELECT ` + pgProfileCols + ` FROM (
    SELECT * FROM recent
    UNION
    (SELECT ` + pgProfileCols + `, seq FROM peer_profiles
        WHERE (SELECT count(*) FROM recent) < ` + fmt.Sprint(SearchLimit) + `
        AND name_key LIKE '%' || ` + keyOf(foldSQL("$1::text")) + ` || '%'
        AND name_fold LIKE $2` + pgOrder + `)
    UNION
    (SELECT ` + pgProfileCols + `, seq FROM peer_profiles WHERE peer_id = $1)
) m` + pgOrder

// RecentRows bounds the first branch of pgIndexSQL: a pattern matching
// at least 1 profile in 250 is answered from it. At 1M profiles the walk
// costs ~0.2 µs per row (index order is insertion order: hot, adjacent
// pages) and the trigram branch ~5 µs per match (scattered heap rows,
// recheck, sort), so 5,000 rows (~1 ms, paid by every rare pattern) cap
// the trigram branch at ~4,000 matches.
const RecentRows = 5000

const (
	pgOrder = ` ORDER BY last_seen DESC, seq DESC LIMIT 20`
	// Scan path for 1-2 character queries (no trigram to look up): as in
	// Store, only the newest ShortScanRows profiles are examined (walking
	// the last_seen index, stopping at the 20th match); strpos compares
	// literally and has no index support.
	pgScanSQL = `SELECT ` + pgProfileCols + ` FROM (
    (SELECT ` + pgProfileCols + `, seq FROM (
        SELECT ` + pgProfileCols + `, seq, name_fold FROM peer_profiles ORDER BY last_seen DESC, seq DESC LIMIT $3
    ) r WHERE strpos(name_fold, $2) > 0` + pgOrder + `)
    UNION
    (SELECT ` + pgProfileCols + `, seq FROM peer_profiles WHERE peer_id = $1)
) m` + pgOrder
	pgPeerSQL = `SELECT ` + pgProfileCols + ` FROM peer_profiles WHERE peer_id = $1`
)

// foldASCII maps A-Z to a-z and leaves every other character alone, as
// SQLite's LIKE and the name_fold column do.
func foldASCII(s string) string {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c >= 'A' && c <= 'Z' {
			b := []byte(s)
			for j := i; j < len(b); j++ {
				if b[j] >= 'A' && b[j] <= 'Z' {
					b[j] += 'a' - 'A'
				}
			}
			return string(b)
		}
	}
	return s
}

// Search has Store.Search's contract: the trimmed query as an
// ASCII-case-insensitive literal substring of the name, or the exact peer
// ID; newest last_seen first; at most SearchLimit.
func (s *PGStore) Search(ctx context.Context, query string) ([]Profile, error) {
	if s.closed.Load() {
		return nil, ErrClosed
	}
	q := normalizeQuery(query)
	if q == "" || !storable(q) {
		return []Profile{}, nil
	}
	var (
		sqlText string
		args    []any
	)
	switch n := utf8.RuneCountInString(q); {
	case n > MaxDisplayName:
		sqlText, args = pgPeerSQL, []any{q}
	case n >= 3:
		sqlText, args = pgIndexSQL, []any{q, likeSubstring(foldASCII(q)), s.recentRows}
	default:
		sqlText, args = pgScanSQL, []any{q, foldASCII(q), s.shortScanRows}
	}
	var out []Profile
	err := s.do(ctx, "search", func(ctx context.Context) error {
		rows, err := s.pool.Query(ctx, sqlText, args...)
		if err != nil {
			return err
		}
		out, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (Profile, error) {
			var p Profile
			var ls int64
			err := row.Scan(&p.PeerID, &p.DisplayName, &ls, &p.RelayAddr)
			p.LastSeen = uint64(max(ls, 0))
			return p, err
		})
		return err
	})
	if err != nil {
		return nil, err
	}
	if out == nil {
		out = []Profile{}
	}
	return out, nil
}

// EvictOldest deletes up to n profiles with the oldest last_seen (oldest
// write first within a second, as Store) and returns how many went.
func (s *PGStore) EvictOldest(ctx context.Context, n int) (int, error) {
	if n <= 0 {
		return 0, s.closedErr()
	}
	var deleted int64
	err := s.do(ctx, "evict", func(ctx context.Context) error {
		tag, err := s.pool.Exec(ctx, `DELETE FROM peer_profiles WHERE peer_id IN
        (SELECT peer_id FROM peer_profiles ORDER BY last_seen, seq LIMIT $1)`, n)
		deleted = tag.RowsAffected()
		return err
	})
	return int(deleted), err
}

// ExpireBefore deletes up to batch profiles whose last_seen is before
// cutoff and returns how many went; callers repeat while it returns batch.
func (s *PGStore) ExpireBefore(ctx context.Context, cutoff time.Time, batch int) (int, error) {
	ls := clampLS(cutoff.Unix())
	var deleted int64
	err := s.do(ctx, "expire", func(ctx context.Context) error {
		tag, err := s.pool.Exec(ctx, `DELETE FROM peer_profiles WHERE peer_id IN
        (SELECT peer_id FROM peer_profiles WHERE last_seen < $1 ORDER BY last_seen, seq LIMIT $2)`, ls, batch)
		deleted = tag.RowsAffected()
		return err
	})
	return int(deleted), err
}

func (s *PGStore) closedErr() error {
	if s.closed.Load() {
		return ErrClosed
	}
	return nil
}
