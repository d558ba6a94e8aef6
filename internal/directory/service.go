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

// opTimeout bounds one request's database work.
const opTimeout = 10 * time.Second

// MaxRequestSize caps a directory request on the wire. The largest valid
// one, a Register with 64 four-byte code points and a MaxRelayAddr
// relay_addr, encodes to 815 bytes (TestMaxRequestSizeFitsLargestRegister);
// the rest is room for fields a newer client may add.
const MaxRequestSize = 4 << 10

// LastSeenRefresh is how far last_seen may lag before an otherwise
// unchanged Register is written again. The app re-registers every 120 s
// while online; each write is a durable commit (an fsync), so an
// unchanged profile is written at most once per LastSeenRefresh and the
// other refreshes are answered from a read. last_seen only orders search
// results and drives expiry (days), so minutes of lag change nothing.
const LastSeenRefresh = 10 * time.Minute

// sweepInterval is how often expired profiles are deleted; expiryBatch
// rows go per transaction so registrations interleave.
const (
	sweepInterval = 10 * time.Minute
	expiryBatch   = 1000
)

// maxTrackedKeys bounds each rate limiter's table.
const maxTrackedKeys = 16384

// Backend is the profile storage the Service runs on. The SQLite Store is
// one; limits and policy live in the Service so every backend gets them.
type Backend interface {
	Register(ctx context.Context, peerID, displayName, relayAddr string, now time.Time) error
	Get(ctx context.Context, peerID string) (p Profile, registeredAt int64, ok bool, err error)
	Search(ctx context.Context, query string) ([]Profile, error)
	Remove(ctx context.Context, peerID string) (bool, error)
	Count(ctx context.Context) (int64, error)
	EvictOldest(ctx context.Context, n int) (int, error)
	ExpireBefore(ctx context.Context, cutoff time.Time, batch int) (int, error)
}

// Service answers /dusk/directory/1.0.0 from a Backend.
type Service struct {
	store Backend
	log   *zap.Logger
	ops   *prometheus.CounterVec
	rows  prometheus.Gauge
	now   func() time.Time

	maxRows int64         // 0: no cap
	expiry  time.Duration // 0: profiles never expire

	// nil: unlimited.
	registerPeer, registerAddr, searchPeer, searchAddr *reqresp.Limiter

	countMu    sync.Mutex
	count      int64 // profiles in the store, when countKnown
	countKnown bool

	errMu         sync.Mutex
	errLast       time.Time
	errSuppressed int

	sweepOnce sync.Once
	stop      context.CancelFunc
	wg        sync.WaitGroup
}

// NewService builds the protocol handler. reg may be nil (no metrics
// registration). A zero rate disables that limit, zero DirectoryMaxRows
// disables the cap and zero DirectoryExpiry disables expiry.
func NewService(store Backend, cfg config.Directory, log *zap.Logger, reg prometheus.Registerer) *Service {
	if log == nil {
		log = zap.NewNop()
	}
	s := &Service{
		store:   store,
		log:     log,
		now:     time.Now,
		maxRows: cfg.DirectoryMaxRows,
		expiry:  cfg.DirectoryExpiry,
		ops: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "dusk",
			Subsystem: "directory",
			Name:      "ops_total",
			Help:      "Directory requests by operation (register, search, remove, invalid) and result.",
		}, []string{"op", "result"}),
		rows: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "dusk",
			Subsystem: "directory",
			Name:      "profiles",
			Help:      "Profiles in the directory (as last counted by the service).",
		}),
	}
	limiter := func(perMinute int) *reqresp.Limiter {
		if perMinute <= 0 {
			return nil
		}
		return reqresp.NewLimiter(float64(perMinute), float64(perMinute), maxTrackedKeys)
	}
	s.registerPeer = limiter(cfg.DirectoryRegisterPerMinute)
	s.registerAddr = limiter(cfg.DirectoryRegisterPerAddrPerMinute)
	s.searchPeer = limiter(cfg.DirectorySearchPerMinute)
	// Identities are free: one address gets ten peers' worth of searches.
	s.searchAddr = limiter(10 * cfg.DirectorySearchPerMinute)
	if reg != nil {
		s.ops = registerOrReuse(reg, s.ops, log)
		s.rows = registerOrReuse(reg, s.rows, log)
	}
	return s
}

