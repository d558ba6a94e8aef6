package p2p

import (
	"encoding/binary"
	"io"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	pbv2 "github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/pb"
	"github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/relay"
	"github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/util"
	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"

	"github.com/duskchat/dusk-relay/internal/netkey"
)

// maxHopMessage is the relay's own cap on hop messages.
const maxHopMessage = 4096

// refuseTimeout bounds writing our own refusal.
const refuseTimeout = 10 * time.Second

// wrapHop wraps the relay's hop handler. We read the request first (to know
// its type and destination), replay it to the relay, and watch the status
// the relay writes back. This gives peer IDs for the logs, exact circuit
// counts, and a place to enforce the total circuit cap that go-libp2p lacks.
func (n *Node) wrapHop(inner network.StreamHandler) network.StreamHandler {
	return func(s network.Stream) { n.handleHop(s, inner) }
}

func (n *Node) handleHop(s network.Stream, inner network.StreamHandler) {
	src := s.Conn().RemotePeer()
	_ = s.SetReadDeadline(time.Now().Add(relay.StreamTimeout))
	raw, msg := readHop(s)
	_ = s.SetReadDeadline(time.Time{})
	hs := &hopStream{Stream: s, replay: raw, n: n, src: src}
	if msg == nil { // let the relay answer MALFORMED_MESSAGE
		inner(hs)
		return
	}
	switch msg.GetType() {
	case pbv2.HopMessage_RESERVE:
		renewal, ok := n.admitReservation(src, s.Conn().RemoteMultiaddr())
		if !ok {
			n.m.reservationReqs.WithLabelValues("refused").Inc()
			if ce := n.log.Check(zap.DebugLevel, "reservation refused: address at its reservation limit"); ce != nil {
				ce.Write(zap.Stringer("peer", src), zap.Stringer("addr", s.Conn().RemoteMultiaddr()),
					zap.Int("max_reservations_per_ip", n.rsvPerIP))
			}
			refuse(s, pbv2.Status_RESERVATION_REFUSED)
			n.tr.ReservationRequestHandled(pbv2.Status_RESERVATION_REFUSED)
			return
		}
		inner(hs)
		st := hs.result()
		n.settleReservation(src, renewal, st == pbv2.Status_OK)
		if st != pbv2.Status_OK {
			n.m.reservationReqs.WithLabelValues("refused").Inc()
			n.log.Debug("reservation refused", zap.Stringer("peer", src), zap.Stringer("status", st),
				zap.Int64("reservations", n.reservations.Load()))
			return
		}
		if renewal {
			n.m.reservationReqs.WithLabelValues("renewed").Inc()
			n.log.Debug("reservation renewed", zap.Stringer("peer", src), zap.Int64("reservations", n.reservations.Load()))
			return
		}
		n.m.reservationReqs.WithLabelValues("accepted").Inc()
		// Debug: fresh identities are free, one line each would let anyone fill the log.
		n.log.Debug("reservation accepted", zap.Stringer("peer", src),
			zap.Int64("reservations", n.reservations.Load()), zap.Int64("connections", n.conns.Load()))

	case pbv2.HopMessage_CONNECT:
		dst, err := peer.IDFromBytes(msg.GetPeer().GetId())
		if err != nil {
			inner(hs) // relay answers MALFORMED_MESSAGE
			return
		}
		hs.dst, hs.connect = dst, true
		// Before the slot: the forwarder takes one only once it knows
		// another relay holds dst, so lookups never hold circuit slots.
		if n.forward(s, src, dst) { // reserved at another relay of the cluster
			return
		}
		key := addrKey(s.Conn().RemoteMultiaddr())
		if !n.acquireCircuitFrom(key) {
			n.m.circuitReqs.WithLabelValues("refused").Inc()
			if ce := n.log.Check(zap.DebugLevel, "circuit refused: relay or address at its circuit limit"); ce != nil {
				ce.Write(zap.Stringer("src", src), zap.Stringer("dst", dst), zap.Stringer("addr", s.Conn().RemoteMultiaddr()),
					zap.Int("max_circuits", n.cfg.MaxCircuits), zap.Int("max_circuits_per_ip", n.circPerIP))
			}
			refuse(s, pbv2.Status_RESOURCE_LIMIT_EXCEEDED)
			n.tr.ConnectionRequestHandled(pbv2.Status_RESOURCE_LIMIT_EXCEEDED)
			return
		}
		hs.key = key
		inner(hs)
		if st := hs.result(); st != pbv2.Status_OK {
			n.releaseCircuitFrom(key)
			n.m.circuitReqs.WithLabelValues("refused").Inc()
			n.log.Debug("circuit refused", zap.Stringer("src", src), zap.Stringer("dst", dst), zap.Stringer("status", st))
			return
		}
		n.m.circuitReqs.WithLabelValues("opened").Inc()
		n.log.Debug("circuit opened", zap.Stringer("src", src), zap.Stringer("dst", dst),
			zap.Int64("circuits", n.circuits.Load()), zap.Int64("connections", n.conns.Load()))

	default:
		inner(hs)
	}
}

