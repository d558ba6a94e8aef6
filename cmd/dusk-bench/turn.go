package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/duskchat/dusk-relay/internal/bench"
	"github.com/duskchat/dusk-relay/internal/bench/turnload"
)

const turnRealm = "duskchat.app"

// turnServer is one server under test.
type turnServer struct {
	name   string
	target turnload.Target
	pid    int
}

type turnCell struct {
	payload, allocs int
}

// turnSample is one measured run of one server on one cell.
type turnSample struct {
	res       turnload.Result
	allocRate float64 // allocations/s during setup
}

// turnDaemonEnv is our daemon's environment for TURN load against coturn:
// the same UDP threads, and the quotas lifted that coturn does not apply.
func turnDaemonEnv(threads int) map[string]string {
	return map[string]string{
		"DUSK_TURN_UDP_THREADS":     strconv.Itoa(threads),
		"DUSK_TURN_MAX_ALLOCATIONS": "100000",
		// Every generator socket is on 127.0.0.1: lift the per-IP quota
		// (ignored by builds that predate it).
		"DUSK_TURN_MAX_PER_IP": "100000",
		// coturn runs without max-bps; a limit no flow reaches keeps
		// the per-packet bandwidth check in the measured path.
		"DUSK_TURN_MAX_BPS": "1099511627776",
	}
}

