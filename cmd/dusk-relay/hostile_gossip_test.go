package main

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/duskchat/dusk-relay/internal/federation"
)

// gossipPeer is a plain go-libp2p gossipsub node (not our code) on the
// federation topic: a peer relay or an attacker.
type gossipPeer struct {
	h     host.Host
	topic *pubsub.Topic
	sub   *pubsub.Subscription

	mu  sync.Mutex
	got []string // data of every message received from others
}

func newGossipPeer(ctx context.Context, t *testing.T, topic string, opts ...pubsub.Option) *gossipPeer {
	t.Helper()
	p := &gossipPeer{h: newUnlimitedClient(t)}
	// RPCs of at most 64 KiB, as rust-libp2p sends and the daemon reads
	// (a larger RPC is dropped whole before any validator sees it).
	ps, err := pubsub.NewGossipSub(ctx, p.h, append([]pubsub.Option{pubsub.WithMessageIdFn(federation.MessageID),
		pubsub.WithMaxMessageSize(federation.MaxMessageSize)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	if p.topic, err = ps.Join(topic); err != nil {
		t.Fatal(err)
	}
	if p.sub, err = p.topic.Subscribe(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			m, err := p.sub.Next(ctx)
			if err != nil {
				return
			}
			if m.ReceivedFrom == p.h.ID() {
				continue
			}
			p.mu.Lock()
			p.got = append(p.got, string(m.Data))
			p.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		p.sub.Cancel()
		<-done
		_ = p.topic.Close()
	})
	return p
}

func (p *gossipPeer) received(sub string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, s := range p.got {
		if strings.Contains(s, sub) {
			n++
		}
	}
	return n
}

func (p *gossipPeer) p2pAddr() ma.Multiaddr {
	return p.h.Addrs()[0].Encapsulate(ma.StringCast("/p2p/" + p.h.ID().String()))
}

// poll waits (bounded) for cond.
func poll(t *testing.T, what string, limit time.Duration, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(limit); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out waiting for %s", what)
}

// TestHostileGossipFederationInjection: a stranger (not in
// DUSK_PEER_RELAYS) publishes 50 registrations of ~60 KiB of text on the
// federation topic. Before, each was logged at info with its text (3 MB of
// log) and forwarded to the peer relays. Now the daemon refuses them: the
// text appears nowhere in the log, the configured peer relay receives
// none, the refusals are counted, and the daemon's own gossip still
// reaches the peer relay while honest clients are served.
func TestHostileGossipFederationInjection(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	peerRelay := newGossipPeer(ctx, t, federation.Topic)
	env := append(testEnv(t.TempDir()), "DUSK_PEER_RELAYS="+peerRelay.p2pAddr().String())
	d := startDaemon(t, env)
	poll(t, "daemon connected to its peer relay", 20*time.Second, func() bool {
		return slices.Contains(peerRelay.topic.ListPeers(), d.peerID)
	})

	attacker := newGossipPeer(ctx, t, federation.Topic)
	connectTo(t, attacker.h, d)
	poll(t, "attacker joined the topic at the daemon", 20*time.Second, func() bool {
		return slices.Contains(attacker.topic.ListPeers(), d.peerID)
	})
	const n, marker = 50, "INJECTED-LOG-LINE"
	for i := range n {
		// Well-formed, signed by the attacker and naming itself as
		// source_relay: only membership can refuse it.
		ns := fmt.Sprintf("%s-%d-%s", marker, i, strings.Repeat("A", 60_000))
		data, _ := json.Marshal(map[string]any{"peer_id": attacker.h.ID().String(), "namespace": ns, "ttl": 7200,
			"source_relay": attacker.h.ID().String()})
		if err := attacker.topic.Publish(ctx, data); err != nil {
			t.Fatal(err)
		}
		// Paced so the attacker's own 32-RPC queue does not drop them.
		time.Sleep(20 * time.Millisecond)
	}
	// A forged one claiming to come from the peer relay is refused too.
	forged, _ := json.Marshal(map[string]any{"peer_id": "x", "namespace": marker + "-forged", "ttl": 7200,
		"source_relay": peerRelay.h.ID().String()})
	if err := attacker.topic.Publish(ctx, forged); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if t.Failed() {
			for k, v := range scrape(t, d.metrics) {
				if strings.Contains(k, "federation") || strings.Contains(k, "gossip") {
					t.Log(k, v)
				}
			}
			t.Log(tail(grepLines(d.logs(), "federation"), 20))
		}
	}()
	poll(t, "refusals counted", 20*time.Second, func() bool {
		v, _ := sum(scrape(t, d.metrics), "dusk_federation_foreign_total")
		// A few may be dropped by either side's 32-RPC queues, which
		// is also a refusal.
		return v >= n-5
	})

	// The daemon's own gossip (a rendezvous registration by an honest
	// client) still reaches the peer relay, after the attack.
	assertServing(t, d)
	poll(t, "daemon's registration gossiped to the peer relay", 20*time.Second, func() bool {
		return peerRelay.received(`"namespace":"dusk/peer/`) > 0
	})
	if got := peerRelay.received(marker); got != 0 {
		t.Fatalf("peer relay received %d attacker messages through the daemon", got)
	}
	logs := d.logs()
	if strings.Contains(logs, marker) {
		t.Fatalf("attacker text reached the daemon's log:\n%s", tail(grepLines(logs, marker), 3))
	}
	if len(logs) > 1<<20 {
		t.Fatalf("daemon log grew to %d bytes during the attack", len(logs))
	}
}

// TestGossipClientTopicsThroughDaemon: with the default configuration the
// daemon forwards dusk/sync and dusk/directory, so two clients configured
// like the Dusk app (the relay as an explicit peer, the Rust message id)
// that reach each other only through it exchange their messages.
func TestGossipClientTopicsThroughDaemon(t *testing.T) {
	d := startDaemon(t, testEnv(t.TempDir()))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	relay := peer.AddrInfo{ID: d.peerID, Addrs: d.addrs}
	params := pubsub.DefaultGossipSubParams()
	params.HeartbeatInterval = time.Second
	params.HistoryLength, params.HistoryGossip = 5, 3
	var clients [2]map[string]*gossipPeer
	for i := range clients {
		clients[i] = map[string]*gossipPeer{}
		// One host per client, both topics on one router.
		h := newUnlimitedClient(t)
		ps, err := pubsub.NewGossipSub(ctx, h, pubsub.WithGossipSubParams(params),
			pubsub.WithMessageIdFn(federation.MessageID), pubsub.WithDirectPeers([]peer.AddrInfo{relay}))
		if err != nil {
			t.Fatal(err)
		}
		for _, name := range []string{"dusk/sync", "dusk/directory"} {
			p := &gossipPeer{h: h}
			if p.topic, err = ps.Join(name); err != nil {
				t.Fatal(err)
			}
			if p.sub, err = p.topic.Subscribe(); err != nil {
				t.Fatal(err)
			}
			go func() {
				for {
					m, err := p.sub.Next(ctx)
					if err != nil {
						return
					}
					if m.ReceivedFrom != h.ID() {
						p.mu.Lock()
						p.got = append(p.got, string(m.Data))
						p.mu.Unlock()
					}
				}
			}()
			clients[i][name] = p
		}
		connectTo(t, h, d)
	}
	a, b := clients[0], clients[1]
	poll(t, "both clients see the daemon on both topics", 20*time.Second, func() bool {
		return slices.Contains(a["dusk/sync"].topic.ListPeers(), d.peerID) && slices.Contains(b["dusk/sync"].topic.ListPeers(), d.peerID) &&
			slices.Contains(a["dusk/directory"].topic.ListPeers(), d.peerID) && slices.Contains(b["dusk/directory"].topic.ListPeers(), d.peerID)
	})
	// The daemon learns the clients' subscriptions from the same RPCs;
	// give it a moment before the first publish.
	time.Sleep(200 * time.Millisecond)
	reqSync := fmt.Sprintf(`{"RequestSync":{"peer_id":"%s"}}`, a["dusk/sync"].h.ID())
	if err := a["dusk/sync"].topic.Publish(ctx, []byte(reqSync)); err != nil {
		t.Fatal(err)
	}
	if err := b["dusk/directory"].topic.Publish(ctx, []byte(`{"ProfileAnnounce":"bob"}`)); err != nil {
		t.Fatal(err)
	}
	poll(t, "messages crossed the daemon", 20*time.Second, func() bool {
		return b["dusk/sync"].received("RequestSync") == 1 && a["dusk/directory"].received("ProfileAnnounce") == 1
	})
	if c := a["dusk/sync"].h.Network().ConnsToPeer(b["dusk/sync"].h.ID()); len(c) != 0 {
		t.Fatal("clients connected directly")
	}
	m := scrape(t, d.metrics)
	if v, _ := sum(m, `dusk_gossip_received_messages_total{topic="dusk/sync"}`); v != 1 {
		t.Errorf("dusk_gossip_received_messages_total{dusk/sync} = %v, want 1", v)
	}
	if v, _ := sum(m, `dusk_gossip_sent_messages_total{topic="dusk/directory"}`); v < 1 {
		t.Errorf("dusk_gossip_sent_messages_total{dusk/directory} = %v, want >= 1", v)
	}
	if strings.Contains(d.logs(), "RequestSync") {
		t.Error("client gossip content in the daemon's log")
	}
}

// appGossip joins topics on one app-configured router on h (the relay as
// an explicit peer, the Rust message id) and connects h to the daemon.
func appGossip(ctx context.Context, t *testing.T, h host.Host, d *daemon, topics ...string) map[string]*gossipPeer {
	t.Helper()
	relay := peer.AddrInfo{ID: d.peerID, Addrs: d.addrs}
	params := pubsub.DefaultGossipSubParams()
	params.HeartbeatInterval = time.Second
	params.HistoryLength, params.HistoryGossip = 5, 3
	ps, err := pubsub.NewGossipSub(ctx, h, pubsub.WithGossipSubParams(params), pubsub.WithMaxMessageSize(federation.MaxMessageSize),
		pubsub.WithMessageIdFn(federation.MessageID), pubsub.WithDirectPeers([]peer.AddrInfo{relay}))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*gossipPeer{}
	for _, name := range topics {
		p := &gossipPeer{h: h}
		if p.topic, err = ps.Join(name); err != nil {
			t.Fatal(err)
		}
		if p.sub, err = p.topic.Subscribe(); err != nil {
			t.Fatal(err)
		}
		go func() {
			for {
				m, err := p.sub.Next(ctx)
				if err != nil {
					return
				}
				if m.ReceivedFrom != h.ID() {
					p.mu.Lock()
					p.got = append(p.got, string(m.Data))
					p.mu.Unlock()
				}
			}
		}()
		out[name] = p
	}
	connectTo(t, h, d)
	poll(t, "client sees the daemon on its topics", 20*time.Second, func() bool {
		for _, p := range out {
			if !slices.Contains(p.topic.ListPeers(), d.peerID) {
				return false
			}
		}
		return true
	})
	return out
}

// hostFrom is a client whose connections come from ip (go-libp2p dials
// from its listen address).
func hostFrom(t *testing.T, ip string) host.Host {
	t.Helper()
	h, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/"+ip+"/tcp/0"), libp2p.DisableRelay(),
		libp2p.ResourceManager(&network.NullResourceManager{}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

// TestHostileGossipClientFlood: forwarding amplifies (every byte a client
// publishes goes to every subscribed client), so one address floods
// dusk/sync with 40 x 60 KB. The daemon forwards only that address's
// burst (DUSK_GOSSIP_CLIENT_BYTES_PER_SEC=8192: 256 KiB) and counts the
// rest; a client on another address is still forwarded, and the daemon
// serves honest clients.
func TestHostileGossipClientFlood(t *testing.T) {
	d := startDaemon(t, append(testEnv(t.TempDir()), "DUSK_GOSSIP_CLIENT_BYTES_PER_SEC=8192"))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	flooder := appGossip(ctx, t, hostFrom(t, "127.0.0.1"), d, "dusk/sync")["dusk/sync"]
	honest := appGossip(ctx, t, hostFrom(t, "127.0.0.2"), d, "dusk/sync")["dusk/sync"]
	victim := appGossip(ctx, t, hostFrom(t, "127.0.0.3"), d, "dusk/sync")["dusk/sync"]
	time.Sleep(200 * time.Millisecond)

	const n, size = 40, 60_000
	for i := range n {
		data := make([]byte, size)
		copy(data, fmt.Sprintf("FLOOD-%02d", i))
		if err := flooder.topic.Publish(ctx, data); err != nil {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := honest.topic.Publish(ctx, []byte(`{"RequestSync":{"peer_id":"honest"}}`)); err != nil {
		t.Fatal(err)
	}
	poll(t, "honest message forwarded during the flood", 20*time.Second, func() bool {
		return victim.received(`"honest"`) == 1
	})
	time.Sleep(2 * time.Second) // late IWANT answers
	// 262,144 B of burst = 4 messages, plus 8 KiB/s of refill.
	if got := victim.received("FLOOD-"); got > 5 || got < 3 {
		t.Fatalf("victim got %d of %d flood messages through the daemon, want the burst (3-5)", got, n)
	}
	if v, _ := sum(scrape(t, d.metrics), `dusk_gossip_throttled_messages_total{topic="dusk/sync"}`); v < n-5 {
		t.Fatalf("throttled = %v, want >= %d", v, n-5)
	}
	assertServing(t, d)
}
