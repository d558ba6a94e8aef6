package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/libp2p/go-libp2p"
	rcmgr "github.com/libp2p/go-libp2p/p2p/host/resource-manager"
	"github.com/libp2p/go-libp2p/p2p/net/connmgr"
	"github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/relay"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// runBareRelay is the baseline server of `conns`: a bare go-libp2p relay
// (default TCP+noise+yamux host, identify, ping, circuit relay v2 service)
// whose only changes are what lets it hold N connections: unlimited
// resource manager and a connection manager that never trims below
// DUSK_MAX_CONNECTIONS. It reads the same loopback variables as the daemon
// and prints the same `announced address:` lines; /metrics has go_goroutines.
func runBareRelay(ctx context.Context, env *runEnv, args []string) error {
	fs := flag.NewFlagSet("bare-relay", flag.ContinueOnError)
	fs.SetOutput(env.errOut)
	if err := fs.Parse(args); err != nil {
		return err
	}
	listen := os.Getenv("DUSK_RELAY_LISTEN_ADDRS")
	metricsAddr := os.Getenv("DUSK_METRICS_ADDR")
	if listen == "" || metricsAddr == "" {
		return fmt.Errorf("%w: bare-relay needs DUSK_RELAY_LISTEN_ADDRS and DUSK_METRICS_ADDR", errUsage)
	}
	maxConns := 20000
	if v := os.Getenv("DUSK_MAX_CONNECTIONS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			return fmt.Errorf("%w: DUSK_MAX_CONNECTIONS=%q", errUsage, v)
		}
		maxConns = n
	}
	rm, err := rcmgr.NewResourceManager(rcmgr.NewFixedLimiter(rcmgr.InfiniteLimits))
	if err != nil {
		return err
	}
	cm, err := connmgr.NewConnManager(maxConns, maxConns+1)
	if err != nil {
		return err
	}
	h, err := libp2p.New(libp2p.ListenAddrStrings(listen), libp2p.ResourceManager(rm), libp2p.ConnectionManager(cm), libp2p.DisableRelay())
	if err != nil {
		return err
	}
	defer h.Close()
	rl, err := relay.New(h, relay.WithInfiniteLimits())
	if err != nil {
		return err
	}
	defer rl.Close()

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector())
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	ln, err := net.Listen("tcp", metricsAddr)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()

	for _, a := range h.Addrs() {
		fmt.Fprintf(env.out, "announced address: %s/p2p/%s\n", a, h.ID())
	}
	<-ctx.Done()
	if errors.Is(ctx.Err(), context.Canceled) {
		return nil
	}
	return ctx.Err()
}
