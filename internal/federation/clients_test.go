package federation

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/duskchat/dusk-relay/internal/config"
)

// appParams are the Dusk app's gossipsub settings (src-tauri/src/node/
// swarm.rs): 1 s heartbeat, mesh 6/4/12, history 5, gossip 3.
func appParams() pubsub.GossipSubParams {
	p := pubsub.DefaultGossipSubParams()
	p.HeartbeatInterval = time.Second
	p.D, p.Dlo, p.Dhi = 6, 4, 12
	p.HistoryLength, p.HistoryGossip = 5, 3
	p.DirectConnectInitialDelay = 0
	return p
}

// appClient is a go-libp2p client configured like the Dusk app: the Rust
// message id, strict signing, and the relay as an explicit (direct) peer,
// so it answers the relay's GRAFT with PRUNE and hears from the relay
// only by IHAVE/IWANT.
type appClient struct {
	h      host.Host
	ps     *pubsub.PubSub
	topics map[string]*pubsub.Topic
	subs   map[string]*pubsub.Subscription
	tr     *recordingTracer
}

// recordingTracer remembers the ids the relay advertised in IHAVE (the
// relay's own ids for its messages) and when each message arrived.
type recordingTracer struct {
	*tracer
	mu      sync.Mutex
	ihave   map[string]bool
	arrived map[string]time.Time
	ihaves  int
}

func (r *recordingTracer) RecvRPC(rpc *pubsub.RPC) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, ih := range rpc.GetControl().GetIhave() {
		r.ihaves++
		for _, id := range ih.MessageIDs {
			r.ihave[id] = true
		}
	}
}

func (r *recordingTracer) DeliverMessage(m *pubsub.Message) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.arrived[m.ID]; !ok {
		r.arrived[m.ID] = time.Now()
	}
}

func (r *recordingTracer) advertised(id string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.ihave[id]
}

func newAppClient(ctx context.Context, t testing.TB, h host.Host, relay peer.AddrInfo, topics ...string) *appClient {
	t.Helper()
	c := &appClient{h: h, topics: map[string]*pubsub.Topic{}, subs: map[string]*pubsub.Subscription{},
		tr: &recordingTracer{tracer: newTracer(newMetrics(nil, zap.NewNop()), nil), ihave: map[string]bool{}, arrived: map[string]time.Time{}}}
	var err error
	c.ps, err = pubsub.NewGossipSub(ctx, h,
		pubsub.WithGossipSubParams(appParams()),
		pubsub.WithMessageIdFn(MessageID),
		pubsub.WithMaxMessageSize(MaxMessageSize),
		pubsub.WithDirectPeers([]peer.AddrInfo{relay}),
		pubsub.WithRawTracer(c.tr))
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range topics {
		top, err := c.ps.Join(name)
		if err != nil {
			t.Fatal(err)
		}
		sub, err := top.Subscribe()
		if err != nil {
			t.Fatal(err)
		}
		c.topics[name], c.subs[name] = top, sub
	}
	if err := h.Connect(ctx, relay); err != nil {
		t.Fatal(err)
	}
	return c
}

func (c *appClient) close() {
	for name, s := range c.subs {
		s.Cancel()
		_ = c.topics[name].Close()
	}
}

// next returns the next message on topic not published by c itself.
func (c *appClient) next(ctx context.Context, t testing.TB, topic string) *pubsub.Message {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	for {
		m, err := c.subs[topic].Next(ctx)
		if err != nil {
			t.Fatalf("%s: no message on %s: %v", c.h.ID(), topic, err)
		}
		if m.ReceivedFrom != c.h.ID() {
			return m
		}
	}
}

