package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
	"go.uber.org/goleak"

	"github.com/duskchat/dusk-relay/internal/config"
	"github.com/duskchat/dusk-relay/internal/testutil"
)

// The test binary doubles as the daemon: a child started with runAsDaemon
// set runs main() instead of the tests, so no separate build is needed.
const runAsDaemon = "DUSK_RELAY_TEST_RUN_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(runAsDaemon) == "1" {
		var args []string
		for _, a := range os.Args[1:] {
			if !strings.HasPrefix(a, "-test.") {
				args = append(args, a)
			}
		}
		os.Exit(run(args, os.Stdout, os.Stderr))
	}
	goleak.VerifyTestMain(m, testutil.IgnoreLibp2p()...)
}

// daemon is a dusk-relay child process.
type daemon struct {
	cmd     *exec.Cmd
	peerID  peer.ID
	addrs   []ma.Multiaddr
	metrics string // host:port of the metrics endpoint
	waitErr chan error

	mu     sync.Mutex
	stderr []string // JSON log lines
}

// testEnv is a loopback-only configuration with ephemeral ports.
func testEnv(dataDir string) []string {
	env := []string{runAsDaemon + "=1"}
	for _, kv := range os.Environ() {
		name := strings.SplitN(kv, "=", 2)[0]
		if name == "RUST_LOG" || strings.HasPrefix(name, "DUSK_") || strings.HasPrefix(name, "KLIPY_") {
			continue
		}
		env = append(env, kv)
	}
	return append(env,
		"DUSK_DATA_DIR="+dataDir,
		"DUSK_LOG_FORMAT=json",
		"DUSK_LOG_LEVEL=debug",
		"DUSK_RELAY_LISTEN_ADDRS=/ip4/127.0.0.1/tcp/0",
		"DUSK_TURN_LISTEN_IP=127.0.0.1",
		"DUSK_TURN_PUBLIC_IP=127.0.0.1",
		"DUSK_TURN_UDP_PORT=0",
		"DUSK_TURN_TCP_PORT=0",
		"DUSK_TURN_UDP_THREADS=1",
		"DUSK_TURN_PORT_RANGE_START=40000",
		"DUSK_TURN_PORT_RANGE_END=40100",
		"DUSK_METRICS_ADDR=127.0.0.1:0",
		"DUSK_GIF_API_BASE=http://127.0.0.1:1",
	)
}

func startDaemon(t *testing.T, env []string) *daemon {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = env
	cmd.Dir = t.TempDir()
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	d := &daemon{cmd: cmd, waitErr: make(chan error, 1)}
	ready := make(chan struct{})
	metricsSeen := make(chan string, 1)
	var announcedLogs int // "announced address" log records, guarded by d.mu
	go func() {
		sc := bufio.NewScanner(stderr)
		readyClosed := false
		for sc.Scan() {
			line := sc.Text()
			var rec map[string]any
			_ = json.Unmarshal([]byte(line), &rec)
			d.mu.Lock()
			d.stderr = append(d.stderr, line)
			if rec["msg"] == "announced address" {
				announcedLogs++
			}
			d.mu.Unlock()
			switch rec["msg"] {
			case "metrics listening":
				if a, ok := rec["addr"].(string); ok {
					metricsSeen <- a
				}
			case "dusk-relay ready":
				// stdout lines are written before this record.
				if !readyClosed {
					close(ready)
					readyClosed = true
				}
			}
		}
	}()
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			rest, ok := strings.CutPrefix(sc.Text(), "announced address: ")
			if !ok {
				continue
			}
			a, err := ma.NewMultiaddr(rest)
			if err != nil {
				continue
			}
			if info, err := peer.AddrInfoFromP2pAddr(a); err == nil {
				d.mu.Lock()
				d.peerID = info.ID
				d.addrs = append(d.addrs, info.Addrs...)
				d.mu.Unlock()
			}
		}
	}()
	go func() { d.waitErr <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-d.waitErr
	})
	select {
	case <-ready:
	case err := <-d.waitErr:
		d.waitErr <- err
		t.Fatalf("daemon exited before it was ready: %v\n%s", err, d.logs())
	case <-time.After(60 * time.Second):
		t.Fatalf("daemon not ready within 60s\n%s", d.logs())
	}
	select {
	case d.metrics = <-metricsSeen:
	case <-time.After(5 * time.Second):
	}
	// The stdout reader may lag behind stderr: wait (bounded) until it has
	// parsed one line per announced address the daemon logged.
	for i := 0; i < 100; i++ {
		d.mu.Lock()
		done := announcedLogs > 0 && len(d.addrs) >= announcedLogs
		d.mu.Unlock()
		if done {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	d.mu.Lock()
	parsed := d.peerID != "" && len(d.addrs) > 0
	d.mu.Unlock()
	if !parsed {
		t.Fatalf("no announced address parsed\n%s", d.logs())
	}
	return d
}

func (d *daemon) logs() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return strings.Join(d.stderr, "\n")
}

func (d *daemon) hasLog(msg string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, l := range d.stderr {
		if strings.Contains(l, msg) {
			return true
		}
	}
	return false
}

