package metrics

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
	"go.uber.org/zap"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestEndpoints(t *testing.T) {
	reg := NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "dusk_test_total", Help: "t"})
	reg.MustRegister(c)
	c.Add(3)
	s, err := New("127.0.0.1:0", reg, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(context.Background())
	base := "http://" + s.Addr().String()
	http.DefaultClient.CloseIdleConnections()
	defer http.DefaultClient.CloseIdleConnections()

	if code, _ := get(t, base+"/healthz"); code != 200 {
		t.Errorf("/healthz = %d", code)
	}
	if code, body := get(t, base+"/readyz"); code != 503 || !strings.Contains(body, "starting") {
		t.Errorf("/readyz before start = %d %q, want 503 starting", code, body)
	}
	turnUp := errors.New("not listening")
	s.AddCheck("turn", func() error { return turnUp })
	s.SetStarted(true)
	if code, body := get(t, base+"/readyz"); code != 503 || !strings.Contains(body, "turn: not listening") {
		t.Errorf("/readyz with a failing check = %d %q", code, body)
	}
	if err := Probe(context.Background(), s.Addr().String()); err == nil {
		t.Error("Probe passed while not ready")
	}
	turnUp = nil
	if code, _ := get(t, base+"/readyz"); code != 200 {
		t.Errorf("/readyz when ready = %d", code)
	}
	if err := Probe(context.Background(), s.Addr().String()); err != nil {
		t.Errorf("Probe: %v", err)
	}
	// 0.0.0.0 (a container's bind address) is probed on loopback.
	port := s.Addr().String()[strings.LastIndexByte(s.Addr().String(), ':'):]
	if err := Probe(context.Background(), "0.0.0.0"+port); err != nil {
		t.Errorf("Probe 0.0.0.0: %v", err)
	}
	code, body := get(t, base+"/metrics")
	if code != 200 || !strings.Contains(body, "dusk_test_total 3") || !strings.Contains(body, "go_goroutines") {
		t.Errorf("/metrics = %d, body lacks counters:\n%.400s", code, body)
	}
}

func TestPortInUseNamesVariable(t *testing.T) {
	s, err := New("127.0.0.1:0", NewRegistry(), zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(context.Background())
	_, err = New(s.Addr().String(), NewRegistry(), zap.NewNop())
	if err == nil || !strings.Contains(err.Error(), "DUSK_METRICS_ADDR") {
		t.Errorf("second bind: %v", err)
	}
}