// TestClientsThroughRelay: two clients configured like the Dusk app reach
// each other only through the relay (no direct connection). Messages on
// dusk/sync and dusk/directory published by one arrive at the other; the
// ids the relay advertises are the clients' own ids for the same
// messages (the Rust id, so IHAVE never names a message the client has
// under another id); per-topic metrics count the traffic and nothing
// from the client topics is logged at info.
func TestClientsThroughRelay(t *testing.T) {
	k := newKey(t)
	hR := newHost(t, k, 0)
	core, logs := observer.New(zapcore.InfoLevel)
	reg := prometheus.NewRegistry()
	f, err := New(context.Background(), hR, config.Relay{}, zap.New(core), reg,
		WithRelayTopics("dusk/sync", "dusk/directory", Topic, "dusk/sync"))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = f.Close() }()
	if len(f.forwarded) != 2 {
		t.Fatalf("forwarded topics = %d, want 2 (duplicates and the federation topic dropped)", len(f.forwarded))
	}
	relay := peer.AddrInfo{ID: hR.ID(), Addrs: hR.Addrs()}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	topics := []string{"dusk/sync", "dusk/directory", "dusk/other"}
	a := newAppClient(ctx, t, newHost(t, nil, 0), relay, topics...)
	defer a.close()
	b := newAppClient(ctx, t, newHost(t, nil, 0), relay, topics...)
	defer b.close()

	waitFor(t, "relay tracks both clients on both topics", func() bool {
		return len(f.ps.ListPeers("dusk/sync")) == 2 && len(f.ps.ListPeers("dusk/directory")) == 2 &&
			slices.Contains(a.topics["dusk/sync"].ListPeers(), hR.ID()) && slices.Contains(b.topics["dusk/directory"].ListPeers(), hR.ID())
	})
	if got := f.ps.ListPeers("dusk/other"); len(got) != 0 {
		t.Fatalf("relay tracks a non-allowlisted topic: %v", got)
	}

	var sent int
	for i, tc := range []struct {
		from, to *appClient
		topic    string
		data     string
	}{
		{a, b, "dusk/sync", fmt.Sprintf(`{"RequestSync":{"peer_id":"%s"}}`, a.h.ID())},
		{b, a, "dusk/directory", `{"ProfileAnnounce":{"display_name":"bob"}}`},
		{a, b, "dusk/directory", `{"ProfileAnnounce":{"display_name":"alice"}}`},
		{b, a, "dusk/sync", `{"DocumentOffer":{"community_id":"c","doc_bytes":[1,2,3]}}`},
	} {
		if err := tc.from.topics[tc.topic].Publish(ctx, []byte(tc.data)); err != nil {
			t.Fatal(err)
		}
		sent += len(tc.data)
		m := tc.to.next(ctx, t, tc.topic)
		if string(m.Data) != tc.data || m.GetFrom() != tc.from.h.ID() {
			t.Fatalf("#%d: got %q from %s", i, m.Data, m.GetFrom())
		}
		// The receiver's id is the Rust id of the message...
		if want := MessageID(m.Message); m.ID != want {
			t.Fatalf("#%d: client id %s, Rust id %s", i, m.ID, want)
		}
		// ...and the relay advertised that very id.
		if !tc.to.tr.advertised(m.ID) {
			t.Fatalf("#%d: relay did not advertise id %s in IHAVE", i, m.ID)
		}
	}
	for _, c := range []*appClient{a, b} {
		if c.h.Network().Connectedness(otherOf(c, a, b).h.ID()) == network.Connected {
			t.Fatal("clients are connected directly; the test needs the relay to be the only path")
		}
	}
	if got := metricValue(f.m.gossip.recvMsgs.WithLabelValues("dusk/sync")); got != 2 {
		t.Errorf("received dusk/sync messages = %v, want 2", got)
	}
	if got := metricValue(f.m.gossip.recvBytes.WithLabelValues("dusk/sync")) + metricValue(f.m.gossip.recvBytes.WithLabelValues("dusk/directory")); got != float64(sent) {
		t.Errorf("received bytes = %v, want %d", got, sent)
	}
	if got := metricValue(f.m.gossip.sentMsgs.WithLabelValues("dusk/directory")); got < 2 {
		t.Errorf("sent dusk/directory messages = %v, want >= 2 (IWANT answers)", got)
	}
	if got := metricValue(f.m.gossip.ihaveIDs.WithLabelValues("dusk/sync")); got < 2 {
		t.Errorf("IHAVE ids on dusk/sync = %v, want >= 2", got)
	}
	for _, e := range logs.All() {
		for _, fld := range e.Context {
			if fld.String != "" && (slices.Contains([]string{"dusk/sync", "dusk/directory"}, fld.String) && e.Message != "relaying client gossip topic") {
				t.Errorf("client topic content logged at info: %+v", e)
			}
		}
		if e.Message != "relaying client gossip topic" && e.Message != "subscribed to relay federation topic" &&
			e.Message != "no peer relays configured (DUSK_PEER_RELAYS unset): standalone relay" {
			t.Errorf("unexpected info log: %q", e.Message)
		}
	}
}

func otherOf(c, a, b *appClient) *appClient {
	if c == a {
		return b
	}
	return a
}
