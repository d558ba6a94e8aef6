// Package p2p runs the relay's libp2p host: TCP + noise + yamux, identify,
// ping and a circuit relay v2 service sized from the configuration.
//
// Interop notes:
//   - The relay service is built with relay.New directly; the
//     EnableRelayService path waits for AutoNAT to declare the host public,
//     which never happens for a relay only rust clients talk to.
//   - Reservations must carry at least one address or rust-libp2p clients
//     fail with NoAddressesInReservation. go-libp2p keeps only public
//     addresses by default, so the host's address factory decides what is
//     announced and the reservation filter admits everything it announces.
//   - Idle connections: like rust-libp2p (300 s), inbound connections
//     without a stream and without a reservation are closed after
//     DUSK_IDLE_CONNECTION_TIMEOUT (idle.go). The resource manager caps
//     inbound connections at DUSK_MAX_CONNECTIONS (refusing more, like
//     Rust's connection_limits) and per address prefix; the connection
//     manager only sheds outbound excess (see newConnManager). Peers holding
//     a reservation or a circuit are tagged by the relay and trimmed last.
package p2p

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/event"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-libp2p/p2p/muxer/yamux"
	"github.com/libp2p/go-libp2p/p2p/net/connmgr"
	"github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/relay"
	"github.com/libp2p/go-libp2p/p2p/protocol/ping"
	noise "github.com/libp2p/go-libp2p/p2p/security/noise"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/duskchat/dusk-relay/internal/config"
)

// ProtocolVersion is what identify reports, as the Rust relay does.
const ProtocolVersion = "/dusk/relay/1.0.0"

// AgentPrefix precedes the build version in identify's agent string.
const AgentPrefix = "dusk-relay/"

// Options carries what the host needs from outside config.Relay.
type Options struct {
	// PublicIP and PublicHost come from config.TURN and are announced as
	// /ip4|ip6/<PublicIP>/tcp/<port> and /dns4/<PublicHost>/tcp/<port>.
	// Leave them empty when the operator did not set them (a guessed IP
	// must not be announced).
	PublicIP   string
	PublicHost string
	// Version goes into the identify agent string dusk-relay/<Version>.
	Version string
	// ClusterProtocols are spoken between the relays of DUSK_PEER_RELAYS
	// with one stream per relayed circuit (the circuit mesh): their
	// per-peer stream caps follow DUSK_RELAY_MAX_CIRCUITS.
	ClusterProtocols []protocol.ID

	connMgr []connmgr.Option // tests: a grace period they can wait out
}

// Node is the running libp2p host with its relay service.
type Node struct {
	h     host.Host
	relay *relay.Relay
	log   *zap.Logger
	cfg   config.Relay
	rm    network.ResourceManager

	public     []ma.Multiaddr // announced addresses without port, see publicAddrs
	listenPort atomic.Uint32
	listening  atomic.Bool

	conns        atomic.Int64
	reservations atomic.Int64 // active, from the relay's own bookkeeping
	circuits     atomic.Int64 // live plus being set up
	m            *metrics
	tr           *tracer
	fwd          Forwarder // CONNECTs for peers reserved elsewhere, see forward.go

	rsvMu     sync.Mutex
	reserved  map[peer.ID]rsv // see reserve.go
	perPrefix prefixCounts    // reservations per IPv4 address / IPv6 /56
	rsvPerIP  int
	rsvHook   ReservationHook // told of reservations, see rsvhook.go

	circMu        sync.Mutex
	circPerPrefix prefixCounts // circuits per source IPv4 address / IPv6 /56, see hop.go
	circPerIP     int

	act                  *activity // last stream per peer, see idle.go
	sweepStop, sweepDone chan struct{}

	idSub  event.Subscription
	idDone chan struct{}

	closeOnce sync.Once
	closeErr  error
}

