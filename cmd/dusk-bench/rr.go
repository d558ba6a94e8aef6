package main

import (
	"bytes"
	"context"
	crand "crypto/rand"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-libp2p/p2p/muxer/yamux"
	"github.com/libp2p/go-libp2p/p2p/protocol/ping"
	"github.com/libp2p/go-libp2p/p2p/security/noise"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"

	"github.com/duskchat/dusk-relay/internal/bench"
	"github.com/duskchat/dusk-relay/internal/reqresp"
)

const (
	credsProto     = protocol.ID("/dusk/turn-credentials/1.0.0")
	directoryProto = protocol.ID("/dusk/directory/1.0.0")
)

// Wire shapes and golden bytes: docs/PROTOCOLS.md, "/dusk/turn-credentials/1.0.0"
// and "/dusk/directory/1.0.0".
type credsRequest struct {
	PeerID string `cbor:"peer_id"`
}

type credsResponse struct {
	Username string   `cbor:"username"`
	Password string   `cbor:"password"`
	TTL      uint64   `cbor:"ttl"`
	URIs     []string `cbor:"uris"`
}

type dirRegister struct {
	V struct {
		DisplayName string `cbor:"display_name"`
		RelayAddr   string `cbor:"relay_addr"`
	} `cbor:"Register"`
}

type dirSearch struct {
	V struct {
		Query string `cbor:"query"`
	} `cbor:"Search"`
}

var errBadAnswer = errors.New("unexpected answer")

// rrOp is one kind of request a peer repeats: it returns an error when the
// answer is wrong.
type rrOp struct {
	name string
	do   func(ctx context.Context, p *rrPeer) error
}

// rrPeer is one client host connected to the daemon.
type rrPeer struct {
	h     host.Host
	d     *bench.Daemon
	creds []byte // pre-encoded request
	reg   []byte
	rng   *rand.Rand
}

// rrStats is one measured window of one op mix.
type rrStats struct {
	rate    float64
	lat     map[string]*bench.Latencies
	errors  int64
	cpu     float64 // daemon cores busy
	genCPU  float64 // dusk-bench cores busy
	firstEr error
}

type rrConfig struct {
	peers    int
	duration time.Duration
	warmup   time.Duration
	rounds   int
	rate     float64 // paced phase: requests/s in total (0 = skip)
}

func (e *runEnv) rrFlags(fs *flag.FlagSet, c *rrConfig, rate float64) {
	fs.IntVar(&c.peers, "c", 100, "concurrent peers (one go-libp2p host each, one request in flight each)")
	fs.DurationVar(&c.duration, "duration", 5*time.Second, "measured window per run")
	fs.DurationVar(&c.warmup, "warmup", time.Second, "unmeasured warm-up per run")
	fs.IntVar(&c.rounds, "rounds", 3, "rounds; each runs the baseline and the protocol (alternating order)")
	fs.Float64Var(&c.rate, "rate", rate, "paced phase: offer this many requests/s in total, spread over the peers (0 = skip)")
}

func runCreds(ctx context.Context, env *runEnv, args []string) error {
	fs := flag.NewFlagSet("creds", flag.ContinueOnError)
	var c rrConfig
	env.rrFlags(fs, &c, 3000) // the target load
	if err := env.parse(fs, args); err != nil {
		return err
	}
	if env.c.quick {
		quickDefaults(fs, map[string]string{"c": "10", "duration": "1s", "warmup": "200ms", "rounds": "1", "rate": "300"})
	}
	op := rrOp{name: "creds", do: func(ctx context.Context, p *rrPeer) error {
		var resp credsResponse
		if err := callCBOR(ctx, p, credsProto, p.creds, &resp); err != nil {
			return err
		}
		if !strings.HasSuffix(resp.Username, ":"+p.h.ID().String()) || resp.Password == "" || len(resp.URIs) == 0 {
			return fmt.Errorf("%w: credentials %+v", errBadAnswer, resp)
		}
		return nil
	}}
	return runRR(ctx, env, args, c, "turn-credentials request-response", nil, []rrOp{op}, nil)
}

