// Command dusk-bench measures dusk-relay on loopback against baselines:
// it starts the daemon (and coturn) as real subprocesses, drives them from
// this process and prints one short table per subcommand.
//
//	dusk-bench turn        TURN relayed UDP throughput, loss, CPU vs coturn
//	dusk-bench uclient     TURN under coturn's turnutils_uclient (1,000 sessions): loss, RTT vs coturn
//	dusk-bench conns       RSS and goroutines per idle/pinging libp2p connection
//	dusk-bench creds       /dusk/turn-credentials/1.0.0 throughput and latency
//	dusk-bench directory   /dusk/directory/1.0.0 Register/Search throughput and latency
//	dusk-bench circuit     circuit relay throughput and setup vs a direct connection
//	dusk-bench rendezvous  discover latency over a large namespace, register throughput
//	dusk-bench clients     N simulated Dusk clients: latency per operation, the largest N served
//
// All traffic stays on 127.0.0.1. Every subcommand takes -quick for a
// seconds-long smoke run. Exit status is non-zero only on errors, never
// because a target was missed.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/duskchat/dusk-relay/internal/bench"
)

// subcommand is one benchmark.
type subcommand struct {
	summary string
	run     func(ctx context.Context, env *runEnv, args []string) error
}

var subcommands = map[string]subcommand{
	"turn":       {"TURN relayed UDP throughput/loss/CPU: ours vs coturn", runTURN},
	"uclient":    {"coturn's turnutils_uclient saturating ours and coturn: loss, RTT, jitter, CPU", runUclient},
	"conns":      {"daemon RSS and goroutines per libp2p connection, setup rate", runConns},
	"creds":      {"turn-credentials request-response throughput and latency", runCreds},
	"directory":  {"directory Register/Search throughput and latency", runDirectory},
	"circuit":    {"circuit relay throughput and setup latency vs direct", runCircuit},
	"rendezvous": {"rendezvous discover latency and register throughput", runRendezvous},
	"clients":    {"N simulated Dusk clients (the app's full behaviour): p50/p99 per operation, largest N", runClients},
	"bare-relay": {"(internal) bare go-libp2p relay: the baseline server of conns", runBareRelay},
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: dusk-bench <subcommand> [flags]   (dusk-bench <subcommand> -h for flags)")
	names := make([]string, 0, len(subcommands))
	for n := range subcommands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-11s %s\n", n, subcommands[n].summary)
	}
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(stdout)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	sc, ok := subcommands[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "dusk-bench: unknown subcommand %q\n", args[0])
		usage(stderr)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	env := &runEnv{name: args[0], out: stdout, errOut: stderr}
	err := sc.run(ctx, env, args[1:])
	env.cleanup()
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "dusk-bench %s: %v\n", args[0], err)
		if errors.Is(err, errUsage) {
			return 2
		}
		return 1
	}
	return 0
}

var errUsage = errors.New("usage")

// common holds the flags every subcommand shares.
type common struct {
	relayBin string
	keep     bool
	md       bool
	quick    bool
	timeout  time.Duration
	logLevel string
	extraEnv string
}

func (c *common) register(fs *flag.FlagSet) {
	fs.StringVar(&c.relayBin, "relay-bin", "", "dusk-relay binary to run (default: go build ./cmd/dusk-relay into a temp dir)")
	fs.BoolVar(&c.keep, "keep", false, "keep the temp dir (daemon/coturn logs) after the run")
	fs.BoolVar(&c.md, "md", false, "print tables as Markdown")
	fs.BoolVar(&c.quick, "quick", false, "tiny numbers: a seconds-long smoke run")
	fs.DurationVar(&c.timeout, "timeout", 60*time.Minute, "abort the whole run after this long")
	fs.StringVar(&c.logLevel, "log-level", "warn", "DUSK_LOG_LEVEL of the daemon under test")
	fs.StringVar(&c.extraEnv, "env", "", "extra daemon environment, comma list of K=V (e.g. GOGC=50); applied last")
}

// runEnv carries per-invocation state: output, the temp dir, cleanups.
type runEnv struct {
	name     string
	out      io.Writer
	errOut   io.Writer
	c        common
	dir      string
	cleanups []func()
}

