package directory

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/duskchat/dusk-relay/internal/config"
	"github.com/duskchat/dusk-relay/internal/reqresp"
)

// opTimeout bounds one request's database work (a rare 1-2 character
// query scans the whole table).
const opTimeout = 10 * time.Second

// Service answers /dusk/directory/1.0.0 from a Store.
type Service struct {
	store   *Store
	log     *zap.Logger
	ops     *prometheus.CounterVec
	limiter *limiter // nil: unlimited
	now     func() time.Time
}

// NewService builds the protocol handler. reg may be nil (no metrics
// registration). cfg.DirectoryRegisterPerMinute <= 0 disables the per-peer
// Register limit.
func NewService(store *Store, cfg config.Directory, log *zap.Logger, reg prometheus.Registerer) *Service {
	if log == nil {
		log = zap.NewNop()
	}
	s := &Service{
		store: store,
		log:   log,
		now:   time.Now,
		ops: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "dusk",
			Subsystem: "directory",
			Name:      "ops_total",
			Help:      "Directory requests by operation (register, search, remove, invalid) and result.",
		}, []string{"op", "result"}),
	}
	if cfg.DirectoryRegisterPerMinute > 0 {
		s.limiter = newLimiter(float64(cfg.DirectoryRegisterPerMinute)/60, float64(cfg.DirectoryRegisterPerMinute), maxTrackedPeers)
	}
	if reg != nil {
		if err := reg.Register(s.ops); err != nil {
			var are prometheus.AlreadyRegisteredError
			if errors.As(err, &are) {
				if existing, ok := are.ExistingCollector.(*prometheus.CounterVec); ok {
					s.ops = existing
				}
			} else {
				log.Warn("directory: register metrics", zap.Error(err))
			}
		}
	}
	return s
}

// Attach serves the protocol on h until h closes.
func (s *Service) Attach(ctx context.Context, h host.Host) {
	reqresp.Serve(ctx, h, ProtocolID, s.log, s.Handle)
}

// Handle is the reqresp.Handler: undecodable input gets no answer (the
// stream is closed, as the Rust codec does on a decode error).
func (s *Service) Handle(ctx context.Context, remote peer.ID, raw []byte) ([]byte, error) {
	var req Request
	if err := reqresp.Unmarshal(raw, &req); err != nil {
		s.ops.WithLabelValues("invalid", "bad_request").Inc()
		return nil, fmt.Errorf("directory: decode request: %w", err)
	}
	resp := s.Answer(ctx, remote, req)
	out, err := reqresp.Marshal(resp)
	if err != nil {
		return nil, fmt.Errorf("directory: encode response: %w", err)
	}
	return out, nil
}

// Answer executes one decoded request for remote (the stream's
// authenticated peer: the only peer ID ever written).
func (s *Service) Answer(ctx context.Context, remote peer.ID, req Request) Response {
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	switch req.Kind {
	case RequestRegister:
		return s.register(ctx, remote, req)
	case RequestSearch:
		return s.search(ctx, remote, req.Query)
	case RequestRemove:
		return s.remove(ctx, remote)
	default:
		s.ops.WithLabelValues("invalid", "bad_request").Inc()
		return errResp(wireErrInternal)
	}
}

func errResp(msg string) Response { return Response{Kind: ResponseError, Error: msg} }

func (s *Service) register(ctx context.Context, remote peer.ID, req Request) Response {
	const op = "register"
	now := s.now()
	if s.limiter != nil && !s.limiter.allow(remote, now) {
		s.ops.WithLabelValues(op, "rate_limited").Inc()
		s.log.Debug("directory: registration rate limited", zap.Stringer("peer", remote))
		return errResp(wireErrRateLimited)
	}
	err := s.store.Register(ctx, remote.String(), req.DisplayName, req.RelayAddr, now)
	switch {
	case err == nil:
		s.ops.WithLabelValues(op, "ok").Inc()
		s.log.Info("directory: registered peer", zap.Stringer("peer", remote),
			zap.String("display_name", normalizeQuery(req.DisplayName)), zap.String("relay", req.RelayAddr))
		return Response{Kind: ResponseOk}
	case errors.Is(err, ErrDisplayNameEmpty), errors.Is(err, ErrDisplayNameTooLong), errors.Is(err, ErrDisplayNameInvalid):
		s.ops.WithLabelValues(op, "invalid").Inc()
		s.log.Debug("directory: rejected registration", zap.Stringer("peer", remote), zap.Error(err))
		return errResp(wireErrDisplayName)
	case errors.Is(err, ErrRelayAddrInvalid):
		s.ops.WithLabelValues(op, "invalid").Inc()
		s.log.Debug("directory: rejected registration", zap.Stringer("peer", remote), zap.Error(err))
		return errResp(wireErrRelayAddr)
	default:
		s.ops.WithLabelValues(op, "error").Inc()
		s.logStoreError("directory: failed to register", remote, err)
		return errResp(wireErrInternal)
	}
}

