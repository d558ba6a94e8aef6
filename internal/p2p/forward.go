package p2p

import (
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	pbv2 "github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/pb"
	ma "github.com/multiformats/go-multiaddr"
	"go.uber.org/zap"
)

// Forwarder reaches peers that hold their reservation at another relay of
// the cluster (internal/mesh implements it; internal/app wires it). The
// node only asks; it knows nothing of the cluster.
type Forwarder interface {
	// Forward is asked about a CONNECT from src to dst when dst holds no
	// reservation here. handled is false when no other relay can reach dst:
	// s is untouched and the relay answers as usual (NO_RESERVATION).
	// Otherwise Forward has answered s with a hop STATUS st; when st is
	// OK, splice relays the circuit and returns when it has ended. Forward
	// takes its circuit slot itself (AcquireCircuit) and gives it back.
	Forward(s network.Stream, src, dst peer.ID) (st pbv2.Status, splice func(), handled bool)
}

// SetForwarder installs f for CONNECTs to peers not reserved here. Call it
// before Listen.
func (n *Node) SetForwarder(f Forwarder) { n.fwd = f }

// HasReservation reports whether p holds a live reservation at this relay.
func (n *Node) HasReservation(p peer.ID) bool { return n.hasReservation(p, time.Now()) }

// AcquireCircuit takes a slot of the relay's total circuit cap
// (DUSK_RELAY_MAX_CIRCUITS) for a circuit the relay service does not see;
// release gives it back (call it once).
func (n *Node) AcquireCircuit() (release func(), ok bool) {
	if !n.acquireCircuit() {
		return nil, false
	}
	return func() { n.circuits.Add(-1) }, true
}

// CircuitLimit is the limit this relay announces for its circuits (nil:
// unlimited), as the relay service builds it.
func (n *Node) CircuitLimit() *pbv2.Limit {
	l := relayLimit(n.cfg.CircuitDuration, n.cfg.CircuitBytes)
	if l == nil {
		return nil
	}
	d, b := uint32(l.Duration/time.Second), uint64(l.Data)
	return &pbv2.Limit{Duration: &d, Data: &b}
}

// forward offers a CONNECT for a peer not reserved here to the forwarder.
// It returns false when the relay service should answer instead.
func (n *Node) forward(s network.Stream, src, dst peer.ID) bool {
	if n.fwd == nil || n.HasReservation(dst) {
		return false
	}
	// The relay refuses CONNECTs over relayed connections (PERMISSION_DENIED).
	if _, err := s.Conn().RemoteMultiaddr().ValueForProtocol(ma.P_CIRCUIT); err == nil {
		return false
	}
	// The source's address prefix pays for a mesh circuit as for a local
	// one; the forwarder takes the total slot.
	key := addrKey(s.Conn().RemoteMultiaddr())
	if !n.takePrefixCircuit(key) {
		n.m.circuitReqs.WithLabelValues("refused").Inc()
		refuse(s, pbv2.Status_RESOURCE_LIMIT_EXCEEDED)
		n.tr.ConnectionRequestHandled(pbv2.Status_RESOURCE_LIMIT_EXCEEDED)
		return true
	}
	defer n.givePrefixCircuit(key)
	st, splice, handled := n.fwd.Forward(s, src, dst)
	if !handled {
		return false
	}
	n.tr.ConnectionRequestHandled(st)
	if st != pbv2.Status_OK || splice == nil {
		n.m.circuitReqs.WithLabelValues("refused").Inc()
		n.log.Debug("circuit refused", zap.Stringer("src", src), zap.Stringer("dst", dst),
			zap.Stringer("status", st), zap.Bool("mesh", true))
		return true
	}
	n.m.circuitReqs.WithLabelValues("opened").Inc()
	n.log.Debug("circuit opened", zap.Stringer("src", src), zap.Stringer("dst", dst), zap.Bool("mesh", true),
		zap.Int64("circuits", n.circuits.Load()), zap.Int64("connections", n.conns.Load()))
	opened := time.Now()
	splice()
	total := n.circuits.Load()
	if ce := n.log.Check(zap.DebugLevel, "circuit closed"); ce != nil {
		ce.Write(zap.Stringer("src", src), zap.Stringer("dst", dst), zap.Bool("mesh", true),
			zap.Duration("duration", time.Since(opened).Round(time.Millisecond)), zap.Int64("circuits", total))
	}
	return true
}
