// Package gif serves /dusk/gif/1.0.0: Dusk clients ask the relay for GIF
// search results so the Klipy API key never leaves the relay (SPEC §6).
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
	// MaxCacheEntries bounds memory: the Rust cache grew without limit
	// within a TTL window; a client cycling queries could fill it.
	MaxCacheEntries = 10000
	// UpstreamTimeout bounds one Klipy call.
	UpstreamTimeout = 5 * time.Second
	// MaxUpstreamBody bounds how much of a Klipy response is read.
	MaxUpstreamBody = 4 << 20
	// MaxLimit is the largest page size asked from Klipy.
	MaxLimit = 50
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
	cache   *cache
	flight  singleflight.Group
	m       *metrics

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
	s.cache = newCache(MaxCacheEntries)
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
	reqresp.Serve(ctx, h, Protocol, s.log, s.handle)
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
	resp := s.Search(ctx, req)
	s.log.Debug("gif request", zap.String("kind", req.Kind), zap.Stringer("peer", remote),
		zap.Int("results", len(resp.Results)))
	return reqresp.Marshal(resp)
}

// Search answers one request: from the cache, else from Klipy. It never
// fails: any problem yields empty results (logged). The returned slice
// must not be modified.
func (s *Service) Search(ctx context.Context, req GifRequest) GifResponse {
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
		res := s.fetch(req)
		if len(res) > 0 {
			s.cache.put(key, res, s.now().Add(ttlFor(req.Kind)))
			s.m.entries.Set(float64(s.cache.len()))
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
			s.log.Warn("klipy request failed", zap.String("kind", req.Kind),
				zap.String("error", s.redact(err.Error())))
		}
		return nil
	}
	return res
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
			if n > 0 {
				s.log.Debug("gif cache: evicted expired entries", zap.Int("evicted", n), zap.Int("remaining", left))
			}
		}
	}
}

// cacheKey is the Rust relay's key: kind:lower(trim(query)):limit.
func cacheKey(req GifRequest) string {
	return fmt.Sprintf("%s:%s:%d", req.Kind, strings.ToLower(strings.TrimSpace(req.Query)), req.Limit)
}

func ttlFor(kind string) time.Duration {
	if kind == "trending" {
		return TrendingTTL
	}
	return SearchTTL
}
