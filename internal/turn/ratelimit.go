package turn

import (
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/duskchat/dusk-relay/internal/ratelimit"
)

// Unauthenticated answers over UDP are budgeted per source prefix. A
// 20-byte Allocate draws a 72-byte 401 and a 20-byte Binding a 32-byte
// answer, to whatever source address the datagram claims: without a
// budget the server amplifies floods aimed at a spoofed victim. Over TCP
// the handshake proves the address, so TCP answers are not budgeted; nor
// are 127.0.0.1 and ::1 (budgetExempt).
//
// Budget per prefix (ipKey: IPv4 /32, IPv6 /56): answerRate per second,
// answerBurst at once. An honest client needs one 401 per allocation and a
// few Bindings per ICE gathering, so a NAT full of Dusk users stays far
// below it; a victim receives at most answerRate × 72 bytes/s (≈ 4.6 KB/s)
// from this relay. Answers beyond the budget are dropped silently (a
// client retransmits) and counted (dusk_turn_answers_dropped_total).
const (
	answerRate  = 64
	answerBurst = 256
	// answerPrefixes bounds the prefixes tracked; spoofed sources are free,
	// so the table forgets old prefixes (a forgotten prefix starts with a
	// full bucket again, which costs an attacker answerPrefixes/2 datagrams
	// per answerBurst answers regained).
	answerPrefixes = 1 << 16
)

// Kinds of budgeted answers (metric label values).
const (
	answerBinding = iota
	answerUnauth
	numAnswerKinds
)

var answerKindNames = [numAnswerKinds]string{"binding", "unauthenticated"}

// answerLimiter is the answer budget per source prefix, in two
// generations (ratelimit.Generations): spoofed UDP sources make a flood
// of fresh prefixes the normal case, so making room must not scan.
type answerLimiter struct {
	budget  *ratelimit.Keyed[netip.Prefix]
	dropped [numAnswerKinds]atomic.Uint64
}

func newAnswerLimiter(rate, burst float64, max int) *answerLimiter {
	return &answerLimiter{budget: ratelimit.New[netip.Prefix](rate, burst, max, ratelimit.Generations)}
}

// allow takes one token from p's bucket; false means: do not answer.
func (l *answerLimiter) allow(p netip.Prefix, kind int, now time.Time) bool {
	if l.budget.Allow(p, now) {
		return true
	}
	l.dropped[kind].Add(1)
	return false
}

func (l *answerLimiter) size() int { return l.budget.Len() }

// ownerKey names an allocation's client transport address.
type ownerKey struct {
	tcp bool
	ap  netip.AddrPort
}

func ownerKeyOf(a net.Addr) (ownerKey, bool) {
	switch v := a.(type) {
	case *net.UDPAddr:
		ap := v.AddrPort()
		return ownerKey{false, netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())}, true
	case *net.TCPAddr:
		ap := v.AddrPort()
		return ownerKey{true, netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())}, true
	}
	return ownerKey{}, false
}

// allocOwners remembers the username each live allocation was created
// with, so a request on it with another username gets 441 (RFC 8656 §5).
// One entry per live allocation: bounded by the allocation quota.
type allocOwners struct {
	mu sync.Mutex
	m  map[ownerKey]string
}

func (o *allocOwners) set(src net.Addr, username string) {
	k, ok := ownerKeyOf(src)
	if !ok {
		return
	}
	o.mu.Lock()
	if o.m == nil {
		o.m = map[ownerKey]string{}
	}
	o.m[k] = username
	o.mu.Unlock()
}

func (o *allocOwners) remove(src net.Addr) {
	if k, ok := ownerKeyOf(src); ok {
		o.mu.Lock()
		delete(o.m, k)
		o.mu.Unlock()
	}
}

func (o *allocOwners) get(src net.Addr) (string, bool) {
	k, ok := ownerKeyOf(src)
	if !ok {
		return "", false
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	u, ok := o.m[k]
	return u, ok
}

func (o *allocOwners) len() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.m)
}

// gateState is the auth gate's and TCP framing's state beyond pion's:
// the answer budget, allocation owners, and their counters (a Prometheus
// collector of its own).
type gateState struct {
	answers    *answerLimiter
	owners     allocOwners
	wrongCreds atomic.Uint64
	tcp        *tcpListener
	descs      map[string]*prometheus.Desc
}

func newGateState() *gateState {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(prometheus.BuildFQName("dusk", "turn", name), help, labels, nil)
	}
	return &gateState{
		answers: newAnswerLimiter(answerRate, answerBurst, answerPrefixes),
		descs: map[string]*prometheus.Desc{
			"dropped":    d("answers_dropped_total", "Unauthenticated UDP answers (Binding, 401/400) not sent: the source prefix's budget was spent.", "request"),
			"wrong":      d("wrong_credentials_total", "Requests on an allocation with another username than its own, refused with 441."),
			"evicted":    d("tcp_evicted_connections_total", "TCP connections without an allocation closed to make room for a new connection."),
			"bad_frames": d("tcp_bad_frames_total", "TCP connections closed for a frame that is neither STUN nor ChannelData within the size limit."),
			"dropped_fr": d("tcp_dropped_frames_total", "TCP ChannelData frames dropped (payload under 5 bytes or starting with the STUN magic cookie)."),
			"write_to":   d("tcp_write_timeouts_total", "TCP connections closed because a write to the client timed out."),
			"unauth":     d("tcp_unauthenticated_connections", "TURN TCP connections open without an allocation."),
		},
	}
}

func (g *gateState) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range g.descs {
		ch <- d
	}
}

func (g *gateState) Collect(ch chan<- prometheus.Metric) {
	m := func(name string, t prometheus.ValueType, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(g.descs[name], t, float64(v), labels...)
	}
	for i, n := range answerKindNames {
		m("dropped", prometheus.CounterValue, g.answers.dropped[i].Load(), n)
	}
	m("wrong", prometheus.CounterValue, g.wrongCreds.Load())
	if l := g.tcp; l != nil {
		m("evicted", prometheus.CounterValue, l.evicted.Load())
		m("bad_frames", prometheus.CounterValue, l.badFrames.Load())
		m("dropped_fr", prometheus.CounterValue, l.dropFrames.Load())
		m("write_to", prometheus.CounterValue, l.writeTimeouts.Load())
		m("unauth", prometheus.GaugeValue, uint64(l.unauthCount()))
	}
}

// allocationCreated and allocationDeleted follow pion's allocation
// events: the owner's username, and the TCP connection's slot class.
func (g *gateState) allocationCreated(src net.Addr, username string) {
	g.owners.set(src, username)
	if g.tcp != nil {
		g.tcp.allocationChanged(src, +1)
	}
}

func (g *gateState) allocationDeleted(src net.Addr) {
	g.owners.remove(src)
	if g.tcp != nil {
		g.tcp.allocationChanged(src, -1)
	}
}
