package federation

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/duskchat/dusk-relay/internal/bench"
	"github.com/duskchat/dusk-relay/internal/config"
)

// The gossip measurements behind the relay's parameters (README, "Gossip
// through the relay"). Run explicitly, one at a time:
//
//	go test ./internal/federation -run '^$' -bench BenchmarkGossipHeartbeat -benchtime 1x
//	go test ./internal/federation -run '^$' -bench BenchmarkGossipFanout -benchtime 1x
//
// Clients are go-libp2p hosts configured like the Dusk app (the relay as
// an explicit peer, the Rust message id, 1 s heartbeat).

// lightClient is a client host without listen addresses.
func lightClient(tb testing.TB) host.Host {
	tb.Helper()
	h, err := libp2p.New(libp2p.NoListenAddrs, libp2p.Transport(tcp.NewTCPTransport),
		libp2p.DisableMetrics(), libp2p.DisableRelay(), libp2p.ResourceManager(&network.NullResourceManager{}))
	if err != nil {
		tb.Fatal(err)
	}
	return h
}

// benchClients starts n app-configured clients subscribed to topic and
// connected to relay; each records when a message (by data prefix) arrived.
type benchClients struct {
	hosts []host.Host
	cs    []*appClient
	mu    sync.Mutex
	seen  map[string][]time.Duration // message key -> latency per receiver
	sent  map[string]time.Time
}

func startBenchClients(ctx context.Context, tb testing.TB, n int, relay peer.AddrInfo, topic string) *benchClients {
	tb.Helper()
	bc := &benchClients{seen: map[string][]time.Duration{}, sent: map[string]time.Time{}}
	var wg sync.WaitGroup
	sem := make(chan struct{}, 32)
	var mu sync.Mutex
	for range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			h := lightClient(tb)
			c := newAppClient(ctx, tb, h, relay, topic)
			mu.Lock()
			bc.hosts, bc.cs = append(bc.hosts, h), append(bc.cs, c)
			mu.Unlock()
		}()
	}
	wg.Wait()
	for _, c := range bc.cs {
		go func() {
			for {
				m, err := c.subs[topic].Next(ctx)
				if err != nil {
					return
				}
				if m.ReceivedFrom == c.h.ID() {
					continue
				}
				key := string(m.Data[:min(len(m.Data), 16)])
				bc.mu.Lock()
				if t0, ok := bc.sent[key]; ok {
					bc.seen[key] = append(bc.seen[key], time.Since(t0))
				}
				bc.mu.Unlock()
			}
		}()
	}
	return bc
}

func (bc *benchClients) publish(ctx context.Context, tb testing.TB, c *appClient, topic, key string, size int) {
	tb.Helper()
	data := make([]byte, max(size, 16))
	copy(data, padKey(key))
	bc.mu.Lock()
	bc.sent[padKey(key)] = time.Now()
	bc.mu.Unlock()
	if err := c.topics[topic].Publish(ctx, data); err != nil {
		tb.Fatal(err)
	}
}

func (bc *benchClients) delivered(key string) int {
	bc.mu.Lock()
	defer bc.mu.Unlock()
	return len(bc.seen[padKey(key)])
}

// padKey is the 16-byte message prefix a key is recognised by.
func padKey(key string) string { return fmt.Sprintf("%-16s", key)[:16] }

func (bc *benchClients) latencies() []time.Duration {
	bc.mu.Lock()
	defer bc.mu.Unlock()
	var all []time.Duration
	for _, l := range bc.seen {
		all = append(all, l...)
	}
	slices.Sort(all)
	return all
}

func (bc *benchClients) close() {
	for _, c := range bc.cs {
		c.close()
	}
	for _, h := range bc.hosts {
		_ = h.Close()
	}
}

func pct(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return -1
	}
	return d[min(len(d)-1, int(float64(len(d))*p))]
}

