package directory

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"

	"github.com/jackc/pgx/v5"
)

// ImportStats reports one ImportSQLite run.
type ImportStats struct {
	Read    int64 // rows in the SQLite file
	Written int64 // rows inserted or updated in PostgreSQL
	Skipped int64 // rows PostgreSQL cannot hold (NUL or invalid UTF-8)
}

// importChunk rows go per transaction: bounded memory, and a failure
// loses at most one chunk's progress (a re-run redoes it).
const importChunk = 10_000

// ImportSQLite copies every profile of the SQLite directory file at
// sqlitePath (ours or the Rust relay's) into dst, keeping registered_at
// and last_seen. It is idempotent: a row already in PostgreSQL is replaced
// only when the file's last_seen is newer (a relay on the cluster may
// have seen the peer since), and registered_at becomes the earlier of the
// two. Rows are written oldest first, so profiles seen in the same second
// keep their relative order. The file is opened read-only and not
// migrated; a relay may still be running on it.
func ImportSQLite(ctx context.Context, sqlitePath string, dst *PGStore) (ImportStats, error) {
	var st ImportStats
	if _, err := os.Stat(sqlitePath); err != nil {
		return st, fmt.Errorf("directory import: %w", err)
	}
	q := url.Values{}
	q.Add("_pragma", "query_only(1)")
	q.Add("_pragma", fmt.Sprintf("busy_timeout(%d)", busyTimeout.Milliseconds()))
	if strings.ContainsRune(sqlitePath, '?') {
		return st, fmt.Errorf("directory import: unusable path %q", sqlitePath)
	}
	src, err := sql.Open("sqlite", sqlitePath+"?"+q.Encode())
	if err != nil {
		return st, fmt.Errorf("directory import: open %s: %w", sqlitePath, err)
	}
	defer func() { _ = src.Close() }()
	src.SetMaxOpenConns(1)
	var hasRelayAddr int
	if err := src.QueryRowContext(ctx,
		`SELECT count(*) FROM pragma_table_info('peer_profiles') WHERE name = 'relay_addr'`).Scan(&hasRelayAddr); err != nil {
		return st, fmt.Errorf("directory import: read %s: %w", sqlitePath, err)
	}
	var tables int
	if err := src.QueryRowContext(ctx,
		`SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'peer_profiles'`).Scan(&tables); err != nil || tables == 0 {
		return st, fmt.Errorf("directory import: %s has no peer_profiles table (%w)", sqlitePath, errors.Join(err, ErrCorrupt))
	}
	relayCol := "''"
	if hasRelayAddr > 0 {
		relayCol = "relay_addr"
	}
	// One read transaction: a consistent snapshot while a relay writes.
	tx, err := src.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return st, fmt.Errorf("directory import: %w", err)
	}
	defer func() { _ = tx.Rollback() }()
	rows, err := tx.QueryContext(ctx, `SELECT peer_id, display_name, last_seen, registered_at, `+relayCol+`
        FROM peer_profiles ORDER BY `+clampSQL+`, rowid`)
	if err != nil {
		return st, fmt.Errorf("directory import: read %s: %w", sqlitePath, err)
	}
	defer func() { _ = rows.Close() }()
	chunk := make([][]any, 0, importChunk)
	flush := func() error {
		if len(chunk) == 0 {
			return nil
		}
		n, err := dst.importRows(ctx, chunk)
		st.Written += n
		chunk = chunk[:0]
		return err
	}
	for rows.Next() {
		var id, name, relay string
		var ls, regAt int64
		if err := rows.Scan(&id, &name, &ls, &regAt, &relay); err != nil {
			return st, fmt.Errorf("directory import: read %s: %w", sqlitePath, err)
		}
		st.Read++
		if id == "" || !storable(id) || !storable(name) || !storable(relay) {
			st.Skipped++
			continue
		}
		chunk = append(chunk, []any{int64(len(chunk)), id, name, clampLS(ls), regAt, relay})
		if len(chunk) == importChunk {
			if err := flush(); err != nil {
				return st, err
			}
		}
	}
	if err := rows.Err(); err != nil {
		return st, fmt.Errorf("directory import: read %s: %w", sqlitePath, err)
	}
	return st, flush()
}

// importRows upserts one chunk (ord, peer_id, display_name, last_seen,
// registered_at, relay_addr) in one transaction: COPY into a temporary
// table, then one INSERT ... ON CONFLICT in ord order (seq follows it).
func (s *PGStore) importRows(ctx context.Context, chunk [][]any) (int64, error) {
	const newer = `excluded.last_seen > peer_profiles.last_seen`
	var n int64
	err := s.do(ctx, "import", func(ctx context.Context) error {
		return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, `CREATE TEMPORARY TABLE IF NOT EXISTS dusk_import (
                ord BIGINT, peer_id TEXT, display_name TEXT, last_seen BIGINT, registered_at BIGINT, relay_addr TEXT
            ) ON COMMIT DELETE ROWS`); err != nil {
				return err
			}
			if _, err := tx.CopyFrom(ctx, pgx.Identifier{"dusk_import"},
				[]string{"ord", "peer_id", "display_name", "last_seen", "registered_at", "relay_addr"},
				pgx.CopyFromRows(chunk)); err != nil {
				return err
			}
			tag, err := tx.Exec(ctx, `INSERT INTO peer_profiles
                (peer_id, display_name, last_seen, registered_at, relay_addr, seq)
                SELECT peer_id, display_name, last_seen, registered_at, relay_addr, nextval('peer_profiles_seq')
                FROM (SELECT * FROM dusk_import ORDER BY ord) i
                ON CONFLICT (peer_id) DO UPDATE SET
                    display_name = CASE WHEN `+newer+` THEN excluded.display_name ELSE peer_profiles.display_name END,
                    relay_addr = CASE WHEN `+newer+` THEN excluded.relay_addr ELSE peer_profiles.relay_addr END,
                    seq = CASE WHEN `+newer+` THEN excluded.seq ELSE peer_profiles.seq END,
                    last_seen = greatest(peer_profiles.last_seen, excluded.last_seen),
                    registered_at = least(peer_profiles.registered_at, excluded.registered_at)
                WHERE `+newer+` OR excluded.registered_at < peer_profiles.registered_at`)
			n = tag.RowsAffected()
			return err
		})
	})
	return n, err
}
