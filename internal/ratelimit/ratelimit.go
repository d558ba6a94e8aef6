// Package ratelimit is a token bucket per key (an address prefix, a peer
// ID) with a bounded number of keys: identities are free and addresses
// cheap, so the table itself must not grow with what an attacker sends.
// Losing a key's bucket only hands that key a fresh burst, so every bound
// here trades exactness for memory, never availability.
//
// The bucket math is written out rather than taken from
// golang.org/x/time/rate: its burst is an integer (callers use fractional
// ones, such as a tenth of a per-minute rate) and each of its limiters is
// a separately allocated struct with its own mutex, while here a bucket is
// a 16-byte map value under the table's one lock, and the table needs a
// bucket's level at a given time to sweep refilled ones.
package ratelimit

import (
	"sync"
	"time"
)

// Keyed is a token bucket per key. The zero value is not usable; see New.
type Keyed[K comparable] struct {
	rate  float64 // tokens per second
	burst float64
	max   int
	gens  bool

	mu        sync.Mutex
	cur, prev map[K]bucket // prev: generations only
}

type bucket struct {
	tokens float64
	last   int64 // unix nanos of the last update
}

// Bound is how a full table makes room for a new key.
type Bound int

const (
	// Sweep drops the buckets that have refilled completely (the same as
	// a fresh one) first; if every bucket is still draining, arbitrary
	// ones down to 90 %, so the O(n) sweep runs at most once per n/10 new
	// keys.
	Sweep Bound = iota
	// Generations keeps two maps of at most maxKeys/2 keys: a lookup
	// moves its key to the current map, and when that is full the
	// previous one is dropped whole. No scan at all: for tables fed by
	// spoofable sources (UDP), where a flood of fresh keys is the
	// normal case and each must cost O(1).
	Generations
)

// New allows burst tokens at once and perSecond per second after that for
// each key, tracking at most maxKeys keys (at least 1, or 2 with
// Generations).
func New[K comparable](perSecond, burst float64, maxKeys int, bound Bound) *Keyed[K] {
	l := &Keyed[K]{rate: perSecond, burst: burst, max: max(maxKeys, 1), gens: bound == Generations,
		cur: make(map[K]bucket)}
	if l.gens {
		l.max = max(maxKeys, 2)
		l.prev = make(map[K]bucket)
	}
	return l
}

// Allow takes one token from key's bucket if it has one.
func (l *Keyed[K]) Allow(key K, now time.Time) bool {
	return l.AllowN(key, 1, now)
}

// AllowN takes n tokens from key's bucket if it has that many; a key new
// to the table starts with a full bucket.
func (l *Keyed[K]) AllowN(key K, n float64, now time.Time) bool {
	t := now.UnixNano()
	l.mu.Lock()
	defer l.mu.Unlock()
	b, ok := l.cur[key]
	if !ok {
		b = l.admitLocked(key, t)
	}
	b.tokens = l.level(b, t)
	b.last = t
	ok = b.tokens >= n
	if ok {
		b.tokens -= n
	}
	l.cur[key] = b
	return ok
}

// admitLocked makes room for key, which is not in cur, and returns its
// bucket: a full one, or in Generations mode the one from prev.
func (l *Keyed[K]) admitLocked(key K, t int64) bucket {
	fresh := bucket{tokens: l.burst, last: t}
	if l.gens {
		b, ok := l.prev[key]
		if ok {
			delete(l.prev, key)
		} else {
			b = fresh
		}
		if len(l.cur) >= l.max/2 {
			l.prev, l.cur = l.cur, make(map[K]bucket, l.max/2)
		}
		return b
	}
	if len(l.cur) >= l.max {
		for k, b := range l.cur {
			if l.level(b, t) >= l.burst {
				delete(l.cur, k)
			}
		}
		target := l.max * 9 / 10
		for k := range l.cur {
			if len(l.cur) <= target {
				break
			}
			delete(l.cur, k)
		}
	}
	return fresh
}

// level is b's tokens at t; a clock stepping back adds none.
func (l *Keyed[K]) level(b bucket, t int64) float64 {
	el := max(time.Duration(t-b.last).Seconds(), 0)
	return min(l.burst, b.tokens+el*l.rate)
}

// Len is the number of tracked keys.
func (l *Keyed[K]) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.cur) + len(l.prev)
}

// Tracks reports whether key has a bucket.
func (l *Keyed[K]) Tracks(key K) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	_, ok := l.cur[key]
	if !ok {
		_, ok = l.prev[key]
	}
	return ok
}