// BenchmarkGossipHeartbeat: latency through the relay and the relay's
// IHAVE load, 1 s against 10 s heartbeat, gossip factor 1 (ours) against
// 0.25 (gossipsub's default, the Rust relay's). 20 clients, one publishes
// 20 messages at 500 ms intervals; every other client must get each.
func BenchmarkGossipHeartbeat(b *testing.B) {
	const nClients, nMsgs, topic = 20, 20, "dusk/sync"
	type cfg struct {
		hb      time.Duration
		factor  float64
		history int // HistoryGossip = HistoryLength; 0: gossipsub's 3 / 5
	}
	var base time.Duration
	for range b.N {
		// The last two spread the IHAVE burst over heartbeats (fewer
		// clients per heartbeat, a longer window), README "Gossip".
		for _, c := range []cfg{{time.Second, 1, 0}, {10 * time.Second, 1, 0}, {time.Second, 0.25, 0}, {10 * time.Second, 0.25, 0},
			{time.Second, 0.25, 12}, {time.Second, 0.5, 6}} {
			name := fmt.Sprintf("hb%s_gf%.2f", c.hb, c.factor)
			if c.history > 0 {
				name += fmt.Sprintf("_hist%d", c.history)
			}
			ctx, cancel := context.WithCancel(context.Background())
			hR := newHost(b, nil, 0)
			f, err := New(ctx, hR, config.Relay{}, zap.NewNop(), nil, WithRelayTopics(topic),
				withParams(func(p *pubsub.GossipSubParams) {
					p.HeartbeatInterval, p.GossipFactor = c.hb, c.factor
					if c.history > 0 {
						p.HistoryGossip, p.HistoryLength = c.history, c.history
					}
				}))
			if err != nil {
				b.Fatal(err)
			}
			bc := startBenchClients(ctx, b, nClients, peer.AddrInfo{ID: hR.ID(), Addrs: hR.Addrs()}, topic)
			waitFor(b, "relay sees every client", func() bool { return len(f.ps.ListPeers(topic)) == nClients })
			time.Sleep(2 * time.Second) // subscriptions settle on the clients too
			start := time.Now()
			for i := range nMsgs {
				bc.publish(ctx, b, bc.cs[0], topic, fmt.Sprintf("m%d", i), 200)
				time.Sleep(500 * time.Millisecond)
			}
			// Wait for every delivery, at most HistoryGossip+1 heartbeats.
			deadline := time.Now().Add(time.Duration(max(3, c.history)+1)*c.hb + 2*time.Second)
			for time.Now().Before(deadline) {
				done := true
				for i := range nMsgs {
					if bc.delivered(fmt.Sprintf("m%d", i)) < nClients-1 {
						done = false
					}
				}
				if done {
					break
				}
				time.Sleep(100 * time.Millisecond)
			}
			elapsed := time.Since(start)
			lat := bc.latencies()
			ihaveIDs := metricValue(f.m.gossip.ihaveIDs.WithLabelValues(topic))
			sentMsgs := metricValue(f.m.gossip.sentMsgs.WithLabelValues(topic))
			want := nMsgs * (nClients - 1)
			b.ReportMetric(float64(len(lat))/float64(want)*100, name+"_delivered_%")
			b.ReportMetric(float64(pct(lat, 0.5).Milliseconds()), name+"_p50_ms")
			b.ReportMetric(float64(pct(lat, 0.99).Milliseconds()), name+"_p99_ms")
			b.ReportMetric(ihaveIDs/float64(nMsgs), name+"_ihave_ids/msg")
			b.ReportMetric(sentMsgs/float64(nMsgs), name+"_copies/msg")
			if c.hb == time.Second && c.factor == 1 {
				base = pct(lat, 0.5)
			} else if base > 0 {
				b.ReportMetric(float64(pct(lat, 0.5))/float64(base), name+"_p50_vs_ours")
			}
			b.Logf("%s: %d/%d delivered, p50 %v p99 %v max %v, IHAVE ids %.0f (%.1f/msg), copies %.0f, run %v",
				name, len(lat), want, pct(lat, 0.5), pct(lat, 0.99), pct(lat, 1), ihaveIDs, ihaveIDs/nMsgs, sentMsgs, elapsed.Round(time.Second))
			bc.close()
			_ = f.Close()
			cancel()
			_ = hR.Close()
		}
	}
}

