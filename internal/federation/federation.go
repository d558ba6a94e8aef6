// Package federation runs the relay's gossipsub router: it gossips
// rendezvous registrations between peer relays, forwards the clients'
// topics (dusk/directory, dusk/sync) without interpreting them, and keeps
// the configured peer relays connected (docs/PROTOCOLS.md, "Gossipsub topics").
package federation

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/event"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/net/swarm"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/duskchat/dusk-relay/internal/config"
)

const (
	// Topic is the Rust relay's federation topic.
	Topic = "dusk/relay/federation"
	// MaxMessageSize is rust-libp2p gossipsub's default max_transmit_size;
	// Rust peers drop larger RPCs.
	MaxMessageSize = 65536
	// QueueSize bounds registrations waiting to be published.
	QueueSize = 1024
	// DialTimeout bounds one dial attempt to a peer relay.
	DialTimeout = 15 * time.Second
	// protectTag marks peer-relay connections in the connection manager.
	protectTag = "dusk-federation"
	// recheckInterval re-checks a connected peer relay in case a
	// disconnect event was missed.
	recheckInterval = 30 * time.Second
	// topicPeersTTL: how long Publish trusts its last look at Topic's
	// peers. A relay that just joined misses at most this much gossip.
	topicPeersTTL = time.Second

	// Field caps for federation gossip: a peer id string is at most ~60
	// characters, a rendezvous namespace at most 255 bytes (libp2p
	// rendezvous spec). Longer values are not a registration.
	maxPeerIDLen    = 128
	maxNamespaceLen = 255

	// HeartbeatInterval is the relay's gossipsub heartbeat. Clients treat
	// the relay as an explicit peer and refuse its GRAFTs, so the relay
	// reaches them only by IHAVE, sent once per heartbeat: delivery
	// through the relay takes up to one heartbeat. Measured 1 s against
	// the Rust relay's 10 s (README, "Gossip through the relay").
	HeartbeatInterval = time.Second
	// GossipFactor 1: every subscribed client gets the IHAVE at every
	// heartbeat. With gossipsub's 0.25 a client would miss a message
	// with probability 0.75^HistoryGossip (42 %) when no other path
	// exists, as it does not between two clients behind the relay.
	GossipFactor = 1.0
)

var (
	// ErrMalformed is a gossip message that is not a valid registration.
	ErrMalformed = errors.New("federation: malformed gossip")
	// ErrNotMember is federation gossip from a peer (sender or author)
	// that is not listed in DUSK_PEER_RELAYS.
	ErrNotMember = errors.New("federation: not a configured peer relay")
)

// Gossip is the JSON message relays exchange, field order as the Rust
// struct RelayRegistrationGossip (serde_json keeps declaration order).
type Gossip struct {
	PeerID    string `json:"peer_id"`
	Namespace string `json:"namespace"`
	// TTL is the registration TTL in seconds.
	TTL uint64 `json:"ttl"`
	// SourceRelay is the peer ID of the relay that accepted the
	// registration (loop prevention).
	SourceRelay string `json:"source_relay"`
}

// Option customises a Federation.
type Option func(*options)

type options struct {
	onGossip    func(Gossip)
	relayTopics []string
	minBackoff  time.Duration
	maxBackoff  time.Duration
	tune        func(*pubsub.GossipSubParams)
	clientBPS   int64
}

// WithClientRate bounds the client-topic bytes accepted for forwarding
// per sender address prefix (IPv4 /32, IPv6 /56), with a 32 s burst;
// excess is not forwarded and is counted. 0 means no bound.
func WithClientRate(bytesPerSec int64) Option {
	return func(o *options) { o.clientBPS = max(bytesPerSec, 0) }
}

// withParams adjusts the router parameters (measurement harness only).
func withParams(fn func(*pubsub.GossipSubParams)) Option {
	return func(o *options) { o.tune = fn }
}

// WithOnGossip calls fn for every valid registration received from another
// relay (after logging). fn runs on the receive goroutine: keep it short.
func WithOnGossip(fn func(Gossip)) Option { return func(o *options) { o.onGossip = fn } }

