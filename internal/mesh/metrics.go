package mesh

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// Sides of a mesh circuit: the entry relay took the initiator's CONNECT,
// the exit relay holds the target's reservation.
const (
	entry = "entry"
	exit  = "exit"
)

// metrics carry no peer labels: identities are free, series are not.
type metrics struct {
	circuits *prometheus.CounterVec
	bytes    *prometheus.CounterVec
}

func newMetrics() *metrics {
	return &metrics{
		circuits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "dusk", Subsystem: "mesh", Name: "circuits_total",
			Help: "Mesh circuit requests by side (entry: CONNECT taken here, exit: target reserved here) and result " +
				"(opened, unreachable, refused, limit, no_reservation, failed, malformed, locate_error, busy, not_member).",
		}, []string{"side", "result"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "dusk", Subsystem: "mesh", Name: "bytes_total",
			Help: "Bytes spliced through mesh circuits by side and direction.",
		}, []string{"side", "direction"}),
	}
}

func (m *metrics) circuit(side, result string) { m.circuits.WithLabelValues(side, result).Inc() }

func (m *metrics) register(reg prometheus.Registerer, mesh *Mesh) error {
	live := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: "dusk", Subsystem: "mesh", Name: "circuits",
		Help: "Live mesh circuits at this relay (either side).",
	}, func() float64 { return float64(mesh.Circuits()) })
	for _, c := range []prometheus.Collector{m.circuits, m.bytes, live} {
		if err := reg.Register(c); err != nil {
			return fmt.Errorf("register: %w", err)
		}
	}
	return nil
}
