package p2p

import (
	"math"
	"net/netip"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	rcmgr "github.com/libp2p/go-libp2p/p2p/host/resource-manager"
	"github.com/libp2p/go-libp2p/p2p/net/connmgr"
	"github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/relay"
	"github.com/libp2p/go-libp2p/p2p/protocol/identify"
	"github.com/libp2p/go-libp2p/p2p/protocol/ping"
	"github.com/libp2p/go-libp2p/x/rate"

	"github.com/duskchat/dusk-relay/internal/config"
	"github.com/duskchat/dusk-relay/internal/netkey"
)

const (
	// outboundSlack: connections we open ourselves (federation peers, dials
	// by other components) on top of DUSK_MAX_CONNECTIONS inbound.
	outboundSlack = 256
	// fdSlack: descriptors for listeners, the database, logs, the metrics
	// endpoint; TURN sockets are counted by the TURN server, not here.
	fdSlack = 512
	// streamWindow is what yamux reserves per stream against the resource
	// manager (its initial receive window).
	streamWindow = 256 << 10
	// defaultConnsPerIP applies when the config leaves the per-address cap
	// unset (tests that build config.Relay by hand). Many Dusk users may sit
	// behind one carrier NAT, which go-libp2p's default (8 per IPv4) locks out.
	defaultConnsPerIP = 64
	// requestStreamsPerPeer: rust-libp2p's request-response allowed 100
	// concurrent streams per connection, and a client in 60 communities
	// registers them all at once.
	requestStreamsPerPeer = 128
)

// connsPerIP is the connection cap per IPv4 address or IPv6 /56.
func connsPerIP(c config.Relay) int {
	n := c.MaxConnsPerIP
	if n < 1 {
		n = defaultConnsPerIP
	}
	return max(1, min(n, c.MaxConns))
}

// maxReservations resolves 0 (unset) to DUSK_MAX_CONNECTIONS, as config.Load does.
func maxReservations(c config.Relay) int {
	if c.MaxReservations > 0 {
		return c.MaxReservations
	}
	return c.MaxConns
}

// reservationsPerIP caps reservations per IPv4 address or IPv6 /56: a
// small share of the total, never more than the connections an address
// may hold. With the Rust parity total (128) that is 2 per address.
func reservationsPerIP(c config.Relay) int {
	return max(1, min(connsPerIP(c), max(2, maxReservations(c)/64)))
}

// circuitsPerIP caps the circuits whose source is one IPv4 address or IPv6
// /56: a few addresses with many free identities (4 circuits each) must
// not take every slot. A thirty-second of the total, and never less than
// two peers' worth, so a household behind one NAT still gets circuits
// under the Rust parity total (16: 8 per address).
func circuitsPerIP(c config.Relay) int {
	return max(2*c.MaxCircuitsPerPeer, c.MaxCircuits/32, 1)
}

func fdBudget(maxConns int) int { return maxConns + outboundSlack + fdSlack }

