// Package mesh makes the relays of a cluster look like one circuit relay
// to today's clients. A client dials every peer through its own relay, so
// a HOP CONNECT at relay A for a peer X reserved at member relay B is
// carried to B over /dusk/relay-mesh/1.0.0; B sends X an ordinary STOP
// naming the original initiator, and both relays splice bytes. The
// initiator sees an ordinary circuit via A, X an ordinary inbound circuit
// from the initiator via B (docs/PROTOCOLS.md, "Circuit mesh").
//
// Wire format of a mesh stream (A opens it to B), every message a
// varint-delimited circuit v2 protobuf, at most 4 KiB:
//
//	A -> B  HopMessage{CONNECT, peer: X}       the CONNECT A received
//	A -> B  StopMessage{CONNECT, peer: src}    the initiator, A's limit
//	B -> A  HopMessage{STATUS, status, limit}  B's answer and its limit
//
// then the circuit's bytes, initiator to X and back. B accepts mesh streams
// only from the relays in its own DUSK_PEER_RELAYS.
package mesh

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	pool "github.com/libp2p/go-buffer-pool"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	pbv2 "github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/pb"
	cproto "github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/proto"
	"github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/util"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// ProtocolID is the mesh protocol between the relays of a cluster.
const ProtocolID protocol.ID = "/dusk/relay-mesh/1.0.0"

const (
	// maxMessage is circuit v2's own cap on its messages.
	maxMessage = 4096
	// bufferSize per direction and circuit, as the relay service uses.
	bufferSize = 32 << 10

	// Timeouts: the initiator must get an answer within seconds, never a
	// hang. Each hop's wait is shorter than the one of the hop before it,
	// so the answer that reaches the initiator is the precise one.
	locateTimeout  = 2 * time.Second  // one record lookup
	openTimeout    = 5 * time.Second  // opening the mesh stream to B
	answerTimeout  = 10 * time.Second // A waits this long for B's answer
	requestTimeout = 5 * time.Second  // B reads A's request
	stopTimeout    = 8 * time.Second  // B waits this long for X's STOP answer
	writeTimeout   = 5 * time.Second  // any handshake write

	// Record lookups in flight, in total and per initiator. They run
	// before any circuit slot is taken; beyond these a CONNECT is answered
	// as for a peer reserved nowhere, so a slow record store or a flood of
	// CONNECTs for unknown peers cannot pile up waiting lookups.
	maxLookups        = 64
	maxLookupsPerPeer = 4
)

// Locator finds the relay holding a peer's live reservation (the cluster's
// reservation records). ok is false when no relay holds one.
type Locator interface {
	Locate(ctx context.Context, p peer.ID) (relay peer.ID, ok bool, err error)
}

// Local is what the mesh needs from this relay's circuit relay service.
type Local interface {
	// HasReservation reports whether p holds a live reservation here.
	HasReservation(p peer.ID) bool
	// AcquireCircuit takes a slot of the relay's total circuit cap.
	AcquireCircuit() (release func(), ok bool)
	// CircuitLimit is the limit the relay announces (nil: unlimited).
	CircuitLimit() *pbv2.Limit
}

// Config sizes the mesh.
type Config struct {
	// Members are the other relays of the cluster (DUSK_PEER_RELAYS): the
	// only peers that may open mesh streams here and the only relays
	// CONNECTs are forwarded to.
	Members []peer.ID
	// MaxCircuitsPerPeer caps the mesh circuits one peer (initiator or
	// target) takes part in at this relay (DUSK_RELAY_MAX_CIRCUITS_PER_PEER;
	// counted apart from the relay service's own circuits, which the mesh
	// cannot see). The total cap is shared through Local.AcquireCircuit.
	MaxCircuitsPerPeer int
}

// Mesh forwards CONNECTs to member relays and serves their mesh streams.
type Mesh struct {
	h       host.Host
	local   Local
	loc     Locator
	members map[peer.ID]struct{}
	perPeer int
	log     *zap.Logger
	m       *metrics

	mu      sync.Mutex
	counts  map[peer.ID]int
	lookups map[peer.ID]int // in flight per initiator; see maxLookups
	looking int
	live    map[network.Stream]struct{} // spliced streams, reset on Close
	closed  bool
}

