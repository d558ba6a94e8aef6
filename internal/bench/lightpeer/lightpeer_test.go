package lightpeer

import (
	"context"
	"io"
	"slices"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/protocol"
	"go.uber.org/goleak"

	"github.com/duskchat/dusk-relay/internal/testutil"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m, testutil.IgnoreLibp2p()...) }

// A light peer connects to a real go-libp2p host, is identified by it
// (the host learns our protocols), identifies it and pings it.
func TestDialIdentifyPing(t *testing.T) {
	h, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"))
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	c, err := Dial(ctx, nil, h.Addrs()[0], h.ID())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	protos, err := c.Identify(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(protos, PingID) {
		t.Fatalf("host protocols %v lack %s", protos, PingID)
	}
	rtts, err := c.Ping(ctx, 3)
	if err != nil {
		t.Fatal(err)
	}
	if len(rtts) != 3 {
		t.Fatalf("got %d RTTs, want 3", len(rtts))
	}
	if h.Network().Connectedness(c.ID) != network.Connected {
		t.Fatalf("host does not see %s connected", c.ID)
	}
	// The host's identify of us completes in the background.
	for i := 0; i < 200; i++ {
		if ps, _ := h.Peerstore().GetProtocols(c.ID); slices.Contains(ps, PingID) {
			return
		}
		time.Sleep(25 * time.Millisecond)
	}
	t.Fatal("host never identified the light peer")
}

// DialWith's handlers serve the remote's streams of extra protocols, and
// identify tells the remote about them (a host opens a stream of a
// protocol only when the peer lists it).
func TestDialWithHandlers(t *testing.T) {
	h, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"))
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	const echoID = "/dusk-bench/echo/1.0.0"
	c, err := DialWith(ctx, nil, h.Addrs()[0], h.ID(), Options{Handlers: map[protocol.ID]Handler{
		echoID: func(s network.MuxedStream) {
			defer s.Close()
			_, _ = io.Copy(s, s)
		},
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for i := 0; ; i++ {
		if ps, _ := h.Peerstore().GetProtocols(c.ID); slices.Contains(ps, echoID) {
			break
		}
		if i == 200 {
			t.Fatal("identify never listed the extra protocol")
		}
		time.Sleep(25 * time.Millisecond)
	}
	s, err := h.NewStream(ctx, c.ID, echoID)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	_ = s.CloseWrite()
	got, err := io.ReadAll(s)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != "hello" {
		t.Fatalf("echo %q, want hello", got)
	}
}
