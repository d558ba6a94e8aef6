package bench

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
)

// ErrDaemon marks failures to build, start or talk to the daemon.
var ErrDaemon = errors.New("bench: daemon")

// BuildDaemon compiles ./cmd/dusk-relay of the module containing the working
// directory into dir and returns the binary's path.
func BuildDaemon(ctx context.Context, dir string) (string, error) {
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("%w: go env GOMOD: %w", ErrDaemon, err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", fmt.Errorf("%w: run dusk-bench inside the dusk-relay module or pass -relay-bin", ErrDaemon)
	}
	bin := filepath.Join(dir, "dusk-relay")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/dusk-relay")
	cmd.Dir = filepath.Dir(gomod)
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("%w: go build ./cmd/dusk-relay: %w\n%s", ErrDaemon, err, b)
	}
	return bin, nil
}

// RandomSecret returns 32 random bytes as hex, for DUSK_TURN_SECRET and coturn.
func RandomSecret() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b) // crypto/rand never fails on Linux
	return hex.EncodeToString(b)
}

// DaemonOptions configures one daemon run.
type DaemonOptions struct {
	Bin  string   // path of the dusk-relay binary
	Args []string // command-line arguments (none for dusk-relay)
	Dir  string   // scratch directory: data dir, working directory, logs
	// Secret is DUSK_TURN_SECRET (random when empty).
	Secret string
	// TURNRange is the relay port range (DUSK_TURN_PORT_RANGE_START/END);
	// zero values keep 20000-24999.
	TURNRange [2]int
	// Env overrides or adds variables on top of the loopback defaults.
	Env map[string]string
}

// Daemon is a running dusk-relay subprocess.
type Daemon struct {
	PID         int
	ID          peer.ID
	Addr        ma.Multiaddr // announced loopback TCP address, without /p2p
	Info        peer.AddrInfo
	MetricsAddr string
	TURNPort    int
	Secret      string
	StderrPath  string

	cmd     *exec.Cmd
	done    chan struct{}
	waitErr error
	http    *http.Client
}

// LoopbackEnv is the environment every benchmark run starts from: every
// listener on 127.0.0.1, TURN allowed to relay to loopback peers.
func LoopbackEnv(secret string, dataDir string, turnPort, metricsPort, rangeStart, rangeEnd int) map[string]string {
	return map[string]string{
		"DUSK_RELAY_LISTEN_ADDRS":    "/ip4/127.0.0.1/tcp/0",
		"DUSK_TURN_LISTEN_IP":        "127.0.0.1",
		"DUSK_TURN_PUBLIC_IP":        "127.0.0.1",
		"DUSK_TURN_ALLOW_PEERS":      "127.0.0.0/8",
		"DUSK_TURN_SECRET":           secret,
		"DUSK_TURN_UDP_PORT":         strconv.Itoa(turnPort),
		"DUSK_TURN_TCP_PORT":         strconv.Itoa(turnPort),
		"DUSK_TURN_PORT_RANGE_START": strconv.Itoa(rangeStart),
		"DUSK_TURN_PORT_RANGE_END":   strconv.Itoa(rangeEnd),
		"DUSK_DATA_DIR":              dataDir,
		"DUSK_METRICS_ADDR":          fmt.Sprintf("127.0.0.1:%d", metricsPort),
		"DUSK_LOG_FORMAT":            "json",
		"DUSK_LOG_LEVEL":             "warn",
		// Never reach the internet: no key means no upstream call, and the
		// base points at a closed loopback port should one happen anyway.
		"DUSK_GIF_API_BASE": "http://127.0.0.1:9",
	}
}

// StartDaemon starts the daemon with the loopback environment plus
// opts.Env and waits until it announced its address and /readyz answers.
func StartDaemon(ctx context.Context, opts DaemonOptions) (*Daemon, error) {
	if opts.Secret == "" {
		opts.Secret = RandomSecret()
	}
	turnPort, err := FreePort()
	if err != nil {
		return nil, err
	}
	metricsPort, err := FreePort()
	if err != nil {
		return nil, err
	}
	rs, re := opts.TURNRange[0], opts.TURNRange[1]
	if rs == 0 {
		rs, re = 20000, 24999
	}
	dataDir := filepath.Join(opts.Dir, "data")
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrDaemon, err)
	}
	env := LoopbackEnv(opts.Secret, dataDir, turnPort, metricsPort, rs, re)
	for k, v := range opts.Env {
		env[k] = v
	}
	// A clean environment: no DUSK_* or RUST_LOG of the caller leaks in.
	vars := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME")}
	for k, v := range env {
		vars = append(vars, k+"="+v)
	}
	slices.Sort(vars)

	stderrPath := filepath.Join(opts.Dir, "dusk-relay.stderr.log")
	stderr, err := os.Create(stderrPath)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrDaemon, err)
	}
	cmd := exec.Command(opts.Bin, opts.Args...)
	cmd.Dir = opts.Dir // no stray .env is picked up
	cmd.Env = vars
	cmd.Stderr = stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		_ = stderr.Close()
		return nil, fmt.Errorf("%w: %w", ErrDaemon, err)
	}
	if err := cmd.Start(); err != nil {
		_ = stderr.Close()
		return nil, fmt.Errorf("%w: start %s: %w", ErrDaemon, opts.Bin, err)
	}
	d := &Daemon{
		PID:         cmd.Process.Pid,
		MetricsAddr: fmt.Sprintf("127.0.0.1:%d", metricsPort),
		TURNPort:    turnPort,
		Secret:      opts.Secret,
		StderrPath:  stderrPath,
		cmd:         cmd,
		done:        make(chan struct{}),
		http:        &http.Client{Timeout: 10 * time.Second},
	}
	addrs := make(chan ma.Multiaddr, 16)
	var scanWG sync.WaitGroup
	scanWG.Add(1)
	go func() {
		defer scanWG.Done()
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			rest, ok := strings.CutPrefix(sc.Text(), "announced address: ")
			if !ok {
				continue
			}
			if a, err := ma.NewMultiaddr(strings.TrimSpace(rest)); err == nil {
				select {
				case addrs <- a:
				default:
				}
			}
		}
		_, _ = io.Copy(io.Discard, stdout)
	}()
	go func() {
		scanWG.Wait() // Wait must not run before the pipe is drained
		d.waitErr = cmd.Wait()
		_ = stderr.Close()
		close(d.done)
	}()

	if err := d.awaitReady(ctx, addrs); err != nil {
		_ = d.Stop()
		return nil, fmt.Errorf("%w (stderr: %s)", err, tail(stderrPath, 2000))
	}
	return d, nil
}

