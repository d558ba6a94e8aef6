// Package gif serves /dusk/gif/1.0.0: Dusk clients ask the relay for GIF
// search results so the Klipy API key never leaves the relay (docs/PROTOCOLS.md,
// "/dusk/gif/1.0.0").
//
// Every stream is handled in its own goroutine (reqresp/libp2p), the cache
// lock is never held during HTTP, and concurrent identical misses share one
// upstream call, so a slow upstream delays neither other protocols nor
// cache hits.
package gif

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"golang.org/x/sync/singleflight"

	"github.com/duskchat/dusk-relay/internal/config"
	"github.com/duskchat/dusk-relay/internal/reqresp"
)

// Protocol is the libp2p protocol ID of the gif service.
const Protocol protocol.ID = "/dusk/gif/1.0.0"

const (
	// TrendingTTL and SearchTTL are the Rust relay's cache lifetimes.
	TrendingTTL = 10 * time.Minute
	SearchTTL   = 30 * time.Minute
	// EvictInterval is how often expired entries are dropped.
	EvictInterval = 5 * time.Minute
	// MaxCacheEntries bounds the number of entries; DefaultCacheBytes
	// (DUSK_GIF_CACHE_BYTES) bounds their size. The Rust cache grew
	// without limit within a TTL window.
	MaxCacheEntries   = 10000
	DefaultCacheBytes = 16 << 20
	// MaxQueryBytes caps the search text after trimming and lower-casing:
	// it is part of the cache key and of the upstream URL, and no GIF
	// search needs more.
	MaxQueryBytes = 256
	// MaxRequestSize caps a request on the wire: kind, a query and a limit
	// are well under 1 KiB; a longer query is cut to MaxQueryBytes anyway.
	MaxRequestSize = 4 << 10
	// UpstreamTimeout bounds one Klipy call.
	UpstreamTimeout = 5 * time.Second
	// MaxUpstreamBody bounds how much of a Klipy response is read.
	MaxUpstreamBody = 4 << 20
	// MaxLimit is the largest page size asked from Klipy; requests are
	// clamped to 1..MaxLimit before keying.
	MaxLimit = 50
	// failLogEvery spaces "klipy request failed" warnings.
	failLogEvery = time.Minute
	// maxTrackedKeys bounds each per-peer/per-address limiter table.
	maxTrackedKeys = 16384
	// TestKeyMaxCalls per TestKeyWindow is Klipy's test-tier budget.
	TestKeyMaxCalls = 100
	TestKeyWindow   = 60 * time.Second
)

// GifRequest is the client's request. Field order matters on the wire.
type GifRequest struct {
	// Kind is "search" or "trending"; anything but a search with a
	// non-blank query asks for featured GIFs.
	Kind  string `cbor:"kind"`
	Query string `cbor:"query"`
	Limit uint32 `cbor:"limit"`
}

// GifResponse is the relay's answer. Results is never encoded as null.
type GifResponse struct {
	Results []GifResult `cbor:"results"`
}

// GifResult is one GIF.
type GifResult struct {
	ID      string    `cbor:"id"`
	Title   string    `cbor:"title"`
	URL     string    `cbor:"url"`
	Preview string    `cbor:"preview"`
	Dims    [2]uint32 `cbor:"dims"`
}

// Option customises a Service (tests inject the HTTP client and the clock).
type Option func(*Service)

// WithHTTPClient replaces the default client (5 s timeout).
func WithHTTPClient(c *http.Client) Option { return func(s *Service) { s.client = c } }

// WithClock replaces time.Now for cache TTLs and the rate limiter.
func WithClock(now func() time.Time) Option { return func(s *Service) { s.now = now } }

// Service answers gif requests from a cache in front of Klipy.
type Service struct {
	log     *zap.Logger
	base    string
	key     string
	client  *http.Client
	ownHTTP bool
	now     func() time.Time
	limiter *limiter // nil unless KLIPY_TEST_KEY
	// Token buckets on upstream calls (cache misses); nil: unlimited.
	upAll, upPeer, upAddr *reqresp.Limiter
	cache                 *cache
	flight                singleflight.Group
	m                     *metrics

	// Spacing of "klipy request failed" warnings.
	failMu         sync.Mutex
	failLast       time.Time
	failSuppressed int

	ctx    context.Context // cancelled by Close; aborts upstream calls
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu       sync.Mutex
	attached []host.Host
	closed   bool
}