func runDirectory(ctx context.Context, env *runEnv, args []string) error {
	fs := flag.NewFlagSet("directory", flag.ContinueOnError)
	var c rrConfig
	env.rrFlags(fs, &c, 1000)
	regPct := fs.Int("register-pct", 20, "percent of requests that are Register (the rest are Search)")
	query := fs.String("query", "bench", "Search query (every peer registers as bench-<n>, so the default matches 20 rows)")
	if err := env.parse(fs, args); err != nil {
		return err
	}
	if env.c.quick {
		quickDefaults(fs, map[string]string{"c": "10", "duration": "1s", "warmup": "200ms", "rounds": "1", "rate": "100"})
	}
	if *regPct < 0 || *regPct > 100 {
		return fmt.Errorf("%w: -register-pct 0..100", errUsage)
	}
	var search dirSearch
	search.V.Query = *query
	searchReq, err := reqresp.Marshal(search)
	if err != nil {
		return err
	}
	okAnswer, err := reqresp.Marshal("Ok")
	if err != nil {
		return err
	}
	register := rrOp{name: "Register", do: func(ctx context.Context, p *rrPeer) error {
		out, err := reqresp.Call(ctx, p.h, p.d.ID, directoryProto, p.reg)
		if err != nil {
			return err
		}
		if !bytes.Equal(out, okAnswer) {
			return fmt.Errorf("%w: Register answered %x", errBadAnswer, out)
		}
		return nil
	}}
	searchOp := rrOp{name: "Search", do: func(ctx context.Context, p *rrPeer) error {
		var resp map[string][]map[string]any
		if err := callCBOR(ctx, p, directoryProto, searchReq, &resp); err != nil {
			return err
		}
		if _, ok := resp["Results"]; !ok {
			return fmt.Errorf("%w: Search answered %v", errBadAnswer, resp)
		}
		return nil
	}}
	pick := func(p *rrPeer) int {
		if p.rng.IntN(100) < *regPct {
			return 0
		}
		return 1
	}
	// Every peer registers once first, so searches find rows.
	prep := func(ctx context.Context, p *rrPeer) error { return register.do(ctx, p) }
	return runRR(ctx, env, args, c, fmt.Sprintf("directory request-response, %d%% Register / %d%% Search %q", *regPct, 100-*regPct, *query),
		map[string]string{"DUSK_DIRECTORY_REGISTER_PER_MINUTE": "100000000"}, []rrOp{register, searchOp}, func(p *rrPeer) int {
			return pick(p)
		}, prep)
}

func callCBOR(ctx context.Context, p *rrPeer, proto protocol.ID, req []byte, resp any) error {
	out, err := reqresp.Call(ctx, p.h, p.d.ID, proto, req)
	if err != nil {
		return err
	}
	if len(out) == 0 {
		return fmt.Errorf("%w: stream closed without an answer", errBadAnswer)
	}
	return reqresp.Unmarshal(out, resp)
}

// pingOp is the baseline: the cheapest request a client can make on a new
// stream to the same daemon (stream open + multistream + one 32-byte ping).
var pingOp = rrOp{name: "ping (baseline)", do: func(ctx context.Context, p *rrPeer) error {
	s, err := p.h.NewStream(ctx, p.d.ID, ping.ID)
	if err != nil {
		return err
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = s.SetDeadline(dl)
	}
	buf := make([]byte, 32)
	echo := make([]byte, 32)
	_, _ = crand.Read(buf)
	if _, err := s.Write(buf); err != nil {
		_ = s.Reset()
		return err
	}
	if _, err := io.ReadFull(s, echo); err != nil {
		_ = s.Reset()
		return err
	}
	_ = s.Close()
	if !bytes.Equal(buf, echo) {
		return fmt.Errorf("%w: ping echo differs", errBadAnswer)
	}
	return nil
}}

