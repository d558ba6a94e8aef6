package config

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// clearEnv unsets every variable Config knows for the duration of a test.
func clearEnv(t *testing.T) {
	t.Helper()
	for _, n := range append(Names(), "RUST_LOG", "XDG_DATA_HOME") {
		t.Setenv(n, "") // registers restore; dropEmpty treats "" as unset
	}
	t.Chdir(t.TempDir()) // no stray .env
}

func TestDefaults(t *testing.T) {
	clearEnv(t)
	t.Setenv("DUSK_TURN_PUBLIC_IP", "203.0.113.7")
	c, err := Load()
	if err != nil {
		t.Fatal(err)
	}
	checks := []struct {
		name      string
		got, want any
	}{
		{"LogLevel", c.LogLevel, "info"},
		{"LogFormat", c.LogFormat, "console"},
		{"Port", c.Port, uint16(4001)},
		{"MaxConns", c.MaxConns, 10000},
		{"MaxReservations", c.MaxReservations, 10000},
		{"MaxConnsPerIP", c.MaxConnsPerIP, 64},
		{"IdleConnTimeout", c.IdleConnTimeout, 5 * time.Minute},
		{"MaxReservationsPerPeer", c.MaxReservationsPerPeer, 4},
		{"MaxCircuits", c.MaxCircuits, 1250},
		{"MaxCircuitsPerPeer", c.MaxCircuitsPerPeer, 4},
		{"CircuitDuration", c.CircuitDuration, 2 * time.Minute},
		{"CircuitBytes", c.CircuitBytes, int64(131072)},
		{"ReservationTTL", c.ReservationTTL, time.Hour},
		{"MinTTL", c.MinTTL, 2 * time.Hour},
		{"MaxTTL", c.MaxTTL, 72 * time.Hour},
		{"MaxDiscover", c.MaxDiscover, 1000},
		{"Rendezvous.MaxBytes", c.Rendezvous.MaxBytes, int64(128 << 20)},
		{"Rendezvous.MaxPerPeer", c.Rendezvous.MaxPerPeer, 256},
		{"MaxBytesPerPeer", c.MaxBytesPerPeer, int64(256 << 10)},
		{"MaxBytesPerAddr", c.MaxBytesPerAddr, int64(4 << 20)},
		{"DiscoverAll", c.DiscoverAll, false},
		{"MaxPerIP", c.MaxPerIP, 40},
		{"MaxBPS", c.MaxBPS, 1000000},
		{"TURN.Enabled", bool(c.TURN.Enabled), true},
		{"UDPPort", c.UDPPort, uint16(3478)},
		{"TCPPort", c.TCPPort, uint16(3478)},
		{"Realm", c.Realm, "duskchat.app"},
		{"PortRangeStart", c.PortRangeStart, uint16(49152)},
		{"PortRangeEnd", c.PortRangeEnd, uint16(65535)},
		{"MaxAllocations", c.MaxAllocations, 1000},
		{"MaxPerUser", c.MaxPerUser, 10},
		{"CredentialTTL", c.CredentialTTL, 24 * time.Hour},
		{"UDPThreads", c.UDPThreads, runtime.NumCPU()},
		{"GifAPIBase", c.GifAPIBase, "https://api.klipy.com/v2"},
		{"KlipyTestKey", bool(c.KlipyTestKey), false},
		{"MetricsAddr", c.MetricsAddr, "127.0.0.1:9464"},
		{"CredentialHost", c.CredentialHost(), "203.0.113.7"},
		{"PublicIPGuessed", c.PublicIPGuessed, false},
	}
	for _, ch := range checks {
		if ch.got != ch.want {
			t.Errorf("%s = %v, want %v", ch.name, ch.got, ch.want)
		}
	}
	if len(c.ExternalAddrs) != 0 || len(c.PeerRelays) != 0 || len(c.AllowPeers) != 0 {
		t.Errorf("lists should default empty: %v %v %v", c.ExternalAddrs, c.PeerRelays, c.AllowPeers)
	}
}

