// Package reservations records in Redis which relay of a cluster holds a
// peer's circuit reservation, so that another relay can reach the peer
// through it (the circuit mesh reads them with Lookup).
//
// Each relay writes, for every reservation it accepts or renews, peer ->
// (its own peer ID, its announced addresses, the reservation's expiry),
// and removes it when the reservation ends. One hash per peer holds one
// field per relay, so a peer reserved at two relays has two records and
// the end of one leaves the other. Redis 7.0 has no per-field expiry
// (HEXPIRE): every field carries its expiry, readers skip expired fields,
// writers drop them, and the key expires with its latest field.
package reservations

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// ErrUnavailable wraps failures to reach Redis.
var ErrUnavailable = errors.New("reservations: Redis unavailable")

const (
	// maxPending bounds events queued while Redis is slow or down:
	// identities are free, so reserve-and-leave could queue without end.
	// Beyond it events are dropped; a record left behind expires with its
	// reservation.
	maxPending = 1 << 16
	opTimeout  = 2 * time.Second
	retryDelay = time.Second
	// DefaultRefresh is how often every live record is written again, so
	// a Redis that restarted empty (or lost keys) has them back without
	// waiting for the clients to renew their reservations.
	DefaultRefresh = 2 * time.Minute
	// closeBudget bounds removing this relay's records at shutdown.
	closeBudget = 3 * time.Second
)

// Record is one live reservation of a peer at a relay.
type Record struct {
	Relay   peer.ID
	Addrs   []ma.Multiaddr // the relay's announced addresses
	Expires time.Time
}

func key(prefix string, p peer.ID) string { return prefix + "rsv{" + p.String() + "}" }

// encode is "<expiry ms> <addr> <addr>...": multiaddrs hold no spaces.
func encode(exp time.Time, addrs []ma.Multiaddr) string {
	var b strings.Builder
	b.WriteString(strconv.FormatInt(exp.UnixMilli(), 10))
	for _, a := range addrs {
		b.WriteByte(' ')
		b.WriteString(a.String())
	}
	return b.String()
}

func decode(relay, v string) (Record, error) {
	rid, err := peer.Decode(relay)
	if err != nil {
		return Record{}, fmt.Errorf("relay %q: %w", relay, err)
	}
	f := strings.Fields(v)
	if len(f) == 0 {
		return Record{}, errors.New("empty record")
	}
	ms, err := strconv.ParseInt(f[0], 10, 64)
	if err != nil {
		return Record{}, fmt.Errorf("expiry: %w", err)
	}
	r := Record{Relay: rid, Expires: time.UnixMilli(ms)}
	for _, s := range f[1:] {
		a, err := ma.NewMultiaddr(s)
		if err != nil {
			return Record{}, fmt.Errorf("address %q: %w", s, err)
		}
		r.Addrs = append(r.Addrs, a)
	}
	return r, nil
}

// write sets this relay's field and drops expired ones. ARGV: relay,
// value, expiry ms, now ms.
var write = redis.NewScript(`
local now = tonumber(ARGV[4])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local latest = 0
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local e = tonumber(string.match(all[i + 1], '^(%d+)') or '0')
  if e <= now then redis.call('HDEL', KEYS[1], all[i]) elseif e > latest then latest = e end
end
if latest > 0 then redis.call('PEXPIREAT', KEYS[1], latest) end
return latest
`)

// Lookup returns p's live reservation records, the latest expiry first
// (nil when p holds none anywhere).
func Lookup(ctx context.Context, rdb redis.UniversalClient, prefix string, p peer.ID) ([]Record, error) {
	m, err := rdb.HGetAll(ctx, key(prefix, p)).Result()
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	now := time.Now()
	var out []Record
	for relay, v := range m {
		r, err := decode(relay, v)
		if err != nil || !r.Expires.After(now) {
			continue // another version's format, or expired: not usable
		}
		out = append(out, r)
	}
	slices.SortFunc(out, func(a, b Record) int { return b.Expires.Compare(a.Expires) })
	return out, nil
}

// Recorder writes this relay's reservations. It implements
// p2p.ReservationHook: events are queued (latest per peer wins) and
// written by one goroutine, so the node never waits for Redis.
type Recorder struct {
	rdb    redis.UniversalClient
	prefix string
	log    *zap.Logger

	mu      sync.Mutex
	pending map[peer.ID]time.Time // zero time: the reservation ended
	self    peer.ID
	addrs   func() []ma.Multiaddr
	started bool
	closed  bool
	dropped int

	written map[peer.ID]time.Time // records this relay holds, with expiry; worker only
	refresh time.Duration
	kick    chan struct{}
	stop    chan struct{}
	done    chan struct{}
	once    sync.Once
}

// New returns a Recorder writing under keyPrefix; call Start.
func New(rdb redis.UniversalClient, keyPrefix string, log *zap.Logger) *Recorder {
	if log == nil {
		log = zap.NewNop()
	}
	return &Recorder{
		rdb: rdb, prefix: keyPrefix, log: log,
		pending: make(map[peer.ID]time.Time),
		written: make(map[peer.ID]time.Time),
		refresh: DefaultRefresh,
		kick:    make(chan struct{}, 1),
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
	}
}

