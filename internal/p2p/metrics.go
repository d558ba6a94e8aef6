package p2p

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are ours (namespace dusk); go-libp2p's relay and resource
// manager metrics are registered on the same Registerer by go-libp2p.
type metrics struct {
	reservationReqs *prometheus.CounterVec
	circuitReqs     *prometheus.CounterVec
	relayedBytes    prometheus.Counter
	idleClosed      prometheus.Counter
}

func newMetrics() *metrics {
	return &metrics{
		reservationReqs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "dusk", Subsystem: "relay", Name: "reservation_requests_total",
			Help: "Relay v2 reservation requests by result (accepted, renewed, refused).",
		}, []string{"result"}),
		circuitReqs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "dusk", Subsystem: "relay", Name: "circuit_requests_total",
			Help: "Relay v2 circuit (CONNECT) requests by result (opened, refused).",
		}, []string{"result"}),
		relayedBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "dusk", Subsystem: "relay", Name: "relayed_bytes_total",
			Help: "Bytes relayed through circuits, both directions.",
		}),
		idleClosed: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "dusk", Subsystem: "relay", Name: "idle_connections_closed_total",
			Help: "Inbound connections closed after DUSK_IDLE_CONNECTION_TIMEOUT without a stream or reservation.",
		}),
	}
}

func (m *metrics) register(reg prometheus.Registerer, n *Node) error {
	gauge := func(name, help string, f func() float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "dusk", Subsystem: "relay", Name: name, Help: help}, f)
	}
	for _, c := range []prometheus.Collector{
		m.reservationReqs, m.circuitReqs, m.relayedBytes, m.idleClosed,
		gauge("connections", "Open libp2p connections.", func() float64 { return float64(n.conns.Load()) }),
		gauge("reservations", "Active relay v2 reservations.", func() float64 { return float64(n.reservations.Load()) }),
		gauge("circuits", "Relayed circuits, live or being set up.", func() float64 { return float64(n.circuits.Load()) }),
	} {
		if err := reg.Register(c); err != nil {
			return fmt.Errorf("register: %w", err)
		}
	}
	return nil
}
