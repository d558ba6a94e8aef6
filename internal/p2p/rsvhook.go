package p2p

import (
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

// ReservationHook hears of this relay's reservations, e.g. to record them
// where the other relays of a cluster can find them (internal/app wires
// internal/reservations). The node knows nothing of where they go.
//
// Both methods are called with the node's reservation lock held, so their
// order is the order of events: they must not block (queue and return).
type ReservationHook interface {
	// OnReserve: p holds a reservation here until expires (new or renewed).
	OnReserve(p peer.ID, expires time.Time)
	// OnEnd: p's reservation ended (disconnect, expiry, refusal of a new one).
	OnEnd(p peer.ID)
}

// SetReservationHook installs h. Call it before Listen.
func (n *Node) SetReservationHook(h ReservationHook) { n.rsvHook = h }
