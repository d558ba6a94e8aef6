package app

import (
	"context"
	"fmt"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/duskchat/dusk-relay/internal/config"
	"github.com/duskchat/dusk-relay/internal/mesh"
	"github.com/duskchat/dusk-relay/internal/p2p"
	"github.com/duskchat/dusk-relay/internal/reservations"
)

// recordLocator finds a peer's relay in the cluster's reservation records.
type recordLocator struct {
	rec       *reservations.Recorder
	self      peer.ID
	connected func(peer.ID) bool
}

func (l recordLocator) Locate(ctx context.Context, p peer.ID) (peer.ID, bool, error) {
	recs, err := l.rec.Lookup(ctx, p)
	if err != nil {
		return "", false, err
	}
	// Latest expiry first; our own record is stale when the node asks (it
	// asks only for peers not reserved here). A peer that moved after its
	// relay died has a fresh record at a live relay and a stale one at the
	// dead relay: prefer a relay we are connected to.
	var first peer.ID
	for _, r := range recs {
		if r.Relay == l.self {
			continue
		}
		if l.connected(r.Relay) {
			return r.Relay, true, nil
		}
		if first == "" {
			first = r.Relay
		}
	}
	return first, first != "", nil
}

// startMesh joins the circuit mesh when the relay is part of a cluster
// (DUSK_PEER_RELAYS) and can read the reservation records (DUSK_REDIS_URL);
// otherwise it returns nil and CONNECTs go to the relay service alone.
func startMesh(cfg *config.Config, node *p2p.Node, rec *reservations.Recorder, log *zap.Logger, reg prometheus.Registerer) (*mesh.Mesh, error) {
	if !meshEnabled(cfg) || rec == nil {
		return nil, nil
	}
	infos, err := peer.AddrInfosFromP2pAddrs(cfg.PeerRelays...)
	if err != nil {
		return nil, fmt.Errorf("mesh: DUSK_PEER_RELAYS: %w", err)
	}
	members := make([]peer.ID, 0, len(infos))
	for _, ai := range infos {
		members = append(members, ai.ID)
	}
	nw := node.Host().Network()
	connected := func(p peer.ID) bool { return nw.Connectedness(p) == network.Connected }
	m, err := mesh.New(node.Host(), node, recordLocator{rec: rec, self: node.ID(), connected: connected},
		mesh.Config{Members: members, MaxCircuitsPerPeer: cfg.MaxCircuitsPerPeer}, log, reg)
	if err != nil {
		return nil, err
	}
	m.Attach()
	node.SetForwarder(m)
	log.Info("circuit mesh enabled", zap.String("protocol", string(mesh.ProtocolID)), zap.Int("members", len(members)))
	return m, nil
}

// meshEnabled: the relay is part of a cluster and can read its records.
func meshEnabled(cfg *config.Config) bool { return len(cfg.PeerRelays) > 0 && cfg.RedisURL != "" }