// limitConfig starts from go-libp2p's auto-scaled defaults (with the
// bundled service limits) and raises every limit that would refuse or trim
// connections below DUSK_MAX_CONNECTIONS. Nothing is lowered.
func limitConfig(c config.Relay, cluster ...protocol.ID) rcmgr.ConcreteLimitConfig {
	scaling := rcmgr.DefaultLimits
	libp2p.SetDefaultServiceLimits(&scaling)
	base := scaling.AutoScale()
	p := base.ToPartialLimitConfig()
	mc := c.MaxConns

	// System: every configured connection fits, with a few streams each.
	raise(&p.System.ConnsInbound, mc)
	raise(&p.System.ConnsOutbound, outboundSlack)
	raise(&p.System.Conns, mc+outboundSlack)
	raise(&p.System.FD, fdBudget(mc))
	raise(&p.System.StreamsInbound, 4*mc)
	raise(&p.System.StreamsOutbound, 4*mc)
	raise(&p.System.Streams, 8*mc)
	// At least one open stream window per connection on top of the default budget.
	raise64(&p.System.Memory, int64(p.System.Memory)+int64(mc)*streamWindow)

	// Transient: connections and streams still in handshake/negotiation. A
	// restart makes every client reconnect at once, so allow a quarter of
	// the connections to be in flight together.
	burst := max(mc/4, 64)
	raise(&p.Transient.ConnsInbound, burst)
	raise(&p.Transient.ConnsOutbound, outboundSlack)
	raise(&p.Transient.Conns, burst+outboundSlack)
	raise(&p.Transient.FD, burst+outboundSlack)
	raise(&p.Transient.StreamsInbound, burst)
	raise(&p.Transient.StreamsOutbound, burst)
	raise(&p.Transient.Streams, 2*burst)
	raise64(&p.Transient.Memory, int64(p.Transient.Memory)+int64(burst)*streamWindow/4)

	// Identify and ping run against every client right after connecting.
	bumpStreams := func(rl *rcmgr.ResourceLimits, n int) {
		raise(&rl.StreamsInbound, n)
		raise(&rl.StreamsOutbound, n)
		raise(&rl.Streams, 2*n)
	}
	svc := func(name string, n int) {
		rl := p.Service[name]
		bumpStreams(&rl, n)
		p.Service[name] = rl
	}
	proto := func(id protocol.ID, n int) {
		rl := p.Protocol[id]
		bumpStreams(&rl, n)
		p.Protocol[id] = rl
	}
	svc(identify.ServiceName, burst)
	proto(identify.ID, burst)
	proto(identify.IDPush, burst)
	svc(ping.ServiceName, mc)
	proto(ping.ID, mc)
	// Our own protocols (rendezvous, request-response, gossipsub) use the
	// defaults: many clients at once, and per peer at least the 100
	// concurrent requests a rust-libp2p client may send on one connection.
	bumpStreams(&p.ServiceDefault, burst)
	bumpStreams(&p.ProtocolDefault, burst)
	bumpStreams(&p.ServicePeerDefault, requestStreamsPerPeer)
	bumpStreams(&p.ProtocolPeerDefault, requestStreamsPerPeer)
	bumpStreams(&p.PeerDefault, 2*requestStreamsPerPeer)

	// Relay: a live circuit holds a hop and a stop stream.
	relayStreams := 2*c.MaxCircuits + min(maxReservations(c), 4096)
	svc(relay.ServiceName, relayStreams)
	// The relay books 2 x BufferSize per circuit in its service scope at
	// high priority (refused above 80 % of the budget) and a message per
	// stream in handshake. go-libp2p's default service budget (63 MiB on a
	// 24 GiB host) held ~800 circuits with our buffers: 19,500 simulated
	// clients got 3,064 circuits refused with RESOURCE_LIMIT_EXCEEDED
	// while the circuit cap was 2,693 (dusk-bench clients -n 19500).
	relayMemory := (int64(max(c.MaxCircuits, 0))*2*relayBufferSize + int64(relayStreams)*relayMessageSize) * 5 / 4
	rl := p.Service[relay.ServiceName]
	raise64(&rl.Memory, relayMemory)
	p.Service[relay.ServiceName] = rl
	raise64(&p.System.Memory, int64(p.System.Memory)+relayMemory)

	// The circuit mesh: a stream per circuit relayed between two relays of
	// the cluster, up to the circuit cap, which the per-peer defaults (128
	// streams of one protocol) would cut short. Member relays get that on
	// top of what any peer may open.
	if len(cluster) > 0 {
		for _, id := range cluster {
			proto(id, 2*c.MaxCircuits)
			rl := p.ProtocolPeer[id]
			bumpStreams(&rl, c.MaxCircuits)
			p.ProtocolPeer[id] = rl
		}
		if p.Peer == nil {
			p.Peer = map[peer.ID]rcmgr.ResourceLimits{}
		}
		for _, a := range c.PeerRelays {
			info, err := peer.AddrInfoFromP2pAddr(a)
			if err != nil {
				continue // config.Validate reports it
			}
			rl := p.PeerDefault
			bumpStreams(&rl, 2*requestStreamsPerPeer+c.MaxCircuits)
			p.Peer[info.ID] = rl
		}
	}

	return p.Build(base)
}

func raise(v *rcmgr.LimitVal, n int) {
	if *v == rcmgr.Unlimited || int(*v) >= n {
		return
	}
	*v = rcmgr.LimitVal(n)
}

func raise64(v *rcmgr.LimitVal64, n int64) {
	if *v == rcmgr.Unlimited64 || int64(*v) >= n {
		return
	}
	*v = rcmgr.LimitVal64(n)
}

// newResourceManager caps connections per address prefix so that a few
// addresses cannot hold the relay full. go-libp2p exempts all of
// 127.0.0.0/8; only 127.0.0.1 and ::1 are exempt here (local tools and
// benchmarks), so the caps also hold for the other loopback addresses.
func newResourceManager(c config.Relay, noMetrics bool, cluster ...protocol.ID) (network.ResourceManager, error) {
	perIP := connsPerIP(c)
	opts := []rcmgr.Option{
		rcmgr.WithNetworkPrefixLimit(
			[]rcmgr.NetworkPrefixLimit{{Network: mustPrefix("127.0.0.1/32"), ConnCount: math.MaxInt}},
			[]rcmgr.NetworkPrefixLimit{{Network: mustPrefix("::1/128"), ConnCount: math.MaxInt}}),
		rcmgr.WithLimitPerSubnet(
			[]rcmgr.ConnLimitPerSubnet{{PrefixLength: 32, ConnCount: perIP}},
			[]rcmgr.ConnLimitPerSubnet{
				{PrefixLength: netkey.IPv6Bits, ConnCount: perIP},
				{PrefixLength: netkey.IPv6WideBits, ConnCount: netkey.WideFactor * perIP},
			}),
		rcmgr.WithConnRateLimiters(connRateLimiter(perIP)),
	}
	if noMetrics {
		opts = append(opts, rcmgr.WithMetricsDisabled())
	}
	return rcmgr.NewResourceManager(rcmgr.NewFixedLimiter(limitConfig(c, cluster...)), opts...)
}