// WithRelayTopics makes the relay a gossipsub forwarder (not a consumer)
// for client topics: the Rust relay subscribes to "dusk/directory" and
// "dusk/sync" so that two clients that reach each other only through the
// relay still exchange those messages. Their content is never parsed.
func WithRelayTopics(topics ...string) Option {
	return func(o *options) {
		for _, t := range topics {
			if t != "" && t != Topic && !slices.Contains(o.relayTopics, t) {
				o.relayTopics = append(o.relayTopics, t)
			}
		}
	}
}

// WithRedialBackoff sets the peer-relay redial backoff (default 1 s to 60 s).
func WithRedialBackoff(minDelay, maxDelay time.Duration) Option {
	return func(o *options) {
		if minDelay > 0 && maxDelay >= minDelay {
			o.minBackoff, o.maxBackoff = minDelay, maxDelay
		}
	}
}

// Federation owns the gossipsub router, the federation topic and the
// peer-relay dialers.
type Federation struct {
	h      host.Host
	log    *zap.Logger
	self   peer.ID
	opts   options
	relays []peer.AddrInfo
	// members are the configured peer relays, the only peers whose
	// federation gossip is accepted; read-only after New.
	members map[peer.ID]struct{}
	m       *metrics

	ps        *pubsub.PubSub
	topic     *pubsub.Topic
	forwarded []relayed
	limited   []string // client topics with a rate validator
	sub       *pubsub.Subscription
	evSub     event.Subscription
	queue     chan Gossip
	repeats   *repeats
	// A cached answer of hasTopicPeers and when it was taken.
	topicPeers   atomic.Bool
	topicPeersAt atomic.Int64
	wake         map[peer.ID]chan struct{}

	mu     sync.Mutex
	online map[peer.ID]bool

	ctx      context.Context // work goroutines
	cancel   context.CancelFunc
	psCancel context.CancelFunc // the pubsub router
	wg       sync.WaitGroup
	closed   atomic.Bool
	once     sync.Once
}

