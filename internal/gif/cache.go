package gif

import (
	"container/list"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// cache maps cache keys to results. Entries sit in a list in insertion
// order so the oldest is dropped first when the cache is full, by count
// or by bytes.
type cache struct {
	mu       sync.Mutex
	max      int
	maxBytes int64
	bytes    int64
	items    map[string]*list.Element
	order    *list.List // of *entry, oldest at the front
}

type entry struct {
	key     string
	results []GifResult
	expires time.Time
	size    int64
}

// Per-entry and per-result overheads counted on top of the string bytes
// (map slot, list element, entry and GifResult headers), so a cache of
// tiny entries is bounded as well.
const (
	entryOverhead  = 256
	resultOverhead = 96
)

func entrySize(key string, results []GifResult) int64 {
	n := int64(entryOverhead + len(key))
	for _, r := range results {
		n += int64(resultOverhead + len(r.ID) + len(r.Title) + len(r.URL) + len(r.Preview))
	}
	return n
}

func newCache(max int, maxBytes int64) *cache {
	return &cache{max: max, maxBytes: maxBytes, items: make(map[string]*list.Element), order: list.New()}
}

func (c *cache) get(key string, now time.Time) ([]GifResult, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.items[key]
	if !ok {
		return nil, false
	}
	e := el.Value.(*entry)
	if now.After(e.expires) {
		return nil, false
	}
	return e.results, true
}

func (c *cache) put(key string, results []GifResult, expires time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.items[key]; ok {
		c.remove(el)
	}
	size := entrySize(key, results)
	if size > c.maxBytes/8 {
		return // one answer may not crowd out most of the cache
	}
	for len(c.items) > 0 && (len(c.items) >= c.max || c.bytes+size > c.maxBytes) {
		c.remove(c.order.Front())
	}
	c.items[key] = c.order.PushBack(&entry{key: key, results: results, expires: expires, size: size})
	c.bytes += size
}

func (c *cache) remove(el *list.Element) {
	e := el.Value.(*entry)
	c.order.Remove(el)
	delete(c.items, e.key)
	c.bytes -= e.size
}

// size is the accounted bytes of all entries.
func (c *cache) size() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.bytes
}

// evictExpired drops expired entries; it returns how many went and how
// many are left.
func (c *cache) evictExpired(now time.Time) (evicted, left int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for el := c.order.Front(); el != nil; {
		next := el.Next()
		if e := el.Value.(*entry); now.After(e.expires) {
			c.remove(el)
			evicted++
		}
		el = next
	}
	return evicted, len(c.items)
}

func (c *cache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.items)
}

// limiter is the Rust relay's sliding window: at most max calls within
// any window.
type limiter struct {
	mu      sync.Mutex
	max     int
	window  time.Duration
	stamps  []time.Time // oldest first, len <= max
	blocked bool
}

func newLimiter(max int, window time.Duration) *limiter {
	return &limiter{max: max, window: window, stamps: make([]time.Time, 0, max)}
}

// allow records a call if the budget allows it. first reports the first
// refusal after a period of allowed calls (for a single warning).
func (l *limiter) allow(now time.Time) (ok, first bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	drop := 0
	for drop < len(l.stamps) && now.Sub(l.stamps[drop]) > l.window {
		drop++
	}
	l.stamps = append(l.stamps[:0], l.stamps[drop:]...)
	if len(l.stamps) >= l.max {
		first = !l.blocked
		l.blocked = true
		return false, first
	}
	l.blocked = false
	l.stamps = append(l.stamps, now)
	return true, false
}

type metrics struct {
	hits, misses, upstream, upstreamErr, limited prometheus.Counter
	entries, bytes                               prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer, log *zap.Logger) *metrics {
	c := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Namespace: "dusk", Subsystem: "gif", Name: name, Help: help})
	}
	m := &metrics{
		hits:        c("cache_hits_total", "gif requests answered from the cache"),
		misses:      c("cache_misses_total", "gif requests not in the cache"),
		upstream:    c("upstream_requests_total", "calls made to the Klipy API"),
		upstreamErr: c("upstream_errors_total", "Klipy calls that failed (transport, status, body)"),
		limited:     c("rate_limited_total", "upstream calls refused by a rate limiter (test key, overall, per peer or per address)"),
		entries: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "dusk", Subsystem: "gif",
			Name: "cache_entries", Help: "entries in the gif cache"}),
		bytes: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "dusk", Subsystem: "gif",
			Name: "cache_bytes", Help: "accounted size of the gif cache in bytes"}),
	}
	if reg == nil {
		return m
	}
	for _, col := range []prometheus.Collector{m.hits, m.misses, m.upstream, m.upstreamErr, m.limited, m.entries, m.bytes} {
		if err := reg.Register(col); err != nil {
			// A second service on one registry keeps working,
			// only unmeasured.
			log.Warn("gif metrics not registered", zap.Error(err))
		}
	}
	return m
}
