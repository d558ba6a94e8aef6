package main

import (
	"context"
	"encoding/binary"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-libp2p/p2p/muxer/yamux"
	"github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/client"
	"github.com/libp2p/go-libp2p/p2p/security/noise"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/duskchat/dusk-relay/internal/bench"
)

// sinkProto reads a stream to EOF and answers with the byte count.
const sinkProto = protocol.ID("/dusk-bench/sink/1.0.0")

func runCircuit(ctx context.Context, env *runEnv, args []string) error {
	fs := flag.NewFlagSet("circuit", flag.ContinueOnError)
	mib := fs.Int("mib", 256, "MiB sent per transfer")
	rounds := fs.Int("rounds", 3, "rounds; each runs a direct and a relayed transfer (alternating order)")
	setups := fs.Int("setups", 30, "connection setups timed per kind and round")
	resPeers := fs.Int("res-peers", 50, "hosts reserving concurrently for the reservations/s figure")
	resDuration := fs.Duration("res-duration", 5*time.Second, "reservation loop duration per round")
	pin := fs.Bool("pin", false, "give the daemon CPU 1 and dusk-bench (both endpoints, direct and relayed) CPU 0, as when the relay runs on its own machine")
	if err := env.parse(fs, args); err != nil {
		return err
	}
	if env.c.quick {
		quickDefaults(fs, map[string]string{"mib": "8", "rounds": "1", "setups": "5", "res-peers": "5", "res-duration": "1s"})
	}
	if *mib < 1 || *mib > 100000 || *rounds < 1 || *setups < 1 || *resPeers < 1 || *resPeers > 5000 {
		return fmt.Errorf("%w: -mib 1..100000, -rounds >= 1, -setups >= 1, -res-peers 1..5000", errUsage)
	}
	ctx = env.withTimeout(ctx)
	denv := map[string]string{
		"DUSK_RELAY_CIRCUIT_BYTES":             "0",
		"DUSK_RELAY_CIRCUIT_DURATION":          "0",
		"DUSK_RELAY_MAX_CIRCUITS":              "100000",
		"DUSK_RELAY_MAX_CIRCUITS_PER_PEER":     "100000",
		"DUSK_RELAY_MAX_RESERVATIONS":          "100000",
		"DUSK_RELAY_MAX_RESERVATIONS_PER_PEER": "100000",
	}
	d, err := env.startDaemon(ctx, "circuit", denv, "")
	if err != nil {
		return err
	}
	if *pin {
		if runtime.NumCPU() < 2 {
			return fmt.Errorf("%w: -pin needs 2 CPUs", errUsage)
		}
		if err := bench.PinProcess(d.PID, 1); err != nil {
			return err
		}
		if err := bench.PinProcess(0, 0); err != nil {
			return err
		}
	}
	var hosts []host.Host
	env.onCleanup(func() {
		for _, h := range hosts {
			_ = h.Close()
		}
	})
	newHost := func(listen ...string) (host.Host, error) {
		opts := []libp2p.Option{
			libp2p.Transport(tcp.NewTCPTransport),
			libp2p.Security(noise.ID, noise.New),
			libp2p.Muxer(yamux.ID, yamux.DefaultTransport),
			libp2p.EnableRelay(),
			libp2p.DisableMetrics(),
			libp2p.ForceReachabilityPrivate(),
		}
		if len(listen) == 0 {
			opts = append(opts, libp2p.NoListenAddrs)
		} else {
			opts = append(opts, libp2p.ListenAddrStrings(listen...))
		}
		h, err := libp2p.New(opts...)
		if err != nil {
			return nil, err
		}
		hosts = append(hosts, h)
		return h, nil
	}

	// Direct pair: the sink listens on loopback TCP.
	directSink, err := newHost("/ip4/127.0.0.1/tcp/0")
	if err != nil {
		return err
	}
	directSink.SetStreamHandler(sinkProto, sink)
	directSrc, err := newHost()
	if err != nil {
		return err
	}
	directInfo := peer.AddrInfo{ID: directSink.ID(), Addrs: directSink.Addrs()}

	// Relayed pair: the sink is reachable only through its reservation.
	relSink, err := newHost("/p2p-circuit")
	if err != nil {
		return err
	}
	relSink.SetStreamHandler(sinkProto, sink)
	if _, err := client.Reserve(ctx, relSink, d.Info); err != nil {
		return fmt.Errorf("reserve: %w", err)
	}
	relSrc, err := newHost()
	if err != nil {
		return err
	}
	circuitAddr, err := ma.NewMultiaddr(fmt.Sprintf("%s/p2p/%s/p2p-circuit", d.Addr, d.ID))
	if err != nil {
		return err
	}
	relInfo := peer.AddrInfo{ID: relSink.ID(), Addrs: []ma.Multiaddr{circuitAddr}}

	env.header("circuit relay v2 vs a direct connection", args)
	env.printf("daemon: %s\n", envList(denv))
	if *pin {
		env.printf("pinned: the daemon runs on CPU 1 alone; dusk-bench (both endpoints of every transfer) on CPU 0. A relayed byte is\n")
		env.printf("  encrypted twice by its endpoints (end-to-end noise inside the hop's noise), so 0.5x is the ceiling here.\n")
	}
	env.printf("method: go-libp2p hosts in dusk-bench (TCP+noise+yamux). Throughput: one stream, %d MiB in 64 KiB writes, half-close,\n", *mib)
	env.printf("  the sink acknowledges the byte count; direct = source dials the sink's loopback address, relayed = source dials\n")
	env.printf("  <daemon>/p2p-circuit/p2p/<sink> (the sink holds a reservation). Setup = close + connect + first stream round trip,\n")
	env.printf("  %d per kind per round. Reservations/s = %d hosts calling Reserve in a loop for %v. %d rounds, alternating order; medians.\n\n",
		*setups, *resPeers, *resDuration, *rounds)

	var dRate, rRate, dSetup, rSetup, resRate, relCPU, dGen, rGen, rDaemon []float64
	for r := range *rounds {
		order := []bool{false, true}
		if r%2 == 1 {
			order = []bool{true, false}
		}
		for _, relayed := range order {
			src, info, name := directSrc, directInfo, "direct"
			if relayed {
				src, info, name = relSrc, relInfo, "relayed"
			}
			var setup bench.Latencies
			for range *setups {
				el, err := connectAndTouch(ctx, src, info)
				if err != nil {
					return fmt.Errorf("%s setup: %w", name, err)
				}
				setup.Add(el)
			}
			cpu0, _ := bench.CPUTime(d.PID)
			gen0, _ := bench.CPUTime(os.Getpid())
			rate, el, err := transfer(ctx, src, info.ID, int64(*mib)<<20)
			if err != nil {
				return fmt.Errorf("%s transfer: %w", name, err)
			}
			cpu1, _ := bench.CPUTime(d.PID)
			gen1, _ := bench.CPUTime(os.Getpid())
			perMiB := func(c time.Duration) float64 { return float64(c) / float64(time.Millisecond) / float64(*mib) }
			fmt.Fprintf(env.errOut, "round %d %-7s %8.1f MiB/s, setup p50 %.2f ms\n", r+1, name, rate, setup.Q(0.5))
			if relayed {
				rRate, rSetup = append(rRate, rate), append(rSetup, setup.Q(0.5))
				relCPU = append(relCPU, (cpu1-cpu0).Seconds()/el.Seconds())
				rGen, rDaemon = append(rGen, perMiB(gen1-gen0)), append(rDaemon, perMiB(cpu1-cpu0))
			} else {
				dRate, dSetup = append(dRate, rate), append(dSetup, setup.Q(0.5))
				dGen = append(dGen, perMiB(gen1-gen0))
			}
		}
		rr, err := reservationRate(ctx, d, *resPeers, *resDuration, newHost)
		if err != nil {
			return err
		}
		fmt.Fprintf(env.errOut, "round %d reservations %.0f/s\n", r+1, rr)
		resRate = append(resRate, rr)
	}
	t := bench.NewTable("figure", "direct", "relayed", "relayed/direct")
	t.Row("throughput MiB/s", bench.Median(dRate), bench.Median(rRate), bench.Ratio(bench.Median(rRate), bench.Median(dRate)))
	t.Row("setup p50 ms", bench.Median(dSetup), bench.Median(rSetup), bench.Ratio(bench.Median(rSetup), bench.Median(dSetup)))
	t.Row("dusk-bench CPU ms/MiB (both endpoints)", bench.Median(dGen), bench.Median(rGen), bench.Ratio(bench.Median(rGen), bench.Median(dGen)))
	t.Row("daemon CPU ms/MiB", "-", bench.Median(rDaemon), "")
	t.Print(env.out, env.c.md)
	env.printf("\ndaemon CPU while relaying: %.2f cores; reservations: %.0f/s (median, %d hosts)\n",
		bench.Median(relCPU), bench.Median(resRate), *resPeers)
	return nil
}

