package federation

import (
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/prometheus/client_golang/prometheus"
)

// maxSubscriptionsPerRPC bounds the subscription entries one RPC may
// carry; the relay allows only a handful of topics, so a peer sending
// more is not a Dusk client.
const maxSubscriptionsPerRPC = 100

// otherTopic labels a topic outside the configured set, so the label set
// stays fixed whatever peers send.
const otherTopic = "other"

// gossipMetrics counts the relay's gossip traffic per topic (a fixed, small
// set of labels; no per-peer labels).
type gossipMetrics struct {
	recvMsgs, recvBytes, sentMsgs, sentBytes, ihaveIDs, throttled *prometheus.CounterVec
	droppedRPCs                                                   prometheus.Counter
}

func newGossipMetrics() gossipMetrics {
	cv := func(name, help string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "dusk", Subsystem: "gossip", Name: name, Help: help}, []string{"topic"})
	}
	return gossipMetrics{
		recvMsgs:  cv("received_messages_total", "new valid gossip messages received, per topic (duplicates not counted)"),
		recvBytes: cv("received_bytes_total", "data bytes of new valid gossip messages received, per topic"),
		sentMsgs:  cv("sent_messages_total", "gossip message copies sent to peers (mesh, direct, IWANT answers), per topic"),
		sentBytes: cv("sent_bytes_total", "data bytes of gossip message copies sent to peers, per topic"),
		ihaveIDs:  cv("ihave_ids_sent_total", "message ids advertised in IHAVE to peers, per topic"),
		throttled: cv("throttled_messages_total", "client-topic messages not forwarded because their sender's address exceeded DUSK_GOSSIP_CLIENT_BYTES_PER_SEC, per topic"),
		droppedRPCs: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "dusk", Subsystem: "gossip", Name: "dropped_rpcs_total",
			Help: "RPCs to peers dropped because the peer's outbound queue was full"}),
	}
}

func (g gossipMetrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{g.recvMsgs, g.recvBytes, g.sentMsgs, g.sentBytes, g.ihaveIDs, g.throttled, g.droppedRPCs}
}

// topicCounters are one topic's resolved counters, so the router's event
// loop does a map lookup and atomic adds, nothing more.
type topicCounters struct {
	recvMsgs, recvBytes, sentMsgs, sentBytes, ihaveIDs prometheus.Counter
}

// tracer is a pubsub RawTracer that feeds gossipMetrics. Its methods run
// on the router's event loop: they must stay cheap.
type tracer struct {
	byTopic map[string]topicCounters // read-only after newTracer
	other   topicCounters
	dropped prometheus.Counter
}

var _ pubsub.RawTracer = (*tracer)(nil)

func newTracer(m *metrics, topics []string) *tracer {
	resolve := func(t string) topicCounters {
		g := m.gossip
		return topicCounters{
			recvMsgs: g.recvMsgs.WithLabelValues(t), recvBytes: g.recvBytes.WithLabelValues(t),
			sentMsgs: g.sentMsgs.WithLabelValues(t), sentBytes: g.sentBytes.WithLabelValues(t),
			ihaveIDs: g.ihaveIDs.WithLabelValues(t),
		}
	}
	tr := &tracer{byTopic: make(map[string]topicCounters, len(topics)), other: resolve(otherTopic), dropped: m.gossip.droppedRPCs}
	for _, t := range topics {
		tr.byTopic[t] = resolve(t)
	}
	return tr
}

func (t *tracer) counters(topic string) topicCounters {
	if c, ok := t.byTopic[topic]; ok {
		return c
	}
	return t.other
}

func (t *tracer) DeliverMessage(msg *pubsub.Message) {
	c := t.counters(msg.GetTopic())
	c.recvMsgs.Inc()
	c.recvBytes.Add(float64(len(msg.Data)))
}

func (t *tracer) SendRPC(rpc *pubsub.RPC, _ peer.ID) {
	for _, m := range rpc.GetPublish() {
		c := t.counters(m.GetTopic())
		c.sentMsgs.Inc()
		c.sentBytes.Add(float64(len(m.Data)))
	}
	for _, ih := range rpc.GetControl().GetIhave() {
		t.counters(ih.GetTopicID()).ihaveIDs.Add(float64(len(ih.MessageIDs)))
	}
}

func (t *tracer) DropRPC(*pubsub.RPC, peer.ID) { t.dropped.Inc() }

func (*tracer) AddPeer(peer.ID, protocol.ID)                         {}
func (*tracer) RemovePeer(peer.ID)                                   {}
func (*tracer) OnNewOutboundStream(peer.ID, protocol.ID)             {}
func (*tracer) OnClosedOutboundStream(peer.ID)                       {}
func (*tracer) Join(string)                                          {}
func (*tracer) Leave(string)                                         {}
func (*tracer) Graft(peer.ID, string)                                {}
func (*tracer) Prune(peer.ID, string)                                {}
func (*tracer) ValidateMessage(*pubsub.Message)                      {}
func (*tracer) RejectMessage(*pubsub.Message, string)                {}
func (*tracer) DuplicateMessage(*pubsub.Message)                     {}
func (*tracer) ThrottlePeer(peer.ID)                                 {}
func (*tracer) RecvRPC(*pubsub.RPC)                                  {}
func (*tracer) SendRPCCompleted(*pubsub.RPC, peer.ID, time.Duration) {}
func (*tracer) UndeliverableMessage(*pubsub.Message)                 {}