func (e *runEnv) parse(fs *flag.FlagSet, args []string) error {
	e.c.register(fs)
	fs.SetOutput(e.errOut)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return fmt.Errorf("%w: %w", errUsage, err)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: unexpected arguments %q", errUsage, fs.Args())
	}
	dir, err := os.MkdirTemp("", "dusk-bench-"+e.name+"-")
	if err != nil {
		return err
	}
	e.dir = dir
	e.onCleanup(func() {
		if e.c.keep {
			fmt.Fprintln(e.errOut, "kept", dir)
			return
		}
		_ = os.RemoveAll(dir)
	})
	return nil
}

func (e *runEnv) onCleanup(fn func()) { e.cleanups = append(e.cleanups, fn) }

func (e *runEnv) cleanup() {
	for i := len(e.cleanups) - 1; i >= 0; i-- {
		e.cleanups[i]()
	}
	e.cleanups = nil
}

// withTimeout bounds the run.
func (e *runEnv) withTimeout(ctx context.Context) context.Context {
	ctx, cancel := context.WithTimeout(ctx, e.c.timeout)
	e.onCleanup(cancel)
	return ctx
}

// relayBin returns -relay-bin or builds the daemon once.
func (e *runEnv) relayBin(ctx context.Context) (string, error) {
	if e.c.relayBin != "" {
		return e.c.relayBin, nil
	}
	fmt.Fprintln(e.errOut, "building ./cmd/dusk-relay ...")
	return bench.BuildDaemon(ctx, e.dir)
}

// startDaemon starts the daemon with extra env (on top of the loopback set)
// and registers its stop.
func (e *runEnv) startDaemon(ctx context.Context, sub string, env map[string]string, secret string) (*bench.Daemon, error) {
	bin, err := e.relayBin(ctx)
	if err != nil {
		return nil, err
	}
	e.c.relayBin = bin
	return e.startServer(ctx, sub, bin, nil, env, secret)
}

// startBareRelay starts dusk-bench itself as the bare go-libp2p relay baseline.
func (e *runEnv) startBareRelay(ctx context.Context, sub string, env map[string]string) (*bench.Daemon, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	return e.startServer(ctx, sub, self, []string{"bare-relay"}, env, "")
}

func (e *runEnv) startServer(ctx context.Context, sub, bin string, args []string, env map[string]string, secret string) (*bench.Daemon, error) {
	all := map[string]string{"DUSK_LOG_LEVEL": e.c.logLevel}
	for k, v := range env {
		all[k] = v
	}
	if e.c.extraEnv != "" {
		for _, kv := range strings.Split(e.c.extraEnv, ",") {
			k, v, ok := strings.Cut(strings.TrimSpace(kv), "=")
			if !ok || k == "" {
				return nil, fmt.Errorf("%w: -env wants K=V pairs, got %q", errUsage, kv)
			}
			all[k] = v
		}
	}
	dir := filepath.Join(e.dir, sub)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	d, err := bench.StartDaemon(ctx, bench.DaemonOptions{Bin: bin, Args: args, Dir: dir, Secret: secret, Env: all})
	if err != nil {
		return nil, err
	}
	e.onCleanup(func() {
		if err := d.Stop(); err != nil {
			fmt.Fprintln(e.errOut, "stop daemon:", err)
		}
	})
	return d, nil
}

// header prints the machine and the command line.
func (e *runEnv) header(title string, args []string) {
	fmt.Fprintf(e.out, "## dusk-bench %s — %s\n", e.name, title)
	fmt.Fprintf(e.out, "machine: %s\n", bench.MachineInfo())
	fmt.Fprintf(e.out, "command: dusk-bench %s %s\n", e.name, strings.Join(args, " "))
	if e.c.extraEnv != "" {
		fmt.Fprintf(e.out, "extra server environment: %s\n", e.c.extraEnv)
	}
}

func (e *runEnv) printf(format string, a ...any) { fmt.Fprintf(e.out, format, a...) }

// envList formats overrides for the report.
func envList(env map[string]string) string {
	keys := make([]string, 0, len(env))
	for k := range env {
		if k == "DUSK_TURN_SECRET" {
			continue
		}
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + env[k]
	}
	return strings.Join(parts, " ")
}

// quickDefaults applies -quick values to the flags the user did not set.
func quickDefaults(fs *flag.FlagSet, vals map[string]string) {
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	for name, v := range vals {
		if !set[name] {
			if err := fs.Set(name, v); err != nil {
				panic(fmt.Sprintf("quick default -%s=%s: %v", name, v, err)) // programming error
			}
		}
	}
}
