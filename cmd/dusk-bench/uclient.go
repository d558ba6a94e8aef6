package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/duskchat/dusk-relay/internal/bench"
)

// errNoUclient is returned when coturn's test client is not installed.
var errNoUclient = errors.New("turnutils_uclient (coturn's test client) not found in PATH; install it with `apt-get install -y coturn` or pass -uclient-bin")

// uclientServer is one server under test by turnutils_uclient.
type uclientServer struct {
	name string
	port int
	pid  int
	// metric reads a counter of the server (ours only; nil for coturn).
	metric func(ctx context.Context, name string) (float64, error)
}

// uclientRun is one turnutils_uclient run against one server.
type uclientRun struct {
	round      int
	server     string
	stats      uclientStats
	wall       time.Duration
	serverCPU  time.Duration // utime+stime of the server during the run
	clientCPU  time.Duration // utime+stime of turnutils_uclient
	failure    string        // non-empty: the run failed (client error, abort or timeout); stats are not valid
	tail       string        // last lines of the client's output, for failures
	counters   map[string]float64
	outputPath string
}

// Counters of our daemon read around each run (deltas are reported): they
// say what the client's errors were on the server side.
var uclientCounters = []struct{ label, metric string }{
	{"allocations", "dusk_turn_allocations_total"},
	{"441", "dusk_turn_wrong_credentials_total"},
	{"quota refusals", "dusk_turn_allocation_quota_rejections_total"},
	{"auth failures", "dusk_turn_auth_failures_total"},
	{"dropped packets", "dusk_turn_dropped_packets_total"},
}

