package p2p

import (
	"bytes"
	"crypto/rand"
	"io"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/p2p/protocol/ping"
)

func pingOn(t *testing.T, s network.Stream) error {
	t.Helper()
	buf := make([]byte, ping.PingSize)
	_, _ = rand.Read(buf)
	_ = s.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := s.Write(buf); err != nil {
		return err
	}
	back := make([]byte, ping.PingSize)
	if _, err := io.ReadFull(s, back); err != nil {
		return err
	}
	if !bytes.Equal(buf, back) {
		t.Fatalf("ping echoed %x, sent %x", back, buf)
	}
	return nil
}

// openPing connects a new client to n and opens a ping stream.
func openPing(t *testing.T, n *Node) network.Stream {
	t.Helper()
	c := newClient(t)
	if err := c.Connect(ctxT(t, 10*time.Second), relayInfo(n)); err != nil {
		t.Fatal(err)
	}
	s, err := c.NewStream(ctxT(t, 10*time.Second), n.ID(), ping.ID)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Reset() })
	return s
}

// A rust-libp2p client keeps one ping stream and pings every 15 s; the
// relay answers on it past go-libp2p's 10 s idle and 30 s stream limits.
func TestPingStreamKeptAsRustClientsDo(t *testing.T) {
	t.Parallel()
	s := openPing(t, startRelay(t, relayOpt{}))
	start := time.Now()
	for i := 0; i < 3; i++ {
		if i > 0 {
			time.Sleep(15 * time.Second)
		}
		if err := pingOn(t, s); err != nil {
			t.Fatalf("ping %d on one stream, %v after the first: %v", i+1, time.Since(start).Round(time.Second), err)
		}
	}
}

// A stream without pings is closed once idle, and the end of a client's
// pinging closes it cleanly.
func TestPingHandlerIdleAndEOF(t *testing.T) {
	n := startRelay(t, relayOpt{})
	n.h.SetStreamHandler(ping.ID, pingHandler(300*time.Millisecond))
	s := openPing(t, n)
	if err := pingOn(t, s); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	_ = s.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := s.Read(make([]byte, 1)); err == nil {
		t.Fatal("idle ping stream still open")
	}

	s = openPing(t, n)
	if err := pingOn(t, s); err != nil {
		t.Fatal(err)
	}
	if err := s.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	_ = s.SetDeadline(time.Now().Add(5 * time.Second))
	if b, err := io.ReadAll(s); err != nil || len(b) != 0 {
		t.Fatalf("after the client's EOF: %q, %v (want a clean close)", b, err)
	}
}
