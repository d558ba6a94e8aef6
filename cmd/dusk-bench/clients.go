package main

import (
	"context"
	"flag"
	"fmt"
	"math"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/duskchat/dusk-relay/internal/bench"
)

// clientsOpts are the flags of `clients`.
type clientsOpts struct {
	steps       []int
	ramp        time.Duration
	hold        time.Duration
	speedup     float64
	communities int
	commSize    int
	gossipFrac  float64
	circuitFrac float64
	msgSize     int
	msgEvery    time.Duration
	srcAddrs    int
	p99Max      time.Duration
	opTimeout   time.Duration
}

// clientsRow is one step's result.
type clientsRow struct {
	n                  int
	lat                map[string]*bench.Latencies
	errs               map[string]int64
	example            map[string]string
	notes              map[string]int64
	gossipIn, gossipOt int64
	rssMiB             float64
	daemonCores        float64
	benchCores         float64
	benchRSSMiB        float64
	gauges             string // the daemon's own counts at the end of the step
	pass               bool
	why                string
}

func runClients(ctx context.Context, env *runEnv, args []string) error {
	fs := flag.NewFlagSet("clients", flag.ContinueOnError)
	steps := fs.String("n", "1000,5000,10000,19500", "cumulative client counts; the run stops at the first step that fails")
	var o clientsOpts
	fs.DurationVar(&o.ramp, "ramp", time.Minute, "time over which each step's new clients connect (evenly spread)")
	fs.DurationVar(&o.hold, "hold", 0, "measured time at each step after its ramp (default: two app ticks, 240 s / -speedup)")
	fs.Float64Var(&o.speedup, "speedup", 1, "time compression k: every app period (ping 30 s, tick 120 s, renewals, messages) is divided by k")
	fs.IntVar(&o.communities, "k", 3, "communities per client (registered and discovered every tick)")
	fs.IntVar(&o.commSize, "community-size", 50, "mean members per community (sets how many distinct communities a step has)")
	fs.Float64Var(&o.gossipFrac, "gossip-frac", 1, "fraction of clients that speak gossipsub (dusk/sync, dusk/directory)")
	fs.Float64Var(&o.circuitFrac, "circuit-frac", 0.1, "fraction of clients in circuit pairs (one holds a relayed circuit to the other and exchanges messages)")
	fs.IntVar(&o.msgSize, "msg-size", 200, "bytes per chat message over a circuit (echoed back)")
	fs.DurationVar(&o.msgEvery, "msg-every", 5*time.Second, "app time between messages of a circuit pair")
	fs.IntVar(&o.srcAddrs, "src-addrs", 1, "loopback source addresses (1: all from 127.0.0.1, exempt from per-address caps; >1: 127.0.0.2.. each holding N/src-addrs)")
	fs.DurationVar(&o.p99Max, "p99-max", 100*time.Millisecond, "a step passes when every operation's p99 is at most this and nothing failed")
	fs.DurationVar(&o.opTimeout, "op-timeout", 15*time.Second, "deadline of one operation (the app's request timeout)")
	maxConns := fs.String("max-conns", "", "DUSK_MAX_CONNECTIONS for the daemon (default: the daemon's default, raised to fit the largest step)")
	if err := env.parse(fs, args); err != nil {
		return err
	}
	if env.c.quick {
		quickDefaults(fs, map[string]string{"n": "20,40", "ramp": "500ms", "hold": "2500ms", "speedup": "60", "k": "2",
			"community-size": "10", "circuit-frac": "0.2", "msg-every": "15s", "op-timeout": "5s"})
	}
	ctx = env.withTimeout(ctx)
	var err error
	if o.steps, err = intList(*steps); err != nil {
		return fmt.Errorf("%w: -n: %w", errUsage, err)
	}
	sort.Ints(o.steps)
	if o.speedup < 1 || o.speedup > 1000 || o.communities < 0 || o.communities > 100 || o.commSize < 1 ||
		o.gossipFrac < 0 || o.gossipFrac > 1 || o.circuitFrac < 0 || o.circuitFrac > 1 || o.msgSize < 1 || o.msgSize > 65536 ||
		o.msgEvery <= 0 || o.srcAddrs < 1 || o.srcAddrs > 1<<20 || o.ramp < 0 || o.hold < 0 || o.opTimeout <= 0 {
		return fmt.Errorf("%w: -speedup 1..1000, -k 0..100, -community-size >= 1, fractions 0..1, -msg-size 1..65536, -src-addrs >= 1", errUsage)
	}
	if o.hold == 0 {
		o.hold = time.Duration(float64(2*appTick) / o.speedup)
	}
	top := o.steps[len(o.steps)-1]
	limit, err := bench.RaiseNoFile()
	if err != nil {
		return err
	}
	if uint64(top)+300 > limit {
		return fmt.Errorf("%w: -n %d needs ~%d open files in dusk-bench, the limit is %d (ulimit -Hn)", errUsage, top, top+300, limit)
	}
	if o.srcAddrs > 1 && (top+o.srcAddrs-1)/o.srcAddrs > 64 {
		fmt.Fprintf(env.errOut, "note: %d clients per source address exceed the default DUSK_MAX_CONNECTIONS_PER_IP (64)\n", (top+o.srcAddrs-1)/o.srcAddrs)
	}

	denv := map[string]string{}
	switch {
	case *maxConns != "":
		denv["DUSK_MAX_CONNECTIONS"] = *maxConns
	case top+top/10 > 10000: // the daemon's default
		denv["DUSK_MAX_CONNECTIONS"] = strconv.Itoa(top + top/10 + 100)
	}
	if o.srcAddrs == 1 {
		// One source address stands for N clients' N addresses: lift the
		// per-address budgets that 127.0.0.1 is not exempt from to the
		// global ones.
		denv["DUSK_RENDEZVOUS_MAX_BYTES_PER_ADDR"] = "134217728"
		denv["DUSK_GOSSIP_CLIENT_BYTES_PER_SEC"] = "0"
	}
	d, err := env.startDaemon(ctx, "clients", denv, "")
	if err != nil {
		return err
	}

	env.header("simulated Dusk clients", args)
	if len(denv) == 0 {
		env.printf("daemon: default configuration\n")
	} else {
		env.printf("daemon: %s (other variables default)\n", envList(denv))
	}
	env.printf("method: each client is a host-less TCP+noise+yamux connection with its own Ed25519 key (internal/bench/lightpeer)\n")
	env.printf("  doing what the Dusk app does (src-tauri/src/node): identify; circuit v2 RESERVE, renewed at 3/4 of its life;\n")
	env.printf("  then profile on dusk/directory, directory Register, rendezvous REGISTER on dusk/peers, dusk/peer/<self> and %d\n", o.communities)
	env.printf("  communities (~%d members each); every tick (120 s) re-register all, discover each community (no cookie), directory\n", o.commSize)
	env.printf("  Register; one ping stream, a ping every 30 s; identify every 5 min. %.0f%% speak gossipsub (/meshsub/1.1.0:\n", 100*o.gossipFrac)
	env.printf("  subscribe dusk/sync + dusk/directory, signed RequestSync on connect, ProfileAnnounce after each reservation).\n")
	env.printf("  %.0f%% are in pairs: one opens a circuit to the other through the relay and sends %d B every %v, echoed (RTT).\n",
		100*o.circuitFrac, o.msgSize, o.msgEvery)
	env.printf("  speedup %gx: every period above / %g (tick %v, ping %v). Steps are cumulative; each step's new clients connect\n",
		o.speedup, o.speedup, time.Duration(float64(appTick)/o.speedup), time.Duration(float64(appPingEvery)/o.speedup))
	env.printf("  evenly over %v, then %v measured; figures cover ramp + hold. Pass: every p99 <= %v and no errors.\n", o.ramp, o.hold, o.p99Max)
	src := "127.0.0.1 (exempt from per-address connection caps)"
	if o.srcAddrs > 1 {
		src = fmt.Sprintf("%d loopback addresses from 127.0.0.2", o.srcAddrs)
	}
	env.printf("  sources: %s; dusk-bench runs on the same machine as the daemon.\n\n", src)

	rec := newRecorder()
	cfg := &simConfig{daemon: d, speedup: o.speedup, communities: o.communities, commCount: max(1, top*o.communities/o.commSize),
		msgSize: o.msgSize, msgEvery: o.msgEvery, srcAddrs: o.srcAddrs, opTimeout: o.opTimeout}
	runCtx, stopClients := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() {
		stopClients()
		wg.Wait()
	}()

	var clients []*simClient
	var rows []clientsRow
	passN := 0
	for _, n := range o.steps {
		if n <= len(clients) {
			continue
		}
		rec.reset()
		add := n - len(clients)
		first := len(clients)
		for i := range add {
			idx := first + i
			c, err := newSimClient(idx, cfg, rec, fracPick(idx, o.gossipFrac))
			if err != nil {
				return err
			}
			// Pairs: an even and the next odd index; a fraction of the pairs
			// (so of the clients) holds a circuit. Linked before either
			// starts, so a pair never spans two steps.
			if idx%2 == 1 && idx > first && fracPick(idx/2, o.circuitFrac) {
				clients[idx-1].target = c
			}
			clients = append(clients, c)
		}
		cpu0, _ := bench.CPUTime(d.PID)
		gen0 := simCPU()
		t0 := time.Now()
		for i, c := range clients[first:] {
			if err := sleepCtx(ctx, time.Until(t0.Add(time.Duration(int64(o.ramp)*int64(i)/int64(add))))); err != nil {
				return err
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				c.run(runCtx)
			}()
		}
		if err := sleepCtx(ctx, time.Until(t0.Add(o.ramp+o.hold))); err != nil {
			return err
		}
		el := time.Since(t0)
		cpu1, _ := bench.CPUTime(d.PID)
		gen1 := simCPU()
		rss, _ := bench.RSS(d.PID)
		row := snapshot(rec, n)
		row.rssMiB = float64(rss) / (1 << 20)
		row.daemonCores = (cpu1 - cpu0).Seconds() / el.Seconds()
		row.benchCores = (gen1 - gen0).Seconds() / el.Seconds()
		if r, err := bench.RSS(os.Getpid()); err == nil {
			row.benchRSSMiB = float64(r) / (1 << 20)
		}
		row.gauges = daemonGauges(ctx, d)
		row.pass, row.why = verdict(row, o.p99Max)
		rows = append(rows, row)
		fmt.Fprintf(env.errOut, "N=%d: %s; daemon %.2f cores, RSS %.0f MiB; dusk-bench %.2f cores\n",
			n, passWord(row), row.daemonCores, row.rssMiB, row.benchCores)
		if !d.Alive() {
			return fmt.Errorf("the daemon exited at N=%d", n)
		}
		if !row.pass {
			break
		}
		passN = n
	}
	printClients(env, rows, o)
	if passN > 0 {
		env.printf("\nlargest N with every p99 <= %v and no errors: %d (speedup %gx)\n", o.p99Max, passN, o.speedup)
	} else {
		env.printf("\nno step held every p99 <= %v with no errors (speedup %gx)\n", o.p99Max, o.speedup)
	}
	return nil
}