// acquireCircuitFrom takes a slot of the source prefix's circuit cap
// (circuitsPerIP; the zero prefix is exempt) and one of the total cap;
// releaseCircuitFrom gives both back.
func (n *Node) acquireCircuitFrom(key netip.Prefix) bool {
	if !n.takePrefixCircuit(key) {
		return false
	}
	if !n.acquireCircuit() {
		n.givePrefixCircuit(key)
		return false
	}
	return true
}

func (n *Node) releaseCircuitFrom(key netip.Prefix) (circuits int64) {
	n.givePrefixCircuit(key)
	return n.circuits.Add(-1)
}

func (n *Node) takePrefixCircuit(key netip.Prefix) bool {
	n.circMu.Lock()
	defer n.circMu.Unlock()
	return n.circPerPrefix.take(key, n.circPerIP)
}

func (n *Node) givePrefixCircuit(key netip.Prefix) {
	n.circMu.Lock()
	defer n.circMu.Unlock()
	n.circPerPrefix.give(key)
}

// circuitsFrom is the number of circuits counted under a's prefix.
func (n *Node) circuitsFrom(a netip.Addr) int {
	n.circMu.Lock()
	defer n.circMu.Unlock()
	return n.circPerPrefix[netkey.Prefix(a)]
}

// acquireCircuit takes a slot of the total circuit cap (Rust's max_circuits).
func (n *Node) acquireCircuit() bool {
	limit := int64(n.cfg.MaxCircuits)
	for {
		c := n.circuits.Load()
		if c >= limit {
			return false
		}
		if n.circuits.CompareAndSwap(c, c+1) {
			return true
		}
	}
}

// refuse answers a hop request the way the relay does for its own errors.
func refuse(s network.Stream, status pbv2.Status) {
	_ = s.SetWriteDeadline(time.Now().Add(refuseTimeout))
	msg := pbv2.HopMessage{Type: pbv2.HopMessage_STATUS.Enum(), Status: status.Enum()}
	if err := util.NewDelimitedWriter(s).WriteMsg(&msg); err != nil {
		_ = s.Reset()
		return
	}
	_ = s.Close()
}

// readHop reads one varint-delimited hop message without reading past it.
// It returns every byte consumed (to replay) and the message, or nil when
// the input is not a well-formed message (the relay then rejects it).
func readHop(r io.Reader) ([]byte, *pbv2.HopMessage) {
	br := &recordingByteReader{r: r}
	size, err := binary.ReadUvarint(br)
	if err != nil || size > maxHopMessage {
		return br.buf, nil
	}
	start := len(br.buf)
	br.buf = append(br.buf, make([]byte, size)...)
	got, err := io.ReadFull(r, br.buf[start:])
	br.buf = br.buf[:start+got]
	if err != nil {
		return br.buf, nil
	}
	var msg pbv2.HopMessage
	if err := proto.Unmarshal(br.buf[start:], &msg); err != nil {
		return br.buf, nil
	}
	return br.buf, &msg
}

type recordingByteReader struct {
	r   io.Reader
	buf []byte
	one [1]byte
}

func (b *recordingByteReader) ReadByte() (byte, error) {
	if _, err := io.ReadFull(b.r, b.one[:]); err != nil {
		return 0, err
	}
	b.buf = append(b.buf, b.one[0])
	return b.one[0], nil
}