func sink(s network.Stream) {
	defer s.Close()
	_ = s.SetDeadline(time.Now().Add(10 * time.Minute))
	n, err := io.Copy(io.Discard, s)
	if err != nil {
		_ = s.Reset()
		return
	}
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], uint64(n))
	_, _ = s.Write(b[:])
}

// connectAndTouch drops any connection to info, reconnects and completes
// one stream round trip (an empty sink transfer).
func connectAndTouch(ctx context.Context, src host.Host, info peer.AddrInfo) (time.Duration, error) {
	_ = src.Network().ClosePeer(info.ID)
	cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	t := time.Now()
	if err := src.Connect(cctx, info); err != nil {
		return 0, err
	}
	if _, _, err := transfer(cctx, src, info.ID, 0); err != nil {
		return 0, err
	}
	return time.Since(t), nil
}

// transfer sends n bytes on a new sink stream and returns MiB/s.
func transfer(ctx context.Context, src host.Host, to peer.ID, n int64) (float64, time.Duration, error) {
	ctx = network.WithAllowLimitedConn(ctx, "bench")
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	t := time.Now()
	s, err := src.NewStream(ctx, to, sinkProto)
	if err != nil {
		return 0, 0, err
	}
	dl, _ := ctx.Deadline()
	_ = s.SetDeadline(dl)
	buf := make([]byte, 64<<10)
	for left := n; left > 0; {
		k := min(int64(len(buf)), left)
		if _, err := s.Write(buf[:k]); err != nil {
			_ = s.Reset()
			return 0, 0, err
		}
		left -= k
	}
	if err := s.CloseWrite(); err != nil {
		_ = s.Reset()
		return 0, 0, err
	}
	var ack [8]byte
	if _, err := io.ReadFull(s, ack[:]); err != nil {
		_ = s.Reset()
		return 0, 0, fmt.Errorf("read ack: %w", err)
	}
	_ = s.Close()
	el := time.Since(t)
	if got := int64(binary.BigEndian.Uint64(ack[:])); got != n {
		return 0, 0, fmt.Errorf("sink got %d bytes, sent %d", got, n)
	}
	return float64(n) / (1 << 20) / el.Seconds(), el, nil
}

// reservationRate runs peers hosts that each Reserve in a loop for dur.
func reservationRate(ctx context.Context, d *bench.Daemon, peers int, dur time.Duration, newHost func(...string) (host.Host, error)) (float64, error) {
	hs := make([]host.Host, peers)
	for i := range hs {
		h, err := newHost()
		if err != nil {
			return 0, err
		}
		hs[i] = h
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err = h.Connect(cctx, d.Info)
		cancel()
		if err != nil {
			return 0, err
		}
	}
	defer func() {
		for _, h := range hs {
			_ = h.Close() // Close is idempotent; the env cleanup closes it again
		}
	}()
	rate, err := rateFor(ctx, dur, hs, func(octx context.Context, h host.Host) error {
		_, err := client.Reserve(octx, h, d.Info)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("reserve: %w", err)
	}
	return rate, nil
}