// benchRelayEnv makes the test binary a standalone relay process (so its
// CPU and bytes are measured apart from the clients).
const benchRelayEnv = "DUSK_FEDERATION_BENCH_RELAY"

// runBenchRelay: a relay host with our gossip router on dusk/sync and
// dusk/directory; prints its address, answers "stats" on stdin with the
// gossip counters as JSON, exits at EOF.
func runBenchRelay() int {
	h, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"), libp2p.Transport(tcp.NewTCPTransport),
		libp2p.DisableRelay(), libp2p.ResourceManager(&network.NullResourceManager{}))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer func() { _ = h.Close() }()
	// DUSK_FANOUT_RETRANSMISSION overrides GossipRetransmission for an A/B.
	retrans, _ := strconv.Atoi(os.Getenv("DUSK_FANOUT_RETRANSMISSION"))
	f, err := New(context.Background(), h, config.Relay{}, zap.NewNop(), prometheus.NewRegistry(), WithRelayTopics("dusk/directory", "dusk/sync"),
		withParams(func(p *pubsub.GossipSubParams) {
			if retrans > 0 {
				p.GossipRetransmission = retrans
			}
		}))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer func() { _ = f.Close() }()
	fmt.Printf("%s/p2p/%s\n", h.Addrs()[0], h.ID())
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		g := f.m.gossip
		out, _ := json.Marshal(map[string]float64{
			"peers":      float64(len(f.ps.ListPeers("dusk/sync"))),
			"sent_msgs":  metricValue(g.sentMsgs.WithLabelValues("dusk/sync")),
			"sent_bytes": metricValue(g.sentBytes.WithLabelValues("dusk/sync")),
			"ihave_ids":  metricValue(g.ihaveIDs.WithLabelValues("dusk/sync")),
			"dropped":    metricValue(g.droppedRPCs),
		})
		fmt.Println(string(out))
	}
	return 0
}

// relayProc is the relay child process.
type relayProc struct {
	cmd   *exec.Cmd
	in    io.WriteCloser
	out   *bufio.Scanner
	addr  ma.Multiaddr
	stats map[string]float64
}

func startRelayProc(tb testing.TB) *relayProc {
	tb.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), benchRelayEnv+"=1")
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		tb.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	r := &relayProc{cmd: cmd, in: in, out: bufio.NewScanner(out)}
	if !r.out.Scan() {
		tb.Fatal("relay process printed no address")
	}
	if r.addr, err = ma.NewMultiaddr(r.out.Text()); err != nil {
		tb.Fatal(err)
	}
	return r
}

func (r *relayProc) sample(tb testing.TB) (cpu time.Duration, wchar int64, stats map[string]float64) {
	tb.Helper()
	cpu, err := bench.CPUTime(r.cmd.Process.Pid)
	if err != nil {
		tb.Fatal(err)
	}
	io, err := os.ReadFile(fmt.Sprintf("/proc/%d/io", r.cmd.Process.Pid))
	if err != nil {
		tb.Fatal(err)
	}
	for _, l := range strings.Split(string(io), "\n") {
		if v, ok := strings.CutPrefix(l, "wchar: "); ok {
			wchar, _ = strconv.ParseInt(v, 10, 64)
		}
	}
	if _, err := fmt.Fprintln(r.in, "stats"); err != nil {
		tb.Fatal(err)
	}
	if !r.out.Scan() {
		tb.Fatal("relay process gone")
	}
	if err := json.Unmarshal(r.out.Bytes(), &stats); err != nil {
		tb.Fatal(err)
	}
	return cpu, wchar, stats
}

func (r *relayProc) stop() {
	_ = r.in.Close()
	_ = r.cmd.Wait()
}

