package p2p

import (
	"context"
	"crypto/rand"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
)

type hookEvent struct {
	p   peer.ID
	end bool
	exp time.Time
}

type recordingHook struct {
	mu     sync.Mutex
	events []hookEvent
}

func (h *recordingHook) OnReserve(p peer.ID, exp time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.events = append(h.events, hookEvent{p: p, exp: exp})
}

func (h *recordingHook) OnEnd(p peer.ID) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.events = append(h.events, hookEvent{p: p, end: true})
}

func (h *recordingHook) of(p peer.ID) []hookEvent {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []hookEvent
	for _, e := range h.events {
		if e.p == p {
			out = append(out, e)
		}
	}
	return out
}

// The hook hears every accepted reservation and renewal with the
// reservation's expiry, and its end when the client leaves.
func TestReservationHook(t *testing.T) {
	cfg := defaults(t)
	key, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	n, err := New(ctx, cfg, Options{Version: "test"}, key, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	hook := &recordingHook{}
	n.SetReservationHook(hook)
	if err := n.Listen(ctx); err != nil {
		t.Fatal(err)
	}
	c := newClient(t)
	before := time.Now()
	reserve(t, c, n)
	reserve(t, c, n) // renewal
	// The client may read the answer before the relay's hook has run.
	eventually(t, "reserve and renewal heard", func() bool { return len(hook.of(c.ID())) >= 2 })
	ev := hook.of(c.ID())
	if len(ev) != 2 || ev[0].end || ev[1].end {
		t.Fatalf("events after reserve + renew: %+v", ev)
	}
	if d := ev[1].exp.Sub(before); d < cfg.ReservationTTL || d > cfg.ReservationTTL+5*time.Second || !ev[1].exp.After(ev[0].exp) {
		t.Fatalf("expiries %v, %v: want now + the reservation TTL (%v), renewed later", ev[0].exp, ev[1].exp, cfg.ReservationTTL)
	}
	_ = c.Close()
	eventually(t, "end of the reservation", func() bool {
		ev := hook.of(c.ID())
		return len(ev) == 3 && ev[2].end
	})
}
