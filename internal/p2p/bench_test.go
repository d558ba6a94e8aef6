package p2p

import (
	"context"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/client"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/duskchat/dusk-relay/internal/config"
)

// BenchmarkReservation: one reservation round trip (a renewal) on an
// established connection.
func BenchmarkReservation(b *testing.B) {
	n := startRelay(b, relayOpt{})
	c := newClient(b)
	reserve(b, c, n)
	info := relayInfo(n)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	for b.Loop() {
		if _, err := client.Reserve(ctx, c, info); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkCircuitSetup: A connects to B through the relay (HOP CONNECT,
// STOP, then noise + yamux over the circuit), then drops the connection.
func BenchmarkCircuitSetup(b *testing.B) {
	n := startRelay(b, relayOpt{cfg: func(c *config.Relay) {
		c.MaxCircuits = 1 << 20
		c.MaxCircuitsPerPeer = 1 << 20
	}})
	src, dst := newClient(b), newClient(b)
	reserve(b, dst, n)
	target := peer.AddrInfo{ID: dst.ID(), Addrs: []ma.Multiaddr{circuitAddr(n)}}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	for b.Loop() {
		if err := src.Connect(ctx, target); err != nil {
			b.Fatal(err)
		}
		if err := src.Network().ClosePeer(dst.ID()); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	eventually(b, "circuits drained", func() bool { return n.Circuits() == 0 })
}

// BenchmarkConnection: a new client connection (TCP + noise + yamux) to the relay.
func BenchmarkConnection(b *testing.B) {
	n := startRelay(b, relayOpt{})
	addr := n.ListenAddrs()[0]
	for b.Loop() {
		c, err := rawDial(addr, n.ID())
		if err != nil {
			b.Fatal(err)
		}
		_ = c.Close()
	}
}