func runUclient(ctx context.Context, env *runEnv, args []string) error {
	fs := flag.NewFlagSet("uclient", flag.ContinueOnError)
	rounds := fs.Int("rounds", 2, "rounds; each runs the client against every server (A B, then B A)")
	clients := fs.Int("m", 1000, "turnutils_uclient -m: client sessions at once (with -y: pairs talking to each other)")
	msgs := fs.Int("n", 300, "turnutils_uclient -n: messages each session sends")
	length := fs.Int("l", 200, "turnutils_uclient -l: message length in bytes")
	extra := fs.String("extra", "", "extra turnutils_uclient arguments, space separated (added after the defaults: -y -c -z 0)")
	uclientBin := fs.String("uclient-bin", "", "turnutils_uclient binary (default: turnutils_uclient from PATH)")
	coturnBin := fs.String("coturn-bin", "", "turnserver binary (default: turnserver from PATH)")
	threads := fs.Int("threads", runtime.NumCPU(), "UDP threads: DUSK_TURN_UDP_THREADS of ours and relay-threads of coturn")
	runTimeout := fs.Duration("run-timeout", 5*time.Minute, "one client run is a failure after this long (10s..30m)")
	only := fs.String("only", "both", "servers to run: both, ours or coturn")
	if err := env.parse(fs, args); err != nil {
		return err
	}
	if env.c.quick {
		quickDefaults(fs, map[string]string{"rounds": "1", "m": "50", "n": "50"})
	}
	if *rounds < 1 || *rounds > 10 || *clients < 1 || *clients > 5000 || *msgs < 1 || *msgs > 100000 || *length < 1 || *length > 65000 {
		return fmt.Errorf("%w: -rounds 1..10, -m 1..5000, -n 1..100000, -l 1..65000", errUsage)
	}
	if *runTimeout < 10*time.Second || *runTimeout > 30*time.Minute {
		return fmt.Errorf("%w: -run-timeout 10s..30m", errUsage)
	}
	if *only != "both" && *only != "ours" && *only != "coturn" {
		return fmt.Errorf("%w: -only must be both, ours or coturn", errUsage)
	}
	bin := *uclientBin
	if bin == "" {
		p, err := exec.LookPath("turnutils_uclient")
		if err != nil {
			return errNoUclient
		}
		bin = p
	}
	ctx = env.withTimeout(ctx)

	secret := bench.RandomSecret()
	var servers []uclientServer
	if *only != "coturn" {
		denv := turnDaemonEnv(*threads)
		// Every session uses the username "user": lift the per-peer quota.
		denv["DUSK_TURN_MAX_PER_USER"] = "100000"
		// Relay ports apart from `turn`'s (20000-29999), below the
		// ephemeral range the client's sockets use. A uclient run leaves
		// ~m/2 allocations to expire (10 min): 4,000 ports.
		denv["DUSK_TURN_PORT_RANGE_START"] = "12000"
		denv["DUSK_TURN_PORT_RANGE_END"] = "15999"
		d, err := env.startDaemon(ctx, "ours", denv, secret)
		if err != nil {
			return err
		}
		servers = append(servers, uclientServer{name: "ours", port: d.TURNPort, pid: d.PID, metric: d.Metric})
	}
	if *only != "ours" {
		c, err := bench.StartCoturn(ctx, bench.CoturnOptions{
			Bin: *coturnBin, Dir: filepath.Join(env.dir, "coturn"), Secret: secret, Realm: turnRealm,
			Threads: *threads, MinPort: 16000, MaxPort: 19999,
		})
		if err != nil {
			return err
		}
		env.onCleanup(func() { _ = c.Stop() })
		servers = append(servers, uclientServer{name: "coturn", port: c.Port, pid: c.PID})
	}
	logDir := filepath.Join(env.dir, "uclient")
	if err := os.MkdirAll(logDir, 0o700); err != nil {
		return err
	}

	clientArgs := []string{"-y", "-c", "-m", strconv.Itoa(*clients), "-n", strconv.Itoa(*msgs), "-l", strconv.Itoa(*length), "-z", "0"}
	clientArgs = append(clientArgs, strings.Fields(*extra)...)

	env.header("TURN under coturn's saturating test client (turnutils_uclient)", args)
	env.printf("servers: ours = dusk-relay (pion/turn/v4, DUSK_TURN_UDP_THREADS=%d, per-IP/per-peer quotas lifted); coturn = turnserver (relay-threads=%d, use-auth-secret)\n", *threads, *threads)
	env.printf("client:  %s %s -W <secret> -u user -p <port> 127.0.0.1\n", bin, strings.Join(clientArgs, " "))
	env.printf("  -y: client-to-client sessions (each relays to the other's relayed address), -c: no RTCP sessions, -z 0: no pause between messages;\n")
	env.printf("  sent/received/loss/RTT/jitter are the client's own summary lines; CPU = server utime+stime (/proc/<pid>/stat) during the run.\n")
	env.printf("  The client times packets with a millisecond clock: each RTT is a whole number of ms, so a mean under 1 ms is\n")
	env.printf("  mostly the share of packets that crossed a clock tick. connect/transmit s are the client's own phases: it sets\n")
	env.printf("  sessions up one pair at a time with a pause between pairs, and waits 10 s for stragglers when any packet is missing.\n")
	env.printf("  error answers: the client's \"error N\" lines by code; it retries an Allocate answered with 437 on a new socket.\n")
	env.printf("  %d rounds, servers alternate A B, B A; timeout %v per run; a run whose client exits non-zero or prints no summary is a failure.\n", *rounds, *runTimeout)
	env.printf("  Lower is better for loss, RTT, jitter, 437 retries and CPU; \"paired\" = median of the per-round ratios ours/coturn\n")
	env.printf("  (a round where coturn's figure is 0 has no ratio and is left out).\n\n")

	var runs []uclientRun
	for r := range *rounds {
		for i := range servers {
			// A B in odd rounds, B A in even rounds: neither server always runs first.
			s := servers[i]
			if r%2 == 1 {
				s = servers[len(servers)-1-i]
			}
			out := filepath.Join(logDir, fmt.Sprintf("round%d-%s.log", r+1, s.name))
			full := append(append([]string{}, clientArgs...), "-W", secret, "-u", "user", "-p", strconv.Itoa(s.port), "127.0.0.1")
			run, err := uclientOnce(ctx, bin, full, s, out, *runTimeout)
			if err != nil {
				return fmt.Errorf("%s, round %d: %w", s.name, r+1, err)
			}
			run.round = r + 1
			runs = append(runs, run)
			if run.failure != "" {
				fmt.Fprintf(env.errOut, "round %d %-6s FAILED after %v: %s\n", r+1, s.name, run.wall.Round(time.Second), run.failure)
				continue
			}
			st := run.stats
			fmt.Fprintf(env.errOut, "round %d %-6s sent %d received %d loss %.3f%% RTT %.3f ms jitter %.3f ms, 437 retries %d, %v, server CPU %v\n",
				r+1, s.name, st.Sent, st.Received, st.LossPct, st.RTTAvgMs, st.JitterAvgMs, st.Retries437,
				run.wall.Round(time.Second), run.serverCPU.Round(10*time.Millisecond))
		}
	}
	uclientReport(env, servers, runs)
	return nil
}