// New starts gossipsub on h, subscribes to Topic and starts dialing
// cfg.PeerRelays. Close stops everything; ctx ending stops it too.
func New(ctx context.Context, h host.Host, cfg config.Relay, log *zap.Logger, reg prometheus.Registerer, opts ...Option) (*Federation, error) {
	if log == nil {
		log = zap.NewNop()
	}
	o := options{minBackoff: time.Second, maxBackoff: time.Minute}
	for _, fn := range opts {
		fn(&o)
	}
	infos, err := peer.AddrInfosFromP2pAddrs(cfg.PeerRelays...)
	if err != nil {
		return nil, fmt.Errorf("federation: DUSK_PEER_RELAYS: %w", err)
	}
	f := &Federation{
		h:       h,
		log:     log,
		self:    h.ID(),
		opts:    o,
		m:       newMetrics(reg, log),
		queue:   make(chan Gossip, QueueSize),
		repeats: newRepeats(),
		wake:    make(map[peer.ID]chan struct{}),
		online:  make(map[peer.ID]bool),

		members: make(map[peer.ID]struct{}),
	}
	for _, ai := range infos {
		if ai.ID == f.self {
			log.Warn("DUSK_PEER_RELAYS lists this relay itself; skipped", zap.Stringer("peer", ai.ID))
			continue
		}
		f.relays = append(f.relays, ai)
		f.members[ai.ID] = struct{}{}
		f.wake[ai.ID] = make(chan struct{}, 1)
	}
	f.m.configured.Set(float64(len(f.relays)))

	psCtx, psCancel := context.WithCancel(ctx)
	f.psCancel = psCancel
	f.ctx, f.cancel = context.WithCancel(ctx)
	fail := func(err error) (*Federation, error) {
		f.cancel()
		psCancel()
		if f.ps != nil {
			removeHandlers(h)
		}
		return nil, err
	}

	params := pubsub.DefaultGossipSubParams()
	// We dial peer relays ourselves; pubsub's own first direct connect
	// sleeps 1 s in a goroutine that ignores shutdown.
	params.DirectConnectInitialDelay = 0
	params.HeartbeatInterval = HeartbeatInterval
	params.GossipFactor = GossipFactor
	if o.tune != nil {
		o.tune(&params)
	}
	topics := append([]string{Topic}, o.relayTopics...)
	f.ps, err = pubsub.NewGossipSub(psCtx, h,
		pubsub.WithGossipSubParams(params),
		pubsub.WithMaxMessageSize(MaxMessageSize),
		// The Rust relay's and the app's id: ids match across
		// implementations, so an IHAVE never re-fetches a message the
		// other side already has.
		pubsub.WithMessageIdFn(MessageID),
		pubsub.WithRawTracer(newTracer(f.m, topics)),
		pubsub.WithMessageSignaturePolicy(pubsub.StrictSign),
		// rust-libp2p's default: our own registrations go to every
		// subscribed peer at once, not only to the mesh, which is
		// empty until the first heartbeat after a peer joins.
		pubsub.WithFloodPublish(true),
		// Direct peers get every message and are never pruned, so a
		// 2-3 relay federation works without a full mesh. The
		// agreement should be mutual: list each other in
		// DUSK_PEER_RELAYS (a one-sided entry still delivers, but the
		// other side's GRAFTs are refused).
		pubsub.WithDirectPeers(f.relays),
		// Clients speak gossipsub on their own topics; do not track
		// those (memory), only ours.
		pubsub.WithSubscriptionFilter(pubsub.WrapLimitSubscriptionFilter(
			pubsub.NewAllowlistSubscriptionFilter(topics...), maxSubscriptionsPerRPC)),
	)
	if err != nil {
		return fail(fmt.Errorf("federation: gossipsub: %w", err))
	}
	if err := f.ps.RegisterTopicValidator(Topic, f.validate); err != nil {
		return fail(fmt.Errorf("federation: validator: %w", err))
	}
	if f.topic, err = f.ps.Join(Topic); err != nil {
		return fail(fmt.Errorf("federation: join %s: %w", Topic, err))
	}
	if f.sub, err = f.topic.Subscribe(); err != nil {
		_ = f.topic.Close()
		return fail(fmt.Errorf("federation: subscribe %s: %w", Topic, err))
	}
	// Subscribe to connectedness before dialing so no event is missed.
	if f.evSub, err = h.EventBus().Subscribe(new(event.EvtPeerConnectednessChanged)); err != nil {
		f.sub.Cancel()
		_ = f.topic.Close()
		return fail(fmt.Errorf("federation: event bus: %w", err))
	}
	var lim *clientLimiter
	if o.clientBPS > 0 {
		lim = newClientLimiter(h, f.self, f.members, o.clientBPS, func(topic string) {
			f.m.gossip.throttled.WithLabelValues(topic).Inc()
		})
	}
	for _, name := range o.relayTopics {
		if lim != nil {
			if err := f.ps.RegisterTopicValidator(name, lim.validate, pubsub.WithValidatorInline(true)); err != nil {
				f.closeRelayed()
				_ = f.evSub.Close()
				f.sub.Cancel()
				_ = f.topic.Close()
				return fail(fmt.Errorf("federation: validator %s: %w", name, err))
			}
			f.limited = append(f.limited, name)
		}
		t, err := f.ps.Join(name)
		if err == nil {
			var stop pubsub.RelayCancelFunc
			if stop, err = t.Relay(); err == nil {
				f.forwarded = append(f.forwarded, relayed{topic: t, stop: stop})
				log.Info("relaying client gossip topic", zap.String("topic", name))
				continue
			}
			_ = t.Close()
		}
		f.closeRelayed()
		_ = f.evSub.Close()
		f.sub.Cancel()
		_ = f.topic.Close()
		return fail(fmt.Errorf("federation: relay topic %s: %w", name, err))
	}
	log.Info("subscribed to relay federation topic", zap.String("topic", Topic))

	for _, ai := range f.relays {
		h.ConnManager().Protect(ai.ID, protectTag)
		if h.Network().Connectedness(ai.ID) == network.Connected {
			f.setOnline(ai.ID, true)
		}
	}
	f.wg.Add(3)
	go f.watchConnections()
	go f.receive()
	go f.publishLoop()
	if len(f.relays) == 0 {
		log.Info("no peer relays configured (DUSK_PEER_RELAYS unset): standalone relay")
	} else {
		log.Info("connecting to peer relays for federation", zap.Int("count", len(f.relays)))
		for _, ai := range f.relays {
			f.wg.Add(1)
			go f.keepConnected(ai)
		}
	}
	return f, nil
}

