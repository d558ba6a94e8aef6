package rendezvous

import (
	"context"
	"errors"
	"net/netip"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

// ErrUnavailable wraps every failure to reach the store's engine (Redis
// down, timed out): the handler answers E_UNAVAILABLE and nothing else of
// the relay is affected.
var ErrUnavailable = errors.New("rendezvous: registration store unavailable")

// errDiscoverAll: the shared store keeps no cross-namespace order (ids
// come from one counter per namespace, so that Redis Cluster can shard by
// namespace); config refuses DUSK_RENDEZVOUS_DISCOVER_ALL with Redis.
var errDiscoverAll = errors.New("rendezvous: discover without a namespace is not supported by the shared store")

// evictedReg describes a registration removed to make room for another.
type evictedReg struct {
	peer peer.ID
	ns   string
	src  netip.Prefix
}

// backend is where registrations live: the in-memory table of one relay,
// or Redis shared by every relay of a cluster. Both apply the same
// validation-independent rules: replace on re-register by the same peer
// and namespace, ids increasing per namespace, the budgets of limits, and
// expiry at the given absolute times (the Server's clock).
type backend interface {
	// add inserts or replaces p's registration under ns.
	add(ctx context.Context, p peer.ID, src netip.Prefix, ns string, record []byte, expires, now time.Time) (replaced bool, evicted []evictedReg, err error)
	// unregister removes p's registration under ns ("" = all of p's).
	unregister(ctx context.Context, p peer.ID, ns string) (int, error)
	// discover pages live registrations of ns after id, see store.discover.
	discover(ctx context.Context, ns string, after uint64, limit, maxBytes int, now time.Time) ([]hit, error)
	// expire drops registrations expired at now; it returns how many.
	expire(ctx context.Context, now time.Time) (int, error)
	// stats returns the live registrations and their budget bytes.
	stats(ctx context.Context, now time.Time) (count, bytes int, err error)
	// ping reports whether the engine answers (readiness).
	ping(ctx context.Context) error
	// engine names the storage for /readyz and logs.
	engine() string
}

// memBackend is the in-memory store behind the Server's mutex.
type memBackend struct {
	mu *sync.Mutex
	st *store
}

func (m memBackend) add(_ context.Context, p peer.ID, src netip.Prefix, ns string, record []byte, expires, now time.Time) (bool, []evictedReg, error) {
	m.mu.Lock()
	// Expired registrations must not count against the sender's budgets
	// until the next sweep (the Redis store drops them the same way).
	m.st.expire(now, 64)
	replaced, evicted, err := m.st.add(p, src, ns, record, expires)
	m.mu.Unlock()
	var out []evictedReg
	for _, e := range evicted {
		out = append(out, evictedReg{peer: e.peer, ns: e.ns, src: e.src})
	}
	return replaced, out, err
}

func (m memBackend) unregister(_ context.Context, p peer.ID, ns string) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.st.unregister(p, ns), nil
}

func (m memBackend) discover(_ context.Context, ns string, after uint64, limit, maxBytes int, now time.Time) ([]hit, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.st.discover(ns, after, limit, maxBytes, now), nil
}

func (m memBackend) expire(_ context.Context, now time.Time) (int, error) {
	total := 0
	// Batches, so the lock is never held for long even when many expire at once.
	for {
		m.mu.Lock()
		gone := m.st.expire(now, sweepBatch)
		m.mu.Unlock()
		total += len(gone)
		if len(gone) < sweepBatch {
			return total, nil
		}
	}
}

func (m memBackend) stats(context.Context, time.Time) (int, int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.st.len(), m.st.bytes, nil
}

func (memBackend) ping(context.Context) error { return nil }
func (memBackend) engine() string             { return "memory" }