// uclientOnce runs the client once against s. It returns an error only when
// the benchmark cannot go on (the run was cancelled, the server is gone);
// a client that fails is a result (run.failure).
func uclientOnce(ctx context.Context, bin string, args []string, s uclientServer, outPath string, timeout time.Duration) (uclientRun, error) {
	run := uclientRun{server: s.name, outputPath: outPath}
	before := map[string]float64{}
	if s.metric != nil {
		for _, c := range uclientCounters {
			v, err := s.metric(ctx, c.metric)
			if err != nil {
				return run, err
			}
			before[c.label] = v
		}
	}
	f, err := os.Create(outPath)
	if err != nil {
		return run, err
	}
	defer f.Close()
	cpu0, err := bench.CPUTime(s.pid)
	if err != nil {
		return run, fmt.Errorf("%s server: %w", s.name, err)
	}
	runCtx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(runCtx, bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.WaitDelay = 5 * time.Second
	start := time.Now()
	runErr := cmd.Run()
	run.wall = time.Since(start)
	if ctx.Err() != nil {
		return run, ctx.Err()
	}
	cpu1, err := bench.CPUTime(s.pid)
	if err != nil {
		return run, fmt.Errorf("%s server gone after the client run: %w", s.name, err)
	}
	run.serverCPU = cpu1 - cpu0
	if ps := cmd.ProcessState; ps != nil {
		run.clientCPU = ps.UserTime() + ps.SystemTime()
	}
	if s.metric != nil {
		run.counters = map[string]float64{}
		for _, c := range uclientCounters {
			v, err := s.metric(ctx, c.metric)
			if err != nil {
				return run, err
			}
			run.counters[c.label] = v - before[c.label]
		}
	}
	b, err := os.ReadFile(outPath)
	if err != nil {
		return run, err
	}
	out := string(b)
	switch {
	case runCtx.Err() != nil:
		run.failure = fmt.Sprintf("timed out after %v (killed)", timeout)
	case runErr != nil:
		run.failure = fmt.Sprintf("client: %v", runErr)
	}
	// After a failure the stats are kept for the error counts only.
	run.stats, err = parseUclient(out)
	if run.failure == "" && err != nil {
		run.failure = err.Error()
	}
	if run.failure != "" {
		run.tail = lastLines(out, 12)
		if strings.TrimSpace(run.tail) == "" {
			run.tail = "(no output)"
		}
	}
	return run, nil
}

// uclientStats are the figures of one turnutils_uclient run (coturn 4.6.1
// output: every line is "<seconds>: : <message>").
type uclientStats struct {
	Sent, Received       int64 // "start_mclient: tot_send_msgs=N, tot_recv_msgs=N"
	Lost                 int64 // "Total lost packets N (x%), total send dropped N (x%)"
	LossPct              float64
	SendDropped          int64
	RTTAvgMs             float64 // "Average round trip delay x ms; min = N ms, max = N ms"
	RTTMinMs, RTTMaxMs   int64
	JitterAvgMs          float64 // "Average jitter x ms; min = N ms, max = N ms"
	JitterMinMs          int64
	JitterMaxMs          int64
	ConnectS, TransmitS  int64       // "Total connect time is N", "Total transmit time is N" (seconds)
	Retries437           int         // "trying allocate again 437..."
	Errors               map[int]int // "error N (reason)" lines by code (437 included)
	ErrorLines           []string    // "ERROR: ..." lines (distinct, in order)
	summary, totals, rtt bool
}

var (
	ucTotals   = regexp.MustCompile(`start_mclient: tot_send_msgs=(\d+), tot_recv_msgs=(\d+)\s*$`)
	ucLost     = regexp.MustCompile(`Total lost packets (\d+) \((\S+)%\), total send dropped (\d+) \((\S+)%\)`)
	ucRTT      = regexp.MustCompile(`Average round trip delay (\S+) ms; min = (\d+) ms, max = (\d+) ms`)
	ucJitter   = regexp.MustCompile(`Average jitter (\S+) ms; min = (\d+) ms, max = (\d+) ms`)
	ucConnect  = regexp.MustCompile(`Total connect time is (\d+)`)
	ucTransmit = regexp.MustCompile(`Total transmit time is (\d+)`)
	ucError    = regexp.MustCompile(`\berror (\d{3}) \(`)
	ucRetry    = regexp.MustCompile(`trying allocate again (\d+)`)
	ucERROR    = regexp.MustCompile(`ERROR: (.*)$`)
)

// parseUclient reads the client's output. It fails when the summary is
// missing (the client aborted) or nothing was sent: such a run has no loss
// figure, and must not read as 0 % loss.
func parseUclient(out string) (uclientStats, error) {
	st := uclientStats{Errors: map[int]int{}}
	seen := map[string]bool{}
	atoi := func(s string) int64 { n, _ := strconv.ParseInt(s, 10, 64); return n } // \d+ only
	var bad []string
	atof := func(s, what string) float64 {
		x, err := strconv.ParseFloat(s, 64)
		if err != nil {
			bad = append(bad, fmt.Sprintf("%s %q", what, s))
		}
		return x
	}
	for _, line := range strings.Split(out, "\n") {
		line = strings.TrimRight(line, "\r")
		if m := ucTotals.FindStringSubmatch(line); m != nil {
			st.Sent, st.Received, st.totals = atoi(m[1]), atoi(m[2]), true
		} else if m := ucLost.FindStringSubmatch(line); m != nil {
			st.Lost, st.LossPct, st.SendDropped, st.summary = atoi(m[1]), atof(m[2], "loss"), atoi(m[3]), true
		} else if m := ucRTT.FindStringSubmatch(line); m != nil {
			st.RTTAvgMs, st.RTTMinMs, st.RTTMaxMs, st.rtt = atof(m[1], "RTT"), atoi(m[2]), atoi(m[3]), true
		} else if m := ucJitter.FindStringSubmatch(line); m != nil {
			st.JitterAvgMs, st.JitterMinMs, st.JitterMaxMs = atof(m[1], "jitter"), atoi(m[2]), atoi(m[3])
		} else if m := ucConnect.FindStringSubmatch(line); m != nil {
			st.ConnectS = atoi(m[1])
		} else if m := ucTransmit.FindStringSubmatch(line); m != nil {
			st.TransmitS = atoi(m[1])
		} else if m := ucRetry.FindStringSubmatch(line); m != nil {
			if m[1] == "437" {
				st.Retries437++
			}
		} else if m := ucError.FindStringSubmatch(line); m != nil {
			st.Errors[int(atoi(m[1]))]++
		} else if m := ucERROR.FindStringSubmatch(line); m != nil && !seen[m[1]] {
			seen[m[1]] = true
			st.ErrorLines = append(st.ErrorLines, m[1])
		}
	}
	switch {
	case !st.totals || !st.summary || !st.rtt:
		msg := "client printed no summary (aborted)"
		if len(st.ErrorLines) > 0 {
			msg += ": " + strings.Join(st.ErrorLines, "; ")
		}
		return st, errors.New(msg)
	case len(bad) > 0:
		return st, fmt.Errorf("unparsable client summary: %s", strings.Join(bad, ", "))
	case st.Sent == 0:
		return st, errors.New("client sent no messages")
	}
	return st, nil
}

// errorCodes formats Errors as "437×16 441×1", or "-".
func (st uclientStats) errorCodes() string {
	var parts []string
	for code := 100; code < 700; code++ {
		if n := st.Errors[code]; n > 0 {
			parts = append(parts, fmt.Sprintf("%d×%d", code, n))
		}
	}
	if len(parts) == 0 {
		return "-"
	}
	return strings.Join(parts, " ")
}

// small formats x like bench.FormatFloat, but with 3 significant digits
// under 0.01: loss and RTT figures here can be a few ten-thousandths.
func small(x float64) string {
	if x != 0 && math.Abs(x) < 0.01 {
		return fmt.Sprintf("%.3g", x)
	}
	return bench.FormatFloat(x)
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func uclientReport(env *runEnv, servers []uclientServer, runs []uclientRun) {
	t := bench.NewTable("round", "server", "sent", "received", "loss %", "mean RTT ms", "max RTT ms", "jitter ms",
		"error answers", "437 retries", "connect s", "transmit s", "wall s", "server CPU s", "client CPU s")
	for _, r := range runs {
		st := r.stats
		if r.failure != "" {
			t.Row(r.round, r.server, "FAILED", "-", "-", "-", "-", "-", st.errorCodes(), st.Retries437, "-", "-",
				r.wall.Seconds(), r.serverCPU.Seconds(), r.clientCPU.Seconds())
			continue
		}
		t.Row(r.round, r.server, st.Sent, st.Received, small(st.LossPct), small(st.RTTAvgMs), st.RTTMaxMs, small(st.JitterAvgMs),
			st.errorCodes(), st.Retries437, st.ConnectS, st.TransmitS, r.wall.Seconds(), r.serverCPU.Seconds(), r.clientCPU.Seconds())
	}
	t.Print(env.out, env.c.md)

	var withCounters []uclientRun
	for _, r := range runs {
		if r.counters != nil {
			withCounters = append(withCounters, r)
		}
	}
	if len(withCounters) > 0 {
		env.printf("\nours, daemon counters during each run (/metrics deltas):\n")
		for _, r := range withCounters {
			var parts []string
			for _, c := range uclientCounters {
				parts = append(parts, fmt.Sprintf("%s %.0f", c.label, r.counters[c.label]))
			}
			env.printf("  round %d: %s\n", r.round, strings.Join(parts, ", "))
		}
	}

	metrics := []struct {
		name string
		f    func(uclientRun) float64
	}{
		{"loss %", func(r uclientRun) float64 { return r.stats.LossPct }},
		{"mean RTT ms", func(r uclientRun) float64 { return r.stats.RTTAvgMs }},
		{"jitter ms", func(r uclientRun) float64 { return r.stats.JitterAvgMs }},
		{"437 retries", func(r uclientRun) float64 { return float64(r.stats.Retries437) }},
		{"server CPU s", func(r uclientRun) float64 { return r.serverCPU.Seconds() }},
		{"wall s", func(r uclientRun) float64 { return r.wall.Seconds() }},
		{"received", func(r uclientRun) float64 { return float64(r.stats.Received) }},
	}
	ok := map[string]map[int]uclientRun{} // server -> round -> completed run
	okCount := map[string]int{}
	for _, s := range servers {
		ok[s.name] = map[int]uclientRun{}
	}
	for _, r := range runs {
		if r.failure == "" {
			ok[r.server][r.round] = r
			okCount[r.server]++
		}
	}
	med := func(name string, f func(uclientRun) float64) float64 {
		var xs []float64
		for _, r := range ok[name] {
			xs = append(xs, f(r))
		}
		return bench.Median(xs)
	}
	env.printf("\nsummary (medians over completed runs")
	for _, s := range servers {
		env.printf("; %s %d/%d", s.name, okCount[s.name], len(runs)/len(servers))
	}
	env.printf("):\n")
	if len(servers) == 2 {
		o, c := servers[0].name, servers[1].name
		st := bench.NewTable("figure", "ours", "coturn", "ours/coturn", "paired", "better")
		for _, m := range metrics {
			var rs []float64
			for round, a := range ok[o] {
				if b, found := ok[c][round]; found {
					if v := m.f(b); v > 0 {
						rs = append(rs, m.f(a)/v)
					}
				}
			}
			paired := "n/a"
			if len(rs) > 0 {
				paired = fmt.Sprintf("%.2fx", bench.Median(rs))
			}
			better := "lower"
			if m.name == "received" {
				better = "higher"
			} else if m.name == "wall s" {
				better = "-"
			}
			st.Row(m.name, small(med(o, m.f)), small(med(c, m.f)), bench.Ratio(med(o, m.f), med(c, m.f)), paired, better)
		}
		st.Print(env.out, env.c.md)
	} else {
		st := bench.NewTable("figure", servers[0].name)
		for _, m := range metrics {
			st.Row(m.name, small(med(servers[0].name, m.f)))
		}
		st.Print(env.out, env.c.md)
	}

	for _, r := range runs {
		if r.failure == "" {
			continue
		}
		env.printf("\nround %d %s FAILED: %s (full output: %s, kept with -keep)\n", r.round, r.server, r.failure, r.outputPath)
		for _, line := range strings.Split(r.tail, "\n") {
			env.printf("    %s\n", line)
		}
	}
}
