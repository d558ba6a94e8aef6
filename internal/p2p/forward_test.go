package p2p

import (
	"testing"

	"github.com/libp2p/go-libp2p/core/protocol"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/duskchat/dusk-relay/internal/testutil"
)

// The cluster's protocols may hold a stream per circuit with each member
// relay: the default per-peer caps (128 streams of one protocol, 256 per
// peer) would cut a raised circuit cap short. Other peers keep the defaults.
func TestLimitConfigClusterProtocols(t *testing.T) {
	cfg := defaults(t)
	cfg.MaxCircuits = 1000
	_, member := testutil.FixedKey(1)
	_, other := testutil.FixedKey(2)
	cfg.PeerRelays = []ma.Multiaddr{ma.StringCast("/dns4/relay-b/tcp/4002/p2p/" + member.String())}
	const meshID = protocol.ID("/dusk/test-mesh/1.0.0")

	plain := limitConfig(cfg).ToPartialLimitConfig()
	if _, ok := plain.ProtocolPeer[meshID]; ok {
		t.Fatal("cluster protocol limits without cluster protocols")
	}
	if _, ok := plain.Peer[member]; ok {
		t.Fatal("member limits without cluster protocols")
	}

	l := limitConfig(cfg, meshID).ToPartialLimitConfig()
	pp := l.ProtocolPeer[meshID]
	if int(pp.StreamsInbound) < 1000 || int(pp.StreamsOutbound) < 1000 || int(pp.Streams) < 2000 {
		t.Fatalf("protocol-peer limits %+v, want >= 1000 each way", pp)
	}
	mp := l.Peer[member]
	if int(mp.StreamsInbound) < 1000+2*requestStreamsPerPeer || int(mp.StreamsOutbound) < 1000+2*requestStreamsPerPeer {
		t.Fatalf("member peer limits %+v, want >= %d each way", mp, 1000+2*requestStreamsPerPeer)
	}
	if _, ok := l.Peer[other]; ok {
		t.Fatal("a non-member got member limits")
	}
	if d := l.PeerDefault; int(d.StreamsInbound) >= 1000 {
		t.Fatalf("default peer limits raised too: %+v", d)
	}
}
