package directory

import "context"

// Storage is a Backend as the composition root holds it: opened from the
// configuration, checked by /readyz, closed at shutdown. Store (embedded
// SQLite, one relay) and PGStore (PostgreSQL, shared by a cluster) give
// identical answers on the same data (see the parity tests).
type Storage interface {
	Backend
	// Ping reports whether the engine answers (readiness).
	Ping(ctx context.Context) error
	// Engine names the storage engine: "sqlite" or "postgres".
	Engine() string
	Close() error
}

var (
	_ Storage = (*Store)(nil)
	_ Storage = (*PGStore)(nil)
)

// Engine names the storage engine.
func (s *Store) Engine() string { return "sqlite" }
