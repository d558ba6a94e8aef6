package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/duskchat/dusk-relay/internal/bench"
	"github.com/duskchat/dusk-relay/internal/bench/lightpeer"
)

func runConns(ctx context.Context, env *runEnv, args []string) error {
	fs := flag.NewFlagSet("conns", flag.ContinueOnError)
	steps := fs.String("n", "1000,5000,10000", "cumulative connection counts to measure at")
	parallel := fs.Int("dial-parallel", 64, "connections dialled concurrently")
	settle := fs.Duration("settle", 5*time.Second, "wait after reaching N before measuring idle")
	pingRounds := fs.Int("ping-rounds", 3, "pings per connection in the pinging phase (one per second, one stream per connection)")
	maxConns := fs.String("max-conns", "", "DUSK_MAX_CONNECTIONS for the daemon (default: the daemon's default)")
	identify := fs.Bool("identify", true, "each peer identifies the daemon after connecting (as rust clients do)")
	if err := env.parse(fs, args); err != nil {
		return err
	}
	if env.c.quick {
		quickDefaults(fs, map[string]string{"n": "50,200", "settle": "1s", "ping-rounds": "2"})
	}
	ctx = env.withTimeout(ctx)
	ns, err := intList(*steps)
	if err != nil {
		return fmt.Errorf("%w: -n: %w", errUsage, err)
	}
	if *parallel < 1 || *pingRounds < 1 || *pingRounds > 60 {
		return fmt.Errorf("%w: -dial-parallel >= 1, -ping-rounds 1..60", errUsage)
	}
	limit, err := bench.RaiseNoFile()
	if err != nil {
		return err
	}
	top := 0
	for _, n := range ns {
		top = max(top, n)
	}
	if uint64(top)+200 > limit {
		return fmt.Errorf("%w: -n %d needs ~%d open files in dusk-bench, the limit is %d (ulimit -Hn)", errUsage, top, top+200, limit)
	}

	denv := map[string]string{}
	if *maxConns != "" {
		denv["DUSK_MAX_CONNECTIONS"] = *maxConns
	}
	d, err := env.startDaemon(ctx, "conns", denv, "")
	if err != nil {
		return err
	}
	env.header("concurrent libp2p connections (noise+yamux, one identity each)", args)
	cfgDesc := "default configuration"
	if len(denv) > 0 {
		cfgDesc = envList(denv)
	}
	env.printf("daemon: %s (plus loopback listeners); dusk-bench open-files limit %d\n", cfgDesc, limit)
	env.printf("method: each peer is a host-less go-libp2p upgrader connection with its own Ed25519 key (TCP+noise+yamux),\n")
	env.printf("  answering identify; identify of the daemon after connect: %v. Counts are cumulative; idle = %v after the last dial.\n", *identify, *settle)
	env.printf("  RSS = daemon VmRSS (/proc/<pid>/status), per conn = (RSS - RSS with 0 conns) / N; goroutines from /metrics go_goroutines.\n")
	env.printf("  pinging = every connection holds one ping stream and pings once per second, %d times; peak RSS/goroutines sampled every 250 ms.\n\n", *pingRounds)

	time.Sleep(time.Second)
	rss0, g0, err := sampleDaemon(ctx, d)
	if err != nil {
		return err
	}
	env.printf("baseline (0 connections): RSS %.1f MiB, %d goroutines\n\n", float64(rss0)/(1<<20), int(g0))

	t := bench.NewTable("N", "held", "dial conns/s", "dial fails", "idle RSS MiB", "idle KiB/conn", "idle goroutines/conn",
		"ping RSS MiB", "ping KiB/conn", "ping goroutines/conn", "ping p50 ms", "ping p99 ms", "bench RSS MiB")
	var (
		conns []*lightpeer.Conn
		mu    sync.Mutex
	)
	defer func() {
		closeAll(conns)
	}()
	for _, n := range ns {
		if n <= len(conns) {
			continue
		}
		want := n - len(conns)
		var fails atomic.Int64
		var firstErr atomic.Value
		next := atomic.Int64{}
		start := time.Now()
		var wg sync.WaitGroup
		for range min(*parallel, want) {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for next.Add(1) <= int64(want) && ctx.Err() == nil {
					dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
					c, err := lightpeer.Dial(dctx, nil, d.Addr, d.ID)
					if err == nil && *identify {
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
			return ctx.Err()
		}
		if e := firstErr.Load(); e != nil {
			fmt.Fprintf(env.errOut, "N=%d: %d dials failed, first: %v\n", n, fails.Load(), e)
		}
		rate := float64(want-int(fails.Load())) / el.Seconds()
		if err := sleepCtx(ctx, *settle); err != nil {
			return err
		}
		held := alive(conns)
		rss, g, err := sampleDaemon(ctx, d)
		if err != nil {
			return err
		}
		fmt.Fprintf(env.errOut, "N=%d: held %d, idle RSS %.1f MiB, %d goroutines\n", n, held, float64(rss)/(1<<20), int(g))

		// Pinging phase: every connection one stream, one ping per second.
		var lat bench.Latencies
		var latMu sync.Mutex
		var pingFails atomic.Int64
		var peakRSS int64
		var peakG float64
		pctx, cancel := context.WithTimeout(ctx, time.Duration(*pingRounds+30)*time.Second)
		var pwg sync.WaitGroup
		for i, c := range conns {
			pwg.Add(1)
			go func() {
				defer pwg.Done()
				// Spread stream opening over the first second.
				if err := sleepCtx(pctx, time.Duration(i%1000)*time.Millisecond); err != nil {
					return
				}
				rtts, err := pingEverySecond(pctx, c, *pingRounds)
				if err != nil {
					pingFails.Add(1)
				}
				latMu.Lock()
				for _, r := range rtts {
					lat.Add(r)
				}
				latMu.Unlock()
			}()
		}
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
		if pf := pingFails.Load(); pf > 0 {
			fmt.Fprintf(env.errOut, "N=%d: %d connections failed to ping\n", n, pf)
		}
		selfRSS, _ := bench.RSS(os.Getpid())
		den := float64(max(held, 1))
		per := func(v int64) float64 { return float64(v-rss0) / 1024 / den }
		t.Row(n, held, rate, fails.Load(), float64(rss)/(1<<20), per(rss), (g-g0)/den,
			float64(peakRSS)/(1<<20), per(peakRSS), (peakG-g0)/den, lat.Q(0.5), lat.Q(0.99), float64(selfRSS)/(1<<20))
	}
	t.Print(env.out, env.c.md)
	env.printf("\nheld = connections still open after the idle wait; a held count below N means the daemon refused or trimmed.\n")
	return nil
}

func pingEverySecond(ctx context.Context, c *lightpeer.Conn, rounds int) ([]time.Duration, error) {
	s, err := c.Stream(ctx, lightpeer.PingID)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	var out []time.Duration
	for i := range rounds {
		if i > 0 {
			if err := sleepCtx(ctx, time.Second); err != nil {
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