// New builds the service and starts its cache eviction goroutine. With no
// API key every request gets empty results; that is warned about once here.
func New(cfg config.Gif, log *zap.Logger, reg prometheus.Registerer, opts ...Option) *Service {
	if log == nil {
		log = zap.NewNop()
	}
	s := &Service{
		log:  log,
		base: strings.TrimRight(cfg.GifAPIBase, "/"),
		key:  strings.TrimSpace(cfg.KlipyAPIKey),
		now:  time.Now,
		m:    newMetrics(reg, log),
	}
	if s.base == "" {
		s.base = "https://api.klipy.com/v2"
	}
	for _, o := range opts {
		o(s)
	}
	if s.client == nil {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		s.client = &http.Client{Timeout: UpstreamTimeout, Transport: tr}
		s.ownHTTP = true
	}
	budget := cfg.GifCacheBytes
	if budget <= 0 {
		budget = DefaultCacheBytes
	}
	s.cache = newCache(MaxCacheEntries, budget)
	if n := cfg.GifUpstreamPerMinute; n > 0 {
		s.upAll = reqresp.NewLimiter(float64(n), max(float64(n)/10, 1), 1)
	}
	if n := cfg.GifUpstreamPerPeerPerMinute; n > 0 {
		s.upPeer = reqresp.NewLimiter(float64(n), float64(n), maxTrackedKeys)
		// Identities are free: one address gets ten peers' worth.
		s.upAddr = reqresp.NewLimiter(float64(10*n), float64(10*n), maxTrackedKeys)
	}
	if cfg.KlipyTestKey {
		s.limiter = newLimiter(TestKeyMaxCalls, TestKeyWindow)
	}
	switch {
	case s.key == "":
		log.Warn("KLIPY_API_KEY not set, gif service will return empty results")
	case s.limiter != nil:
		log.Info("klipy api key found, gif service enabled (test key: rate limited)",
			zap.Int("max_calls", TestKeyMaxCalls), zap.Duration("window", TestKeyWindow))
	default:
		log.Info("klipy api key found, gif service enabled")
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.wg.Add(1)
	go s.evictLoop()
	return s
}

// Attach serves Protocol on h until Close (or ctx ends).
func (s *Service) Attach(ctx context.Context, h host.Host) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	s.attached = append(s.attached, h)
	reqresp.Serve(ctx, h, Protocol, s.log, s.handle, reqresp.WithMaxRequestSize(MaxRequestSize))
}

// Close removes the stream handlers, aborts upstream calls and stops the
// eviction goroutine. Safe to call more than once.
func (s *Service) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	hosts := s.attached
	s.attached = nil
	s.mu.Unlock()
	for _, h := range hosts {
		h.RemoveStreamHandler(Protocol)
	}
	s.cancel()
	s.wg.Wait()
	if s.ownHTTP {
		s.client.CloseIdleConnections()
	}
	return nil
}

func (s *Service) handle(ctx context.Context, remote peer.ID, raw []byte) ([]byte, error) {
	var req GifRequest
	if err := reqresp.Unmarshal(raw, &req); err != nil {
		return nil, fmt.Errorf("decode gif request: %w", err)
	}
	resp := s.answer(ctx, remote, req)
	s.log.Debug("gif request", zap.String("kind", truncate(req.Kind, 16)), zap.Stringer("peer", remote),
		zap.Int("results", len(resp.Results)))
	return reqresp.Marshal(resp)
}

// Search answers one request without a peer (only the overall upstream
// limit applies): from the cache, else from Klipy. It never fails: any
// problem yields empty results (logged). The returned slice must not be
// modified.
func (s *Service) Search(ctx context.Context, req GifRequest) GifResponse {
	return s.answer(ctx, "", req)
}

// answer serves req for remote ("" for none); the per-peer and
// per-address upstream limits are charged to the request that starts an
// upstream call.
func (s *Service) answer(ctx context.Context, remote peer.ID, req GifRequest) GifResponse {
	req = Canonical(req)
	key := cacheKey(req)
	if res, ok := s.cache.get(key, s.now()); ok {
		s.m.hits.Inc()
		return GifResponse{Results: res}
	}
	s.m.misses.Inc()
	if s.key == "" {
		return GifResponse{Results: []GifResult{}}
	}
	ch := s.flight.DoChan(key, func() (any, error) {
		// A flight that finished just before this one started may
		// have filled the cache.
		if res, ok := s.cache.get(key, s.now()); ok {
			return res, nil
		}
		if !s.allowUpstream(ctx, remote) {
			s.m.limited.Inc()
			return nil, nil
		}
		res := s.fetch(req)
		if len(res) > 0 {
			s.cache.put(key, res, s.now().Add(ttlFor(req.Kind)))
			s.m.entries.Set(float64(s.cache.len()))
			s.m.bytes.Set(float64(s.cache.size()))
		}
		return res, nil
	})
	select {
	case r := <-ch:
		res, _ := r.Val.([]GifResult)
		if res == nil {
			res = []GifResult{}
		}
		return GifResponse{Results: res}
	case <-ctx.Done():
		return GifResponse{Results: []GifResult{}}
	}
}

