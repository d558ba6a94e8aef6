package federation

import (
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/duskchat/dusk-relay/internal/config"
)

func TestMain(m *testing.M) {
	if os.Getenv(benchRelayEnv) == "1" {
		os.Exit(runBenchRelay())
	}
	goleak.VerifyTestMain(m,
		// go-libp2p / go-log globals that live for the whole process.
		goleak.IgnoreAnyFunction("github.com/ipfs/go-log/v2/writer.(*MirrorWriter).logRoutine"),
		goleak.IgnoreAnyFunction("go.opencensus.io/stats/view.(*worker).start"),
	)
}

// relay is one test relay: a plain libp2p host plus our Federation.
type relay struct {
	t    *testing.T
	key  crypto.PrivKey
	h    host.Host
	f    *Federation
	got  chan Gossip
	logs *observer.ObservedLogs
}

func newKey(t *testing.T) crypto.PrivKey {
	t.Helper()
	k, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// newHost listens on 127.0.0.1:port (0 = any) with the given identity.
func newHost(t testing.TB, key crypto.PrivKey, port int) host.Host {
	t.Helper()
	opts := []libp2p.Option{
		libp2p.ListenAddrStrings(fmt.Sprintf("/ip4/127.0.0.1/tcp/%d", port)),
		libp2p.Transport(tcp.NewTCPTransport),
		libp2p.DisableMetrics(),
		libp2p.DisableRelay(),
	}
	if key != nil {
		opts = append(opts, libp2p.Identity(key))
	}
	h, err := libp2p.New(opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.Close() })
	return h
}

// start attaches a Federation to h with the given peer relays.
func start(t *testing.T, key crypto.PrivKey, h host.Host, peers ...ma.Multiaddr) *relay {
	t.Helper()
	core, logs := observer.New(zapcore.DebugLevel)
	r := &relay{t: t, key: key, h: h, got: make(chan Gossip, 64), logs: logs}
	f, err := New(context.Background(), h, config.Relay{PeerRelays: peers}, zap.New(core),
		prometheus.NewRegistry(), WithOnGossip(func(g Gossip) { r.got <- g }))
	if err != nil {
		t.Fatal(err)
	}
	r.f = f
	t.Cleanup(func() { _ = f.Close() })
	return r
}

// stop closes the relay's federation and host (a relay going down).
func (r *relay) stop() {
	_ = r.f.Close()
	_ = r.h.Close()
}

func addr(t *testing.T, h host.Host) ma.Multiaddr {
	t.Helper()
	for _, a := range h.Addrs() {
		if _, err := a.ValueForProtocol(ma.P_TCP); err == nil {
			return a.Encapsulate(ma.StringCast("/p2p/" + h.ID().String()))
		}
	}
	t.Fatal("host has no tcp address")
	return nil
}

func port(t *testing.T, h host.Host) int {
	t.Helper()
	for _, a := range h.Addrs() {
		if p, err := a.ValueForProtocol(ma.P_TCP); err == nil {
			var n int
			_, _ = fmt.Sscan(p, &n)
			return n
		}
	}
	t.Fatal("host has no tcp address")
	return 0
}

// waitFor polls cond for at most 20 s.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	for range 2000 {
		if cond() {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s", what)
}

func online(r *relay) int { n, _ := r.f.OnlinePeerRelays(); return n }

// meshReady: every relay knows that its listed neighbours are subscribed.
func meshReady(t *testing.T, pairs ...[2]*relay) {
	t.Helper()
	for _, p := range pairs {
		waitFor(t, fmt.Sprintf("%s sees %s on the topic", p[0].h.ID(), p[1].h.ID()), func() bool {
			return slices.Contains(p[0].f.topic.ListPeers(), p[1].h.ID())
		})
	}
}

func receive(t *testing.T, r *relay, ns string) Gossip {
	t.Helper()
	deadline := time.After(20 * time.Second)
	for {
		select {
		case g := <-r.got:
			if ns == "" || g.Namespace == ns { // "": the next one, whatever it is
				return g
			}
		case <-deadline:
			t.Fatalf("%s did not receive %q", r.h.ID(), ns)
		}
	}
}

func metricValue(m prometheus.Metric) float64 {
	var out dto.Metric
	if err := m.Write(&out); err != nil {
		return -1
	}
	if out.Counter != nil {
		return out.Counter.GetValue()
	}
	return out.Gauge.GetValue()
}