func runTURN(ctx context.Context, env *runEnv, args []string) error {
	fs := flag.NewFlagSet("turn", flag.ContinueOnError)
	rounds := fs.Int("rounds", 3, "rounds; each round runs every cell on every server (A B A B)")
	duration := fs.Duration("duration", 3*time.Second, "measured window per run")
	warmup := fs.Duration("warmup", 500*time.Millisecond, "unmeasured warm-up per run")
	payloads := fs.String("payloads", "200,1200", "UDP payload sizes in bytes")
	allocsFlag := fs.String("allocs", "1,10,100", "concurrent allocations")
	inflight := fs.Int("inflight", 64, "packets in flight per run in total (window per allocation = max(1, inflight/allocs))")
	threads := fs.Int("threads", runtime.NumCPU(), "UDP threads: DUSK_TURN_UDP_THREADS of ours and relay-threads of coturn")
	parallel := fs.Int("setup-parallel", 10, "allocations set up concurrently")
	only := fs.String("only", "both", "servers to run: both, ours or coturn")
	coturnBin := fs.String("coturn-bin", "", "turnserver binary (default: turnserver from PATH)")
	paced := fs.Float64("paced", 0.75, "paced phase: offer this factor x the best closed-loop pps of the cell to every server and report loss (0 = skip)")
	if err := env.parse(fs, args); err != nil {
		return err
	}
	if env.c.quick {
		quickDefaults(fs, map[string]string{"rounds": "1", "duration": "500ms", "warmup": "200ms", "payloads": "200", "allocs": "1,10"})
	}
	ctx = env.withTimeout(ctx)
	pl, err := intList(*payloads)
	if err != nil {
		return fmt.Errorf("%w: -payloads: %w", errUsage, err)
	}
	al, err := intList(*allocsFlag)
	if err != nil {
		return fmt.Errorf("%w: -allocs: %w", errUsage, err)
	}
	if *only != "both" && *only != "ours" && *only != "coturn" {
		return fmt.Errorf("%w: -only must be both, ours or coturn", errUsage)
	}
	if *rounds < 1 || *rounds > 50 || *duration <= 0 || *duration > 10*time.Minute {
		return fmt.Errorf("%w: -rounds 1..50, -duration 0..10m", errUsage)
	}

	secret := bench.RandomSecret()
	var servers []turnServer
	if *only != "coturn" {
		d, err := env.startDaemon(ctx, "ours", turnDaemonEnv(*threads), secret)
		if err != nil {
			return err
		}
		servers = append(servers, turnServer{
			name:   "ours",
			target: turnload.Target{Addr: &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: d.TURNPort}, Realm: turnRealm, Secret: secret},
			pid:    d.PID,
		})
	}
	if *only != "ours" {
		c, err := bench.StartCoturn(ctx, bench.CoturnOptions{
			Bin: *coturnBin, Dir: filepath.Join(env.dir, "coturn"), Secret: secret, Realm: turnRealm,
			Threads: *threads, MinPort: 25000, MaxPort: 29999,
		})
		if err != nil {
			return err
		}
		env.onCleanup(func() { _ = c.Stop() })
		servers = append(servers, turnServer{
			name:   "coturn",
			target: turnload.Target{Addr: &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: c.Port}, Realm: turnRealm, Secret: secret},
			pid:    c.PID,
		})
	}

	env.header("TURN relayed UDP, closed loop", args)
	env.printf("servers: ours = dusk-relay (pion/turn/v4, DUSK_TURN_UDP_THREADS=%d); coturn = turnserver (relay-threads=%d, use-auth-secret)\n", *threads, *threads)
	env.printf("method: pion/turn/v4 client allocates, creates the permission and binds a channel; data = raw ChannelData on the client socket.\n")
	env.printf("  Each allocation echoes through its own loopback peer; W=max(1,%d/allocs) packets in flight per allocation,\n", *inflight)
	env.printf("  each echo triggers the next send (closed loop); 200 ms of silence re-primes the window (stall).\n")
	env.printf("  pps = packets relayed per second, both directions; loss = 1 - echoes/sent after %v drain;\n", 300*time.Millisecond)
	env.printf("  CPU = server process utime+stime (/proc/<pid>/stat) per 1000 relayed packets; setup = Allocate() calls/s (%d in parallel).\n", *parallel)
	env.printf("  %d rounds x %v (+%v warm-up), servers alternate A B A B; medians. \"paired\" = median of the per-round ratios (runs of a round are back to back).\n", *rounds, *duration, *warmup)
	if *paced > 0 {
		env.printf("  paced phase: one pacer sends at a fixed rate (1 ms ticks, round-robin over allocations) = %.2f x the cell's best\n", *paced)
		env.printf("  closed-loop median (relayed pps / 2 client sends); loss = 1 - echoes/sent. Same rounds and alternation.\n")
	}
	env.printf("\n")

	var cells []turnCell
	for _, p := range pl {
		for _, a := range al {
			cells = append(cells, turnCell{p, a})
		}
	}
	samples := map[string]map[turnCell][]turnSample{}
	for _, s := range servers {
		samples[s.name] = map[turnCell][]turnSample{}
	}
	for r := range *rounds {
		for _, cell := range cells {
			for i := range servers {
				// A B in odd rounds, B A in even rounds: neither server always runs first.
				s := servers[i]
				if r%2 == 1 {
					s = servers[len(servers)-1-i]
				}
				smp, err := turnOnce(ctx, s, cell, *inflight, *parallel, *warmup, *duration)
				if err != nil {
					return fmt.Errorf("%s, %d B x %d allocations, round %d: %w", s.name, cell.payload, cell.allocs, r+1, err)
				}
				samples[s.name][cell] = append(samples[s.name][cell], smp)
				fmt.Fprintf(env.errOut, "round %d %-6s %4d B x %3d: %8.0f pps loss %.3f%% server %v/kpkt (%.2f cores) generator %.2f cores, stalls %d\n",
					r+1, s.name, cell.payload, cell.allocs, smp.res.PPS, smp.res.Loss*100, smp.res.CPUPerKPkt.Round(time.Microsecond),
					smp.res.ServerCPU.Seconds()/smp.res.Duration.Seconds(), smp.res.GenCPU.Seconds()/smp.res.Duration.Seconds(), smp.res.Stalls)
			}
		}
	}

	med := func(name string, cell turnCell, f func(turnSample) float64) float64 {
		var xs []float64
		for _, s := range samples[name][cell] {
			xs = append(xs, f(s))
		}
		return bench.Median(xs)
	}
	pps := func(s turnSample) float64 { return s.res.PPS }
	loss := func(s turnSample) float64 { return s.res.Loss * 100 }
	cpu := func(s turnSample) float64 { return float64(s.res.CPUPerKPkt) / float64(time.Millisecond) }
	stalls := func(s turnSample) float64 { return float64(s.res.Stalls) }
	// paired is the median over rounds of each round's a/b: the two runs of
	// a round are back to back, so drift of the shared machine between
	// rounds (seen here: ±25 % for one cell) cancels out of each ratio.
	paired := func(a, b string, cell turnCell, f func(turnSample) float64) string {
		as, bs := samples[a][cell], samples[b][cell]
		var rs []float64
		for i := range min(len(as), len(bs)) {
			if v := f(bs[i]); v > 0 {
				rs = append(rs, f(as[i])/v)
			}
		}
		if len(rs) == 0 {
			return "n/a"
		}
		return fmt.Sprintf("%.2fx", bench.Median(rs))
	}

	both := len(servers) == 2
	var t *bench.Table
	if both {
		t = bench.NewTable("payload B", "allocs", "W", "ours pps", "coturn pps", "pps ours/coturn", "pps ours/coturn paired",
			"ours loss %", "coturn loss %", "ours CPU ms/kpkt", "coturn CPU ms/kpkt", "CPU ours/coturn", "CPU paired", "stalls o/c")
	} else {
		t = bench.NewTable("payload B", "allocs", "W", servers[0].name+" pps", "loss %", "CPU ms/kpkt", "stalls")
	}
	for _, cell := range cells {
		w := max(1, *inflight/cell.allocs)
		if both {
			o, c := servers[0].name, servers[1].name
			t.Row(cell.payload, cell.allocs, w, med(o, cell, pps), med(c, cell, pps), bench.Ratio(med(o, cell, pps), med(c, cell, pps)), paired(o, c, cell, pps),
				med(o, cell, loss), med(c, cell, loss), med(o, cell, cpu), med(c, cell, cpu), bench.Ratio(med(o, cell, cpu), med(c, cell, cpu)), paired(o, c, cell, cpu),
				fmt.Sprintf("%.0f/%.0f", med(o, cell, stalls), med(c, cell, stalls)))
		} else {
			n := servers[0].name
			t.Row(cell.payload, cell.allocs, w, med(n, cell, pps), med(n, cell, loss), med(n, cell, cpu), med(n, cell, stalls))
		}
	}
	t.Print(env.out, env.c.md)

	if *paced > 0 {
		if err := turnPaced(ctx, env, servers, cells, *rounds, *paced, *inflight, *parallel, *warmup, *duration, func(cell turnCell) float64 {
			best := 0.0
			for _, s := range servers {
				best = max(best, med(s.name, cell, pps))
			}
			return best
		}); err != nil {
			return err
		}
	}

	// Setup rate over the largest cells (small cells set up too few to time).
	maxAllocs := al[0]
	for _, a := range al {
		maxAllocs = max(maxAllocs, a)
	}
	rates := map[string]float64{}
	for _, s := range servers {
		var xs []float64
		for cell, ss := range samples[s.name] {
			if cell.allocs == maxAllocs {
				for _, smp := range ss {
					xs = append(xs, smp.allocRate)
				}
			}
		}
		rates[s.name] = bench.Median(xs)
	}
	env.printf("\nallocation setup (batches of %d, %d in parallel, median):", maxAllocs, *parallel)
	for _, s := range servers {
		env.printf(" %s %.0f allocs/s;", s.name, rates[s.name])
	}
	if both {
		env.printf(" ratio ours/coturn %s", bench.Ratio(rates[servers[0].name], rates[servers[1].name]))
	}
	env.printf("\n")
	return nil
}