// connRateLimiter keeps go-libp2p's per-address connection rate limiting
// against floods but with a burst that lets a NAT full of clients reconnect
// after a relay restart. 127.0.0.1 and ::1 are unlimited.
func connRateLimiter(perIP int) *rate.Limiter {
	return &rate.Limiter{
		NetworkPrefixLimits: []rate.PrefixLimit{
			{Prefix: mustPrefix("127.0.0.1/32"), Limit: rate.Limit{}},
			{Prefix: mustPrefix("::1/128"), Limit: rate.Limit{}},
		},
		SubnetRateLimiter: rate.SubnetLimiter{
			IPv4SubnetLimits: []rate.SubnetLimit{{PrefixLength: 32, Limit: rate.Limit{RPS: 2, Burst: perIP}}},
			IPv6SubnetLimits: []rate.SubnetLimit{
				{PrefixLength: netkey.IPv6Bits, Limit: rate.Limit{RPS: 2, Burst: perIP}},
				{PrefixLength: netkey.IPv6WideBits, Limit: rate.Limit{RPS: 5, Burst: netkey.WideFactor * perIP}},
			},
			GracePeriod: time.Minute,
		},
	}
}

// newConnManager never closes a connection the resource manager admitted:
// like the Rust relay (connection_limits), DUSK_MAX_CONNECTIONS is enforced
// by refusing new connections, not by trimming held ones. go-libp2p's
// manager trims once the count reaches (not exceeds) its high watermark,
// so the watermark is the resource manager's total (inbound cap plus the
// outbound slack), reached only when both are full; then it sheds back to
// DUSK_MAX_CONNECTIONS. (A high watermark of DUSK_MAX_CONNECTIONS trimmed a
// full relay to 90 % a minute after the last client arrived.) The manager
// stays for the tags the relay service puts on peers it serves.
func newConnManager(maxConns int, opts ...connmgr.Option) (*connmgr.BasicConnMgr, error) {
	low := max(maxConns, 1)
	opts = append([]connmgr.Option{connmgr.WithGracePeriod(time.Minute)}, opts...)
	return connmgr.NewConnManager(low, low+outboundSlack, opts...)
}

// relayBufferSize is each direction's copy buffer of a circuit (go-libp2p's
// default 2 KiB meant a syscall per 2 KiB); relayMessageSize is the
// largest circuit v2 message go-libp2p books per stream in handshake.
const (
	relayBufferSize  = 32 << 10
	relayMessageSize = 4096
)

// relayResources maps the Rust relay's limits onto go-libp2p's. go-libp2p
// counts circuits per peer only (MaxCircuits), keeps one reservation per
// peer (a second one is a renewal, so DUSK_RELAY_MAX_RESERVATIONS_PER_PEER
// >= 1 always holds) and adds per-IP/ASN reservation caps keyed on the exact
// address; ours (per IPv4 address or IPv6 /56, see reservationsPerIP) and
// the total circuit cap are enforced in the hop wrapper.
func relayResources(c config.Relay) relay.Resources {
	r := relay.DefaultResources()
	total := maxReservations(c)
	r.ReservationTTL = c.ReservationTTL
	r.MaxReservations = total
	r.MaxReservationsPerPeer = c.MaxReservationsPerPeer
	r.MaxReservationsPerIP = total
	r.MaxReservationsPerASN = total
	r.MaxCircuits = c.MaxCircuitsPerPeer
	r.Limit = relayLimit(c.CircuitDuration, c.CircuitBytes)
	r.BufferSize = relayBufferSize
	return r
}

// relayLimit: 0 means unlimited. go-libp2p has one switch for both limits
// (nil = neither), so an unlimited half gets a value nobody reaches; the
// limit message carries duration as uint32 seconds.
func relayLimit(d time.Duration, bytes int64) *relay.RelayLimit {
	if d == 0 && bytes == 0 {
		return nil
	}
	if d == 0 {
		d = math.MaxUint32 * time.Second
	}
	if bytes == 0 {
		bytes = math.MaxInt64
	}
	return &relay.RelayLimit{Duration: d, Data: bytes}
}

func mustPrefix(s string) netip.Prefix { return netip.MustParsePrefix(s) }