// fracPick spreads a fraction evenly over the indexes (deterministic).
func fracPick(idx int, frac float64) bool {
	return math.Floor(float64(idx+1)*frac) > math.Floor(float64(idx)*frac)
}

func snapshot(rec *recorder, n int) clientsRow {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	row := clientsRow{n: n, lat: rec.lat, errs: rec.errs, example: rec.example, notes: rec.notes,
		gossipIn: rec.gossipIn.Load(), gossipOt: rec.gossipOut.Load()}
	rec.lat, rec.errs, rec.example, rec.notes = map[string]*bench.Latencies{}, map[string]int64{}, map[string]string{}, map[string]int64{}
	return row
}

func verdict(r clientsRow, p99Max time.Duration) (bool, string) {
	limit := float64(p99Max) / float64(time.Millisecond)
	for _, op := range simOps {
		if l := r.lat[op]; l != nil && l.Q(0.99) > limit {
			return false, fmt.Sprintf("%s p99 %.1f ms", op, l.Q(0.99))
		}
	}
	var n int64
	for _, v := range r.errs {
		n += v
	}
	if n > 0 {
		return false, fmt.Sprintf("%d errors", n)
	}
	return true, ""
}

func passWord(r clientsRow) string {
	if r.pass {
		return "pass"
	}
	return "FAIL (" + r.why + ")"
}

