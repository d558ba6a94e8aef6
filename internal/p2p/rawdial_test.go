package p2p

import (
	"context"
	"crypto/rand"
	"io"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/sec"
	"github.com/libp2p/go-libp2p/p2p/muxer/yamux"
	tptu "github.com/libp2p/go-libp2p/p2p/net/upgrader"
	"github.com/libp2p/go-libp2p/p2p/security/noise"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	ma "github.com/multiformats/go-multiaddr"
)

// rawDial opens one noise+yamux connection from a fresh identity without a
// whole host, so a test can hold hundreds of them cheaply.
func rawDial(addr ma.Multiaddr, relay peer.ID) (io.Closer, error) {
	priv, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		return nil, err
	}
	muxers := []tptu.StreamMuxer{{ID: yamux.ID, Muxer: yamux.DefaultTransport}}
	st, err := noise.New(noise.ID, priv, muxers)
	if err != nil {
		return nil, err
	}
	u, err := tptu.New([]sec.SecureTransport{st}, muxers, nil, nil, nil)
	if err != nil {
		return nil, err
	}
	tpt, err := tcp.NewTCPTransport(u, nil, nil)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	return tpt.Dial(ctx, addr, relay)
}
