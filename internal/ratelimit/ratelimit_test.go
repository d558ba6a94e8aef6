package ratelimit

import (
	"testing"
	"time"
)

func TestRates(t *testing.T) {
	for _, bound := range []Bound{Sweep, Generations} {
		l := New[string](0.05, 2, 100, bound) // 3/min, burst 2
		now := time.Unix(1000, 0)
		if !l.Allow("a", now) || !l.Allow("a", now) || l.Allow("a", now) {
			t.Fatalf("%d: burst of 2", bound)
		}
		if !l.Allow("b", now) {
			t.Fatalf("%d: other key affected", bound)
		}
		if l.Allow("a", now.Add(19*time.Second)) || !l.Allow("a", now.Add(40*time.Second)) {
			t.Fatalf("%d: refill of one token per 20 s", bound)
		}
		// Clock stepping back never mints tokens.
		if !l.Allow("a", now.Add(40*time.Second)) || l.Allow("a", now) {
			t.Fatalf("%d: clock step back", bound)
		}
	}
}

func TestAllowN(t *testing.T) {
	l := New[int](1000, 32000, 10, Sweep) // bytes: 1000/s, 32 s burst
	now := time.Unix(1000, 0)
	if !l.AllowN(1, 32000, now) || l.AllowN(1, 1, now) {
		t.Fatal("burst")
	}
	if l.AllowN(2, 32001, now) || !l.AllowN(2, 32000, now) {
		t.Fatal("more than the burst never fits; a refused take costs nothing")
	}
	now = now.Add(500 * time.Millisecond)
	if !l.AllowN(1, 500, now) || l.AllowN(1, 1, now) {
		t.Fatal("refill is rate x elapsed")
	}
	now = now.Add(time.Hour)
	if !l.AllowN(1, 32000, now) || l.AllowN(1, 1, now) {
		t.Fatal("refill is capped at the burst")
	}
}

func TestSweepBounded(t *testing.T) {
	l := New[int](1, 2, 100, Sweep)
	now := time.Unix(1000, 0)
	for k := range 100 {
		l.AllowN(k, 2, now) // every bucket drained
	}
	// Full and nothing refilled: arbitrary keys go, down to 90 %.
	if !l.Allow(100, now) || l.Len() != 91 || !l.Tracks(100) {
		t.Fatalf("full table: %d keys after a new one, want 91", l.Len())
	}
	for k := 101; k < 1000; k++ {
		l.Allow(k, now)
		if l.Len() > 100 {
			t.Fatalf("table grew to %d", l.Len())
		}
	}
	// Once refilled, every old bucket goes at the next new key.
	now = now.Add(2 * time.Second)
	l.AllowN(-1, 2, now)
	if l.Len() != 1 {
		t.Fatalf("after the sweep of refilled buckets: %d keys, want 1", l.Len())
	}
}

func TestGenerationsBounded(t *testing.T) {
	l := New[int](1, 1, 8, Generations)
	now := time.Unix(1000, 0)
	l.Allow(-1, now) // spends -1's only token
	for i := 0; i < 1000; i++ {
		l.Allow(i, now)
		if l.Len() > 8 {
			t.Fatalf("%d keys tracked, max 8", l.Len())
		}
		if i%3 == 0 && l.Allow(-1, now) {
			// A key looked up while the table churns moves along with the
			// current generation and keeps its (empty) bucket.
			t.Fatalf("step %d: key refilled by churn", i)
		}
	}
	if !l.Tracks(-1) || !l.Tracks(999) || l.Tracks(0) {
		t.Fatal("the recent keys are tracked, the old ones forgotten")
	}
}

// A tracked key costs no allocation (the TURN answer budget runs per
// unauthenticated datagram).
func TestAllowAllocs(t *testing.T) {
	for _, bound := range []Bound{Sweep, Generations} {
		l := New[string](1, 10, 8, bound)
		now := time.Unix(1000, 0)
		if n := testing.AllocsPerRun(100, func() { l.Allow("k", now) }); n != 0 {
			t.Errorf("%d: %v allocs", bound, n)
		}
	}
}