// BenchmarkGossipFanout: the relay's cost of one 64 KiB message (a
// DocumentOffer) to N subscribed clients (default 1000; env
// DUSK_FANOUT_CLIENTS), against an idle interval of the same length (the
// baseline: heartbeats for N peers). The relay runs as its own process;
// CPU from /proc/<pid>/stat, bytes from /proc/<pid>/io wchar (what went
// into the sockets, noise and yamux included).
func BenchmarkGossipFanout(b *testing.B) {
	n := 1000
	if v, err := strconv.Atoi(os.Getenv("DUSK_FANOUT_CLIENTS")); err == nil && v > 1 {
		n = v
	}
	const topic, size, msgs = "dusk/sync", 65000, 5
	if _, err := bench.RaiseNoFile(); err != nil {
		b.Fatal(err)
	}
	r := startRelayProc(b)
	defer r.stop()
	ai, err := peer.AddrInfoFromP2pAddr(r.addr)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	t0 := time.Now()
	bc := startBenchClients(ctx, b, n, *ai, topic)
	defer bc.close()
	for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(200 * time.Millisecond) {
		if _, _, s := r.sample(b); int(s["peers"]) == n {
			break
		}
		if time.Now().After(deadline) {
			b.Fatal("relay does not see every client")
		}
	}
	b.Logf("%d clients connected and subscribed in %v", n, time.Since(t0).Round(time.Second))
	time.Sleep(3 * time.Second)

	// Baseline: idle for the same window a message takes.
	const window = 6 * time.Second
	cpu0, w0, _ := r.sample(b)
	time.Sleep(window)
	cpu1, w1, s1 := r.sample(b)
	idleCPU, idleBytes := cpu1-cpu0, w1-w0

	// msgs messages, one per window, each from a different client.
	var fanCPU time.Duration
	var fanBytes int64
	var lat []time.Duration
	for i := range msgs {
		key := fmt.Sprintf("offer%d", i)
		c0, wa, _ := r.sample(b)
		bc.publish(ctx, b, bc.cs[i+1], topic, key, size)
		start := time.Now()
		for time.Since(start) < window && bc.delivered(key) < n-1 {
			time.Sleep(20 * time.Millisecond)
		}
		time.Sleep(window - time.Since(start)) // same window as the baseline
		c1, wb, _ := r.sample(b)
		fanCPU += c1 - c0
		fanBytes += wb - wa
		b.Logf("%s: delivered to %d/%d", key, bc.delivered(key), n-1)
	}
	_, _, s2 := r.sample(b)
	lat = bc.latencies()
	perCPU := (fanCPU - msgs*idleCPU) / msgs
	perBytes := (fanBytes - msgs*idleBytes) / msgs
	b.ReportMetric(float64(perCPU.Microseconds())/1000, "relay_cpu_ms/msg")
	b.ReportMetric(float64(perBytes)/(1<<20), "relay_MiB/msg")
	b.ReportMetric(float64(fanCPU)/float64(msgs*idleCPU), "cpu_window_vs_idle")
	b.ReportMetric(float64(pct(lat, 0.5).Milliseconds()), "p50_ms")
	b.ReportMetric(float64(pct(lat, 0.99).Milliseconds()), "p99_ms")
	b.Logf("n=%d size=%d: per message relay CPU %v, bytes written %.1f MiB (%.2f x payload x receivers); idle %v CPU and %d B per %v; "+
		"copies sent %.0f, IHAVE ids %.0f, dropped RPCs %.0f; delivered %d/%d, p50 %v p99 %v max %v",
		n, size, perCPU, float64(perBytes)/(1<<20), float64(perBytes)/float64(size*(n-1)), idleCPU, idleBytes, window,
		(s2["sent_msgs"]-s1["sent_msgs"])/msgs, (s2["ihave_ids"]-s1["ihave_ids"])/msgs, s2["dropped"],
		len(lat), msgs*(n-1), pct(lat, 0.5), pct(lat, 0.99), pct(lat, 1))
}