// fetch performs one rate-limited upstream call. It runs under the
// service context, not the caller's: other callers may share its result.
func (s *Service) fetch(req GifRequest) []GifResult {
	if s.limiter != nil {
		if ok, first := s.limiter.allow(s.now()); !ok {
			s.m.limited.Inc()
			// One warning per blocked stretch, not per request.
			if first {
				s.log.Warn("klipy test key rate limit reached; returning empty gif results",
					zap.Int("max_calls", TestKeyMaxCalls), zap.Duration("window", TestKeyWindow))
			}
			return nil
		}
	}
	s.m.upstream.Inc()
	ctx, cancel := context.WithTimeout(s.ctx, UpstreamTimeout)
	defer cancel()
	res, err := s.upstream(ctx, req)
	if err != nil {
		s.m.upstreamErr.Inc()
		if !errors.Is(s.ctx.Err(), context.Canceled) {
			s.logFailure(req, err)
		}
		return nil
	}
	return res
}

// allowUpstream charges one upstream call to remote, its address and the
// relay as a whole. Misses are what cost: each one is a Klipy call
// against a quota shared by every user of the relay.
func (s *Service) allowUpstream(ctx context.Context, remote peer.ID) bool {
	now := s.now()
	if remote != "" && s.upPeer != nil {
		if !s.upPeer.Allow(string(remote), now) {
			return false
		}
		key := reqresp.AddrKey(reqresp.RemoteAddr(ctx))
		if key != "" && !s.upAddr.Allow(key, now) {
			return false
		}
	}
	return s.upAll == nil || s.upAll.Allow("", now)
}

// logFailure warns about a failed upstream call at most once per
// failLogEvery (a down upstream fails every miss, and any peer can cause
// misses), counting the ones left out.
func (s *Service) logFailure(req GifRequest, err error) {
	now := s.now()
	s.failMu.Lock()
	if !s.failLast.IsZero() && now.Sub(s.failLast) < failLogEvery && !now.Before(s.failLast) {
		s.failSuppressed++
		s.failMu.Unlock()
		return
	}
	suppressed := s.failSuppressed
	s.failLast, s.failSuppressed = now, 0
	s.failMu.Unlock()
	s.log.Warn("klipy request failed", zap.String("kind", req.Kind),
		zap.String("error", s.redact(err.Error())), zap.Int("suppressed_since_last", suppressed))
}

// redact removes the API key from text (net/http errors quote the URL).
func (s *Service) redact(msg string) string {
	if s.key == "" {
		return msg
	}
	msg = strings.ReplaceAll(msg, queryEscape(s.key), "REDACTED")
	return strings.ReplaceAll(msg, s.key, "REDACTED")
}

func (s *Service) evictLoop() {
	defer s.wg.Done()
	t := time.NewTicker(EvictInterval)
	defer t.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
			n, left := s.cache.evictExpired(s.now())
			s.m.entries.Set(float64(left))
			s.m.bytes.Set(float64(s.cache.size()))
			if n > 0 {
				s.log.Debug("gif cache: evicted expired entries", zap.Int("evicted", n), zap.Int("remaining", left))
			}
		}
	}
}

// Canonical is the request as served and cached: kind "search" with a
// non-blank query (trimmed, lower-cased, cut to MaxQueryBytes at a
// character boundary), else "trending" with no query (every other kind,
// and a blank search, asks for featured GIFs); limit clamped to
// 1..MaxLimit. Requests that are answered alike share one cache entry,
// so neither an unknown kind nor a huge query mints new entries.
func Canonical(req GifRequest) GifRequest {
	q := ""
	if req.Kind == "search" {
		q = strings.ToLower(strings.TrimSpace(req.Query))
		if len(q) > MaxQueryBytes {
			cut := MaxQueryBytes
			for cut > 0 && !utf8.RuneStart(q[cut]) {
				cut--
			}
			q = strings.TrimSpace(q[:cut])
		}
	}
	kind := "search"
	if q == "" {
		kind = "trending"
	}
	return GifRequest{Kind: kind, Query: q, Limit: min(max(req.Limit, 1), MaxLimit)}
}

// cacheKey is the Rust relay's key, kind:lower(trim(query)):limit, of a
// Canonical request.
func cacheKey(req GifRequest) string {
	return fmt.Sprintf("%s:%s:%d", req.Kind, req.Query, req.Limit)
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

func ttlFor(kind string) time.Duration {
	if kind == "trending" {
		return TrendingTTL
	}
	return SearchTTL
}