func TestGuessedPublicIPAndHostFallback(t *testing.T) {
	clearEnv(t)
	c, err := Load()
	if err != nil {
		t.Fatal(err)
	}
	if !c.PublicIPGuessed || c.PublicIP == "" {
		t.Fatalf("PublicIP %q guessed=%v", c.PublicIP, c.PublicIPGuessed)
	}
	if got := c.CredentialHost(); got != "relay.duskchat.app" {
		t.Errorf("CredentialHost = %q, want relay.duskchat.app when the IP was only guessed", got)
	}
	t.Setenv("DUSK_TURN_PUBLIC_HOST", "turn.example.org")
	c, err = Load()
	if err != nil {
		t.Fatal(err)
	}
	if got := c.CredentialHost(); got != "turn.example.org" {
		t.Errorf("CredentialHost = %q", got)
	}
}

// An empty value counts as unset (the Rust relay treated "" as a value).
func TestEmptyMeansUnset(t *testing.T) {
	clearEnv(t)
	t.Setenv("DUSK_RELAY_PORT", "")
	t.Setenv("DUSK_TURN_SECRET", "")
	t.Setenv("DUSK_TURN_PUBLIC_HOST", "  ")
	c, err := Load()
	if err != nil {
		t.Fatal(err)
	}
	if c.Port != 4001 || c.Secret != "" || c.PublicHost != "" {
		t.Errorf("port=%d secret=%q host=%q", c.Port, c.Secret, c.PublicHost)
	}
}

func TestMalformedNamesVariable(t *testing.T) {
	cases := map[string]string{
		"DUSK_RELAY_PORT":                    "40o1",
		"DUSK_MAX_CONNECTIONS":               "-5",
		"DUSK_RELAY_EXTERNAL_ADDR":           "/ip4/1.2.3.4/tcpp/4001",
		"DUSK_PEER_RELAYS":                   "/ip4/127.0.0.1/tcp/4001",
		"DUSK_RELAY_CIRCUIT_DURATION":        "two minutes",
		"DUSK_RELAY_CIRCUIT_BYTES":           "lots",
		"DUSK_RENDEZVOUS_MAX_TTL":            "1h",
		"DUSK_TURN_PUBLIC_IP":                "300.1.1.1",
		"DUSK_TURN_LISTEN_IP":                "localhost",
		"DUSK_TURN_UDP_PORT":                 "70000",
		"DUSK_TURN_PORT_RANGE_START":         "80",
		"DUSK_TURN_PORT_RANGE_END":           "50000x",
		"DUSK_TURN_ALLOW_PEERS":              "127.0.0.0/33",
		"DUSK_TURN_DENY_PEERS":               "10.0.0.0/8,nonsense",
		"DUSK_TURN_MAX_PER_USER":             "0",
		"DUSK_TURN_CREDENTIAL_TTL":           "0s",
		"DUSK_TURN_MAX_BPS":                  "7999",
		"DUSK_LOG_LEVEL":                     "loud",
		"DUSK_LOG_FORMAT":                    "xml",
		"DUSK_METRICS_ADDR":                  "9464",
		"DUSK_GIF_API_BASE":                  "ftp://x",
		"DUSK_TURN_SECRET":                   "0123456789abcde", // 15 bytes
		"DUSK_RENDEZVOUS_MAX_PER_PEER":       "0",
		"DUSK_RENDEZVOUS_MAX_BYTES_PER_PEER": "1024",
		"DUSK_RENDEZVOUS_MAX_BYTES_PER_ADDR": "200000",
		"DUSK_RENDEZVOUS_DISCOVER_ALL":       "yes",
	}
	for name, value := range cases {
		t.Run(name, func(t *testing.T) {
			clearEnv(t)
			t.Setenv(name, value)
			_, err := Load()
			if err == nil {
				t.Fatalf("%s=%q accepted", name, value)
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("error %v is not ErrInvalid", err)
			}
			var ce *Error
			if !errors.As(err, &ce) || ce.Var != name {
				t.Errorf("error %q does not name %s", err, name)
			}
			if !strings.Contains(err.Error(), name) {
				t.Errorf("message %q lacks %s", err, name)
			}
		})
	}
}