// runRR starts the daemon, connects c.peers hosts and alternates the ping
// baseline with the protocol's op mix.
func runRR(ctx context.Context, env *runEnv, args []string, c rrConfig, title string, denv map[string]string,
	ops []rrOp, pick func(*rrPeer) int, prep ...func(context.Context, *rrPeer) error) error {
	ctx = env.withTimeout(ctx)
	if c.peers < 1 || c.peers > 5000 || c.rounds < 1 || c.duration <= 0 {
		return fmt.Errorf("%w: -c 1..5000, -rounds >= 1, -duration > 0", errUsage)
	}
	if _, err := bench.RaiseNoFile(); err != nil {
		return err
	}
	d, err := env.startDaemon(ctx, env.name, denv, "")
	if err != nil {
		return err
	}
	peers, err := connectPeers(ctx, d, c.peers)
	if err != nil {
		return err
	}
	env.onCleanup(func() {
		for _, p := range peers {
			_ = p.h.Close()
		}
	})
	for _, fn := range prep {
		for _, p := range peers {
			pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			err := fn(pctx, p)
			cancel()
			if err != nil {
				return fmt.Errorf("prepare: %w", err)
			}
		}
	}
	if pick == nil {
		pick = func(*rrPeer) int { return 0 }
	}

	env.header(title, args)
	if len(denv) > 0 {
		env.printf("daemon: %s\n", envList(denv))
	}
	env.printf("method: %d go-libp2p hosts (TCP+noise+yamux), one connection each; every request on a new stream\n", c.peers)
	env.printf("  (write, half-close, read to EOF: the rust-libp2p cbor codec), one request in flight per peer (closed loop).\n")
	env.printf("  baseline = new stream + one /ipfs/ping/1.0.0 round trip on the same daemon and peers.\n")
	env.printf("  %d rounds x %v (+%v warm-up), baseline and protocol alternate; medians; CPU = daemon cores busy.\n", c.rounds, c.duration, c.warmup)
	if c.rate > 0 {
		env.printf("  paced rows: %.0f requests/s offered in total (each peer on its own fixed schedule, one request at a time);\n", c.rate)
		env.printf("  latency counts from the scheduled start, so a late request also charges its wait (no coordinated omission).\n")
	}
	env.printf("\n")

	type series struct{ rate, p50, p99, cpu, errs []float64 }
	res := map[string]*series{}
	get := func(k string) *series {
		if res[k] == nil {
			res[k] = &series{}
		}
		return res[k]
	}
	var firstErr error
	phases := []float64{0}
	if c.rate > 0 {
		phases = append(phases, c.rate)
	}
	for r := range c.rounds {
		order := []bool{false, true}
		if r%2 == 1 {
			order = []bool{true, false}
		}
		for _, rate := range phases {
			for _, proto := range order {
				var st rrStats
				var err error
				cc := c
				cc.rate = rate
				if proto {
					st, err = rrRun(ctx, d, peers, ops, pick, cc)
				} else {
					st, err = rrRun(ctx, d, peers, []rrOp{pingOp}, nil, cc)
				}
				if err != nil {
					return err
				}
				if st.firstEr != nil && firstErr == nil {
					firstErr = st.firstEr
				}
				key := "baseline"
				if proto {
					key = "all"
				}
				if rate > 0 {
					key += "@paced"
				}
				s := get(key)
				s.rate = append(s.rate, st.rate)
				s.cpu = append(s.cpu, st.cpu)
				s.errs = append(s.errs, float64(st.errors))
				var all bench.Latencies
				for name, l := range st.lat {
					all.Merge(l)
					if proto && len(ops) > 1 && rate == 0 {
						ss := get(name)
						ss.p50 = append(ss.p50, l.Q(0.5))
						ss.p99 = append(ss.p99, l.Q(0.99))
						ss.rate = append(ss.rate, float64(l.N())/c.duration.Seconds())
					}
				}
				s.p50 = append(s.p50, all.Q(0.5))
				s.p99 = append(s.p99, all.Q(0.99))
				fmt.Fprintf(env.errOut, "round %d %-15s %8.0f req/s p50 %.2f ms p99 %.2f ms errors %d daemon %.2f cores, dusk-bench %.2f cores\n",
					r+1, key, st.rate, all.Q(0.5), all.Q(0.99), st.errors, st.cpu, st.genCPU)
			}
		}
	}
	t := bench.NewTable("requests", "req/s", "vs baseline", "p50 ms", "p99 ms", "errors", "daemon cores")
	base := res["baseline"]
	t.Row(pingOp.name, bench.Median(base.rate), "1.00x", bench.Median(base.p50), bench.Median(base.p99), bench.Median(base.errs), bench.Median(base.cpu))
	all := res["all"]
	name := ops[0].name
	if len(ops) > 1 {
		name = "all (mix)"
	}
	t.Row(name, bench.Median(all.rate), bench.Ratio(bench.Median(all.rate), bench.Median(base.rate)),
		bench.Median(all.p50), bench.Median(all.p99), bench.Median(all.errs), bench.Median(all.cpu))
	if len(ops) > 1 {
		for _, op := range ops {
			s := get(op.name)
			t.Row("  "+op.name, bench.Median(s.rate), "", bench.Median(s.p50), bench.Median(s.p99), "", "")
		}
	}
	if c.rate > 0 {
		bp, ap := res["baseline@paced"], res["all@paced"]
		t.Row(fmt.Sprintf("%s, paced %.0f/s", pingOp.name, c.rate), bench.Median(bp.rate), "", bench.Median(bp.p50), bench.Median(bp.p99), bench.Median(bp.errs), bench.Median(bp.cpu))
		t.Row(fmt.Sprintf("%s, paced %.0f/s", name, c.rate), bench.Median(ap.rate), "", bench.Median(ap.p50), bench.Median(ap.p99), bench.Median(ap.errs), bench.Median(ap.cpu))
	}
	t.Print(env.out, env.c.md)
	env.printf("\nbaseline errors are go-libp2p's per-peer ping stream limit (2 inbound) resetting a new ping stream while the\n")
	env.printf("previous one is still being released; they are excluded from the latencies.\n")
	if firstErr != nil {
		env.printf("\nfirst request error: %v\n", firstErr)
	}
	return nil
}