func newClient(t *testing.T) host.Host {
	t.Helper()
	h, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"), libp2p.DisableRelay())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

func TestDaemonServesIdentifyAndStopsOnSIGTERM(t *testing.T) {
	d := startDaemon(t, testEnv(t.TempDir()))
	c := newClient(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Connect(ctx, peer.AddrInfo{ID: d.peerID, Addrs: d.addrs}); err != nil {
		t.Fatal(err)
	}
	var pv, agent any
	for i := 0; i < 100; i++ {
		pv, _ = c.Peerstore().Get(d.peerID, "ProtocolVersion")
		agent, _ = c.Peerstore().Get(d.peerID, "AgentVersion")
		if pv != nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if pv != "/dusk/relay/1.0.0" {
		t.Errorf("identify protocol version = %v", pv)
	}
	if s, _ := agent.(string); !strings.HasPrefix(s, "dusk-relay/") {
		t.Errorf("agent = %v", agent)
	}
	protos, _ := c.Peerstore().GetProtocols(d.peerID)
	want := []string{"/rendezvous/1.0.0", "/libp2p/circuit/relay/0.2.0/hop", "/ipfs/ping/1.0.0",
		"/dusk/turn-credentials/1.0.0", "/dusk/directory/1.0.0", "/dusk/gif/1.0.0"}
	for _, w := range want {
		found := false
		for _, p := range protos {
			found = found || string(p) == w
		}
		if !found {
			t.Errorf("daemon does not announce %s (has %v)", w, protos)
		}
	}

	// /readyz is green once started.
	if d.metrics == "" {
		t.Fatalf("no metrics address logged\n%s", d.logs())
	}
	resp, err := http.Get("http://" + d.metrics + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("/readyz = %d %s", resp.StatusCode, body)
	}

	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-d.waitErr:
		d.waitErr <- err
		if err != nil {
			t.Errorf("exit after SIGTERM: %v\n%s", err, d.logs())
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("daemon did not stop within 5 s of SIGTERM\n%s", d.logs())
	}
	if !d.hasLog("dusk-relay stopped") {
		t.Errorf("no shutdown log line\n%s", d.logs())
	}
}

func TestRestartKeepsPeerID(t *testing.T) {
	dir := t.TempDir()
	d1 := startDaemon(t, testEnv(dir))
	id := d1.peerID
	_ = d1.cmd.Process.Signal(syscall.SIGTERM)
	<-d1.waitErr
	d1.waitErr <- nil
	d2 := startDaemon(t, testEnv(dir))
	if d2.peerID != id {
		t.Errorf("peer ID changed across restart: %s -> %s", id, d2.peerID)
	}
	st, err := os.Stat(filepath.Join(dir, "keypair"))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("keypair mode = %v, %v", st.Mode(), err)
	}
}

func runChild(t *testing.T, env []string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], append([]string{"-test.run=^$"}, args...)...)
	cmd.Env = env
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	cmd.Dir = t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	done := make(chan error, 1)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { done <- cmd.Wait() }()
	var err error
	select {
	case err = <-done:
	case <-ctx.Done():
		_ = cmd.Process.Kill()
		<-done
		t.Fatalf("child did not exit: %s", errb.String())
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode(), out.String(), errb.String()
	}
	if err != nil {
		t.Fatal(err)
	}
	return 0, out.String(), errb.String()
}

func TestMalformedConfigExits2NamingVariable(t *testing.T) {
	for _, kv := range []string{
		"DUSK_RELAY_PORT=notaport",
		"DUSK_RELAY_EXTERNAL_ADDR=/ip4/1.2.3.4/tcp",
		"DUSK_TURN_ALLOW_PEERS=127.0.0.0/99",
		"DUSK_TURN_PORT_RANGE_START=100",
	} {
		name := strings.SplitN(kv, "=", 2)[0]
		code, _, stderr := runChild(t, append(testEnv(t.TempDir()), kv))
		if code != 2 {
			t.Errorf("%s: exit %d, want 2 (%s)", kv, code, stderr)
		}
		if !strings.Contains(stderr, name) {
			t.Errorf("%s: message does not name the variable: %q", kv, stderr)
		}
	}
}

func TestCorruptKeypairRefusesToStart(t *testing.T) {
	dir := t.TempDir()
	junk := []byte("definitely not a protobuf key")
	if err := os.WriteFile(filepath.Join(dir, "keypair"), junk, 0o600); err != nil {
		t.Fatal(err)
	}
	code, _, stderr := runChild(t, testEnv(dir))
	if code == 0 {
		t.Fatalf("started with a corrupt keypair")
	}
	if !strings.Contains(stderr, "keypair") {
		t.Errorf("error does not mention the keypair: %s", stderr)
	}
	got, _ := os.ReadFile(filepath.Join(dir, "keypair"))
	if string(got) != string(junk) {
		t.Errorf("corrupt keypair was overwritten")
	}
}

// These call run() in-process: it is the same code main() runs.
func TestHelpVersionAndUnknownArgs(t *testing.T) {
	var out, errb strings.Builder
	if code := run([]string{"--help"}, &out, &errb); code != 0 {
		t.Fatalf("--help exit %d", code)
	}
	for _, n := range config.Names() {
		if !strings.Contains(out.String(), n) {
			t.Errorf("--help lacks %s", n)
		}
	}
	out.Reset()
	if code := run([]string{"--version"}, &out, &errb); code != 0 || !strings.HasPrefix(out.String(), "dusk-relay ") {
		t.Errorf("--version: %d %q", code, out.String())
	}
	if code := run([]string{"--bogus"}, &out, &errb); code != 2 {
		t.Errorf("unknown arg exit %d, want 2", code)
	}
}

func TestHealthcheckExitCodes(t *testing.T) {
	// Nothing listens: exit 1.
	t.Setenv("DUSK_METRICS_ADDR", "127.0.0.1:1")
	var out, errb strings.Builder
	if code := run([]string{"healthcheck"}, &out, &errb); code != 1 {
		t.Errorf("healthcheck with nothing listening: exit %d", code)
	}
	d := startDaemon(t, testEnv(t.TempDir()))
	t.Setenv("DUSK_METRICS_ADDR", d.metrics)
	if code := run([]string{"healthcheck"}, &out, &errb); code != 0 {
		t.Errorf("healthcheck against a ready daemon: exit %d: %s", code, errb.String())
	}
}