// Start begins writing, as relay self with the announced addresses addrs
// returns (asked at every write: they are known only once listening).
func (r *Recorder) Start(self peer.ID, addrs func() []ma.Multiaddr) {
	r.mu.Lock()
	r.self, r.addrs, r.started = self, addrs, true
	r.mu.Unlock()
	go r.run()
	r.signal()
}

// Lookup is the package Lookup on this recorder's Redis and prefix.
func (r *Recorder) Lookup(ctx context.Context, p peer.ID) ([]Record, error) {
	return Lookup(ctx, r.rdb, r.prefix, p)
}

// OnReserve queues p's record until expires.
func (r *Recorder) OnReserve(p peer.ID, expires time.Time) { r.queue(p, expires) }

// OnEnd queues the removal of p's record.
func (r *Recorder) OnEnd(p peer.ID) { r.queue(p, time.Time{}) }

func (r *Recorder) queue(p peer.ID, exp time.Time) {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return
	}
	if _, ok := r.pending[p]; !ok && len(r.pending) >= maxPending {
		r.dropped++
		r.mu.Unlock()
		return
	}
	r.pending[p] = exp
	r.mu.Unlock()
	r.signal()
}

func (r *Recorder) signal() {
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// SetRefresh overrides DefaultRefresh (tests); call before Start.
func (r *Recorder) SetRefresh(d time.Duration) { r.refresh = d }

func (r *Recorder) run() {
	defer close(r.done)
	tick := time.NewTicker(r.refresh)
	defer tick.Stop()
	for {
		select {
		case <-r.stop:
			return
		case <-r.kick:
		case <-tick.C:
			r.requeueLive()
		}
		if !r.flush(context.Background()) {
			// Redis failed: what is left is retried after a pause.
			select {
			case <-r.stop:
				return
			case <-time.After(retryDelay):
				r.signal()
			}
		}
	}
}

// requeueLive queues every live record this relay wrote (unless a newer
// event for the peer is queued); expired ones are forgotten.
func (r *Recorder) requeueLive() {
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	for p, exp := range r.written {
		if !exp.After(now) {
			delete(r.written, p)
			continue
		}
		if _, queued := r.pending[p]; !queued && len(r.pending) < maxPending {
			r.pending[p] = exp
		}
	}
}

// flush writes every queued event; it returns false when Redis failed
// (the failed events are queued again unless a newer one replaced them).
func (r *Recorder) flush(ctx context.Context) bool {
	r.mu.Lock()
	batch := r.pending
	r.pending = make(map[peer.ID]time.Time, len(batch))
	self, addrs, dropped := r.self, r.addrs, r.dropped
	r.dropped = 0
	r.mu.Unlock()
	if dropped > 0 {
		r.log.Warn("reservation records dropped: queue full (Redis slow or down)", zap.Int("events", dropped))
	}
	var own []ma.Multiaddr
	if addrs != nil {
		own = addrs()
	}
	var failed error
	for p, exp := range batch {
		if failed == nil {
			if failed = r.apply(ctx, self, own, p, exp); failed == nil {
				continue
			}
			r.log.Debug("reservation record", zap.Stringer("peer", p), zap.Error(failed))
		}
		// Redis failed: keep the rest for the next round rather than
		// trying each against a server that is down.
		r.mu.Lock()
		if _, newer := r.pending[p]; !newer && !r.closed {
			r.pending[p] = exp
		}
		r.mu.Unlock()
	}
	return failed == nil
}

func (r *Recorder) apply(ctx context.Context, self peer.ID, own []ma.Multiaddr, p peer.ID, exp time.Time) error {
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	k := key(r.prefix, p)
	if exp.IsZero() || !exp.After(time.Now()) {
		if err := r.rdb.HDel(ctx, k, self.String()).Err(); err != nil {
			return fmt.Errorf("%w: %w", ErrUnavailable, err)
		}
		delete(r.written, p)
		return nil
	}
	now := time.Now().UnixMilli()
	if err := write.Run(ctx, r.rdb, []string{k}, self.String(), encode(exp, own), exp.UnixMilli(), now).Err(); err != nil {
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	r.written[p] = exp
	return nil
}

// Close stops the writer and removes the records this relay still holds
// (its reservations end with it), within a few seconds. It does not close
// the Redis client. Safe to call more than once.
func (r *Recorder) Close() error {
	r.once.Do(func() {
		r.mu.Lock()
		started := r.started
		r.mu.Unlock()
		close(r.stop)
		if !started {
			r.mu.Lock()
			r.closed = true
			r.mu.Unlock()
			return
		}
		<-r.done
		ctx, cancel := context.WithTimeout(context.Background(), closeBudget)
		defer cancel()
		// Events queued before the stop (e.g. the host's disconnects)
		// first, then whatever is left.
		r.flush(ctx)
		r.mu.Lock()
		r.closed = true
		self := r.self
		r.mu.Unlock()
		for p := range r.written {
			if ctx.Err() != nil {
				break
			}
			_ = r.rdb.HDel(ctx, key(r.prefix, p), self.String()).Err()
		}
	})
	return nil
}