func TestRangeEndBeforeStart(t *testing.T) {
	clearEnv(t)
	t.Setenv("DUSK_TURN_PORT_RANGE_START", "50000")
	t.Setenv("DUSK_TURN_PORT_RANGE_END", "49999")
	_, err := Load()
	var ce *Error
	if !errors.As(err, &ce) || ce.Var != "DUSK_TURN_PORT_RANGE_END" {
		t.Fatalf("got %v", err)
	}
}

func TestListsAndSwitches(t *testing.T) {
	clearEnv(t)
	t.Setenv("DUSK_RELAY_EXTERNAL_ADDR", " /dns4/relay.example.org/tcp/4001 , /ip4/203.0.113.9/tcp/4001,")
	t.Setenv("DUSK_TURN_ALLOW_PEERS", "127.0.0.0/8, ::1, 10.1.2.3/8")
	t.Setenv("DUSK_TURN_ENABLED", "0")
	t.Setenv("KLIPY_TEST_KEY", "1")
	t.Setenv("RUST_LOG", "debug")
	c, err := Load()
	if err != nil {
		t.Fatal(err)
	}
	if len(c.ExternalAddrs) != 2 || c.ExternalAddrs[0].String() != "/dns4/relay.example.org/tcp/4001" {
		t.Errorf("ExternalAddrs = %v", c.ExternalAddrs)
	}
	want := []string{"127.0.0.0/8", "::1/128", "10.0.0.0/8"}
	if len(c.AllowPeers) != len(want) {
		t.Fatalf("AllowPeers = %v", c.AllowPeers)
	}
	for i, w := range want {
		if c.AllowPeers[i].String() != w {
			t.Errorf("AllowPeers[%d] = %s, want %s", i, c.AllowPeers[i], w)
		}
	}
	if bool(c.TURN.Enabled) || !bool(c.KlipyTestKey) || c.LogLevel != "debug" {
		t.Errorf("enabled=%v testkey=%v level=%q", c.TURN.Enabled, c.KlipyTestKey, c.LogLevel)
	}
	for _, v := range []string{"yes", "true", "TRUE", "on"} {
		t.Setenv("DUSK_TURN_ENABLED", v)
		if c, err = Load(); err != nil || !c.TURN.Enabled {
			t.Errorf("DUSK_TURN_ENABLED=%s -> %v %v (only false/0 disable)", v, c.TURN.Enabled, err)
		}
	}
}