// turnPaced offers each cell a fixed load (factor x its best closed-loop
// rate) on every server and reports delivered rate and loss.
func turnPaced(ctx context.Context, env *runEnv, servers []turnServer, cells []turnCell, rounds int, factor float64,
	inflight, parallel int, warmup, duration time.Duration, best func(turnCell) float64) error {
	got := map[string]map[turnCell][]turnloadResult{}
	for _, s := range servers {
		got[s.name] = map[turnCell][]turnloadResult{}
	}
	for r := range rounds {
		for _, cell := range cells {
			offered := factor * best(cell)
			for i := range servers {
				s := servers[i]
				if r%2 == 1 {
					s = servers[len(servers)-1-i]
				}
				set, err := turnload.Setup(ctx, s.target, cell.allocs, parallel, cell.payload)
				if err != nil {
					return fmt.Errorf("paced %s: %w", s.name, err)
				}
				res, err := set.RunPaced(ctx, offered/2, turnload.RunOptions{
					Warmup: warmup, Duration: duration, Drain: 300 * time.Millisecond,
					CPU: func() (time.Duration, error) { return bench.CPUTime(s.pid) },
				})
				set.Close()
				if err != nil {
					return fmt.Errorf("paced %s: %w", s.name, err)
				}
				got[s.name][cell] = append(got[s.name][cell], turnloadResult{offered, res})
				fmt.Fprintf(env.errOut, "paced round %d %-6s %4d B x %3d: offered %8.0f delivered %8.0f pps loss %.3f%%\n",
					r+1, s.name, cell.payload, cell.allocs, offered, res.PPS, res.Loss*100)
			}
		}
	}
	cols := []string{"payload B", "allocs", "offered pps"}
	for _, s := range servers {
		cols = append(cols, s.name+" delivered pps", s.name+" loss %")
	}
	if len(servers) == 2 {
		cols = append(cols, "loss ours-coturn (pp)")
	}
	t := bench.NewTable(cols...)
	for _, cell := range cells {
		row := []any{cell.payload, cell.allocs}
		var offered []float64
		losses := make([]float64, 0, 2)
		for si, s := range servers {
			var pps, loss []float64
			for _, x := range got[s.name][cell] {
				pps = append(pps, x.res.PPS)
				loss = append(loss, x.res.Loss*100)
				if si == 0 {
					offered = append(offered, x.offered)
				}
			}
			if si == 0 {
				row = append(row, bench.Median(offered))
			}
			row = append(row, bench.Median(pps), bench.Median(loss))
			losses = append(losses, bench.Median(loss))
		}
		if len(servers) == 2 {
			row = append(row, fmt.Sprintf("%+.3f", losses[0]-losses[1]))
		}
		t.Row(row...)
	}
	env.printf("\npaced (fixed offered load = %.2f x best closed-loop median of the cell):\n", factor)
	t.Print(env.out, env.c.md)
	return nil
}

type turnloadResult struct {
	offered float64
	res     turnload.Result
}

func turnOnce(ctx context.Context, s turnServer, cell turnCell, inflight, parallel int, warmup, duration time.Duration) (turnSample, error) {
	set, err := turnload.Setup(ctx, s.target, cell.allocs, parallel, cell.payload)
	if err != nil {
		return turnSample{}, err
	}
	defer set.Close()
	res, err := set.Run(ctx, turnload.RunOptions{
		Window:   max(1, inflight/cell.allocs),
		Warmup:   warmup,
		Duration: duration,
		Drain:    300 * time.Millisecond,
		CPU:      func() (time.Duration, error) { return bench.CPUTime(s.pid) },
		GenCPU:   func() (time.Duration, error) { return bench.CPUTime(os.Getpid()) },
	})
	if err != nil {
		return turnSample{}, err
	}
	return turnSample{res: res, allocRate: float64(cell.allocs) / set.AllocateTime.Seconds()}, nil
}

func intList(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 || n > 100000 {
			return nil, fmt.Errorf("bad number %q", f)
		}
		out = append(out, n)
	}
	return out, nil
}