// TestThreeRelays: A, B and C each list the other two in PeerRelays (a
// federation is a full mesh: gossip is accepted only from listed relays);
// a registration on A reaches B and C; B restarts with the same key and
// port, A and C redial it, and gossip flows again.
func TestThreeRelays(t *testing.T) {
	kA, kB, kC := newKey(t), newKey(t), newKey(t)
	hA, hB, hC := newHost(t, kA, 0), newHost(t, kB, 0), newHost(t, kC, 0)
	aA, aB, aC := addr(t, hA), addr(t, hB), addr(t, hC)
	portB := port(t, hB)

	a := start(t, kA, hA, aB, aC)
	b := start(t, kB, hB, aA, aC)
	c := start(t, kC, hC, aA, aB)

	waitFor(t, "peer relays online", func() bool { return online(a) == 2 && online(b) == 2 && online(c) == 2 })
	meshReady(t, [2]*relay{a, b}, [2]*relay{b, a}, [2]*relay{b, c}, [2]*relay{c, b}, [2]*relay{a, c}, [2]*relay{c, a})

	client := newKey(t)
	clientID, _ := peer.IDFromPrivateKey(client)
	a.f.Publish(clientID, "dusk/peers", 2*time.Hour)
	for _, r := range []*relay{b, c} {
		g := receive(t, r, "dusk/peers")
		want := Gossip{PeerID: clientID.String(), Namespace: "dusk/peers", TTL: 7200, SourceRelay: hA.ID().String()}
		if g != want {
			t.Fatalf("%s got %+v, want %+v", r.h.ID(), g, want)
		}
	}
	if n := b.logs.FilterMessageSnippet("received remote registration").FilterLevelExact(zapcore.DebugLevel).Len(); n != 1 {
		t.Errorf("B logged %d received registrations at debug, want 1", n)
	}
	if n := b.logs.FilterMessageSnippet("received remote registration").Filter(func(e observer.LoggedEntry) bool { return e.Level > zapcore.DebugLevel }).Len(); n != 0 {
		t.Errorf("B logged %d received registrations above debug, want 0", n)
	}
	if got := metricValue(a.f.m.published); got != 1 {
		t.Errorf("A published = %v, want 1", got)
	}

	// B goes down: A and C notice.
	b.stop()
	waitFor(t, "A and C see B offline", func() bool { return online(a) == 1 && online(c) == 1 })
	if a.logs.FilterMessage("peer relay disconnected: 1/2 peer relays online").Len() == 0 {
		t.Errorf("A did not log the disconnect with k/n")
	}

	// B comes back with the same identity on the same port.
	hB2 := newHost(t, kB, portB)
	b2 := start(t, kB, hB2, aA, aC)
	waitFor(t, "federation back online", func() bool { return online(a) == 2 && online(b2) == 2 && online(c) == 2 })
	if a.logs.FilterMessage("peer relay connected: 2/2 peer relays online").Len() < 2 {
		t.Errorf("A did not log the reconnect with k/n")
	}
	meshReady(t, [2]*relay{a, b2}, [2]*relay{b2, a}, [2]*relay{b2, c}, [2]*relay{c, b2})

	a.f.Publish(clientID, "dusk/community/com_0123456789abcdef", 3*time.Hour)
	for _, r := range []*relay{b2, c} {
		g := receive(t, r, "dusk/community/com_0123456789abcdef")
		if g.TTL != 10800 || g.SourceRelay != hA.ID().String() {
			t.Fatalf("%s got %+v", r.h.ID(), g)
		}
	}
	// Gossip also flows the other way, from C to A.
	c.f.Publish(clientID, "from-c", 2*time.Hour)
	if g := receive(t, a, "from-c"); g.SourceRelay != hC.ID().String() {
		t.Fatalf("A got %+v", g)
	}
	// A relay never reports its own registrations back.
	select {
	case g := <-a.got:
		t.Fatalf("A received %+v (own or unexpected)", g)
	default:
	}
}