func TestDotEnvLoadedRealEnvWins(t *testing.T) {
	clearEnv(t)
	dir := t.TempDir()
	t.Chdir(dir)
	env := "DUSK_RELAY_PORT=5001\nDUSK_TURN_REALM=from-dotenv\n"
	if err := os.WriteFile(filepath.Join(dir, ".env"), []byte(env), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("DUSK_RELAY_PORT", "6001")
	c, err := Load()
	if err != nil {
		t.Fatal(err)
	}
	if c.Port != 6001 || c.Realm != "from-dotenv" {
		t.Errorf("port=%d realm=%q", c.Port, c.Realm)
	}
	// Load set variables from .env into the process; undo for other tests.
	t.Cleanup(func() { os.Unsetenv("DUSK_TURN_REALM") })
}

func TestDataDirDefault(t *testing.T) {
	clearEnv(t)
	t.Setenv("XDG_DATA_HOME", "/srv/xdg")
	if runtime.GOOS == "linux" {
		if got := DefaultDataDir(); got != "/srv/xdg/dusk-relay" {
			t.Errorf("DefaultDataDir = %q", got)
		}
		t.Setenv("XDG_DATA_HOME", "")
		t.Setenv("HOME", "/home/op")
		if got := DefaultDataDir(); got != "/home/op/.local/share/dusk-relay" {
			t.Errorf("DefaultDataDir = %q", got)
		}
	}
}

func TestHelpListsEveryVariable(t *testing.T) {
	var buf bytes.Buffer
	if err := PrintHelp(&buf); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	for _, n := range Names() {
		if !strings.Contains(out, n) {
			t.Errorf("--help lacks %s", n)
		}
	}
	if !strings.Contains(out, "DUSK_RELAY_PORT") || !strings.Contains(out, "4001") {
		t.Errorf("--help lacks defaults:\n%s", out)
	}
}

func TestIPv6PublicIPOnlyWithoutTURN(t *testing.T) {
	clearEnv(t)
	t.Setenv("DUSK_TURN_PUBLIC_IP", "2001:db8::1")
	_, err := Load()
	var ce *Error
	if !errors.As(err, &ce) || ce.Var != "DUSK_TURN_PUBLIC_IP" {
		t.Fatalf("IPv6 public IP with TURN on: %v", err)
	}
	t.Setenv("DUSK_TURN_ENABLED", "false")
	if _, err := Load(); err != nil {
		t.Errorf("IPv6 public IP with TURN off: %v", err)
	}
}

// A short DUSK_TURN_SECRET stops the start only while TURN uses it, and
// the error never repeats the secret.
func TestShortTURNSecret(t *testing.T) {
	clearEnv(t)
	t.Setenv("DUSK_TURN_SECRET", "hunter2")
	_, err := Load()
	var ce *Error
	if !errors.As(err, &ce) || ce.Var != "DUSK_TURN_SECRET" || strings.Contains(err.Error(), "hunter2") {
		t.Fatalf("short secret: %v", err)
	}
	t.Setenv("DUSK_TURN_SECRET", "0123456789abcdef")
	if _, err := Load(); err != nil {
		t.Fatalf("16-byte secret: %v", err)
	}
	t.Setenv("DUSK_TURN_SECRET", "hunter2")
	t.Setenv("DUSK_TURN_ENABLED", "false")
	if _, err := Load(); err != nil {
		t.Fatalf("short secret with TURN disabled: %v", err)
	}
}

// Lowering only DUSK_RENDEZVOUS_MAX_BYTES below the default per-address
// budget stays valid (the server caps the per-address budget at it).
func TestRendezvousTotalBelowPerAddr(t *testing.T) {
	clearEnv(t)
	t.Setenv("DUSK_RENDEZVOUS_MAX_BYTES", "2097152")
	if _, err := Load(); err != nil {
		t.Fatalf("DUSK_RENDEZVOUS_MAX_BYTES=2097152 alone: %v", err)
	}
}

// DUSK_RELAY_MAX_CIRCUITS follows DUSK_MAX_CONNECTIONS when unset, never
// below the Rust relay's 16; a set value (the parity setting) is kept.
func TestMaxCircuitsFollowsConnections(t *testing.T) {
	for _, tc := range []struct {
		conns, circuits string
		want            int
	}{
		{"20000", "", 2500},
		{"100", "", 16},
		{"20000", "16", 16},
	} {
		clearEnv(t)
		t.Setenv("DUSK_TURN_PUBLIC_IP", "203.0.113.7")
		t.Setenv("DUSK_MAX_CONNECTIONS", tc.conns)
		t.Setenv("DUSK_RELAY_MAX_CIRCUITS", tc.circuits)
		c, err := Load()
		if err != nil {
			t.Fatal(err)
		}
		if c.MaxCircuits != tc.want {
			t.Errorf("connections %s, DUSK_RELAY_MAX_CIRCUITS=%q: %d circuits, want %d", tc.conns, tc.circuits, c.MaxCircuits, tc.want)
		}
	}
}
