package main

import (
	"context"
	"flag"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-msgio/pbio"
	ma "github.com/multiformats/go-multiaddr"
	rdv "github.com/waku-org/go-libp2p-rendezvous"
	pb "github.com/waku-org/go-libp2p-rendezvous/pb"

	"github.com/duskchat/dusk-relay/internal/bench"
	"github.com/duskchat/dusk-relay/internal/bench/lightpeer"
)

const rendezvousProto = "/rendezvous/1.0.0"

func runRendezvous(ctx context.Context, env *runEnv, args []string) error {
	fs := flag.NewFlagSet("rendezvous", flag.ContinueOnError)
	n := fs.Int("n", 100000, "registrations in the namespace, each from its own peer and connection")
	checkpoints := fs.String("at", "1000", "also measure discover when the namespace holds these counts (ratio baseline)")
	ns := fs.String("ns", "dusk/peers", "namespace")
	parallel := fs.Int("parallel", 64, "registering connections in flight during the fill")
	limit := fs.Int("limit", 0, "discover page size (0 = omit the limit, the server's DUSK_RENDEZVOUS_MAX_DISCOVER applies)")
	passes := fs.Int("passes", 3, "full paged scans of the namespace per checkpoint")
	regPeers := fs.Int("reg-peers", 100, "persistent peers re-registering in a loop for the steady register figure")
	regDuration := fs.Duration("reg-duration", 5*time.Second, "steady re-register loop duration")
	if err := env.parse(fs, args); err != nil {
		return err
	}
	if env.c.quick {
		quickDefaults(fs, map[string]string{"n": "300", "at": "100", "passes": "1", "reg-peers": "5", "reg-duration": "1s"})
	}
	ctx = env.withTimeout(ctx)
	cps, err := intList(*checkpoints)
	if err != nil {
		return fmt.Errorf("%w: -at: %w", errUsage, err)
	}
	if *n < 1 || *n > 1000000 || *parallel < 1 || *passes < 1 || *regPeers < 1 || *limit < 0 {
		return fmt.Errorf("%w: -n 1..1000000, -parallel/-passes/-reg-peers >= 1", errUsage)
	}
	cps = append(cps, *n)
	sort.Ints(cps)
	if _, err := bench.RaiseNoFile(); err != nil {
		return err
	}
	// Every registration comes from 127.0.0.1: lift the per-address
	// budget (4 MiB, ~10,000 small registrations) to the global one.
	d, err := env.startDaemon(ctx, "rendezvous", map[string]string{"DUSK_RENDEZVOUS_MAX_BYTES_PER_ADDR": "134217728"}, "")
	if err != nil {
		return err
	}
	env.header(fmt.Sprintf("rendezvous, one namespace of %d registrations", *n), args)
	env.printf("method: every registration comes from its own Ed25519 identity over its own connection (host-less go-libp2p\n")
	env.printf("  upgrader, TCP+noise+yamux): dial, REGISTER (signed peer record, ttl 2h), close; %d in flight.\n", *parallel)
	env.printf("  Discover pages through the namespace with cookies (one new stream per page, limit %s); %d full scans per checkpoint.\n", limitDesc(*limit), *passes)
	env.printf("  Steady register = %d connected peers re-registering (replace) in a loop for %v.\n\n", *regPeers, *regDuration)

	rss0, _ := bench.RSS(d.PID)
	t := bench.NewTable("registrations", "fill regs/s (new conn each)", "pages/scan", "page p50 ms", "page p99 ms", "page p50 vs first checkpoint", "full scan ms", "regs discovered/s", "daemon RSS MiB")
	var firstPage float64
	have := 0
	for _, cp := range cps {
		if cp <= have {
			continue
		}
		want := cp - have
		rate, err := fillRendezvous(ctx, d, *ns, want, *parallel)
		if err != nil {
			return err
		}
		have = cp
		fmt.Fprintf(env.errOut, "filled %d (%.0f regs/s)\n", have, rate)
		var pages bench.Latencies
		var scans []float64
		pagesPerScan := 0
		for range *passes {
			el, np, total, err := scanRendezvous(ctx, d, *ns, *limit, &pages)
			if err != nil {
				return err
			}
			if total != have {
				return fmt.Errorf("discover scan returned %d registrations, registered %d", total, have)
			}
			scans = append(scans, float64(el)/float64(time.Millisecond))
			pagesPerScan = np
		}
		scan := bench.Median(scans)
		if firstPage == 0 {
			firstPage = pages.Q(0.5)
		}
		rss, _ := bench.RSS(d.PID)
		t.Row(have, rate, pagesPerScan, pages.Q(0.5), pages.Q(0.99), bench.Ratio(pages.Q(0.5), firstPage), scan,
			float64(have)/(scan/1000), float64(rss)/(1<<20))
	}
	t.Print(env.out, env.c.md)
	rss, _ := bench.RSS(d.PID)
	env.printf("\ndaemon RSS growth for %d registrations: %.0f bytes/registration\n", have, float64(rss-rss0)/float64(have))

	rate, err := steadyRegister(ctx, d, *ns, *regPeers, *regDuration)
	if err != nil {
		return err
	}
	env.printf("steady re-register: %.0f registrations/s (%d connected peers)\n", rate, *regPeers)
	return nil
}

func limitDesc(l int) string {
	if l == 0 {
		return "unset"
	}
	return fmt.Sprint(l)
}

var benchRecordAddr = ma.StringCast("/ip4/127.0.0.1/tcp/4001")