func connectPeers(ctx context.Context, d *bench.Daemon, n int) ([]*rrPeer, error) {
	peers := make([]*rrPeer, n)
	for i := range peers {
		h, err := libp2p.New(
			libp2p.NoListenAddrs,
			libp2p.Transport(tcp.NewTCPTransport),
			libp2p.Security(noise.ID, noise.New),
			libp2p.Muxer(yamux.ID, yamux.DefaultTransport),
			libp2p.DisableRelay(),
			libp2p.DisableMetrics(),
		)
		if err != nil {
			closePeers(peers)
			return nil, err
		}
		p := &rrPeer{h: h, d: d, rng: rand.New(rand.NewPCG(uint64(i), 7))}
		peers[i] = p
		if p.creds, err = reqresp.Marshal(credsRequest{PeerID: h.ID().String()}); err != nil {
			closePeers(peers)
			return nil, err
		}
		var reg dirRegister
		reg.V.DisplayName = fmt.Sprintf("bench-%d", i)
		if p.reg, err = reqresp.Marshal(reg); err != nil {
			closePeers(peers)
			return nil, err
		}
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err = h.Connect(cctx, d.Info)
		cancel()
		if err != nil {
			closePeers(peers)
			return nil, fmt.Errorf("connect peer %d: %w", i, err)
		}
	}
	return peers, nil
}

func closePeers(ps []*rrPeer) {
	for _, p := range ps {
		if p != nil {
			_ = p.h.Close()
		}
	}
}

// rrRun runs every peer in a closed loop for warmup+duration and measures
// the duration part.
func rrRun(ctx context.Context, d *bench.Daemon, peers []*rrPeer, ops []rrOp, pick func(*rrPeer) int, c rrConfig) (rrStats, error) {
	if pick == nil {
		pick = func(*rrPeer) int { return 0 }
	}
	var measuring atomic.Bool
	var errs atomic.Int64
	var firstErr atomic.Value
	var mu sync.Mutex
	lat := map[string]*bench.Latencies{}
	for _, op := range ops {
		lat[op.name] = &bench.Latencies{}
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for _, p := range peers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			local := map[string]*bench.Latencies{}
			for _, op := range ops {
				local[op.name] = &bench.Latencies{}
			}
			defer func() {
				mu.Lock()
				for k, l := range local {
					lat[k].Merge(l)
				}
				mu.Unlock()
			}()
			var interval time.Duration
			next := time.Now()
			if c.rate > 0 {
				interval = time.Duration(float64(len(peers)) / c.rate * float64(time.Second))
				next = next.Add(time.Duration(p.rng.Int64N(int64(interval) + 1))) // spread the peers
			}
			for {
				if interval > 0 {
					if wait := time.Until(next); wait > 0 {
						tm := time.NewTimer(wait)
						select {
						case <-stop:
							tm.Stop()
							return
						case <-tm.C:
						}
					}
				}
				select {
				case <-stop:
					return
				default:
				}
				op := ops[pick(p)]
				rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				t := time.Now()
				if interval > 0 {
					t = next // latency from the scheduled start
					next = next.Add(interval)
				}
				err := op.do(rctx, p)
				el := time.Since(t)
				cancel()
				if !measuring.Load() {
					continue
				}
				if err != nil {
					errs.Add(1)
					firstErr.CompareAndSwap(nil, fmt.Errorf("%s: %w", op.name, err))
					continue
				}
				local[op.name].Add(el)
			}
		}()
	}
	var st rrStats
	err := sleepCtx(ctx, c.warmup)
	var cpu0, cpu1, gen0, gen1 time.Duration
	var t0 time.Time
	if err == nil {
		cpu0, err = bench.CPUTime(d.PID)
		gen0, _ = bench.CPUTime(os.Getpid())
		t0 = time.Now()
		measuring.Store(true)
	}
	if err == nil {
		err = sleepCtx(ctx, c.duration)
	}
	measuring.Store(false)
	el := time.Since(t0)
	if err == nil {
		cpu1, err = bench.CPUTime(d.PID)
		gen1, _ = bench.CPUTime(os.Getpid())
	}
	close(stop)
	wg.Wait()
	if err != nil {
		return st, err
	}
	n := 0
	for _, l := range lat {
		n += l.N()
	}
	st.rate = float64(n) / el.Seconds()
	st.lat = lat
	st.errors = errs.Load()
	st.cpu = (cpu1 - cpu0).Seconds() / el.Seconds()
	st.genCPU = (gen1 - gen0).Seconds() / el.Seconds()
	if e := firstErr.Load(); e != nil {
		st.firstEr = e.(error)
	}
	return st, nil
}