func printClients(env *runEnv, rows []clientsRow, o clientsOpts) {
	cols := []string{"N"}
	for _, op := range simOps {
		cols = append(cols, op+" p50/p99 ms")
	}
	cols = append(cols, "errors", "daemon cores", "daemon RSS MiB", "dusk-bench cores", "verdict")
	t := bench.NewTable(cols...)
	for _, r := range rows {
		vals := []any{r.n}
		for _, op := range simOps {
			l := r.lat[op]
			if l == nil || l.N() == 0 {
				vals = append(vals, "-")
				continue
			}
			vals = append(vals, bench.FormatFloat(l.Q(0.5))+" / "+bench.FormatFloat(l.Q(0.99)))
		}
		var errs int64
		for _, v := range r.errs {
			errs += v
		}
		vals = append(vals, errs, r.daemonCores, r.rssMiB, r.benchCores, passWord(r))
		t.Row(vals...)
	}
	t.Print(env.out, env.c.md)

	env.printf("\nper step: operations counted, errors by kind, other events\n")
	for _, r := range rows {
		var parts []string
		for _, op := range append(simOps, opLag) {
			if l := r.lat[op]; l != nil {
				parts = append(parts, fmt.Sprintf("%s %d", op, l.N()))
			}
		}
		env.printf("N=%d: %s; gossip published %d, delivered to clients %d", r.n, joinComma(parts), r.gossipOt, r.gossipIn)
		if l := r.lat[opLag]; l != nil {
			env.printf("; client schedule lag p99 %.1f ms", l.Q(0.99))
		}
		env.printf("\n  daemon: %s; dusk-bench RSS %.0f MiB\n", r.gauges, r.benchRSSMiB)
		kinds := make([]string, 0, len(r.errs))
		for k := range r.errs {
			kinds = append(kinds, k)
		}
		sort.Strings(kinds)
		for _, k := range kinds {
			env.printf("  error %-45s %6d  e.g. %s\n", k, r.errs[k], r.example[k])
		}
		notes := make([]string, 0, len(r.notes))
		for k := range r.notes {
			notes = append(notes, k)
		}
		sort.Strings(notes)
		for _, k := range notes {
			env.printf("  %s: %d\n", k, r.notes[k])
		}
	}
	env.printf("\nschedule lag = how late a client's loop ran its next operation (high: dusk-bench itself is saturated).\n")
}

// daemonGauges reads what the daemon itself holds, to check the clients
// are really there, and what it threw away.
func daemonGauges(ctx context.Context, d *bench.Daemon) string {
	var parts []string
	for _, m := range []struct{ label, name string }{
		{"connections", "dusk_relay_connections"},
		{"reservations", "dusk_relay_reservations"},
		{"circuits", "dusk_relay_circuits"},
		{"rendezvous registrations", "dusk_rendezvous_live_registrations"},
		{"goroutines", "go_goroutines"},
		{"gossip throttled", "dusk_gossip_throttled_messages_total"},
		{"gossip RPCs dropped", "dusk_gossip_dropped_rpcs_total"},
	} {
		v, err := d.Metric(ctx, m.name)
		if err != nil && strings.HasSuffix(m.name, "_total") {
			v, err = 0, nil // a labelled counter has no series until its first count
		}
		if err != nil {
			parts = append(parts, m.label+" ?")
			continue
		}
		parts = append(parts, fmt.Sprintf("%s %.0f", m.label, v))
	}
	return joinComma(parts)
}

func joinComma(s []string) string {
	out := ""
	for i, p := range s {
		if i > 0 {
			out += ", "
		}
		out += p
	}
	return out
}