func (d *Daemon) awaitReady(ctx context.Context, addrs <-chan ma.Multiaddr) error {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	for d.Addr == nil {
		select {
		case a := <-addrs:
			info, err := peer.AddrInfoFromP2pAddr(a)
			if err != nil {
				continue
			}
			if s := info.Addrs[0].String(); strings.HasPrefix(s, "/ip4/127.0.0.1/tcp/") {
				d.ID, d.Addr, d.Info = info.ID, info.Addrs[0], *info
			}
		case <-d.done:
			return fmt.Errorf("%w: exited before announcing an address: %v", ErrDaemon, d.waitErr)
		case <-ctx.Done():
			return fmt.Errorf("%w: no 'announced address: /ip4/127.0.0.1/tcp/…' line on stdout: %w", ErrDaemon, ctx.Err())
		}
	}
	for i := 0; ; i++ {
		if err := d.get(ctx, "/readyz", nil); err == nil {
			return nil
		} else if i > 0 && ctx.Err() != nil {
			return fmt.Errorf("%w: /readyz never OK: %w", ErrDaemon, err)
		}
		select {
		case <-d.done:
			return fmt.Errorf("%w: exited while starting: %v", ErrDaemon, d.waitErr)
		case <-ctx.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (d *Daemon) get(ctx context.Context, path string, into *string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+d.MetricsAddr+path, nil)
	if err != nil {
		return err
	}
	resp, err := d.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: HTTP %d: %s", path, resp.StatusCode, strings.TrimSpace(string(b)))
	}
	if into != nil {
		*into = string(b)
	}
	return nil
}

// Metric scrapes /metrics and returns the value of the unlabelled sample
// name (e.g. go_goroutines).
func (d *Daemon) Metric(ctx context.Context, name string) (float64, error) {
	var text string
	if err := d.get(ctx, "/metrics", &text); err != nil {
		return 0, fmt.Errorf("%w: scrape: %w", ErrDaemon, err)
	}
	return ParseMetric(text, name)
}

// ParseMetric finds the first sample of name in Prometheus text format; for
// labelled series it sums every series of that name.
func ParseMetric(text, name string) (float64, error) {
	sum, found := 0.0, false
	for _, line := range strings.Split(text, "\n") {
		if !strings.HasPrefix(line, name) {
			continue
		}
		rest := line[len(name):]
		if rest == "" || (rest[0] != ' ' && rest[0] != '{') {
			continue
		}
		f := strings.Fields(rest[strings.LastIndexByte(rest, '}')+1:])
		if len(f) == 0 {
			continue
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			continue
		}
		sum += v
		found = true
	}
	if !found {
		return 0, fmt.Errorf("%w: metric %s not found", ErrDaemon, name)
	}
	return sum, nil
}

// Alive reports whether the process still runs.
func (d *Daemon) Alive() bool {
	select {
	case <-d.done:
		return false
	default:
		return true
	}
}

// Stop sends SIGTERM, waits up to 10 s, then kills.
func (d *Daemon) Stop() error {
	if !d.Alive() {
		return nil
	}
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
		return nil
	case <-time.After(10 * time.Second):
		_ = d.cmd.Process.Kill()
		<-d.done
		return fmt.Errorf("%w: did not stop within 10 s of SIGTERM; killed", ErrDaemon)
	}
}

// tail returns the last n bytes of a file, for error messages.
func tail(path string, n int64) string {
	f, err := os.Open(path)
	if err != nil {
		return err.Error()
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err.Error()
	}
	off := max(st.Size()-n, 0)
	b := make([]byte, st.Size()-off)
	_, _ = f.ReadAt(b, off)
	return strings.TrimSpace(string(b))
}