// New builds the host and the relay service without listening: attach the
// other protocol handlers, then call Listen. The context bounds start-up
// only; call Close to stop.
func New(ctx context.Context, cfg config.Relay, opts Options, key crypto.PrivKey, log *zap.Logger, reg prometheus.Registerer) (*Node, error) {
	if key == nil {
		return nil, errors.New("p2p: nil private key")
	}
	if log == nil {
		log = zap.NewNop()
	}
	if cfg.MaxConns < 1 {
		return nil, fmt.Errorf("p2p: MaxConns must be >= 1, got %d", cfg.MaxConns)
	}
	if opts.Version == "" {
		opts.Version = "dev"
	}
	if cfg.MaxCircuits <= 0 { // unset, as config.Load resolves it
		cfg.MaxCircuits = config.DefaultMaxCircuits(cfg.MaxConns)
	}
	n := &Node{
		log:       log,
		cfg:       cfg,
		reserved:  make(map[peer.ID]rsv),
		perPrefix: make(prefixCounts),
		rsvPerIP:  reservationsPerIP(cfg),

		circPerPrefix: make(prefixCounts),
		circPerIP:     circuitsPerIP(cfg),
		act:           &activity{last: make(map[peer.ID]time.Time)},
		m:             newMetrics(),
	}
	var err error
	if n.public, err = publicAddrs(opts.PublicIP, opts.PublicHost); err != nil {
		return nil, err
	}

	fdNeed := fdBudget(cfg.MaxConns)
	if soft, hard, err := raiseFDLimit(); err != nil {
		log.Warn("cannot read the open-file limit", zap.Error(err))
	} else if soft > 0 {
		if soft < uint64(fdNeed) {
			log.Warn("open-file limit is below what DUSK_MAX_CONNECTIONS needs; raise it (ulimit -n / LimitNOFILE)",
				zap.Uint64("soft", soft), zap.Uint64("hard", hard), zap.Int("needed", fdNeed), zap.Int("max_connections", cfg.MaxConns))
		} else {
			log.Info("open-file limit", zap.Uint64("soft", soft), zap.Uint64("hard", hard), zap.Int("needed", fdNeed))
		}
	}

	rm, err := newResourceManager(cfg, reg == nil, opts.ClusterProtocols...)
	if err != nil {
		return nil, fmt.Errorf("p2p: resource manager: %w", err)
	}
	cm, err := newConnManager(cfg.MaxConns, opts.connMgr...)
	if err != nil {
		_ = rm.Close()
		return nil, fmt.Errorf("p2p: connection manager: %w", err)
	}
	n.rm = &activityRM{ResourceManager: rm, act: n.act}

	lopts := []libp2p.Option{
		libp2p.Identity(key),
		libp2p.NoListenAddrs, // we listen ourselves to control the IPv6 fallback
		libp2p.ChainOptions(
			// Without SO_REUSEPORT a second instance on the same port fails
			// at start instead of silently sharing the port's connections.
			libp2p.Transport(tcp.NewTCPTransport, tcp.DisableReuseport()),
			libp2p.Security(noise.ID, noise.New),
			libp2p.Muxer(yamux.ID, smallBacklogYamux()),
		),
		libp2p.ProtocolVersion(ProtocolVersion),
		libp2p.UserAgent(AgentPrefix + opts.Version),
		libp2p.Ping(false), // our own handler, below: rust clients keep one stream
		// A relay needs none of these: no relay client, no hole punching,
		// no UPnP/NAT-PMP, and no AutoNAT probing (we are public by design).
		libp2p.DisableRelay(),
		libp2p.ForceReachabilityPublic(),
		libp2p.ResourceManager(n.rm),
		libp2p.ConnectionManager(cm),
		libp2p.AddrsFactory(n.announce),
	}
	if reg != nil {
		lopts = append(lopts, libp2p.PrometheusRegisterer(reg))
	} else {
		lopts = append(lopts, libp2p.DisableMetrics())
	}
	h, err := libp2p.New(lopts...)
	if err != nil {
		_ = cm.Close()
		_ = rm.Close()
		return nil, fmt.Errorf("p2p: libp2p host: %w", err)
	}
	n.h = h
	h.SetStreamHandler(ping.ID, pingHandler(pingIdle))
	fail := func(err error) (*Node, error) {
		_ = n.Close()
		return nil, err
	}

	h.Network().Notify(&network.NotifyBundle{
		ConnectedF:    n.connected,
		DisconnectedF: n.disconnected,
	})

	// Like the Rust relay, log what each peer says it is (debug).
	if n.idSub, err = h.EventBus().Subscribe(new(event.EvtPeerIdentificationCompleted)); err != nil {
		return fail(fmt.Errorf("p2p: subscribe to identify events: %w", err))
	}
	n.idDone = make(chan struct{})
	go n.logIdentified()

	if err := ctx.Err(); err != nil {
		return fail(err)
	}

	var inner relay.MetricsTracer
	if reg != nil {
		inner = relay.NewMetricsTracer(relay.WithRegisterer(reg))
	}
	n.tr = &tracer{inner: inner, n: n}
	res := relayResources(cfg)
	n.relay, err = relay.New(&relayHost{Host: h, wrap: n.wrapHop},
		relay.WithResources(res),
		relay.WithReservationAddressFilter(reservable),
		relay.WithMetricsTracer(n.tr),
	)
	if err != nil {
		return fail(fmt.Errorf("p2p: relay service: %w", err))
	}
	if reg != nil {
		if err := n.m.register(reg, n); err != nil {
			return fail(fmt.Errorf("p2p: metrics: %w", err))
		}
	}
	n.sweepStop, n.sweepDone = make(chan struct{}), make(chan struct{})
	go n.sweepLoop(n.sweepStop, n.sweepDone)

	log.Info("libp2p host started",
		zap.Stringer("peer_id", h.ID()),
		zap.String("protocol_version", ProtocolVersion),
		zap.String("agent", AgentPrefix+opts.Version),
		zap.Int("max_connections", cfg.MaxConns),
		zap.Int("max_connections_per_ip", connsPerIP(cfg)),
		zap.String("idle_connection_timeout", unlimitedIfZero(cfg.IdleConnTimeout, cfg.IdleConnTimeout.String())))
	log.Info("relay v2 limits",
		zap.Int("max_reservations", res.MaxReservations),
		zap.Int("max_reservations_per_ip", n.rsvPerIP),
		zap.Int("max_circuits", cfg.MaxCircuits),
		zap.Int("max_circuits_per_ip", n.circPerIP),
		zap.Int("max_circuits_per_peer", res.MaxCircuits),
		zap.Duration("reservation_ttl", res.ReservationTTL),
		zap.String("circuit_duration", unlimitedIfZero(cfg.CircuitDuration, cfg.CircuitDuration.String())),
		zap.String("circuit_bytes", unlimitedIfZero(cfg.CircuitBytes, fmt.Sprint(cfg.CircuitBytes))))
	return n, nil
}