// registerOrReuse registers c, or returns the collector already registered
// under its name (a second Service on one registry).
func registerOrReuse[C prometheus.Collector](reg prometheus.Registerer, c C, log *zap.Logger) C {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing
			}
		}
		log.Warn("directory: register metrics", zap.Error(err))
	}
	return c
}

// Attach serves the protocol on h until h closes, and starts the expiry
// sweep (once per Service) until ctx ends or Close.
func (s *Service) Attach(ctx context.Context, h host.Host) {
	reqresp.Serve(ctx, h, ProtocolID, s.log, s.Handle, reqresp.WithMaxRequestSize(MaxRequestSize))
	s.sweepOnce.Do(func() {
		sctx, cancel := context.WithCancel(ctx)
		s.stop = cancel
		s.wg.Add(1)
		go s.sweepLoop(sctx)
	})
}

// Close stops the expiry sweep and waits for it. The store is not closed.
func (s *Service) Close() error {
	s.sweepOnce.Do(func() {}) // no sweep may start after Close
	if s.stop != nil {
		s.stop()
	}
	s.wg.Wait()
	return nil
}

func (s *Service) sweepLoop(ctx context.Context) {
	defer s.wg.Done()
	t := time.NewTicker(sweepInterval)
	defer t.Stop()
	for {
		if _, err := s.Sweep(ctx); err != nil && ctx.Err() == nil && !errors.Is(err, ErrClosed) {
			s.log.Warn("directory: expiry sweep failed", zap.Error(err))
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Sweep deletes every profile whose last_seen is older than the expiry,
// then recounts the profiles (the row cap works from that count). It
// returns how many profiles expired.
func (s *Service) Sweep(ctx context.Context) (int, error) {
	expired := 0
	if s.expiry > 0 {
		cutoff := s.now().Add(-s.expiry)
		for ctx.Err() == nil {
			n, err := s.store.ExpireBefore(ctx, cutoff, expiryBatch)
			expired += n
			if err != nil {
				return expired, fmt.Errorf("expire: %w", err)
			}
			if n < expiryBatch {
				break
			}
		}
	}
	n, err := s.store.Count(ctx)
	if err != nil {
		return expired, fmt.Errorf("count: %w", err)
	}
	s.countMu.Lock()
	s.count, s.countKnown = n, true
	s.countMu.Unlock()
	s.rows.Set(float64(n))
	if expired > 0 {
		s.ops.WithLabelValues("expire", "ok").Add(float64(expired))
		s.log.Info("directory: expired profiles", zap.Int("expired", expired), zap.Int64("left", n),
			zap.Duration("expiry", s.expiry))
	}
	return expired, nil
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
	if s.registerPeer != nil && !s.registerPeer.Allow(string(remote), now) {
		s.ops.WithLabelValues(op, "rate_limited").Inc()
		s.log.Debug("directory: registration rate limited", zap.Stringer("peer", remote))
		return errResp(wireErrRateLimited)
	}
	name, err := NormalizeDisplayName(req.DisplayName)
	if err == nil {
		err = ValidateRelayAddr(req.RelayAddr)
	}
	if err != nil {
		return s.registerFailed(remote, err)
	}
	old, _, exists, err := s.store.Get(ctx, remote.String())
	if err != nil {
		return s.registerFailed(remote, err)
	}
	if exists && old.DisplayName == name && old.RelayAddr == req.RelayAddr &&
		now.Sub(time.Unix(int64(old.LastSeen), 0)) < LastSeenRefresh && int64(old.LastSeen) <= now.Unix() {
		// Already durable; only last_seen would move, by less than the
		// refresh step.
		s.ops.WithLabelValues(op, "unchanged").Inc()
		return Response{Kind: ResponseOk}
	}
	if s.registerAddr != nil && !allowAddr(ctx, s.registerAddr, now) {
		s.ops.WithLabelValues(op, "rate_limited").Inc()
		s.log.Debug("directory: registration rate limited (address)", zap.Stringer("peer", remote))
		return errResp(wireErrRateLimited)
	}
	if err := s.store.Register(ctx, remote.String(), name, req.RelayAddr, now); err != nil {
		return s.registerFailed(remote, err)
	}
	if !exists {
		s.added(ctx, 1)
	}
	s.ops.WithLabelValues(op, "ok").Inc()
	// Debug: one line per request would let any peer fill the log.
	s.log.Debug("directory: registered peer", zap.Stringer("peer", remote),
		zap.String("display_name", name), zap.String("relay", req.RelayAddr))
	return Response{Kind: ResponseOk}
}

func (s *Service) registerFailed(remote peer.ID, err error) Response {
	const op = "register"
	switch {
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

// added accounts for delta new profiles and, past the row cap, evicts the
// profiles seen longest ago. Evicting rather than refusing: a full
// directory would otherwise turn away every newcomer until rows expire
// (weeks), which is what a flood of free identities aims for, while the
// oldest rows belong to peers that have not been online for the longest
// (online clients refresh every two minutes and stay newest).
func (s *Service) added(ctx context.Context, delta int64) {
	s.countMu.Lock()
	defer s.countMu.Unlock()
	if !s.countKnown {
		n, err := s.store.Count(ctx)
		if err != nil {
			return // recounted by the next sweep
		}
		s.count, s.countKnown = n, true
	} else {
		s.count += delta
	}
	if s.maxRows > 0 && s.count > s.maxRows {
		n, err := s.store.EvictOldest(ctx, int(s.count-s.maxRows))
		s.count -= int64(n)
		if n > 0 {
			s.ops.WithLabelValues("evict", "ok").Add(float64(n))
			s.log.Debug("directory: full, evicted oldest profiles", zap.Int("evicted", n), zap.Int64("max_rows", s.maxRows))
		}
		if err != nil && !errors.Is(err, ErrClosed) {
			s.ops.WithLabelValues("evict", "error").Inc()
			s.log.Debug("directory: evict failed", zap.Error(err))
		}
	}
	s.rows.Set(float64(s.count))
}

// allowAddr charges l for the request's source address; addresses
// without a key (see reqresp.AddrKey) are not limited per address.
func allowAddr(ctx context.Context, l *reqresp.Limiter, now time.Time) bool {
	key := reqresp.AddrKey(reqresp.RemoteAddr(ctx))
	return key == "" || l.Allow(key, now)
}

// errLogEvery spaces storage-error log lines: a failing disk fails every
// request, and any peer can send requests.
const errLogEvery = 10 * time.Second

// logStoreError logs a storage failure at error level (at most one line
// per errLogEvery, carrying the count of those left out), except requests
// that raced with shutdown (the store is closed before the host).
func (s *Service) logStoreError(msg string, remote peer.ID, err error) {
	if errors.Is(err, ErrClosed) {
		s.log.Debug(msg, zap.Stringer("peer", remote), zap.Error(err))
		return
	}
	now := s.now()
	s.errMu.Lock()
	if !s.errLast.IsZero() && now.Sub(s.errLast) < errLogEvery && !now.Before(s.errLast) {
		s.errSuppressed++
		s.errMu.Unlock()
		return
	}
	suppressed := s.errSuppressed
	s.errLast, s.errSuppressed = now, 0
	s.errMu.Unlock()
	s.log.Error(msg, zap.Stringer("peer", remote), zap.Error(err), zap.Int("suppressed_since_last", suppressed))
}

func (s *Service) search(ctx context.Context, remote peer.ID, query string) Response {
	const op = "search"
	now := s.now()
	if (s.searchPeer != nil && !s.searchPeer.Allow(string(remote), now)) ||
		(s.searchAddr != nil && !allowAddr(ctx, s.searchAddr, now)) {
		s.ops.WithLabelValues(op, "rate_limited").Inc()
		s.log.Debug("directory: search rate limited", zap.Stringer("peer", remote))
		return errResp(wireErrRateLimited)
	}
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
	removed, err := s.store.Remove(ctx, remote.String())
	if err != nil {
		s.ops.WithLabelValues(op, "error").Inc()
		s.logStoreError("directory: failed to remove", remote, err)
		return errResp(wireErrInternal)
	}
	if removed {
		s.countMu.Lock()
		if s.countKnown {
			s.count--
			s.rows.Set(float64(s.count))
		}
		s.countMu.Unlock()
	}
	s.ops.WithLabelValues(op, "ok").Inc()
	s.log.Debug("directory: removed profile", zap.Stringer("peer", remote), zap.Bool("existed", removed))
	return Response{Kind: ResponseOk}
}
