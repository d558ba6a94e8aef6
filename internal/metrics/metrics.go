// Package metrics serves /metrics (Prometheus), /healthz and /readyz.
package metrics

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"
)

// NewRegistry returns a registry with the Go runtime and process collectors.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// Check reports whether one part of the daemon is ready.
type Check func() error

// Server is the operations HTTP endpoint.
type Server struct {
	log     *zap.Logger
	srv     *http.Server
	ln      net.Listener
	started atomic.Bool

	mu     sync.Mutex
	checks map[string]Check
}

// New binds addr now so that a port conflict is reported at start.
func New(addr string, gatherer prometheus.Gatherer, log *zap.Logger) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics listener on DUSK_METRICS_ADDR=%s: %w", addr, err)
	}
	s := &Server{log: log, ln: ln, checks: map[string]Check{}}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(gatherer, promhttp.HandlerOpts{ErrorLog: zap.NewStdLog(log)}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("/readyz", s.readyz)
	s.srv = &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       60 * time.Second,
	}
	go func() {
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server stopped", zap.Error(err))
		}
	}()
	return s, nil
}

// Addr is the bound address.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// AddCheck adds a readiness check.
func (s *Server) AddCheck(name string, c Check) {
	s.mu.Lock()
	s.checks[name] = c
	s.mu.Unlock()
}

// SetStarted marks start-up as complete; /readyz is 503 before.
func (s *Server) SetStarted(v bool) { s.started.Store(v) }

func (s *Server) readyz(w http.ResponseWriter, _ *http.Request) {
	failures := s.failures()
	if len(failures) > 0 {
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = w.Write([]byte(strings.Join(failures, "\n") + "\n"))
		return
	}
	_, _ = w.Write([]byte("ready\n"))
}

func (s *Server) failures() []string {
	var out []string
	if !s.started.Load() {
		out = append(out, "starting")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	names := make([]string, 0, len(s.checks))
	for n := range s.checks {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if err := s.checks[n](); err != nil {
			out = append(out, n+": "+err.Error())
		}
	}
	return out
}

// Close stops the server, waiting for in-flight requests until ctx ends.
func (s *Server) Close(ctx context.Context) error {
	return s.srv.Shutdown(ctx)
}

// Probe asks /readyz at addr (a DUSK_METRICS_ADDR value) and returns nil
// only for 200. Used by `dusk-relay healthcheck` in containers.
func Probe(ctx context.Context, addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("DUSK_METRICS_ADDR=%q: %w", addr, err)
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
	}
	url := "http://" + net.JoinHostPort(host, port) + "/readyz"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return fmt.Errorf("build request: %w", err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("GET %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return nil
}
