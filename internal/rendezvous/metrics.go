package rendezvous

import (
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

type metrics struct {
	registers   prometheus.Counter
	unregisters prometheus.Counter
	discovers   prometheus.Counter
	served      prometheus.Counter
	malformed   prometheus.Counter
	evicted     prometheus.Counter
	errors      *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer, live, stored func() int, log *zap.Logger) metrics {
	const ns, sub = "dusk", "rendezvous"
	m := metrics{
		registers: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "registers_total", Help: "Successful rendezvous registrations (new and refreshed)."}),
		unregisters: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "unregisters_total", Help: "Rendezvous unregister requests."}),
		discovers: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "discovers_total", Help: "Successful rendezvous discover requests."}),
		served: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "discovered_registrations_total", Help: "Registrations returned by discover requests."}),
		malformed: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "malformed_requests_total", Help: "Rendezvous streams reset for undecodable or unexpected requests."}),
		evicted: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "evicted_total", Help: "Registrations evicted from the largest holder to make room for another sender."}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "errors_total", Help: "Rendezvous error responses by status."}, []string{"status"}),
	}
	if reg == nil {
		return m
	}
	gauge := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub,
		Name: "live_registrations", Help: "Live (unexpired) rendezvous registrations."},
		func() float64 { return float64(live()) })
	bytes := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub,
		Name: "stored_bytes", Help: "Bytes live rendezvous registrations count against DefaultMaxBytes."},
		func() float64 { return float64(stored()) })
	for _, c := range []prometheus.Collector{m.registers, m.unregisters, m.discovers, m.served, m.malformed, m.evicted, m.errors, gauge, bytes} {
		if err := reg.Register(c); err != nil {
			log.Error("register rendezvous metric", zap.Error(err))
		}
	}
	return m
}