// Listen binds the listeners and logs the announced addresses. Call it
// once every protocol handler is attached: a client connecting earlier
// would be told "protocol not supported" and retry only at its next tick.
// On error the node is left for Close.
func (n *Node) Listen(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if !n.listening.CompareAndSwap(false, true) {
		return errors.New("p2p: Listen called twice")
	}
	if err := n.listen(); err != nil {
		return err
	}
	id := n.h.ID().String()
	for _, a := range n.h.Network().ListenAddresses() {
		n.log.Info("listening", zap.Stringer("addr", a))
	}
	announced := n.AnnouncedAddrs()
	if len(announced) == 0 {
		n.log.Warn("no address to announce: relay reservations will be empty and rust clients will reject them")
	}
	for _, a := range announced {
		n.log.Info("announced address", zap.String("addr", a.String()+"/p2p/"+id))
	}
	return nil
}

// Host is the libp2p host, for the protocol handlers.
func (n *Node) Host() host.Host { return n.h }

// ID is the relay's peer ID.
func (n *Node) ID() peer.ID { return n.h.ID() }

// ListenAddrs are the bound listen addresses (e.g. /ip4/0.0.0.0/tcp/4001).
func (n *Node) ListenAddrs() []ma.Multiaddr { return n.h.Network().ListenAddresses() }

// AnnouncedAddrs are the addresses given to peers (identify, reservations),
// without the /p2p suffix.
func (n *Node) AnnouncedAddrs() []ma.Multiaddr { return n.h.Addrs() }

// Listening reports whether at least one listener is up (for /readyz).
func (n *Node) Listening() bool { return len(n.h.Network().ListenAddresses()) > 0 }

// Connections is the number of open connections.
func (n *Node) Connections() int { return int(n.conns.Load()) }

// Reservations is the number of active relay reservations.
func (n *Node) Reservations() int { return int(n.reservations.Load()) }

// Circuits is the number of relayed circuits, live or being set up.
func (n *Node) Circuits() int { return int(n.circuits.Load()) }

