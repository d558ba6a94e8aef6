package rendezvous

import (
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	pb "github.com/waku-org/go-libp2p-rendezvous/pb"
	"go.uber.org/zap"

	"github.com/duskchat/dusk-relay/internal/testutil"
)

// budgetOf is the sum the store must hold in bytes.
func budgetOf(s *Server) (tracked, want int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, m := range s.store.byPeer {
		for _, e := range m {
			want += entrySize(e.ns, e.record)
		}
	}
	return s.store.bytes, want
}

// The byte budget refuses new registrations with E_UNAVAILABLE once full,
// lets same-size refreshes through, and is freed by unregister and expiry.
func TestByteBudget(t *testing.T) {
	sk, id := testutil.FixedKey(1)
	rec := sealFixed(t, sk, id, nil)
	per := entrySize("ns-00", rec)
	clock := newFakeClock()
	s := New(testCfg, zap.NewNop(), nil, WithClock(clock.Now), WithMaxBytes(3*per))
	defer s.Close()
	reg := func(ns string, ttl uint64) pb.Message_ResponseStatus {
		return s.register(id, registerMsg(ns, rec, u64(ttl)).Register).GetStatus()
	}
	for i, want := range []pb.Message_ResponseStatus{pb.Message_OK, pb.Message_OK, pb.Message_OK, pb.Message_E_UNAVAILABLE} {
		if got := reg(fmt.Sprintf("ns-%02d", i), 7200); got != want {
			t.Fatalf("registration %d: %v, want %v", i, got, want)
		}
	}
	if got := reg("ns-01", 7200); got != pb.Message_OK {
		t.Fatalf("refresh in a full budget: %v", got)
	}
	if tracked, want := budgetOf(s); tracked != want || tracked != 3*per {
		t.Fatalf("budget %d, entries sum to %d (3 × %d)", tracked, want, per)
	}
	s.unregister(id, "ns-00")
	if got := reg("ns-03", 7200); got != pb.Message_OK {
		t.Fatalf("after unregister: %v", got)
	}
	clock.Advance(3 * time.Hour)
	s.sweep()
	if tracked, _ := budgetOf(s); tracked != 0 || s.Registrations() != 0 {
		t.Fatalf("after expiry: %d bytes, %d registrations", tracked, s.Registrations())
	}
	if got := reg("ns-04", 7200); got != pb.Message_OK {
		t.Fatalf("after expiry: %v", got)
	}
	if s.StoredBytes() != per {
		t.Fatalf("StoredBytes %d, want %d", s.StoredBytes(), per)
	}
}

// The default budget is on and bounded: the worst case of the other caps
// (1,000,000 records of 8 KiB) would be ~8 GiB.
func TestDefaultByteBudget(t *testing.T) {
	s := New(testCfg, zap.NewNop(), nil)
	defer s.Close()
	if s.store.maxBytes != DefaultMaxBytes || DefaultMaxBytes <= 0 || DefaultMaxBytes > 1<<30 {
		t.Fatalf("default budget %d", s.store.maxBytes)
	}
}

// Close must not wait StreamTimeout for clients that never finish their
// request: shutdown would hang that long (seen as a 14 s SIGTERM in the
// daemon's fault suite). Their streams are reset, a finished request on
// another stream is still answered.
func TestCloseCutsHeldStreams(t *testing.T) {
	srv, sh := startServer(t, nil, WithStreamTimeout(10*time.Minute))
	c := clients(t, sh, 1)[0]
	var held []network.Stream
	for i := 0; i < 5; i++ {
		s := openStream(t, c, sh.ID())
		if _, err := s.Write([]byte{0x20, 0x08}); err != nil { // a length prefix, then nothing
			t.Fatal(err)
		}
		held = append(held, s)
	}
	eventually(t, "streams in flight", func() bool {
		srv.life.Lock()
		defer srv.life.Unlock()
		return len(srv.active) == len(held)
	})
	closed := make(chan struct{})
	go func() { _ = srv.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(30 * time.Second):
		t.Fatal("Close still waiting for held streams after 30 s (stream timeout 10 min)")
	}
	for i, s := range held {
		if _, err := io.ReadAll(s); err == nil {
			t.Errorf("held stream %d ended gracefully; want a reset", i)
		}
	}
}