// New builds the mesh; Attach starts serving member relays. A nil Locator
// means CONNECTs are never forwarded (this relay still serves members).
func New(h host.Host, local Local, loc Locator, cfg Config, log *zap.Logger, reg prometheus.Registerer) (*Mesh, error) {
	if log == nil {
		log = zap.NewNop()
	}
	m := &Mesh{
		h: h, local: local, loc: loc, log: log,
		members: make(map[peer.ID]struct{}, len(cfg.Members)),
		perPeer: cfg.MaxCircuitsPerPeer,
		m:       newMetrics(),
		counts:  make(map[peer.ID]int),
		lookups: make(map[peer.ID]int),
		live:    make(map[network.Stream]struct{}),
	}
	for _, p := range cfg.Members {
		if p != h.ID() {
			m.members[p] = struct{}{}
		}
	}
	if reg != nil {
		if err := m.m.register(reg, m); err != nil {
			return nil, fmt.Errorf("mesh: metrics: %w", err)
		}
	}
	return m, nil
}

// Attach registers the mesh protocol handler.
func (m *Mesh) Attach() { m.h.SetStreamHandler(ProtocolID, m.handle) }

// Close stops taking mesh streams and ends the live mesh circuits.
func (m *Mesh) Close() error {
	m.h.RemoveStreamHandler(ProtocolID)
	m.mu.Lock()
	m.closed = true
	live := make([]network.Stream, 0, len(m.live))
	for s := range m.live {
		live = append(live, s)
	}
	m.mu.Unlock()
	for _, s := range live {
		_ = s.Reset()
	}
	return nil
}

// Circuits is the number of live mesh circuits at this relay.
func (m *Mesh) Circuits() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.live) / 2
}

// Forward implements the hop hook (p2p.Forwarder): a CONNECT from src to
// dst, which holds no reservation here.
func (m *Mesh) Forward(s network.Stream, src, dst peer.ID) (pbv2.Status, func(), bool) {
	if m.loc == nil {
		return pbv2.Status_UNUSED, nil, false
	}
	if !m.startLookup(src) {
		m.m.circuit(entry, "busy")
		return pbv2.Status_UNUSED, nil, false
	}
	ctx, cancel := context.WithTimeout(context.Background(), locateTimeout)
	at, ok, err := m.loc.Locate(ctx, dst)
	cancel()
	m.endLookup(src)
	switch {
	case err != nil:
		// The relay answers NO_RESERVATION, as for a peer reserved nowhere.
		m.m.circuit(entry, "locate_error")
		m.log.Debug("mesh: reservation lookup failed", zap.Stringer("dst", dst), zap.Error(err))
		return pbv2.Status_UNUSED, nil, false
	case !ok || at == m.h.ID():
		return pbv2.Status_UNUSED, nil, false
	}
	if _, member := m.members[at]; !member {
		m.log.Debug("mesh: target reserved at a relay outside DUSK_PEER_RELAYS",
			zap.Stringer("dst", dst), zap.Stringer("relay", at))
		return pbv2.Status_UNUSED, nil, false
	}
	refuse := func(st pbv2.Status, result string) (pbv2.Status, func(), bool) {
		m.m.circuit(entry, result)
		_ = writeStatus(s, st, nil) // a failed write resets s
		return st, nil, true
	}
	if m.h.Network().Connectedness(at) != network.Connected {
		return refuse(pbv2.Status_CONNECTION_FAILED, "unreachable")
	}
	release, ok := m.local.AcquireCircuit()
	if !ok {
		return refuse(pbv2.Status_RESOURCE_LIMIT_EXCEEDED, "limit")
	}
	if !m.take(src, dst) {
		release()
		return refuse(pbv2.Status_RESOURCE_LIMIT_EXCEEDED, "limit")
	}
	done := func() {
		m.give(src, dst)
		release()
	}
	ms, remote, st := m.open(at, src, dst)
	if st != pbv2.Status_OK {
		done()
		result := "refused"
		if ms == nil {
			result = "unreachable"
		}
		return refuse(st, result)
	}
	own := m.local.CircuitLimit()
	if err := writeStatus(s, pbv2.Status_OK, minLimit(own, remote)); err != nil {
		_ = ms.Reset()
		done()
		m.m.circuit(entry, "failed")
		return pbv2.Status_CONNECTION_FAILED, nil, true
	}
	m.m.circuit(entry, "opened")
	return pbv2.Status_OK, func() {
		defer done()
		m.splice(entry, s, ms, own)
	}, true
}

