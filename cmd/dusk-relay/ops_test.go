package main

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/client"
	"github.com/pion/turn/v4"
	rvz "github.com/waku-org/go-libp2p-rendezvous"

	"github.com/duskchat/dusk-relay/internal/directory"
	"github.com/duskchat/dusk-relay/internal/reqresp"
	"github.com/duskchat/dusk-relay/internal/turncreds"
)

// scrape returns every sample of /metrics as "name{labels}" -> value.
func scrape(t *testing.T, addr string) map[string]float64 {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, line := range strings.Split(string(body), "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err == nil {
			out[line[:i]] = v
		}
	}
	return out
}

// sum adds every sample whose series starts with prefix (a name, or a
// name plus the start of its labels).
func sum(m map[string]float64, prefix string) (total float64, found bool) {
	for k, v := range m {
		if k == prefix || strings.HasPrefix(k, prefix+"{") || (strings.Contains(prefix, "{") && strings.HasPrefix(k, prefix)) {
			total += v
			found = true
		}
	}
	return total, found
}

// turnUDPAddr reads the TURN UDP listener from the daemon's JSON logs.
func (d *daemon) turnUDPAddr(t *testing.T) string {
	t.Helper()
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, l := range d.stderr {
		var rec map[string]any
		if json.Unmarshal([]byte(l), &rec) == nil && rec["msg"] == "TURN server listening" {
			if a, ok := rec["udp"].(string); ok {
				return a
			}
		}
	}
	t.Fatal("no 'TURN server listening' log record")
	return ""
}

// After real client activity the counters of every capability moved.
func TestMetricsMoveWithActivity(t *testing.T) {
	env := append(testEnv(t.TempDir()), "DUSK_TURN_ALLOW_PEERS=127.0.0.0/8")
	d := startDaemon(t, env)
	if d.metrics == "" {
		t.Fatal("no metrics address")
	}
	before := scrape(t, d.metrics)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := newClient(t)
	relayInfo := peer.AddrInfo{ID: d.peerID, Addrs: d.addrs}
	if err := c.Connect(ctx, relayInfo); err != nil {
		t.Fatal(err)
	}

	// Relay reservation.
	rsv, err := client.Reserve(ctx, c, relayInfo)
	if err != nil {
		t.Fatalf("reserve: %v", err)
	}
	if len(rsv.Addrs) == 0 {
		t.Error("reservation carries no address")
	}

	// Rendezvous registration.
	if _, err := rvz.NewRendezvousClient(c, d.peerID).Register(ctx, "dusk/peers", 7200); err != nil {
		t.Fatalf("rendezvous register: %v", err)
	}

	// Directory registration.
	var dresp directory.Response
	if err := reqresp.CallCBOR(ctx, c, d.peerID, directory.ProtocolID,
		directory.Request{Kind: directory.RequestRegister, DisplayName: "metrics probe"}, &dresp); err != nil || dresp.Kind != directory.ResponseOk {
		t.Fatalf("directory register: %+v %v", dresp, err)
	}

	// TURN credentials and one allocation with them.
	var creds turncreds.Response
	if err := reqresp.CallCBOR(ctx, c, d.peerID, "/dusk/turn-credentials/1.0.0",
		turncreds.Request{PeerID: c.ID().String()}, &creds); err != nil {
		t.Fatalf("turn credentials: %v", err)
	}
	if !strings.HasSuffix(creds.Username, ":"+c.ID().String()) || creds.TTL != 86400 || len(creds.URIs) != 2 {
		t.Errorf("credentials = %+v", creds)
	}
	server := d.turnUDPAddr(t)
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tc, err := turn.NewClient(&turn.ClientConfig{
		STUNServerAddr: server, TURNServerAddr: server,
		Username: creds.Username, Password: creds.Password,
		Conn: pc, RTO: 200 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := tc.Listen(); err != nil {
		t.Fatal(err)
	}
	relayConn, err := tc.Allocate()
	if err != nil {
		t.Fatalf("allocate: %v", err)
	}
	// A wrong password is one auth failure.
	bad, _ := net.ListenPacket("udp4", "127.0.0.1:0")
	badc, err := turn.NewClient(&turn.ClientConfig{
		STUNServerAddr: server, TURNServerAddr: server,
		Username: creds.Username, Password: "wrong",
		Conn: bad, RTO: 200 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	_ = badc.Listen()
	if _, err := badc.Allocate(); err == nil {
		t.Error("allocation with a wrong password succeeded")
	}
	badc.Close()
	bad.Close()

	after := scrape(t, d.metrics)
	relayConn.Close()
	tc.Close()
	pc.Close()

	moved := []string{
		`dusk_relay_reservation_requests_total{result="accepted"}`,
		"dusk_rendezvous_registers_total",
		`dusk_directory_ops_total{op="register",result="ok"}`,
		"dusk_turn_credentials_issued_total",
		"dusk_turn_allocations_total",
		"dusk_turn_auth_failures_total",
	}
	for _, name := range moved {
		a, ok := sum(after, name)
		b, _ := sum(before, name)
		if !ok {
			t.Errorf("metric %s missing", name)
			continue
		}
		if a <= b {
			t.Errorf("metric %s did not move: %v -> %v", name, b, a)
		}
	}
	for _, gauge := range []string{"dusk_relay_connections", "dusk_relay_reservations", "dusk_rendezvous_live_registrations", "dusk_turn_allocations"} {
		if v, ok := sum(after, gauge); !ok || v < 1 {
			t.Errorf("gauge %s = %v (present %v), want >= 1", gauge, v, ok)
		}
	}
	// go-libp2p's own relay-service and resource-manager metrics share the registry.
	for _, prefix := range []string{"libp2p_relaysvc_", "libp2p_rcmgr_", "go_goroutines", "process_resident_memory_bytes"} {
		found := false
		for k := range after {
			found = found || strings.HasPrefix(k, prefix)
		}
		if !found {
			t.Errorf("no %s* metric exported", prefix)
		}
	}
	// No per-peer labels anywhere.
	for k := range after {
		if strings.Contains(k, "12D3KooW") || strings.Contains(k, `peer="`) {
			t.Errorf("per-peer label in %s", k)
		}
	}
}

// With TURN ports 0 the credential URIs name the ports actually bound.
func TestCredentialURIsNameBoundPorts(t *testing.T) {
	d := startDaemon(t, testEnv(t.TempDir()))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c := newClient(t)
	if err := c.Connect(ctx, peer.AddrInfo{ID: d.peerID, Addrs: d.addrs}); err != nil {
		t.Fatal(err)
	}
	var creds turncreds.Response
	if err := reqresp.CallCBOR(ctx, c, d.peerID, "/dusk/turn-credentials/1.0.0",
		turncreds.Request{PeerID: c.ID().String()}, &creds); err != nil {
		t.Fatal(err)
	}
	_, port, _ := net.SplitHostPort(d.turnUDPAddr(t))
	want := "turn:127.0.0.1:" + port
	if len(creds.URIs) != 2 || creds.URIs[0] != want || !strings.HasSuffix(creds.URIs[1], "?transport=tcp") {
		t.Errorf("URIs = %v, want first %s", creds.URIs, want)
	}
}