// TestRedialWhileDown: A lists B, which is down at first; A keeps redialing
// with backoff and connects once B is up. B does not list A (a one-sided
// configuration): B's gossip reaches A, but B refuses A's (A is not a
// member for B) and counts it.
func TestRedialWhileDown(t *testing.T) {
	kA, kB := newKey(t), newKey(t)
	// Reserve B's address, then take B down before A starts.
	hB0 := newHost(t, kB, 0)
	aB, portB := addr(t, hB0), port(t, hB0)
	_ = hB0.Close()

	a := start(t, kA, newHost(t, kA, 0), aB)
	waitFor(t, "A's first failed dial", func() bool {
		return a.logs.FilterMessage("peer relay unreachable, retrying with backoff").Len() == 1
	})

	b := start(t, kB, newHost(t, kB, portB))
	waitFor(t, "A connected to B", func() bool { return online(a) == 1 })
	meshReady(t, [2]*relay{a, b}, [2]*relay{b, a})

	id, _ := peer.IDFromPrivateKey(newKey(t))
	b.f.Publish(id, "to-a", 2*time.Hour)
	if g := receive(t, a, "to-a"); g.SourceRelay != b.h.ID().String() {
		t.Fatalf("A got %+v", g)
	}
	a.f.Publish(id, "to-b", 2*time.Hour)
	waitFor(t, "B refuses A's gossip", func() bool { return metricValue(b.f.m.foreign) == 1 })
	select {
	case g := <-b.got:
		t.Fatalf("B accepted gossip from a non-member: %+v", g)
	default:
	}
	// Only the first failure is a warning.
	if n := a.logs.FilterLevelExact(zapcore.WarnLevel).FilterMessageSnippet("unreachable").Len(); n != 1 {
		t.Errorf("unreachable warnings = %d, want 1", n)
	}
}