// startLookup admits one record lookup for initiator src.
func (m *Mesh) startLookup(src peer.ID) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.looking >= maxLookups || m.lookups[src] >= maxLookupsPerPeer {
		return false
	}
	m.looking++
	m.lookups[src]++
	return true
}

func (m *Mesh) endLookup(src peer.ID) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.looking--
	if c := m.lookups[src] - 1; c > 0 {
		m.lookups[src] = c
	} else {
		delete(m.lookups, src)
	}
}

// open asks member relay at to connect src to dst. It returns the mesh
// stream (nil when at could not be reached), the limit at announced and
// the status for the initiator.
func (m *Mesh) open(at, src, dst peer.ID) (network.Stream, *pbv2.Limit, pbv2.Status) {
	ctx, cancel := context.WithTimeout(context.Background(), openTimeout)
	defer cancel()
	ms, err := m.h.NewStream(network.WithNoDial(ctx, "relay mesh"), at, ProtocolID)
	if err != nil {
		m.log.Debug("mesh: cannot open a stream to the member relay", zap.Stringer("relay", at), zap.Error(err))
		return nil, nil, pbv2.Status_CONNECTION_FAILED
	}
	fail := func(st pbv2.Status, why string, err error) (network.Stream, *pbv2.Limit, pbv2.Status) {
		_ = ms.Reset()
		m.log.Debug("mesh: member relay did not connect", zap.Stringer("relay", at),
			zap.Stringer("src", src), zap.Stringer("dst", dst), zap.String("why", why), zap.Error(err))
		return ms, nil, st
	}
	_ = ms.SetDeadline(time.Now().Add(answerTimeout))
	wr := util.NewDelimitedWriter(ms)
	req := pbv2.HopMessage{Type: pbv2.HopMessage_CONNECT.Enum(), Peer: &pbv2.Peer{Id: []byte(dst)}}
	stop := pbv2.StopMessage{Type: pbv2.StopMessage_CONNECT.Enum(), Peer: &pbv2.Peer{Id: []byte(src)},
		Limit: m.local.CircuitLimit()}
	if err := wr.WriteMsg(&req); err != nil {
		return fail(pbv2.Status_CONNECTION_FAILED, "write request", err)
	}
	if err := wr.WriteMsg(&stop); err != nil {
		return fail(pbv2.Status_CONNECTION_FAILED, "write request", err)
	}
	rd := util.NewDelimitedReader(ms, maxMessage)
	defer rd.Close()
	var resp pbv2.HopMessage
	if err := rd.ReadMsg(&resp); err != nil {
		return fail(pbv2.Status_CONNECTION_FAILED, "read answer", err)
	}
	if resp.GetType() != pbv2.HopMessage_STATUS {
		return fail(pbv2.Status_CONNECTION_FAILED, "answer is not a STATUS", nil)
	}
	switch st := resp.GetStatus(); st {
	case pbv2.Status_OK:
	case pbv2.Status_NO_RESERVATION, pbv2.Status_RESOURCE_LIMIT_EXCEEDED:
		// The record was stale, or B is full: the initiator learns which.
		return fail(st, "member relay answered "+st.String(), nil)
	default:
		return fail(pbv2.Status_CONNECTION_FAILED, "member relay answered "+st.String(), nil)
	}
	_ = ms.SetDeadline(time.Time{})
	return ms, resp.GetLimit(), pbv2.Status_OK
}

