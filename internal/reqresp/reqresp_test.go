package reqresp

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"go.uber.org/goleak"
	"go.uber.org/zap"

	"github.com/duskchat/dusk-relay/internal/testutil"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, testutil.IgnoreLibp2p()...)
}

const testProto = "/dusk/test/1.0.0"

func newHost(t *testing.T) host.Host {
	t.Helper()
	h, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"), libp2p.DisableRelay())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

func pair(t *testing.T, handler Handler, opts ...Option) (server, client host.Host) {
	t.Helper()
	server, client = newHost(t), newHost(t)
	Serve(context.Background(), server, testProto, zap.NewNop(), handler, opts...)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := client.Connect(ctx, peer.AddrInfo{ID: server.ID(), Addrs: server.Addrs()}); err != nil {
		t.Fatal(err)
	}
	return server, client
}

type credReq struct {
	PeerID string `cbor:"peer_id"`
}

type credResp struct {
	Username string   `cbor:"username"`
	Password string   `cbor:"password"`
	TTL      uint64   `cbor:"ttl"`
	URIs     []string `cbor:"uris"`
}

// Golden bytes from ../shared/wire-vectors (cbor4ii output of the Rust types).
func TestMarshalMatchesRust(t *testing.T) {
	cases := []struct {
		v    any
		want string
	}{
		{credReq{}, "a167706565725f696460"},
		{credResp{}, "a468757365726e616d65606870617373776f7264606374746c00647572697380"},
		{uint64(86400), "1a00015180"},
		{uint64(1764000000123), "1b0000019ab697e87b"},
	}
	for _, c := range cases {
		got, err := Marshal(c.v)
		if err != nil {
			t.Fatal(err)
		}
		if hex.EncodeToString(got) != c.want {
			t.Errorf("Marshal(%#v) = %x, want %s", c.v, got, c.want)
		}
	}
}

func TestUnmarshalRejectsDuplicatesAndTrailing(t *testing.T) {
	var r credReq
	dup, _ := hex.DecodeString("a267706565725f69646178" + "67706565725f69646179")
	if err := Unmarshal(dup, &r); err == nil {
		t.Error("duplicate key accepted")
	}
	trailing, _ := hex.DecodeString("a167706565725f69646000")
	if err := Unmarshal(trailing, &r); err == nil {
		t.Error("trailing bytes accepted")
	}
}

func TestRoundTripOverLibp2p(t *testing.T) {
	var gotRemote peer.ID
	server, client := pair(t, func(_ context.Context, remote peer.ID, req []byte) ([]byte, error) {
		gotRemote = remote
		var r credReq
		if err := Unmarshal(req, &r); err != nil {
			return nil, err
		}
		return Marshal(credResp{Username: r.PeerID, TTL: 86400})
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var resp credResp
	if err := CallCBOR(ctx, client, server.ID(), testProto, credReq{PeerID: "abc"}, &resp); err != nil {
		t.Fatal(err)
	}
	if resp.Username != "abc" || resp.TTL != 86400 {
		t.Errorf("resp = %+v", resp)
	}
	if gotRemote != client.ID() {
		t.Errorf("handler saw remote %s, want %s", gotRemote, client.ID())
	}
}

func TestNoAnswerClosesStream(t *testing.T) {
	server, client := pair(t, func(context.Context, peer.ID, []byte) ([]byte, error) {
		return nil, ErrNoAnswer
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	out, err := Call(ctx, client, server.ID(), testProto, []byte{0xa0})
	if err != nil || len(out) != 0 {
		t.Fatalf("Call = %x, %v; want empty answer and clean close", out, err)
	}
	var resp credResp
	if err := CallCBOR(ctx, client, server.ID(), testProto, credReq{}, &resp); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("CallCBOR err = %v, want io.ErrUnexpectedEOF", err)
	}
}

func TestOversizedRequestIsReset(t *testing.T) {
	called := make(chan struct{}, 1)
	server, client := pair(t, func(context.Context, peer.ID, []byte) ([]byte, error) {
		called <- struct{}{}
		return []byte{0x60}, nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	big := bytes.Repeat([]byte{0x41}, 2<<20)
	out, err := Call(ctx, client, server.ID(), testProto, big)
	if err == nil && len(out) > 0 {
		t.Fatalf("2 MiB request answered with %d bytes", len(out))
	}
	select {
	case <-called:
		t.Fatal("handler called for an oversized request")
	default:
	}
}

func TestSilentStreamIsResetAfterDeadline(t *testing.T) {
	server, client := pair(t, func(context.Context, peer.ID, []byte) ([]byte, error) {
		return []byte{0x60}, nil
	}, WithReadTimeout(300*time.Millisecond))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := client.NewStream(ctx, server.ID(), testProto)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	_, _ = s.Write([]byte{0xa1}) // never half-close
	_ = s.SetReadDeadline(time.Now().Add(4 * time.Second))
	buf := make([]byte, 16)
	n, err := s.Read(buf)
	if n != 0 || err == nil {
		t.Fatalf("read %d bytes, err %v; want reset", n, err)
	}
	var se *network.StreamError
	if !errors.As(err, &se) && !errors.Is(err, network.ErrReset) {
		t.Errorf("err = %v, want a stream reset (not a deadline on our side)", err)
	}
}

func TestHandlerPanicsNeverReached(t *testing.T) {
	// Garbage decodes to an error, never a panic.
	var r credReq
	for _, g := range [][]byte{{}, {0xff}, {0xbf}, {0xa1, 0x60}, bytes.Repeat([]byte{0x81}, 100)} {
		if err := Unmarshal(g, &r); err == nil {
			t.Errorf("garbage %x decoded", g)
		}
	}
}

// A protocol's own cap: a request of exactly the cap is served, one byte
// more is reset without an answer and never reaches the handler.
func TestPerProtocolCap(t *testing.T) {
	const limit = 4 << 10
	got := make(chan int, 4)
	server, client := pair(t, func(_ context.Context, _ peer.ID, req []byte) ([]byte, error) {
		got <- len(req)
		return []byte{0x60}, nil
	}, WithMaxRequestSize(limit))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := Call(ctx, client, server.ID(), testProto, bytes.Repeat([]byte{0x41}, limit))
	if err != nil || !bytes.Equal(out, []byte{0x60}) || <-got != limit {
		t.Fatalf("request of exactly the cap: %x %v", out, err)
	}
	out, err = Call(ctx, client, server.ID(), testProto, bytes.Repeat([]byte{0x41}, limit+1))
	if err == nil || len(out) > 0 {
		t.Fatalf("request one byte over the cap: answer %x, err %v; want a reset", out, err)
	}
	var se *network.StreamError
	if !errors.As(err, &se) && !errors.Is(err, network.ErrReset) {
		t.Errorf("err = %v, want a stream reset", err)
	}
	select {
	case n := <-got:
		t.Fatalf("handler called with %d bytes", n)
	default:
	}
}

// A stream that sends nothing is reset at the first-byte deadline, well
// before the read deadline; one that started sending gets the full one.
func TestFirstByteDeadline(t *testing.T) {
	server, client := pair(t, func(context.Context, peer.ID, []byte) ([]byte, error) {
		return []byte{0x60}, nil
	}, WithReadTimeout(3*time.Second), WithFirstByteTimeout(200*time.Millisecond))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()

	silent, err := client.NewStream(ctx, server.ID(), testProto)
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Reset()
	// Finish negotiation without sending a request byte.
	_ = silent.SetReadDeadline(time.Now().Add(4 * time.Second))
	start := time.Now()
	_, err = silent.Read(make([]byte, 1))
	held := time.Since(start)
	if err == nil || held > 2*time.Second {
		t.Fatalf("silent stream: err %v after %v; want a reset near 200 ms", err, held)
	}

	slow, err := client.NewStream(ctx, server.ID(), testProto)
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Reset()
	if _, err := slow.Write([]byte{0x61}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(600 * time.Millisecond) // past the first-byte deadline
	if _, err := slow.Write([]byte{0x62}); err != nil {
		t.Fatal(err)
	}
	_ = slow.CloseWrite()
	_ = slow.SetReadDeadline(time.Now().Add(4 * time.Second))
	out, err := io.ReadAll(slow)
	if err != nil || !bytes.Equal(out, []byte{0x60}) {
		t.Fatalf("slow but started stream: %x %v; want an answer", out, err)
	}
}

func TestRemoteAddrInHandlerContext(t *testing.T) {
	addrs := make(chan string, 1)
	server, client := pair(t, func(ctx context.Context, _ peer.ID, _ []byte) ([]byte, error) {
		addrs <- AddrKey(RemoteAddr(ctx))
		return []byte{0x60}, nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := Call(ctx, client, server.ID(), testProto, []byte{0xa0}); err != nil {
		t.Fatal(err)
	}
	if got := <-addrs; got != "" {
		t.Fatalf("AddrKey(RemoteAddr) = %q, want \"\" (127.0.0.1 is exempt)", got)
	}
	if RemoteAddr(context.Background()) != nil {
		t.Fatal("RemoteAddr outside Serve")
	}
}