// register sends one REGISTER on a new stream of c and checks the answer.
func register(ctx context.Context, c *lightpeer.Conn, ns string) error {
	msg, err := rdv.NewRegisterMessage(c.Key, ns, peer.AddrInfo{ID: c.ID, Addrs: []ma.Multiaddr{benchRecordAddr}}, 7200)
	if err != nil {
		return err
	}
	s, err := c.Stream(ctx, rendezvousProto)
	if err != nil {
		return err
	}
	if err := pbio.NewDelimitedWriter(s).WriteMsg(msg); err != nil {
		_ = s.Reset()
		return fmt.Errorf("write register: %w", err)
	}
	var resp pb.Message
	if err := pbio.NewDelimitedReader(s, 1<<20).ReadMsg(&resp); err != nil {
		_ = s.Reset()
		return fmt.Errorf("read register response: %w", err)
	}
	_ = s.Close()
	if st := resp.GetRegisterResponse().GetStatus(); st != pb.Message_OK {
		return fmt.Errorf("register: %s %s", st, resp.GetRegisterResponse().GetStatusText())
	}
	return nil
}

func fillRendezvous(ctx context.Context, d *bench.Daemon, ns string, count, parallel int) (float64, error) {
	var next, done atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	start := time.Now()
	for range min(parallel, count) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(count) && ctx.Err() == nil && firstErr.Load() == nil {
				err := func() error {
					rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
					defer cancel()
					c, err := lightpeer.Dial(rctx, nil, d.Addr, d.ID)
					if err != nil {
						return err
					}
					defer c.Close()
					return register(rctx, c, ns)
				}()
				if err != nil {
					firstErr.CompareAndSwap(nil, err)
					return
				}
				done.Add(1)
			}
		}()
	}
	wg.Wait()
	if ctx.Err() != nil {
		return 0, ctx.Err()
	}
	if e := firstErr.Load(); e != nil {
		return 0, fmt.Errorf("fill after %d registrations: %w", done.Load(), e.(error))
	}
	return float64(count) / time.Since(start).Seconds(), nil
}

// scanRendezvous pages through ns once with cookies, recording each page's
// latency, and returns the scan time, page count and registrations seen.
func scanRendezvous(ctx context.Context, d *bench.Daemon, ns string, limit int, pages *bench.Latencies) (time.Duration, int, int, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	c, err := lightpeer.Dial(ctx, nil, d.Addr, d.ID)
	if err != nil {
		return 0, 0, 0, err
	}
	defer c.Close()
	var cookie []byte
	total, np := 0, 0
	start := time.Now()
	for np < 100000 { // bounded: a scan never needs more pages than registrations
		t := time.Now()
		s, err := c.Stream(ctx, rendezvousProto)
		if err != nil {
			return 0, 0, 0, err
		}
		if err := pbio.NewDelimitedWriter(s).WriteMsg(rdv.NewDiscoverMessage(ns, limit, cookie)); err != nil {
			_ = s.Reset()
			return 0, 0, 0, err
		}
		var resp pb.Message
		if err := pbio.NewDelimitedReader(s, 16<<20).ReadMsg(&resp); err != nil {
			_ = s.Reset()
			return 0, 0, 0, fmt.Errorf("read discover response: %w", err)
		}
		_ = s.Close()
		pages.Add(time.Since(t))
		np++
		dr := resp.GetDiscoverResponse()
		if dr.GetStatus() != pb.Message_OK {
			return 0, 0, 0, fmt.Errorf("discover: %s %s", dr.GetStatus(), dr.GetStatusText())
		}
		total += len(dr.GetRegistrations())
		if len(dr.GetRegistrations()) == 0 {
			break
		}
		cookie = dr.GetCookie()
	}
	return time.Since(start), np, total, nil
}

func steadyRegister(ctx context.Context, d *bench.Daemon, ns string, peers int, dur time.Duration) (float64, error) {
	conns := make([]*lightpeer.Conn, 0, peers)
	defer func() { closeAll(conns) }()
	for range peers {
		c, err := lightpeer.Dial(ctx, nil, d.Addr, d.ID)
		if err != nil {
			return 0, err
		}
		conns = append(conns, c)
	}
	return rateFor(ctx, dur, conns, func(octx context.Context, c *lightpeer.Conn) error {
		return register(octx, c, ns)
	})
}

// rateFor runs op in a loop on every worker until dur passes and returns
// completed ops per second. Each op gets its own 10 s deadline: one tied to
// the end of the loop would fail the op in flight at that moment. The first
// error stops its worker and is returned.
func rateFor[T any](ctx context.Context, dur time.Duration, workers []T, op func(context.Context, T) error) (float64, error) {
	var n atomic.Int64
	var firstErr atomic.Value
	rctx, cancel := context.WithTimeout(ctx, dur)
	defer cancel()
	start := time.Now()
	var wg sync.WaitGroup
	for _, w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for rctx.Err() == nil {
				octx, ocancel := context.WithTimeout(ctx, 10*time.Second)
				err := op(octx, w)
				ocancel()
				if err != nil {
					firstErr.CompareAndSwap(nil, err)
					return
				}
				n.Add(1)
			}
		}()
	}
	wg.Wait()
	el := time.Since(start)
	if ctx.Err() != nil {
		return 0, ctx.Err()
	}
	if e := firstErr.Load(); e != nil {
		return 0, e.(error)
	}
	return float64(n.Load()) / el.Seconds(), nil
}
