package bench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/pion/turn/v4"

	"github.com/duskchat/dusk-relay/internal/bench/turnload"
)

// ErrNoCoturn is returned when the turnserver binary is not installed.
var ErrNoCoturn = errors.New("bench: turnserver (coturn) not found in PATH; install it with `apt-get install -y coturn` or pass -coturn-bin")

// CoturnOptions configures the baseline TURN server.
type CoturnOptions struct {
	Bin     string // "" = turnserver from PATH
	Dir     string // scratch directory for the config, pid file and log
	Secret  string // static-auth-secret, the same as DUSK_TURN_SECRET
	Realm   string
	Threads int // relay-threads, matched to DUSK_TURN_UDP_THREADS
	MinPort int // relay port range
	MaxPort int
}

// Coturn is a running coturn subprocess.
type Coturn struct {
	PID     int
	Port    int
	LogPath string
	cmd     *exec.Cmd
	done    chan struct{}
	waitErr error
}

// StartCoturn writes a loopback-only coturn config (REST-API shared secret,
// loopback peers allowed, no TLS/DTLS/CLI) and waits until it answers a STUN
// binding request.
func StartCoturn(ctx context.Context, o CoturnOptions) (*Coturn, error) {
	bin := o.Bin
	if bin == "" {
		p, err := exec.LookPath("turnserver")
		if err != nil {
			return nil, ErrNoCoturn
		}
		bin = p
	}
	port, err := FreePort()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(o.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("coturn: %w", err)
	}
	logPath := filepath.Join(o.Dir, "turnserver.log")
	conf := strings.Join([]string{
		"listening-ip=127.0.0.1",
		"relay-ip=127.0.0.1",
		fmt.Sprintf("listening-port=%d", port),
		fmt.Sprintf("min-port=%d", o.MinPort),
		fmt.Sprintf("max-port=%d", o.MaxPort),
		fmt.Sprintf("relay-threads=%d", o.Threads),
		"use-auth-secret",
		"static-auth-secret=" + o.Secret,
		"realm=" + o.Realm,
		"allow-loopback-peers",
		"no-multicast-peers",
		"no-tls",
		"no-dtls",
		"no-cli",
		"no-tcp-relay",
		"fingerprint",
		"simple-log",
		"log-file=" + logPath,
		"pidfile=" + filepath.Join(o.Dir, "turnserver.pid"),
		"userdb=" + filepath.Join(o.Dir, "turndb.sqlite"),
		"",
	}, "\n")
	confPath := filepath.Join(o.Dir, "turnserver.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o600); err != nil {
		return nil, fmt.Errorf("coturn: %w", err)
	}
	cmd := exec.Command(bin, "-c", confPath)
	cmd.Dir = o.Dir
	// coturn writes startup noise to stdout/stderr too; keep it with the log.
	out, err := os.Create(filepath.Join(o.Dir, "turnserver.stdout.log"))
	if err != nil {
		return nil, fmt.Errorf("coturn: %w", err)
	}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		_ = out.Close()
		return nil, fmt.Errorf("coturn: start %s: %w", bin, err)
	}
	c := &Coturn{PID: cmd.Process.Pid, Port: port, LogPath: logPath, cmd: cmd, done: make(chan struct{})}
	go func() {
		c.waitErr = cmd.Wait()
		_ = out.Close()
		close(c.done)
	}()
	if err := c.awaitReady(ctx); err != nil {
		_ = c.Stop()
		return nil, fmt.Errorf("%w (log: %s)", err, tail(out.Name(), 1500))
	}
	return c, nil
}

func (c *Coturn) awaitReady(ctx context.Context) error {
	deadline := time.Now().Add(15 * time.Second)
	server := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: c.Port}
	var last error
	for time.Now().Before(deadline) {
		select {
		case <-c.done:
			return fmt.Errorf("coturn exited while starting: %v", c.waitErr)
		case <-ctx.Done():
			return ctx.Err()
		default:
		}
		if last = StunPing(server, 300*time.Millisecond); last == nil {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("coturn: no STUN answer on %s: %w", server, last)
}

// StunPing sends one STUN binding request to server and waits for the answer.
func StunPing(server *net.UDPAddr, timeout time.Duration) error {
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return err
	}
	defer conn.Close()
	cl, err := turn.NewClient(&turn.ClientConfig{
		STUNServerAddr: server.String(),
		Conn:           conn,
		RTO:            timeout,
		LoggerFactory:  turnload.Quiet(),
	})
	if err != nil {
		return err
	}
	defer cl.Close()
	if err := cl.Listen(); err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() {
		_, err := cl.SendBindingRequest()
		done <- err
	}()
	select {
	case err := <-done:
		return err
	case <-time.After(timeout):
		cl.Close() // fails the pending transaction
		_ = conn.Close()
		<-done
		return fmt.Errorf("stun binding: timeout after %v", timeout)
	}
}

// Stop sends SIGTERM, then SIGKILL after 5 s.
func (c *Coturn) Stop() error {
	select {
	case <-c.done:
		return nil
	default:
	}
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
	case <-time.After(5 * time.Second):
		_ = c.cmd.Process.Kill()
		<-c.done
	}
	return nil
}
