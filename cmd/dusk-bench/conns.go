package main

import (
	"context"
	"flag"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/duskchat/dusk-relay/internal/bench"
	"github.com/duskchat/dusk-relay/internal/bench/lightpeer"
)

type connsOpts struct {
	steps        []int
	parallel     int
	settle       time.Duration
	pingRounds   int
	pingInterval time.Duration
	identify     bool
}

// connsRow is one server at one N.
type connsRow struct {
	n, held                 int
	dialRate                float64
	dialFails, pingFails    int64
	idleRSS, pingRSS        int64 // bytes
	idleKiB, pingKiB        float64
	idleG, pingG            float64 // goroutines per connection
	pingP50, pingP99        float64
	daemonCores, benchCores float64
	rss0                    int64
}

func runConns(ctx context.Context, env *runEnv, args []string) error {
	fs := flag.NewFlagSet("conns", flag.ContinueOnError)
	steps := fs.String("n", "1000,5000,10000", "cumulative connection counts to measure at")
	var o connsOpts
	fs.IntVar(&o.parallel, "dial-parallel", 64, "connections dialled concurrently")
	fs.DurationVar(&o.settle, "settle", 5*time.Second, "wait after reaching N before measuring idle")
	fs.IntVar(&o.pingRounds, "ping-rounds", 3, "pings per connection in the pinging phase (one stream per connection)")
	fs.DurationVar(&o.pingInterval, "ping-interval", 5*time.Second, "interval between pings on a connection (go-libp2p's ping handler closes a stream idle for 10 s)")
	fs.BoolVar(&o.identify, "identify", true, "each peer identifies the server after connecting (as rust clients do)")
	maxConns := fs.String("max-conns", "", "DUSK_MAX_CONNECTIONS for the daemon (default: the daemon's default)")
	baseline := fs.Bool("baseline", true, "also measure a bare go-libp2p relay (unlimited resource manager) for the ratio")
	rounds := fs.Int("rounds", 1, "rounds; each measures the daemon then the baseline (order alternates)")
	if err := env.parse(fs, args); err != nil {
		return err
	}
	if env.c.quick {
		quickDefaults(fs, map[string]string{"n": "50,200", "settle": "1s", "ping-rounds": "2", "ping-interval": "500ms"})
	}
	ctx = env.withTimeout(ctx)
	var err error
	if o.steps, err = intList(*steps); err != nil {
		return fmt.Errorf("%w: -n: %w", errUsage, err)
	}
	if o.parallel < 1 || o.pingRounds < 1 || o.pingRounds > 60 || o.pingInterval <= 0 || o.pingInterval > time.Minute || *rounds < 1 || *rounds > 10 {
		return fmt.Errorf("%w: -dial-parallel >= 1, -ping-rounds 1..60, -ping-interval 0..1m, -rounds 1..10", errUsage)
	}
	limit, err := bench.RaiseNoFile()
	if err != nil {
		return err
	}
	top := 0
	for _, n := range o.steps {
		top = max(top, n)
	}
	if uint64(top)+200 > limit {
		return fmt.Errorf("%w: -n %d needs ~%d open files in dusk-bench, the limit is %d (ulimit -Hn)", errUsage, top, top+200, limit)
	}
	denv := map[string]string{}
	if *maxConns != "" {
		denv["DUSK_MAX_CONNECTIONS"] = *maxConns
	}
	// Build first so the header is not interleaved with build output.
	if _, err := env.relayBin(ctx); err != nil {
		return err
	}

	env.header("concurrent libp2p connections (noise+yamux, one identity each)", args)
	cfgDesc := "default configuration"
	if len(denv) > 0 {
		cfgDesc = envList(denv)
	}
	env.printf("daemon: %s (plus loopback listeners); dusk-bench open-files limit %d\n", cfgDesc, limit)
	if *baseline {
		env.printf("baseline: bare go-libp2p relay (libp2p.New defaults + relay v2 service, unlimited resource manager, no trimming),\n")
		env.printf("  run as `dusk-bench bare-relay`; same clients, same steps.\n")
	}
	env.printf("method: each peer is a host-less go-libp2p upgrader connection with its own Ed25519 key (TCP+noise+yamux),\n")
	env.printf("  answering identify; identify of the server after connect: %v. Counts are cumulative; idle = %v after the last dial.\n", o.identify, o.settle)
	env.printf("  RSS = server VmRSS (/proc/<pid>/status), per conn = (RSS - RSS with 0 conns) / held; goroutines from /metrics go_goroutines.\n")
	env.printf("  pinging = every connection opens one ping stream at a random point of the first interval and pings on it every %v,\n", o.pingInterval)
	env.printf("  %d times (N/%v pings/s); peak server RSS/goroutines sampled every 250 ms. Loopback: per-IP limits do not apply.\n\n", o.pingRounds, o.pingInterval)

	names := []string{"ours"}
	if *baseline {
		names = append(names, "bare")
	}
	results := map[string][][]connsRow{}
	for r := range *rounds {
		for i := range names {
			name := names[i]
			if r%2 == 1 {
				name = names[len(names)-1-i]
			}
			var d *bench.Daemon
			if name == "ours" {
				d, err = env.startDaemon(ctx, fmt.Sprintf("conns-ours-%d", r), denv, "")
			} else {
				d, err = env.startBareRelay(ctx, fmt.Sprintf("conns-bare-%d", r), denv)
			}
			if err != nil {
				return err
			}
			rows, err := measureConns(ctx, env, name, d, o)
			_ = d.Stop()
			if err != nil {
				return err
			}
			results[name] = append(results[name], rows)
		}
	}
	med := func(name string, i int, f func(connsRow) float64) float64 {
		var xs []float64
		for _, rows := range results[name] {
			xs = append(xs, f(rows[i]))
		}
		return bench.Median(xs)
	}
	for _, name := range names {
		title := "dusk-relay"
		if name == "bare" {
			title = "bare go-libp2p relay (baseline)"
		}
		env.printf("%s (median of %d):\n", title, *rounds)
		t := bench.NewTable("N", "held", "dial conns/s", "dial fails", "idle RSS MiB", "idle KiB/conn", "idle goroutines/conn",
			"ping RSS MiB", "ping KiB/conn", "ping goroutines/conn", "ping p50 ms", "ping p99 ms", "ping fails", "server cores (ping)")
		for i, n := range o.steps {
			t.Row(n, med(name, i, func(r connsRow) float64 { return float64(r.held) }),
				med(name, i, func(r connsRow) float64 { return r.dialRate }),
				med(name, i, func(r connsRow) float64 { return float64(r.dialFails) }),
				med(name, i, func(r connsRow) float64 { return float64(r.idleRSS) / (1 << 20) }),
				med(name, i, func(r connsRow) float64 { return r.idleKiB }),
				med(name, i, func(r connsRow) float64 { return r.idleG }),
				med(name, i, func(r connsRow) float64 { return float64(r.pingRSS) / (1 << 20) }),
				med(name, i, func(r connsRow) float64 { return r.pingKiB }),
				med(name, i, func(r connsRow) float64 { return r.pingG }),
				med(name, i, func(r connsRow) float64 { return r.pingP50 }),
				med(name, i, func(r connsRow) float64 { return r.pingP99 }),
				med(name, i, func(r connsRow) float64 { return float64(r.pingFails) }),
				med(name, i, func(r connsRow) float64 { return r.daemonCores }))
		}
		t.Print(env.out, env.c.md)
		env.printf("\n")
	}
	if *baseline {
		env.printf("ratio dusk-relay / bare go-libp2p relay:\n")
		t := bench.NewTable("N", "idle KiB/conn", "idle goroutines/conn", "ping KiB/conn", "dial conns/s")
		for i, n := range o.steps {
			r := func(f func(connsRow) float64) string { return bench.Ratio(med("ours", i, f), med("bare", i, f)) }
			t.Row(n, r(func(r connsRow) float64 { return r.idleKiB }), r(func(r connsRow) float64 { return r.idleG }),
				r(func(r connsRow) float64 { return r.pingKiB }), r(func(r connsRow) float64 { return r.dialRate }))
		}
		t.Print(env.out, env.c.md)
	}
	env.printf("\nheld = connections still open after the idle wait; below N means the server refused or trimmed.\n")
	env.printf("ping fails = connections whose ping stream was refused or broke (e.g. a resource-manager stream limit).\n")
	return nil
}