// Publish gossips a registration accepted by this relay. It never blocks:
// when the queue is full the registration is dropped and counted. It is
// skipped (and counted) while no peer subscribed to Topic is connected, as
// nobody would receive it, and when the same peer and namespace were
// gossiped less than RepublishAfter ago (repeats.go).
func (f *Federation) Publish(p peer.ID, ns string, ttl time.Duration) {
	if f.closed.Load() {
		f.m.dropped.Inc()
		return
	}
	if !f.hasTopicPeers(time.Now()) {
		f.m.skippedOffline.Inc()
		return
	}
	if !f.repeats.due(p, ns, time.Now()) {
		f.m.skippedRepeat.Inc()
		return
	}
	g := Gossip{PeerID: p.String(), Namespace: ns, TTL: uint64(max(ttl, 0) / time.Second), SourceRelay: f.self.String()}
	select {
	case f.queue <- g:
	default:
		f.repeats.forget(p, ns)
		f.m.dropped.Inc()
		f.log.Debug("federation queue full, registration not gossiped",
			zap.String("namespace", ns), zap.Stringer("peer", p))
	}
}

// hasTopicPeers reports whether any connected peer is subscribed to
// Topic, asking the router at most once per topicPeersTTL: registrations
// arrive far more often than relays come and go, and each question is a
// round trip through the router's event loop.
func (f *Federation) hasTopicPeers(now time.Time) bool {
	t := now.UnixNano()
	if last := f.topicPeersAt.Load(); last != 0 && t-last >= 0 && t-last < int64(topicPeersTTL) {
		return f.topicPeers.Load()
	}
	has := len(f.topic.ListPeers()) > 0
	f.topicPeers.Store(has)
	f.topicPeersAt.Store(t)
	return has
}

// OnlinePeerRelays reports how many configured peer relays are connected.
func (f *Federation) OnlinePeerRelays() (online, configured int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.online), len(f.relays)
}

// Close stops the dialers, the subscription and the gossipsub router.
// Safe to call more than once. The host is not closed.
func (f *Federation) Close() error {
	f.once.Do(func() {
		f.closed.Store(true)
		f.cancel()
		// Close the event subscription before waiting: the event bus
		// blocks emitters on a subscriber that stopped reading.
		_ = f.evSub.Close()
		f.wg.Wait()
		f.closeRelayed()
		f.sub.Cancel()
		_ = f.ps.UnregisterTopicValidator(Topic)
		_ = f.topic.Close()
		f.psCancel()
		removeHandlers(f.h)
		for _, ai := range f.relays {
			f.h.ConnManager().Unprotect(ai.ID, protectTag)
		}
	})
	return nil
}

// relayed is a client topic this relay forwards.
type relayed struct {
	topic *pubsub.Topic
	stop  pubsub.RelayCancelFunc
}

func (f *Federation) closeRelayed() {
	for _, r := range f.forwarded {
		r.stop()
		_ = r.topic.Close()
	}
	f.forwarded = nil
	for _, name := range f.limited {
		_ = f.ps.UnregisterTopicValidator(name)
	}
	f.limited = nil
}

func removeHandlers(h host.Host) {
	for _, id := range pubsub.GossipSubDefaultProtocols {
		h.RemoveStreamHandler(id)
	}
}

// encode matches serde_json::to_vec: compact, declaration order, no HTML
// escaping.
func encode(g Gossip) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(g); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

