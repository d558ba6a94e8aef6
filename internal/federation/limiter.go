package federation

import (
	"context"
	"net/netip"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/duskchat/dusk-relay/internal/netkey"
	"github.com/duskchat/dusk-relay/internal/ratelimit"
)

const (
	// burstSeconds sizes a sender's burst: at the default rate 32 s of
	// traffic (8 MiB), room for a client answering one RequestSync with
	// a 64 KiB DocumentOffer for each of 128 communities.
	burstSeconds = 32
	// maxBuckets bounds the limiter's memory (ratelimit.Sweep: refilled
	// buckets are dropped first, a full bucket being the same as none).
	maxBuckets = 1 << 16
	// minMessageCost is what a message costs the sender's budget at the
	// least: every forwarded message costs the relay an RPC per receiving
	// client whatever its size, so at 256 KiB/s a sender gets at most 256
	// tiny messages a second, not 262,144 one-byte ones. The app's own
	// small messages (RequestSync, ProfileAnnounce) come a few a minute.
	minMessageCost = 1024
)

// messageCost is what a message of n bytes takes from its sender's budget.
func messageCost(n int) float64 { return float64(max(n, minMessageCost)) }

// clientLimiter bounds the client-topic bytes the relay accepts for
// forwarding from one sender's address prefix (IPv4 /32, IPv6 /56).
// Forwarding amplifies: each accepted byte goes to every subscribed client
// (about 1.3 × subscribers bytes out per byte in, measured), so without a
// bound one peer could make the relay send a thousand times its own rate.
// Peer relays are exempt: they carry many clients' messages.
type clientLimiter struct {
	h       host.Host
	self    peer.ID
	members map[peer.ID]struct{}
	now     func() time.Time
	onDrop  func(topic string)
	buckets *ratelimit.Keyed[netip.Prefix] // bytes
}

func newClientLimiter(h host.Host, self peer.ID, members map[peer.ID]struct{}, bytesPerSec int64, onDrop func(string)) *clientLimiter {
	return &clientLimiter{
		h: h, self: self, members: members,
		now: time.Now, onDrop: onDrop,
		buckets: ratelimit.New[netip.Prefix](float64(bytesPerSec), float64(bytesPerSec)*burstSeconds,
			maxBuckets, ratelimit.Sweep),
	}
}

// validate is an inline topic validator: it looks at the sender and the
// size only, never at the content.
func (l *clientLimiter) validate(_ context.Context, from peer.ID, msg *pubsub.Message) pubsub.ValidationResult {
	if from == l.self {
		return pubsub.ValidationAccept
	}
	if _, ok := l.members[from]; ok {
		return pubsub.ValidationAccept
	}
	key, ok := l.prefixOf(from)
	if !ok {
		// No connection left to attribute it to: do not forward.
		l.onDrop(msg.GetTopic())
		return pubsub.ValidationIgnore
	}
	if !l.take(key, messageCost(len(msg.Data))) {
		l.onDrop(msg.GetTopic())
		return pubsub.ValidationIgnore
	}
	return pubsub.ValidationAccept
}

// prefixOf is the budget key (netkey.Prefix) of p's first connection
// with an IP address; no loopback exemption.
func (l *clientLimiter) prefixOf(p peer.ID) (netip.Prefix, bool) {
	for _, c := range l.h.Network().ConnsToPeer(p) {
		if k, ok := netkey.FromMultiaddr(c.RemoteMultiaddr()); ok {
			return k, true
		}
	}
	return netip.Prefix{}, false
}

func (l *clientLimiter) take(key netip.Prefix, n float64) bool {
	return l.buckets.AllowN(key, n, l.now())
}