// measureConns dials the steps against one server and measures each.
func measureConns(ctx context.Context, env *runEnv, name string, d *bench.Daemon, o connsOpts) ([]connsRow, error) {
	if err := sleepCtx(ctx, time.Second); err != nil {
		return nil, err
	}
	rss0, g0, err := sampleDaemon(ctx, d)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(env.errOut, "%s: baseline (0 connections) RSS %.1f MiB, %d goroutines\n", name, float64(rss0)/(1<<20), int(g0))
	var (
		conns []*lightpeer.Conn
		mu    sync.Mutex
		rows  []connsRow
	)
	defer func() { closeAll(conns) }()
	for _, n := range o.steps {
		row := connsRow{n: n, rss0: rss0}
		want := n - len(conns)
		var fails atomic.Int64
		var firstErr atomic.Value
		next := atomic.Int64{}
		start := time.Now()
		var wg sync.WaitGroup
		for range min(o.parallel, max(want, 0)) {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for next.Add(1) <= int64(want) && ctx.Err() == nil {
					dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
					c, err := lightpeer.Dial(dctx, nil, d.Addr, d.ID)
					if err == nil && o.identify {
						if _, err = c.Identify(dctx); err != nil {
							_ = c.Close()
						}
					}
					cancel()
					if err != nil {
						fails.Add(1)
						firstErr.CompareAndSwap(nil, err)
						continue
					}
					mu.Lock()
					conns = append(conns, c)
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		el := time.Since(start)
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if e := firstErr.Load(); e != nil {
			fmt.Fprintf(env.errOut, "%s N=%d: %d dials failed, first: %v\n", name, n, fails.Load(), e)
		}
		row.dialFails = fails.Load()
		row.dialRate = float64(max(want, 0)-int(row.dialFails)) / el.Seconds()
		if err := sleepCtx(ctx, o.settle); err != nil {
			return nil, err
		}
		row.held = alive(conns)
		rss, g, err := sampleDaemon(ctx, d)
		if err != nil {
			return nil, err
		}
		den := float64(max(row.held, 1))
		row.idleRSS = rss
		row.idleKiB = float64(rss-rss0) / 1024 / den
		row.idleG = (g - g0) / den
		fmt.Fprintf(env.errOut, "%s N=%d: held %d, idle RSS %.1f MiB, %d goroutines; %s\n", name, n, row.held, float64(rss)/(1<<20), int(g), memBreakdown(ctx, d))

		if err := pingPhase(ctx, env, name, d, conns, o, &row); err != nil {
			return nil, err
		}
		row.pingKiB = float64(row.pingRSS-rss0) / 1024 / den
		row.pingG -= g0
		row.pingG /= den
		rows = append(rows, row)
	}
	return rows, nil
}

// pingPhase: every connection holds one ping stream and pings on it.
func pingPhase(ctx context.Context, env *runEnv, name string, d *bench.Daemon, conns []*lightpeer.Conn, o connsOpts, row *connsRow) error {
	var lat bench.Latencies
	var latMu sync.Mutex
	var pingFails atomic.Int64
	var pingErr atomic.Value
	var peakRSS int64
	var peakG float64
	pctx, cancel := context.WithTimeout(ctx, time.Duration(o.pingRounds+1)*o.pingInterval+30*time.Second)
	defer cancel()
	var pwg sync.WaitGroup
	for i, c := range conns {
		pwg.Add(1)
		go func() {
			defer pwg.Done()
			// Spread stream opening over the first interval.
			if err := sleepCtx(pctx, time.Duration(int64(i)*int64(o.pingInterval)/int64(len(conns)))); err != nil {
				return
			}
			rtts, err := pingEvery(pctx, c, o.pingRounds, o.pingInterval)
			if err != nil {
				pingFails.Add(1)
				pingErr.CompareAndSwap(nil, err)
			}
			latMu.Lock()
			for _, r := range rtts {
				lat.Add(r)
			}
			latMu.Unlock()
		}()
	}
	dcpu0, _ := bench.CPUTime(d.PID)
	pt0 := time.Now()
	sampleDone := make(chan struct{})
	go func() {
		defer close(sampleDone)
		tk := time.NewTicker(250 * time.Millisecond)
		defer tk.Stop()
		for {
			select {
			case <-pctx.Done():
				return
			case <-tk.C:
			}
			if r, g, err := sampleDaemon(pctx, d); err == nil {
				peakRSS, peakG = max(peakRSS, r), max(peakG, g)
			}
		}
	}()
	pwg.Wait()
	cancel()
	<-sampleDone
	if ctx.Err() != nil {
		return ctx.Err()
	}
	dcpu1, _ := bench.CPUTime(d.PID)
	row.daemonCores = (dcpu1 - dcpu0).Seconds() / time.Since(pt0).Seconds()
	row.pingFails = pingFails.Load()
	if row.pingFails > 0 {
		fmt.Fprintf(env.errOut, "%s N=%d: %d connections failed to ping, first: %v\n", name, row.n, row.pingFails, pingErr.Load())
	}
	row.pingRSS, row.pingG = peakRSS, peakG
	row.pingP50, row.pingP99 = lat.Q(0.5), lat.Q(0.99)
	return nil
}

func pingEvery(ctx context.Context, c *lightpeer.Conn, rounds int, every time.Duration) ([]time.Duration, error) {
	s, err := c.Stream(ctx, lightpeer.PingID)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	var out []time.Duration
	for i := range rounds {
		if i > 0 {
			if err := sleepCtx(ctx, every); err != nil {
				return out, err
			}
		}
		d, err := lightpeer.PingOnce(s)
		if err != nil {
			_ = s.Reset()
			return out, err
		}
		out = append(out, d)
	}
	return out, nil
}

func sampleDaemon(ctx context.Context, d *bench.Daemon) (int64, float64, error) {
	rss, err := bench.RSS(d.PID)
	if err != nil {
		return 0, 0, err
	}
	g, err := d.Metric(ctx, "go_goroutines")
	if err != nil {
		return 0, 0, err
	}
	return rss, g, nil
}

// memBreakdown tells where the Go runtime's memory is (for reading an RSS
// figure): live heap spans, goroutine stacks, and heap the runtime holds
// free but has not returned to the OS.
func memBreakdown(ctx context.Context, d *bench.Daemon) string {
	var b strings.Builder
	for _, m := range []struct{ label, name string }{
		{"heap in use", "go_memstats_heap_inuse_bytes"},
		{"stacks", "go_memstats_stack_inuse_bytes"},
		{"heap idle", "go_memstats_heap_idle_bytes"},
		{"released", "go_memstats_heap_released_bytes"},
	} {
		v, err := d.Metric(ctx, m.name)
		if err != nil {
			return "memstats: " + err.Error()
		}
		fmt.Fprintf(&b, "%s %.1f MiB, ", m.label, v/(1<<20))
	}
	return strings.TrimSuffix(b.String(), ", ")
}

func alive(cs []*lightpeer.Conn) int {
	n := 0
	for _, c := range cs {
		if !c.Closed() {
			n++
		}
	}
	return n
}

func closeAll(cs []*lightpeer.Conn) {
	var wg sync.WaitGroup
	sem := make(chan struct{}, 256)
	for _, c := range cs {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			_ = c.Close()
			<-sem
		}()
	}
	wg.Wait()
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