// decode is as strict as serde_json into the Rust struct: every field
// present with the right type (unknown fields ignored).
func decode(data []byte) (Gossip, error) {
	var raw struct {
		PeerID      *string `json:"peer_id"`
		Namespace   *string `json:"namespace"`
		TTL         *uint64 `json:"ttl"`
		SourceRelay *string `json:"source_relay"`
	}
	if err := json.Unmarshal(data, &raw); err != nil {
		return Gossip{}, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	if raw.PeerID == nil || raw.Namespace == nil || raw.TTL == nil || raw.SourceRelay == nil {
		return Gossip{}, fmt.Errorf("%w: missing field", ErrMalformed)
	}
	if len(*raw.PeerID) > maxPeerIDLen || len(*raw.Namespace) > maxNamespaceLen || len(*raw.SourceRelay) > maxPeerIDLen {
		return Gossip{}, fmt.Errorf("%w: field too long", ErrMalformed)
	}
	return Gossip{PeerID: *raw.PeerID, Namespace: *raw.Namespace, TTL: *raw.TTL, SourceRelay: *raw.SourceRelay}, nil
}

// validate runs before delivery and forwarding: only configured peer
// relays may speak on the federation topic, both as the sender of the
// RPC and as the signing author (any peer can publish on a topic, and a
// member must not launder a stranger's message). Anything else, and
// malformed gossip, is counted and not passed on.
func (f *Federation) validate(_ context.Context, from peer.ID, msg *pubsub.Message) pubsub.ValidationResult {
	if from == f.self {
		return pubsub.ValidationAccept // our own publication
	}
	author, aerr := peer.IDFromBytes(msg.From)
	_, fromOK := f.members[from]
	_, authorOK := f.members[author]
	if aerr != nil || !fromOK || !authorOK {
		f.m.foreign.Inc()
		f.log.Debug("ignoring federation gossip from a peer not in DUSK_PEER_RELAYS",
			zap.Stringer("from", from), zap.Int("bytes", len(msg.Data)), zap.Error(ErrNotMember))
		return pubsub.ValidationReject
	}
	g, err := decode(msg.Data)
	if err == nil {
		// The message is signed by its author; a relay may only
		// speak for itself (Rust relays always set source_relay to
		// their own ID).
		if author.String() != g.SourceRelay {
			err = fmt.Errorf("%w: source_relay is not the author", ErrMalformed)
		}
	}
	if err != nil {
		f.m.malformed.Inc()
		f.log.Debug("ignoring malformed federation gossip", zap.Stringer("from", from),
			zap.Int("bytes", len(msg.Data)), zap.Error(err))
		return pubsub.ValidationReject
	}
	msg.ValidatorData = g
	return pubsub.ValidationAccept
}

func (f *Federation) receive() {
	defer f.wg.Done()
	for {
		msg, err := f.sub.Next(f.ctx)
		if err != nil {
			return
		}
		if msg.ReceivedFrom == f.self {
			continue // our own publication, delivered locally
		}
		g, ok := msg.ValidatorData.(Gossip)
		if !ok || g.SourceRelay == f.self.String() {
			continue
		}
		f.m.received.Inc()
		// Debug: a peer relay can send many; the counter is the
		// operator's view.
		f.log.Debug("received remote registration (clients should query that relay directly)",
			zap.String("namespace", g.Namespace), zap.String("peer", g.PeerID),
			zap.String("source_relay", g.SourceRelay), zap.Uint64("ttl", g.TTL))
		if f.opts.onGossip != nil {
			f.opts.onGossip(g)
		}
	}
}

func (f *Federation) publishLoop() {
	defer f.wg.Done()
	for {
		select {
		case <-f.ctx.Done():
			return
		case g := <-f.queue:
			data, err := encode(g)
			if err == nil {
				err = f.topic.Publish(f.ctx, data)
			}
			if err != nil {
				if f.ctx.Err() != nil {
					return
				}
				f.m.publishErr.Inc()
				f.log.Debug("failed to gossip registration", zap.String("namespace", g.Namespace), zap.Error(err))
				continue
			}
			f.m.published.Inc()
			online, _ := f.OnlinePeerRelays()
			f.log.Debug("gossiped registration", zap.String("namespace", g.Namespace),
				zap.String("peer", g.PeerID), zap.Int("peer_relays_online", online))
		}
	}
}

func (f *Federation) watchConnections() {
	defer f.wg.Done()
	for {
		select {
		case <-f.ctx.Done():
			return
		case ev, ok := <-f.evSub.Out():
			if !ok {
				return
			}
			e := ev.(event.EvtPeerConnectednessChanged)
			wake, ours := f.wake[e.Peer]
			if !ours {
				continue
			}
			connected := e.Connectedness == network.Connected
			f.setOnline(e.Peer, connected)
			if !connected {
				select {
				case wake <- struct{}{}:
				default:
				}
			}
		}
	}
}

func (f *Federation) setOnline(p peer.ID, on bool) {
	f.mu.Lock()
	was := f.online[p]
	if on {
		f.online[p] = true
	} else {
		delete(f.online, p)
	}
	k, n := len(f.online), len(f.relays)
	f.mu.Unlock()
	if was == on {
		return
	}
	f.m.online.Set(float64(k))
	msg := fmt.Sprintf("%d/%d peer relays online", k, n)
	if on {
		f.log.Info("peer relay connected: "+msg, zap.Stringer("peer", p))
	} else {
		f.log.Warn("peer relay disconnected: "+msg, zap.Stringer("peer", p))
	}
}

// keepConnected dials ai while it is disconnected, with exponential
// backoff and jitter, until Close.
func (f *Federation) keepConnected(ai peer.AddrInfo) {
	defer f.wg.Done()
	wake := f.wake[ai.ID]
	backoff := f.opts.minBackoff
	failures := 0
	for {
		if f.h.Network().Connectedness(ai.ID) != network.Connected {
			// Our backoff governs; the swarm's own per-peer dial
			// backoff (5 s and up) would otherwise refuse redials.
			if sw, ok := f.h.Network().(*swarm.Swarm); ok {
				sw.Backoff().Clear(ai.ID)
			}
			ctx, cancel := context.WithTimeout(f.ctx, DialTimeout)
			err := f.h.Connect(ctx, ai)
			cancel()
			if f.ctx.Err() != nil {
				return
			}
			if err != nil {
				failures++
				if failures == 1 {
					f.log.Warn("peer relay unreachable, retrying with backoff",
						zap.Stringer("peer", ai.ID), zap.Error(err))
				} else {
					f.log.Debug("peer relay dial failed", zap.Stringer("peer", ai.ID),
						zap.Int("attempt", failures), zap.Error(err))
				}
				if !sleep(f.ctx, jitter(backoff)) {
					return
				}
				backoff = min(backoff*2, f.opts.maxBackoff)
				continue
			}
			// Online state follows the connectedness events only.
		}
		failures = 0
		backoff = f.opts.minBackoff
		t := time.NewTimer(recheckInterval)
		select {
		case <-f.ctx.Done():
			t.Stop()
			return
		case <-wake:
		case <-t.C:
		}
		t.Stop()
	}
}

// jitter spreads d over [d/2, d*3/2) so relays restarted together do not
// redial in lockstep.
func jitter(d time.Duration) time.Duration {
	return d/2 + rand.N(d) //nolint:gosec // timing jitter, not security
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

type metrics struct {
	published, dropped, publishErr, received, malformed, foreign prometheus.Counter
	skipped                                                      *prometheus.CounterVec
	skippedOffline, skippedRepeat                                prometheus.Counter
	online, configured                                           prometheus.Gauge
	gossip                                                       gossipMetrics
}

func newMetrics(reg prometheus.Registerer, log *zap.Logger) *metrics {
	c := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Namespace: "dusk", Subsystem: "federation", Name: name, Help: help})
	}
	g := func(name, help string) prometheus.Gauge {
		return prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "dusk", Subsystem: "federation", Name: name, Help: help})
	}
	m := &metrics{
		published:  c("published_total", "registrations gossiped to peer relays"),
		dropped:    c("publish_dropped_total", "registrations not gossiped because the queue was full or closed"),
		publishErr: c("publish_errors_total", "registrations gossipsub refused to publish"),
		received:   c("received_total", "registrations received from other relays"),
		malformed:  c("malformed_total", "federation gossip messages ignored as malformed"),
		foreign:    c("foreign_total", "federation gossip messages refused because the sender or author is not in DUSK_PEER_RELAYS"),
		online:     g("peer_relays_online", "configured peer relays currently connected"),
		configured: g("peer_relays_configured", "peer relays listed in DUSK_PEER_RELAYS"),
		gossip:     newGossipMetrics(),
	}
	m.skipped = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "dusk", Subsystem: "federation", Name: "publish_skipped_total",
		Help: "registrations not gossiped: no peer subscribed to the federation topic (reason offline), or the same peer and namespace gossiped less than 10 min ago (repeat)"},
		[]string{"reason"})
	m.skippedOffline, m.skippedRepeat = m.skipped.WithLabelValues("offline"), m.skipped.WithLabelValues("repeat")
	if reg == nil {
		return m
	}
	for _, col := range append([]prometheus.Collector{m.published, m.dropped, m.publishErr, m.skipped, m.received, m.malformed, m.foreign, m.online, m.configured}, m.gossip.collectors()...) {
		if err := reg.Register(col); err != nil {
			log.Warn("federation metrics not registered", zap.Error(err))
		}
	}
	return m
}