// hopStream is what the relay sees instead of the raw hop stream.
//
// Concurrency: the relay reads the request and writes the response in the
// handler goroutine, then (for a circuit) starts one goroutine reading and
// one writing. The go statements order those after the handshake, and
// Close is called once after both finish.
type hopStream struct {
	network.Stream
	n        *Node
	src, dst peer.ID
	connect  bool
	key      netip.Prefix // the source's address prefix, which holds a circuit slot

	replay []byte // request bytes already read by us, handed to the relay first

	mu     sync.Mutex
	parsed atomic.Bool
	resp   []byte
	status pbv2.Status
	valid  bool

	live     atomic.Bool // an OK CONNECT answer went out: a circuit exists
	opened   time.Time
	in, out  atomic.Int64
	closeOne sync.Once
}

func (h *hopStream) Read(p []byte) (int, error) {
	if len(h.replay) > 0 {
		n := copy(p, h.replay)
		h.replay = h.replay[n:]
		return n, nil
	}
	n, err := h.Stream.Read(p)
	h.in.Add(int64(n))
	return n, err
}

func (h *hopStream) Write(p []byte) (int, error) {
	n, err := h.Stream.Write(p)
	if h.parsed.Load() {
		h.out.Add(int64(n))
		return n, err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.resp = append(h.resp, p[:n]...)
	size, vlen := binary.Uvarint(h.resp)
	switch {
	case vlen < 0 || size > maxHopMessage || len(h.resp) > maxHopMessage+binary.MaxVarintLen64:
		h.parsed.Store(true) // not a hop message; stop looking
		h.resp = nil
	case vlen > 0 && uint64(len(h.resp)-vlen) >= size:
		var msg pbv2.HopMessage
		if proto.Unmarshal(h.resp[vlen:vlen+int(size)], &msg) == nil && msg.GetType() == pbv2.HopMessage_STATUS {
			h.status, h.valid = msg.GetStatus(), true
			if h.connect && h.status == pbv2.Status_OK {
				// Before the relay starts copying, so Close always sees it.
				h.opened = time.Now()
				h.live.Store(true)
			}
		}
		h.parsed.Store(true)
		h.resp = nil
	}
	return n, err
}

// result is the status the relay answered (UNUSED when none was written).
func (h *hopStream) result() pbv2.Status {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.valid {
		return pbv2.Status_UNUSED
	}
	return h.status
}

func (h *hopStream) Close() error {
	h.closeOne.Do(func() {
		if !h.live.Load() {
			return
		}
		total := h.n.releaseCircuitFrom(h.key)
		if ce := h.n.log.Check(zap.DebugLevel, "circuit closed"); ce != nil {
			ce.Write(zap.Stringer("src", h.src), zap.Stringer("dst", h.dst),
				zap.Duration("duration", time.Since(h.opened).Round(time.Millisecond)),
				zap.Int64("bytes_src_to_dst", h.in.Load()), zap.Int64("bytes_dst_to_src", h.out.Load()),
				zap.Int64("circuits", total))
		}
	})
	return h.Stream.Close()
}

// tracer wraps go-libp2p's relay metrics (when registered) and keeps the
// active reservation count, which only the relay knows (expiry, disconnects).
type tracer struct {
	inner relay.MetricsTracer
	n     *Node
}

var _ relay.MetricsTracer = (*tracer)(nil)

func (t *tracer) RelayStatus(enabled bool) {
	if t.inner != nil {
		t.inner.RelayStatus(enabled)
	}
}

func (t *tracer) ConnectionOpened() {
	if t.inner != nil {
		t.inner.ConnectionOpened()
	}
}

func (t *tracer) ConnectionClosed(d time.Duration) {
	if t.inner != nil {
		t.inner.ConnectionClosed(d)
	}
}

func (t *tracer) ConnectionRequestHandled(status pbv2.Status) {
	if t.inner != nil {
		t.inner.ConnectionRequestHandled(status)
	}
}

func (t *tracer) ReservationAllowed(isRenewal bool) {
	if !isRenewal {
		t.n.reservations.Add(1)
	}
	if t.inner != nil {
		t.inner.ReservationAllowed(isRenewal)
	}
}

func (t *tracer) ReservationClosed(cnt int) {
	if cnt != 0 {
		t.n.reservations.Add(-int64(cnt))
	}
	if t.inner != nil {
		t.inner.ReservationClosed(cnt)
	}
}

func (t *tracer) ReservationRequestHandled(status pbv2.Status) {
	if t.inner != nil {
		t.inner.ReservationRequestHandled(status)
	}
}

func (t *tracer) BytesTransferred(cnt int) {
	t.n.m.relayedBytes.Add(float64(cnt))
	if t.inner != nil {
		t.inner.BytesTransferred(cnt)
	}
}
