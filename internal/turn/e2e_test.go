package turn_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"go.uber.org/zap"

	"github.com/duskchat/dusk-relay/internal/reqresp"
	"github.com/duskchat/dusk-relay/internal/turn"
	"github.com/duskchat/dusk-relay/internal/turnauth"
	"github.com/duskchat/dusk-relay/internal/turncreds"
)

func newHost(t testing.TB) host.Host {
	t.Helper()
	h, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"), libp2p.DisableRelay())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.Close() })
	return h
}

// daemon is the TURN part of a relay: one secret from the data dir, the
// TURN server, and the credential protocol on a libp2p host.
type daemon struct {
	srv  *turn.Server
	host host.Host
}

func startDaemon(t *testing.T, dataDir string) *daemon {
	t.Helper()
	secret, err := turnauth.LoadOrCreateSecret(dataDir, "", zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	cfg := turn.TestingConfig()
	srv, err := turn.New(cfg, secret, zap.NewNop(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Close() })
	// Advertise the ports the kernel picked.
	cfg.UDPPort, cfg.TCPPort = uint16(srv.UDPAddr().Port), uint16(srv.TCPAddr().Port)
	cfg.PublicHost = "127.0.0.1"
	h := newHost(t)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	turncreds.New(cfg, secret, zap.NewNop(), nil).Attach(ctx, h)
	return &daemon{srv: srv, host: h}
}

// fetch asks d for credentials from a fresh libp2p client host.
func fetch(t *testing.T, d *daemon) (peer.ID, turncreds.Response) {
	t.Helper()
	c := newHost(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Connect(ctx, peer.AddrInfo{ID: d.host.ID(), Addrs: d.host.Addrs()}); err != nil {
		t.Fatal(err)
	}
	var resp turncreds.Response
	if err := reqresp.CallCBOR(ctx, c, d.host.ID(), turncreds.Protocol, turncreds.Request{PeerID: c.ID().String()}, &resp); err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(resp.Username, ":"+c.ID().String()) || resp.TTL != 86400 || len(resp.URIs) != 2 {
		t.Fatalf("credentials %+v for %s", resp, c.ID())
	}
	return c.ID(), resp
}

// serverAddr turns "turn:host:port[?transport=tcp]" into network and address.
func serverAddr(t *testing.T, uri string) (network, addr string) {
	t.Helper()
	rest, ok := strings.CutPrefix(uri, "turn:")
	if !ok {
		t.Fatalf("uri %q", uri)
	}
	if a, ok := strings.CutSuffix(rest, "?transport=tcp"); ok {
		return "tcp", a
	}
	return "udp", rest
}

func TestCredentialsOverLibp2pThenRelay(t *testing.T) {
	d := startDaemon(t, t.TempDir())
	_, credsA := fetch(t, d)
	_, credsB := fetch(t, d)
	if n, a := serverAddr(t, credsA.URIs[0]); n != "udp" || a != d.srv.UDPAddr().String() {
		t.Fatalf("udp uri %q, server on %v", credsA.URIs[0], d.srv.UDPAddr())
	}
	if n, a := serverAddr(t, credsA.URIs[1]); n != "tcp" || a != d.srv.TCPAddr().String() {
		t.Fatalf("tcp uri %q, server on %v", credsA.URIs[1], d.srv.TCPAddr())
	}
	for _, uri := range credsA.URIs {
		network, addr := serverAddr(t, uri)
		t.Run(network, func(t *testing.T) {
			_, udpB := serverAddr(t, credsB.URIs[0])
			a := turn.DialTURN(t, network, addr, credsA.Username, credsA.Password)
			b := turn.DialTURN(t, "udp", udpB, credsB.Username, credsB.Password)
			turn.RelayBetween(t, a, b, 5)
		})
	}
}

// Restarting with the same data dir keeps the secret, so credentials issued
// before the restart keep working.
func TestCredentialsSurviveRestart(t *testing.T) {
	dir := t.TempDir()
	first := startDaemon(t, dir)
	_, creds := fetch(t, first)
	if err := first.srv.Close(); err != nil {
		t.Fatal(err)
	}
	second := startDaemon(t, dir)
	c := turn.DialTURN(t, "udp", second.srv.UDPAddr().String(), creds.Username, creds.Password)
	if _, err := c.Allocate(); err != nil {
		t.Fatalf("credentials from the first daemon refused by the second: %v", err)
	}
	// A daemon with another secret refuses them with 401.
	other := startDaemon(t, t.TempDir())
	c2 := turn.DialTURN(t, "tcp", other.srv.TCPAddr().String(), creds.Username, creds.Password)
	if _, err := c2.Allocate(); turn.TURNCode(err) != 401 {
		t.Fatalf("other secret: %v, want 401", err)
	}
}