// Close stops the relay service, then the host and its resource manager.
// Safe to call more than once.
func (n *Node) Close() error {
	n.closeOnce.Do(func() {
		var errs []error
		if n.sweepStop != nil {
			close(n.sweepStop)
			<-n.sweepDone
		}
		if n.relay != nil {
			errs = append(errs, n.relay.Close())
		}
		if n.idSub != nil {
			errs = append(errs, n.idSub.Close())
			<-n.idDone
		}
		if n.h != nil {
			errs = append(errs, n.h.Close())
		}
		if n.rm != nil {
			errs = append(errs, n.rm.Close())
		}
		n.closeErr = errors.Join(errs...)
	})
	return n.closeErr
}

func (n *Node) listen() error {
	nw := n.h.Network()
	if len(n.cfg.ListenAddrs) > 0 {
		for _, a := range n.cfg.ListenAddrs {
			n.setPortFrom(a)
			if err := nw.Listen(a); err != nil {
				return fmt.Errorf("p2p: listen on %s: %w", a, err)
			}
		}
	} else {
		n.listenPort.Store(uint32(n.cfg.Port))
		v4 := ma.StringCast(fmt.Sprintf("/ip4/0.0.0.0/tcp/%d", n.cfg.Port))
		if err := nw.Listen(v4); err != nil {
			return fmt.Errorf("p2p: listen on %s: %w", v4, err)
		}
		v6 := ma.StringCast(fmt.Sprintf("/ip6/::/tcp/%d", n.cfg.Port))
		if err := nw.Listen(v6); err != nil {
			n.log.Warn("cannot listen on IPv6, serving IPv4 only", zap.Stringer("addr", v6), zap.Error(err))
		}
	}
	if n.listenPort.Load() == 0 { // port 0: learn the one the kernel chose
		for _, a := range nw.ListenAddresses() {
			if n.setPortFrom(a) {
				break
			}
		}
	}
	return nil
}

func (n *Node) setPortFrom(a ma.Multiaddr) bool {
	if n.listenPort.Load() != 0 {
		return true
	}
	p, err := tcpPort(a)
	if err != nil || p == 0 {
		return false
	}
	n.listenPort.Store(uint32(p))
	return true
}

func (n *Node) logIdentified() {
	defer close(n.idDone)
	for e := range n.idSub.Out() {
		ev, ok := e.(event.EvtPeerIdentificationCompleted)
		if !ok {
			continue
		}
		if ce := n.log.Check(zap.DebugLevel, "identified peer"); ce != nil {
			ce.Write(zap.Stringer("peer", ev.Peer), zap.String("protocol_version", ev.ProtocolVersion),
				zap.String("agent", ev.AgentVersion))
		}
	}
}

func (n *Node) connected(_ network.Network, c network.Conn) {
	total := n.conns.Add(1)
	if ce := n.log.Check(zap.DebugLevel, "peer connected"); ce != nil {
		ce.Write(zap.Stringer("peer", c.RemotePeer()), zap.Stringer("direction", c.Stat().Direction), zap.Int64("connections", total))
	}
}

func (n *Node) disconnected(nw network.Network, c network.Conn) {
	total := n.conns.Add(-1)
	p := c.RemotePeer()
	if nw.Connectedness(p) != network.Connected {
		// The relay drops a peer's reservation when its last connection goes.
		n.dropReservation(p)
		n.act.forget(p)
	}
	if ce := n.log.Check(zap.DebugLevel, "peer disconnected"); ce != nil {
		ce.Write(zap.Stringer("peer", p), zap.Int64("connections", total))
	}
}

// relayHost hands the relay service a host whose hop handler we wrap, so we
// see who reserves and who connects to whom without forking the relay.
type relayHost struct {
	host.Host
	wrap func(network.StreamHandler) network.StreamHandler
}

func (r *relayHost) SetStreamHandler(pid protocolID, h network.StreamHandler) {
	if pid == hopProto {
		h = r.wrap(h)
	}
	r.Host.SetStreamHandler(pid, h)
}

func unlimitedIfZero[T time.Duration | int64](v T, s string) string {
	if v == 0 {
		return "unlimited"
	}
	return s
}

// smallBacklogYamux: go-libp2p's yamux transport with a smaller accept
// backlog than its 256 (the backlog channel is allocated per connection,
// 8 bytes a slot). Streams beyond the backlog that arrive in one burst are
// reset, so it holds the requests a rust-libp2p client may send at once on
// one connection (32 reset a third of 100 concurrent registrations).
func smallBacklogYamux() *yamux.Transport {
	t := *yamux.DefaultTransport
	t.AcceptBacklog = requestStreamsPerPeer
	return &t
}