// logStoreError logs a storage failure at error level, except requests
// that raced with shutdown (the store is closed before the host).
func (s *Service) logStoreError(msg string, remote peer.ID, err error) {
	if errors.Is(err, ErrClosed) {
		s.log.Debug(msg, zap.Stringer("peer", remote), zap.Error(err))
		return
	}
	s.log.Error(msg, zap.Stringer("peer", remote), zap.Error(err))
}

func (s *Service) search(ctx context.Context, remote peer.ID, query string) Response {
	const op = "search"
	res, err := s.store.Search(ctx, query)
	if err != nil {
		s.ops.WithLabelValues(op, "error").Inc()
		s.logStoreError("directory: search failed", remote, err)
		return errResp(wireErrInternal)
	}
	s.ops.WithLabelValues(op, "ok").Inc()
	// Debug, not info: searches are frequent and the query is user text.
	s.log.Debug("directory: search", zap.Stringer("peer", remote),
		zap.String("query", normalizeQuery(query)), zap.Int("results", len(res)))
	return Response{Kind: ResponseResults, Results: res}
}

func (s *Service) remove(ctx context.Context, remote peer.ID) Response {
	const op = "remove"
	if _, err := s.store.Remove(ctx, remote.String()); err != nil {
		s.ops.WithLabelValues(op, "error").Inc()
		s.logStoreError("directory: failed to remove", remote, err)
		return errResp(wireErrInternal)
	}
	s.ops.WithLabelValues(op, "ok").Inc()
	s.log.Info("directory: removed profile", zap.Stringer("peer", remote))
	return Response{Kind: ResponseOk}
}

// maxTrackedPeers bounds the rate limiter's memory.
const maxTrackedPeers = 16384

// limiter is a per-peer token bucket. The map is bounded: when full,
// buckets that have refilled completely (same as a fresh bucket) are
// dropped; if every bucket is still active, arbitrary ones are dropped
// down to 90% so the O(n) sweep runs at most once per n/10 new peers.
// Losing a bucket only hands that peer a fresh burst.
type limiter struct {
	mu      sync.Mutex
	rate    float64 // tokens per second
	burst   float64
	max     int
	buckets map[peer.ID]*bucket
}

type bucket struct {
	tokens float64
	last   time.Time
}

func newLimiter(rate, burst float64, maxPeers int) *limiter {
	return &limiter{rate: rate, burst: burst, max: maxPeers, buckets: make(map[peer.ID]*bucket)}
}

func (l *limiter) level(b *bucket, now time.Time) float64 {
	el := now.Sub(b.last).Seconds()
	if el < 0 {
		el = 0 // clock stepped back
	}
	return min(l.burst, b.tokens+el*l.rate)
}

func (l *limiter) allow(p peer.ID, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.buckets[p]
	if b == nil {
		if len(l.buckets) >= l.max {
			l.sweep(now)
		}
		b = &bucket{tokens: l.burst, last: now}
		l.buckets[p] = b
	}
	b.tokens = l.level(b, now)
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

func (l *limiter) sweep(now time.Time) {
	for p, b := range l.buckets {
		if l.level(b, now) >= l.burst {
			delete(l.buckets, p)
		}
	}
	target := l.max * 9 / 10
	for p := range l.buckets {
		if len(l.buckets) <= target {
			break
		}
		delete(l.buckets, p)
	}
}

func (l *limiter) size() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.buckets)
}