// handle serves a mesh stream from a member relay (B's side).
func (m *Mesh) handle(s network.Stream) {
	from := s.Conn().RemotePeer()
	if _, member := m.members[from]; !member {
		m.m.circuit(exit, "not_member")
		// Debug: identities are free, one line each would let anyone fill the log.
		m.log.Debug("mesh: stream from a peer not in DUSK_PEER_RELAYS reset", zap.Stringer("peer", from))
		_ = s.Reset()
		return
	}
	_ = s.SetReadDeadline(time.Now().Add(requestTimeout))
	rd := util.NewDelimitedReader(s, maxMessage)
	var req pbv2.HopMessage
	var stop pbv2.StopMessage
	err := rd.ReadMsg(&req)
	if err == nil {
		err = rd.ReadMsg(&stop)
	}
	rd.Close()
	_ = s.SetReadDeadline(time.Time{})
	refuse := func(st pbv2.Status, result string) {
		m.m.circuit(exit, result)
		_ = writeStatus(s, st, nil) // a failed write resets s
	}
	if err != nil || req.GetType() != pbv2.HopMessage_CONNECT || stop.GetType() != pbv2.StopMessage_CONNECT {
		refuse(pbv2.Status_MALFORMED_MESSAGE, "malformed")
		return
	}
	dst, err1 := peer.IDFromBytes(req.GetPeer().GetId())
	src, err2 := peer.IDFromBytes(stop.GetPeer().GetId())
	if err := errors.Join(err1, err2); err != nil {
		refuse(pbv2.Status_MALFORMED_MESSAGE, "malformed")
		return
	}
	if !m.local.HasReservation(dst) {
		refuse(pbv2.Status_NO_RESERVATION, "no_reservation")
		return
	}
	release, ok := m.local.AcquireCircuit()
	if !ok {
		refuse(pbv2.Status_RESOURCE_LIMIT_EXCEEDED, "limit")
		return
	}
	defer release()
	if !m.take(src, dst) {
		refuse(pbv2.Status_RESOURCE_LIMIT_EXCEEDED, "limit")
		return
	}
	defer m.give(src, dst)

	own := m.local.CircuitLimit()
	bs, err := m.stop(src, dst, own)
	if err != nil {
		m.log.Debug("mesh: target did not accept the circuit", zap.Stringer("relay", from),
			zap.Stringer("src", src), zap.Stringer("dst", dst), zap.Error(err))
		refuse(pbv2.Status_CONNECTION_FAILED, "failed")
		return
	}
	if err := writeStatus(s, pbv2.Status_OK, own); err != nil {
		_ = bs.Reset()
		m.m.circuit(exit, "failed")
		return
	}
	m.m.circuit(exit, "opened")
	m.log.Debug("mesh circuit opened", zap.Stringer("relay", from), zap.Stringer("src", src), zap.Stringer("dst", dst))
	m.splice(exit, s, bs, own)
}

// stop sends dst the STOP an ordinary circuit starts with, naming the
// original initiator src, and waits for its OK.
func (m *Mesh) stop(src, dst peer.ID, lim *pbv2.Limit) (network.Stream, error) {
	ctx, cancel := context.WithTimeout(context.Background(), stopTimeout)
	defer cancel()
	bs, err := m.h.NewStream(network.WithNoDial(ctx, "relay mesh stop"), dst, cproto.ProtoIDv2Stop)
	if err != nil {
		return nil, fmt.Errorf("open stop stream: %w", err)
	}
	_ = bs.SetDeadline(time.Now().Add(stopTimeout))
	msg := pbv2.StopMessage{Type: pbv2.StopMessage_CONNECT.Enum(), Peer: &pbv2.Peer{Id: []byte(src)}, Limit: lim}
	if err := util.NewDelimitedWriter(bs).WriteMsg(&msg); err != nil {
		_ = bs.Reset()
		return nil, fmt.Errorf("write stop: %w", err)
	}
	rd := util.NewDelimitedReader(bs, maxMessage)
	defer rd.Close()
	var resp pbv2.StopMessage
	if err := rd.ReadMsg(&resp); err != nil {
		_ = bs.Reset()
		return nil, fmt.Errorf("read stop answer: %w", err)
	}
	if resp.GetType() != pbv2.StopMessage_STATUS || resp.GetStatus() != pbv2.Status_OK {
		_ = bs.Reset()
		return nil, fmt.Errorf("stop answer %v %v", resp.GetType(), resp.GetStatus())
	}
	_ = bs.SetDeadline(time.Time{})
	return bs, nil
}