// TestWireFormatAndMalformed: a plain gossipsub host (not our code) sees
// the exact serde_json bytes, and its malformed messages are counted and
// ignored without disturbing valid ones.
func TestWireFormatAndMalformed(t *testing.T) {
	kA := newKey(t)
	hR := newHost(t, nil, 0)
	a := start(t, kA, newHost(t, kA, 0), addr(t, hR))

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// Flood publishing like a rust-libp2p relay (its default).
	ps, err := pubsub.NewGossipSub(ctx, hR, pubsub.WithFloodPublish(true))
	if err != nil {
		t.Fatal(err)
	}
	topic, err := ps.Join(Topic)
	if err != nil {
		t.Fatal(err)
	}
	sub, err := topic.Subscribe()
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		sub.Cancel()
		_ = topic.Close()
	}()
	if err := hR.Connect(ctx, peer.AddrInfo{ID: a.h.ID(), Addrs: a.h.Addrs()}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "topic peers", func() bool {
		return slices.Contains(topic.ListPeers(), a.h.ID()) && slices.Contains(a.f.topic.ListPeers(), hR.ID())
	})

	// Wire format.
	client, _ := peer.IDFromPrivateKey(newKey(t))
	a.f.Publish(client, "dusk/peer/<&>", 7200*time.Second+900*time.Millisecond)
	rctx, rcancel := context.WithTimeout(ctx, 20*time.Second)
	defer rcancel()
	msg, err := sub.Next(rctx)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"peer_id":"` + client.String() + `","namespace":"dusk/peer/<&>","ttl":7200,"source_relay":"` + a.h.ID().String() + `"}`
	if string(msg.Data) != want {
		t.Fatalf("wire bytes\n got %s\nwant %s", msg.Data, want)
	}

	// Malformed messages, then a valid one.
	bad := []string{
		`not json`,
		`{"peer_id":"x","namespace":"n","ttl":1}`,
		`{"peer_id":"x","namespace":"n","ttl":-1,"source_relay":"` + hR.ID().String() + `"}`,
		`{"peer_id":"x","namespace":"n","ttl":"1","source_relay":"` + hR.ID().String() + `"}`,
		`{"peer_id":"x","namespace":"n","ttl":1,"source_relay":"` + a.h.ID().String() + `"}`, // spoofs A
		`{"peer_id":"x","namespace":"n","ttl":1,"source_relay":"someone-else"}`,
		`{"peer_id":"` + strings.Repeat("x", maxPeerIDLen+1) + `","namespace":"n","ttl":1,"source_relay":"` + hR.ID().String() + `"}`,
		`{"peer_id":"x","namespace":"` + strings.Repeat("n", maxNamespaceLen+1) + `","ttl":1,"source_relay":"` + hR.ID().String() + `"}`,
		``,
	}
	for _, b := range bad {
		if err := topic.Publish(ctx, []byte(b)); err != nil {
			t.Fatal(err)
		}
	}
	valid := `{"peer_id":"p","namespace":"ok","ttl":60,"extra":[1,2],"source_relay":"` + hR.ID().String() + `"}`
	if err := topic.Publish(ctx, []byte(valid)); err != nil {
		t.Fatal(err)
	}
	g := receive(t, a, "ok")
	if g != (Gossip{PeerID: "p", Namespace: "ok", TTL: 60, SourceRelay: hR.ID().String()}) {
		t.Fatalf("got %+v", g)
	}
	waitFor(t, "malformed counted", func() bool { return metricValue(a.f.m.malformed) == float64(len(bad)) })
	if got := metricValue(a.f.m.received); got != 1 {
		t.Errorf("received = %v, want 1", got)
	}
	select {
	case g := <-a.got:
		t.Fatalf("malformed gossip delivered: %+v", g)
	default:
	}
}

// TestStandaloneQuiet: without peer relays, registrations are not
// gossiped at all (nobody subscribed: no signing, no queue), nothing is
// logged as a warning, and Publish after Close is a counted drop.
func TestStandaloneQuiet(t *testing.T) {
	k := newKey(t)
	a := start(t, k, newHost(t, k, 0))
	id, _ := peer.IDFromPrivateKey(newKey(t))
	const n = 200
	for i := range n {
		a.f.Publish(id, fmt.Sprint("ns", i), 2*time.Hour)
	}
	if got := metricValue(a.f.m.skippedOffline); got != n {
		t.Fatalf("skipped (offline) = %v, want %d", got, n)
	}
	if got := metricValue(a.f.m.published) + metricValue(a.f.m.dropped) + metricValue(a.f.m.publishErr); got != 0 {
		t.Fatalf("published+dropped+errors = %v, want 0", got)
	}
	if w := a.logs.FilterLevelExact(zapcore.WarnLevel).Len(); w != 0 {
		t.Fatalf("standalone relay logged %d warnings: %v", w, a.logs.FilterLevelExact(zapcore.WarnLevel).All())
	}
	_ = a.f.Close()
	_ = a.f.Close() // idempotent
	before := metricValue(a.f.m.dropped)
	a.f.Publish(id, "late", time.Hour)
	if got := metricValue(a.f.m.dropped); got != before+1 {
		t.Fatalf("dropped after Close = %v, want %v", got, before+1)
	}
}

// TestRepeatsNotRegossiped: a client re-registering the same namespaces
// (the app does every 120 s) is gossiped once per RepublishAfter; another
// namespace or another peer still goes out at once, and the receiving
// relay sees exactly the first of each.
func TestRepeatsNotRegossiped(t *testing.T) {
	kA, kB := newKey(t), newKey(t)
	hA, hB := newHost(t, kA, 0), newHost(t, kB, 0)
	a := start(t, kA, hA, addr(t, hB))
	b := start(t, kB, hB, addr(t, hA))
	waitFor(t, "peer relays online", func() bool { return online(a) == 1 && online(b) == 1 })
	meshReady(t, [2]*relay{a, b}, [2]*relay{b, a})

	p1, _ := peer.IDFromPrivateKey(newKey(t))
	p2, _ := peer.IDFromPrivateKey(newKey(t))
	for range 5 {
		a.f.Publish(p1, "dusk/peers", 2*time.Hour)
	}
	a.f.Publish(p1, "dusk/peer/"+p1.String(), 2*time.Hour)
	a.f.Publish(p2, "dusk/peers", 2*time.Hour)
	a.f.Publish(p2, "last", 2*time.Hour)
	// Validation runs concurrently, so arrival order is not publishing
	// order: collect the four, then make sure no repeat follows.
	want := map[[2]string]bool{
		{p1.String(), "dusk/peers"}: true, {p1.String(), "dusk/peer/" + p1.String()}: true,
		{p2.String(), "dusk/peers"}: true, {p2.String(), "last"}: true,
	}
	got := map[[2]string]int{}
	for len(got) < len(want) {
		g := receive(t, b, "")
		k := [2]string{g.PeerID, g.Namespace}
		if !want[k] {
			t.Fatalf("B received unexpected %+v", g)
		}
		got[k]++
	}
	waitFor(t, "A counted its publications", func() bool { return metricValue(a.f.m.published) == 4 })
	select {
	case g := <-b.got:
		t.Fatalf("B received a fifth registration %+v (a repeat was gossiped)", g)
	case <-time.After(500 * time.Millisecond):
	}
	for k, n := range got {
		if n != 1 {
			t.Errorf("B received %v %d times", k, n)
		}
	}
	if got := metricValue(a.f.m.skippedRepeat); got != 4 {
		t.Errorf("skipped (repeat) = %v, want 4", got)
	}
	if got := metricValue(a.f.m.published); got != 4 {
		t.Errorf("published = %v, want 4", got)
	}
}

func TestRepeatsWindowAndBound(t *testing.T) {
	r := newRepeats()
	p, _ := peer.IDFromPrivateKey(newKey(t))
	t0 := time.Unix(1_800_000_000, 0)
	if !r.due(p, "ns", t0) {
		t.Fatal("first registration not due")
	}
	if r.due(p, "ns", t0.Add(RepublishAfter-time.Second)) {
		t.Fatal("repeat within the window is due")
	}
	if !r.due(p, "ns", t0.Add(RepublishAfter)) {
		t.Fatal("repeat after the window is not due")
	}
	// A clock stepping back does not silence a key for longer.
	if !r.due(p, "ns", t0.Add(-time.Hour)) {
		t.Fatal("repeat with the clock stepped back is not due")
	}
	// Split between peer and namespace is part of the key.
	if !r.due(p, "nsx", t0) || !r.due(peer.ID(string(p)+"n"), "sx", t0) {
		t.Fatal("different (peer, namespace) pairs share a key")
	}
	r.forget(p, "nsx")
	if !r.due(p, "nsx", t0.Add(time.Second)) {
		t.Fatal("forgotten key is not due")
	}
	// The table stays within its bound however many keys arrive.
	for i := range repeatKeys + 1000 {
		r.due(p, fmt.Sprint(i), t0)
	}
	if n := len(r.cur) + len(r.prev); n > repeatKeys {
		t.Fatalf("table holds %d keys, bound %d", n, repeatKeys)
	}
	// A key seen in the previous generation is still remembered.
	last := fmt.Sprint(repeatKeys + 999)
	if r.due(p, last, t0.Add(time.Minute)) {
		t.Fatal("recent key forgotten")
	}
}

func TestSelfInPeerRelaysIsSkipped(t *testing.T) {
	k := newKey(t)
	h := newHost(t, k, 0)
	r := start(t, k, h, addr(t, h))
	if on, conf := r.f.OnlinePeerRelays(); on != 0 || conf != 0 {
		t.Fatalf("online %d configured %d, want 0 0", on, conf)
	}
}

func TestDecode(t *testing.T) {
	for _, c := range []struct {
		in string
		ok bool
	}{
		{`{"peer_id":"a","namespace":"b","ttl":1,"source_relay":"c"}`, true},
		{`{"source_relay":"c","ttl":18446744073709551615,"namespace":"","peer_id":"a","x":null}`, true},
		{`{"peer_id":"a","namespace":"b","ttl":1}`, false},
		{`{"peer_id":"a","namespace":"b","ttl":1.5,"source_relay":"c"}`, false},
		{`{"peer_id":null,"namespace":"b","ttl":1,"source_relay":"c"}`, false},
		{`[]`, false},
		{`{"peer_id":"a","namespace":"b","ttl":1,"source_relay":"c"} x`, false},
	} {
		_, err := decode([]byte(c.in))
		if (err == nil) != c.ok {
			t.Errorf("%s: err %v, want ok=%v", c.in, err, c.ok)
		}
	}
}

func BenchmarkPublish(b *testing.B) {
	k, _, _ := crypto.GenerateEd25519Key(rand.Reader)
	h, err := libp2p.New(libp2p.Identity(k), libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"),
		libp2p.Transport(tcp.NewTCPTransport), libp2p.DisableMetrics(), libp2p.DisableRelay())
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = h.Close() }()
	f, err := New(context.Background(), h, config.Relay{}, zap.NewNop(), nil)
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = f.Close() }()
	id := h.ID()
	b.ReportAllocs()
	for b.Loop() {
		f.Publish(id, "dusk/peers", 2*time.Hour)
	}
}

// TestCloseAfterContextCancel: the daemon cancels its context on SIGTERM
// and closes components afterwards; Close must not hang.
func TestCloseAfterContextCancel(t *testing.T) {
	kA, kB := newKey(t), newKey(t)
	hA, hB := newHost(t, kA, 0), newHost(t, kB, 0)
	b := start(t, kB, hB, addr(t, hA))
	ctx, cancel := context.WithCancel(context.Background())
	f, err := New(ctx, hA, config.Relay{PeerRelays: []ma.Multiaddr{addr(t, hB)}}, zap.NewNop(), nil)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "connected", func() bool { n, _ := f.OnlinePeerRelays(); return n == 1 && online(b) == 1 })
	cancel()
	f.Publish(hB.ID(), "after-cancel", time.Hour) // must not block
	_ = f.Close()
}