// take counts a circuit against both of its peers' caps.
func (m *Mesh) take(src, dst peer.ID) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.perPeer > 0 && (m.counts[src] >= m.perPeer || m.counts[dst] >= m.perPeer) {
		return false
	}
	m.counts[src]++
	m.counts[dst]++
	return true
}

func (m *Mesh) give(src, dst peer.ID) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, p := range []peer.ID{src, dst} {
		if c := m.counts[p] - 1; c > 0 {
			m.counts[p] = c
		} else {
			delete(m.counts, p)
		}
	}
}

// splice relays between the initiator's side and the target's side until
// both directions end, within lim (as the relay service does: a deadline
// for the duration, a byte cap per direction).
func (m *Mesh) splice(side string, toInit, toTarget network.Stream, lim *pbv2.Limit) {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		_ = toInit.Reset()
		_ = toTarget.Reset()
		return
	}
	m.live[toInit], m.live[toTarget] = struct{}{}, struct{}{}
	m.mu.Unlock()
	defer func() {
		m.mu.Lock()
		delete(m.live, toInit)
		delete(m.live, toTarget)
		m.mu.Unlock()
	}()

	data := int64(-1)
	if lim != nil {
		if d := lim.GetDuration(); d > 0 {
			deadline := time.Now().Add(time.Duration(d) * time.Second)
			_ = toInit.SetDeadline(deadline)
			_ = toTarget.SetDeadline(deadline)
		}
		if b := lim.GetData(); b > 0 && b <= 1<<62 {
			data = int64(b)
		}
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		pipe(toTarget, toInit, data, m.m.bytes.WithLabelValues(side, "initiator_to_target"))
	}()
	pipe(toInit, toTarget, data, m.m.bytes.WithLabelValues(side, "target_to_initiator"))
	<-done
	_ = toInit.Close()
	_ = toTarget.Close()
}

// pipe copies src to dst, at most limit bytes (-1: no limit).
func pipe(dst, src network.Stream, limit int64, count prometheus.Counter) {
	buf := pool.Get(bufferSize)
	defer pool.Put(buf)
	var r io.Reader = src
	if limit >= 0 {
		r = io.LimitReader(src, limit)
	}
	var n int64
	var err error
	for {
		nr, er := r.Read(buf)
		if nr > 0 {
			nw, ew := dst.Write(buf[:nr])
			if nw > 0 {
				n += int64(nw)
				count.Add(float64(nw))
			}
			if ew == nil && nw != nr {
				ew = io.ErrShortWrite
			}
			if ew != nil {
				err = ew
				break
			}
		}
		if er != nil {
			if er != io.EOF {
				err = er
			}
			break
		}
	}
	if err != nil {
		_ = src.Reset()
		_ = dst.Reset()
		return
	}
	_ = dst.CloseWrite()
	if limit >= 0 && n == limit {
		_ = src.CloseRead() // at the cap: discard the rest
	}
}

// writeStatus answers a hop or mesh request.
func writeStatus(s network.Stream, st pbv2.Status, lim *pbv2.Limit) error {
	_ = s.SetWriteDeadline(time.Now().Add(writeTimeout))
	msg := pbv2.HopMessage{Type: pbv2.HopMessage_STATUS.Enum(), Status: st.Enum(), Limit: lim}
	err := util.NewDelimitedWriter(s).WriteMsg(&msg)
	_ = s.SetWriteDeadline(time.Time{})
	if err != nil {
		_ = s.Reset()
		return fmt.Errorf("mesh: write status: %w", err)
	}
	if st != pbv2.Status_OK {
		_ = s.Close()
	}
	return nil
}

// minLimit is the tighter of two limits (nil: unlimited): both relays
// enforce theirs, so the circuit ends at the first one reached.
func minLimit(a, b *pbv2.Limit) *pbv2.Limit {
	if a == nil {
		return b
	}
	if b == nil {
		return a
	}
	d, n := a.GetDuration(), a.GetData()
	if bd := b.GetDuration(); bd > 0 && (d == 0 || bd < d) {
		d = bd
	}
	if bn := b.GetData(); bn > 0 && (n == 0 || bn < n) {
		n = bn
	}
	return &pbv2.Limit{Duration: &d, Data: &n}
}
