package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	pubsubpb "github.com/libp2p/go-libp2p-pubsub/pb"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	circuitpb "github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/pb"
	circuitproto "github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/proto"
	"github.com/libp2p/go-msgio/pbio"
	ma "github.com/multiformats/go-multiaddr"
	mss "github.com/multiformats/go-multistream"
	rdv "github.com/waku-org/go-libp2p-rendezvous"
	rdvpb "github.com/waku-org/go-libp2p-rendezvous/pb"
	"google.golang.org/protobuf/proto"

	"github.com/duskchat/dusk-relay/internal/bench"
	"github.com/duskchat/dusk-relay/internal/bench/lightpeer"
	"github.com/duskchat/dusk-relay/internal/federation"
	"github.com/duskchat/dusk-relay/internal/reqresp"
)

// What the Dusk app does against its relay (src-tauri/src/node/mod.rs,
// swarm.rs and commands/chat.rs start_node of Dusk-Chat/app), in app time;
// the simulation divides every period by -speedup.
const (
	appPingEvery     = 30 * time.Second  // ping::Config::with_interval(30 s), one stream
	appTick          = 120 * time.Second // RENDEZVOUS_TICK_SECS: re-register, re-discover, directory Register
	appIdentifyEvery = 5 * time.Minute   // rust-libp2p identify's default periodic re-identify
	appKadEvery      = 180 * time.Second // KAD_BOOTSTRAP_TICK_SECS: kademlia bootstrap with the relay as its node
	kadProto         = protocol.ID("/ipfs/kad/1.0.0")
	// rust-libp2p's relay client renews a reservation when 3/4 of its
	// lifetime has passed.
	renewFraction = 0.75

	gossipProto = protocol.ID("/meshsub/1.1.0") // rust gossipsub speaks 1.1
	syncTopic   = "dusk/sync"
	dirTopic    = "dusk/directory"
)

// Operation names, in report order.
const (
	opConnect   = "connect"
	opIdentify  = "identify"
	opReserve   = "reserve"
	opRegister  = "register"
	opDiscover  = "discover"
	opDirectory = "directory"
	opPing      = "ping"
	opCircuit   = "circuit open"
	opMessage   = "message RTT"
	opLag       = "schedule lag"
)

var simOps = []string{opConnect, opIdentify, opReserve, opRegister, opDiscover, opDirectory, opPing, opCircuit, opMessage}

// simConfig is one run's client behaviour.
type simConfig struct {
	daemon      *bench.Daemon
	speedup     float64
	communities int // per client
	commCount   int // distinct communities in the run
	msgSize     int
	msgEvery    time.Duration // app time
	srcAddrs    int           // 1: every client dials from 127.0.0.1
	opTimeout   time.Duration
}

func (c *simConfig) scaled(d time.Duration) time.Duration {
	return time.Duration(float64(d) / c.speedup)
}

// recorder collects latencies and errors of every client.
type recorder struct {
	mu      sync.Mutex
	lat     map[string]*bench.Latencies
	errs    map[string]int64
	example map[string]string
	// informational counts that are not errors (e.g. circuits closed by
	// the relay's duration/byte limit, which the app simply reopens)
	notes map[string]int64

	gossipIn, gossipOut atomic.Int64
}

func newRecorder() *recorder {
	r := &recorder{}
	r.reset()
	return r
}

func (r *recorder) reset() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.lat = map[string]*bench.Latencies{}
	r.errs = map[string]int64{}
	r.example = map[string]string{}
	r.notes = map[string]int64{}
	r.gossipIn.Store(0)
	r.gossipOut.Store(0)
}

func (r *recorder) ok(op string, d time.Duration) {
	r.mu.Lock()
	l := r.lat[op]
	if l == nil {
		l = &bench.Latencies{}
		r.lat[op] = l
	}
	l.Add(d)
	r.mu.Unlock()
}

func (r *recorder) fail(op string, err error) {
	kind := op + ": " + errKind(err)
	r.mu.Lock()
	r.errs[kind]++
	if _, ok := r.example[kind]; !ok {
		r.example[kind] = err.Error()
	}
	r.mu.Unlock()
}

func (r *recorder) note(what string) {
	r.mu.Lock()
	r.notes[what]++
	r.mu.Unlock()
}

// done records op started at t: its latency on success, its kind on failure.
func (r *recorder) done(op string, t time.Time, err error) error {
	if err != nil {
		r.fail(op, err)
		return err
	}
	r.ok(op, time.Since(t))
	return nil
}

// errStatus is a refusal the relay answered with a status.
type errStatus struct{ status string }

func (e errStatus) Error() string { return "refused: " + e.status }

// errKind sorts an error into a short, stable kind for the report.
func errKind(err error) string {
	var st errStatus
	var ne interface{ Timeout() bool }
	switch {
	case errors.As(err, &st):
		return st.status
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	case errors.Is(err, network.ErrReset), strings.Contains(err.Error(), "stream reset"):
		return "stream reset"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "closed without answer"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return "connection reset"
	case errors.Is(err, syscall.EMFILE), errors.Is(err, syscall.ENFILE):
		return "out of file descriptors (dusk-bench)"
	case errors.Is(err, syscall.EADDRNOTAVAIL):
		return "no local port (dusk-bench)"
	case errors.Is(err, errBadAnswer):
		return "wrong answer"
	}
	s := err.Error()
	if i := strings.LastIndex(s, ": "); i >= 0 {
		s = s[i+2:]
	}
	if len(s) > 60 {
		s = s[:60]
	}
	return s
}

// simClient is one simulated Dusk app.
type simClient struct {
	idx    int
	cfg    *simConfig
	rec    *recorder
	key    crypto.PrivKey
	id     peer.ID
	gossip bool
	// circuit pair: the initiator dials its target through the relay.
	target   *simClient
	reserved chan struct{} // closed at the first accepted reservation
	resOnce  sync.Once

	conn    *lightpeer.Conn
	ping    network.MuxedStream
	gsMu    sync.Mutex          // gs is written by the loop and by readGossip (IWANT)
	gs      network.MuxedStream // our gossipsub stream to the relay
	seqno   uint64
	circ    network.MuxedStream
	circAt  time.Time
	circLim *circuitpb.Limit
	circN   int64

	register []string // rendezvous namespaces
	discover []string // discovered every tick (the communities)
	regMsg   []byte   // directory Register, pre-encoded
}

func newSimClient(idx int, cfg *simConfig, rec *recorder, gossip bool) (*simClient, error) {
	key, id, err := lightpeer.NewKey()
	if err != nil {
		return nil, err
	}
	c := &simClient{idx: idx, cfg: cfg, rec: rec, key: key, id: id, gossip: gossip, reserved: make(chan struct{})}
	c.register = []string{"dusk/peers", "dusk/peer/" + id.String()}
	for m := range cfg.communities {
		ns := fmt.Sprintf("dusk/community/com_%016x", (uint64(idx)*uint64(cfg.communities)+uint64(m)*7919)%uint64(cfg.commCount))
		c.register = append(c.register, ns)
		c.discover = append(c.discover, ns)
	}
	var reg dirRegister
	reg.V.DisplayName = fmt.Sprintf("sim-%d", idx)
	reg.V.RelayAddr = fmt.Sprintf("%s/p2p/%s/p2p-circuit/p2p/%s", cfg.daemon.Addr, cfg.daemon.ID, id)
	if c.regMsg, err = reqresp.Marshal(reg); err != nil {
		return nil, err
	}
	return c, nil
}

// localAddr spreads clients over loopback source addresses when asked;
// 127.0.0.1 (the only one the relay exempts from per-address caps) otherwise.
func (c *simClient) localAddr() ma.Multiaddr {
	if c.cfg.srcAddrs <= 1 {
		return nil
	}
	n := c.idx%c.cfg.srcAddrs + 2 // 127.0.0.2 onwards
	return ma.StringCast(fmt.Sprintf("/ip4/127.%d.%d.%d/tcp/0", n>>16&0xff, n>>8&0xff, n&0xff))
}

// run is the client's life: connect, then the app's periodic work until
// ctx ends. One goroutine does it all in order, like the app's event loop.
func (c *simClient) run(ctx context.Context) {
	defer c.close()
	backoff := c.cfg.scaled(2 * time.Second)
	for ctx.Err() == nil {
		if err := c.session(ctx); err != nil && ctx.Err() == nil {
			c.rec.note("reconnects")
			if sleepCtx(ctx, backoff) != nil {
				return
			}
		}
	}
}

func (c *simClient) opCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, c.cfg.opTimeout)
}

// session is one connection to the relay, until it breaks or ctx ends.
func (c *simClient) session(ctx context.Context) error {
	c.close()
	if err := c.connect(ctx); err != nil {
		return err
	}
	if c.gossip {
		// On ConnectionEstablished the app publishes RequestSync at once.
		c.publish(syncTopic, c.requestSync())
	}
	expire, err := c.reserve(ctx)
	if err != nil {
		return err
	}
	c.afterReservation(ctx)
	// The registrations and discovers the app queued until its first
	// reservation.
	for _, ns := range c.register {
		c.registerNS(ctx, ns)
	}
	for _, ns := range c.discover {
		c.discoverNS(ctx, ns)
	}

	now := time.Now()
	nextPing := now.Add(c.cfg.scaled(appPingEvery))
	nextTick := now.Add(c.cfg.scaled(appTick))
	nextIdentify := now.Add(c.cfg.scaled(appIdentifyEvery))
	nextKad := now // the app's tokio interval fires at once
	nextRenew := c.renewAt(expire)
	var nextMsg time.Time
	if c.target != nil {
		nextMsg = now
	}
	for {
		next := minTime(nextPing, nextTick, nextIdentify, nextRenew, nextKad)
		if !nextMsg.IsZero() {
			next = minTime(next, nextMsg)
		}
		if err := sleepCtx(ctx, time.Until(next)); err != nil {
			return err
		}
		if c.conn.Closed() {
			c.rec.fail(opConnect, errors.New("connection closed by the relay"))
			return errors.New("connection lost")
		}
		now := time.Now()
		c.rec.ok(opLag, now.Sub(next))
		switch {
		case !nextMsg.IsZero() && !now.Before(nextMsg):
			c.message(ctx)
			nextMsg = nextMsg.Add(c.cfg.scaled(c.cfg.msgEvery))
		case !now.Before(nextPing):
			c.doPing(ctx)
			nextPing = nextPing.Add(c.cfg.scaled(appPingEvery))
		case !now.Before(nextRenew):
			if expire, err = c.reserve(ctx); err != nil {
				return err
			}
			c.afterReservation(ctx)
			nextRenew = c.renewAt(expire)
		case !now.Before(nextTick):
			for _, ns := range c.register {
				c.registerNS(ctx, ns)
			}
			for _, ns := range c.discover {
				c.discoverNS(ctx, ns)
			}
			c.directory(ctx)
			nextTick = nextTick.Add(c.cfg.scaled(appTick))
		case !now.Before(nextKad):
			c.kad(ctx)
			nextKad = nextKad.Add(c.cfg.scaled(appKadEvery))
		case !now.Before(nextIdentify):
			ictx, cancel := c.opCtx(ctx)
			t := time.Now()
			_, err := c.conn.Identify(ictx)
			cancel()
			_ = c.rec.done(opIdentify, t, err)
			nextIdentify = nextIdentify.Add(c.cfg.scaled(appIdentifyEvery))
		}
	}
}

func minTime(ts ...time.Time) time.Time {
	m := ts[0]
	for _, t := range ts[1:] {
		if t.Before(m) {
			m = t
		}
	}
	return m
}

func (c *simClient) renewAt(expire time.Time) time.Time {
	life := time.Until(expire)
	if life <= 0 {
		life = time.Hour
	}
	return time.Now().Add(c.cfg.scaled(time.Duration(float64(life) * renewFraction)))
}

func (c *simClient) connect(ctx context.Context) error {
	cctx, cancel := c.opCtx(ctx)
	defer cancel()
	h := map[protocol.ID]lightpeer.Handler{}
	if c.gossip {
		h[gossipProto] = c.readGossip
	}
	h[circuitproto.ProtoIDv2Stop] = c.serveStop
	t := time.Now()
	conn, err := lightpeer.DialWith(cctx, c.key, c.cfg.daemon.Addr, c.cfg.daemon.ID, lightpeer.Options{Local: c.localAddr(), Handlers: h})
	if c.rec.done(opConnect, t, err) != nil {
		return err
	}
	c.conn = conn
	t = time.Now()
	_, err = conn.Identify(cctx)
	if c.rec.done(opIdentify, t, err) != nil {
		return err
	}
	// The ping stream and the gossip stream live as long as the connection.
	if c.ping, err = c.longStream(cctx, lightpeer.PingID); err != nil {
		c.rec.fail(opPing, err)
		return err
	}
	if c.gossip {
		gs, err := c.longStream(cctx, gossipProto)
		if err != nil {
			c.rec.fail("gossip", err)
			return err
		}
		c.gsMu.Lock()
		c.gs = gs
		c.gsMu.Unlock()
		sub := func(t string) *pubsubpb.RPC_SubOpts {
			return &pubsubpb.RPC_SubOpts{Subscribe: proto.Bool(true), Topicid: proto.String(t)}
		}
		c.writeRPC(&pubsubpb.RPC{Subscriptions: []*pubsubpb.RPC_SubOpts{sub(syncTopic), sub(dirTopic)}})
	}
	return nil
}

// longStream opens a stream that outlives the op's deadline.
func (c *simClient) longStream(ctx context.Context, p protocol.ID) (network.MuxedStream, error) {
	s, err := c.conn.Stream(ctx, p)
	if err != nil {
		return nil, err
	}
	_ = s.SetDeadline(time.Time{})
	return s, nil
}

// reserve sends a circuit v2 RESERVE and returns the reservation's expiry.
func (c *simClient) reserve(ctx context.Context) (time.Time, error) {
	rctx, cancel := c.opCtx(ctx)
	defer cancel()
	t := time.Now()
	resp, err := c.hop(rctx, &circuitpb.HopMessage{Type: circuitpb.HopMessage_RESERVE.Enum()})
	if err == nil && resp.GetStatus() != circuitpb.Status_OK {
		err = errStatus{resp.GetStatus().String()}
	}
	if err == nil && len(resp.GetReservation().GetAddrs()) == 0 {
		// rust-libp2p refuses such a reservation (NoAddressesInReservation).
		err = fmt.Errorf("%w: reservation without addresses", errBadAnswer)
	}
	if c.rec.done(opReserve, t, err) != nil {
		return time.Time{}, err
	}
	c.resOnce.Do(func() { close(c.reserved) })
	return time.Unix(int64(resp.GetReservation().GetExpire()), 0), nil
}

// hop sends one HopMessage on a new hop stream and reads the answer; the
// stream is returned open for CONNECT (it carries the circuit).
func (c *simClient) hop(ctx context.Context, m *circuitpb.HopMessage) (*circuitpb.HopMessage, error) {
	resp, s, err := c.hopStream(ctx, m)
	if s != nil {
		_ = s.Close()
	}
	return resp, err
}

func (c *simClient) hopStream(ctx context.Context, m *circuitpb.HopMessage) (*circuitpb.HopMessage, network.MuxedStream, error) {
	s, err := c.conn.Stream(ctx, circuitproto.ProtoIDv2Hop)
	if err != nil {
		return nil, nil, err
	}
	if err := pbio.NewDelimitedWriter(s).WriteMsg(m); err != nil {
		_ = s.Reset()
		return nil, nil, err
	}
	var resp circuitpb.HopMessage
	if err := pbio.NewDelimitedReader(s, 4096).ReadMsg(&resp); err != nil {
		_ = s.Reset()
		return nil, nil, err
	}
	return &resp, s, nil
}

// afterReservation is the app's ReservationReqAccepted, which rust-libp2p
// also reports on each renewal: profile on dusk/directory, directory
// Register.
func (c *simClient) afterReservation(ctx context.Context) {
	if c.gossip {
		c.publish(dirTopic, c.profileAnnounce())
	}
	c.directory(ctx)
}

func (c *simClient) registerNS(ctx context.Context, ns string) {
	rctx, cancel := c.opCtx(ctx)
	defer cancel()
	t := time.Now()
	_ = c.rec.done(opRegister, t, register(rctx, c.conn, ns)) // rendezvous.go
}

// discoverNS asks once, without a cookie, as the app does every tick.
func (c *simClient) discoverNS(ctx context.Context, ns string) {
	rctx, cancel := c.opCtx(ctx)
	defer cancel()
	t := time.Now()
	err := func() error {
		s, err := c.conn.Stream(rctx, rendezvousProto)
		if err != nil {
			return err
		}
		if err := pbio.NewDelimitedWriter(s).WriteMsg(rdv.NewDiscoverMessage(ns, 0, nil)); err != nil {
			_ = s.Reset()
			return err
		}
		var resp rdvpb.Message
		if err := pbio.NewDelimitedReader(s, 16<<20).ReadMsg(&resp); err != nil {
			_ = s.Reset()
			return err
		}
		_ = s.Close()
		dr := resp.GetDiscoverResponse()
		if dr.GetStatus() != rdvpb.Message_OK {
			return errStatus{dr.GetStatus().String()}
		}
		if len(dr.GetCookie()) == 0 {
			return fmt.Errorf("%w: discover without a cookie (rust clients fail)", errBadAnswer)
		}
		return nil
	}()
	_ = c.rec.done(opDiscover, t, err)
}

// okAnswer is the directory's CBOR "Ok".
var okAnswer = func() []byte {
	b, err := reqresp.Marshal("Ok")
	if err != nil {
		panic(err) // a constant string always encodes
	}
	return b
}()

func (c *simClient) directory(ctx context.Context) {
	rctx, cancel := c.opCtx(ctx)
	defer cancel()
	t := time.Now()
	err := func() error {
		s, err := c.conn.Stream(rctx, directoryProto)
		if err != nil {
			return err
		}
		if _, err := s.Write(c.regMsg); err != nil {
			_ = s.Reset()
			return err
		}
		if err := s.CloseWrite(); err != nil {
			_ = s.Reset()
			return err
		}
		out, err := reqresp.ReadAll(s, 64<<10)
		if err != nil {
			_ = s.Reset()
			return err
		}
		_ = s.Close()
		if !bytes.Equal(out, okAnswer) {
			var v any
			if reqresp.Unmarshal(out, &v) == nil {
				return errStatus{fmt.Sprint(v)}
			}
			return fmt.Errorf("%w: Register answered %x", errBadAnswer, out)
		}
		return nil
	}()
	_ = c.rec.done(opDirectory, t, err)
}

// kad is the app's kademlia bootstrap query to the relay: the relay does
// not speak kad, so the stream is refused in negotiation (the cost is
// the relay's). Any other outcome is counted.
func (c *simClient) kad(ctx context.Context) {
	kctx, cancel := c.opCtx(ctx)
	defer cancel()
	s, err := c.conn.Stream(kctx, kadProto)
	switch {
	case err == nil:
		_ = s.Reset()
		c.rec.note("kad streams accepted by the relay")
	case errors.Is(err, mss.ErrNotSupported[protocol.ID]{}):
		c.rec.note("kad bootstrap streams refused (the relay has no kad)")
	default:
		c.rec.fail("kad", err)
	}
}

func (c *simClient) doPing(ctx context.Context) {
	if c.ping == nil {
		pctx, cancel := c.opCtx(ctx)
		s, err := c.longStream(pctx, lightpeer.PingID)
		cancel()
		if err != nil {
			c.rec.fail(opPing, err)
			return
		}
		c.ping = s
	}
	_ = c.ping.SetDeadline(time.Now().Add(c.cfg.opTimeout))
	d, err := lightpeer.PingOnce(c.ping)
	if err != nil {
		c.rec.fail(opPing, err)
		_ = c.ping.Reset()
		c.ping = nil
		return
	}
	c.rec.ok(opPing, d)
}

// message sends one chat-sized message over the circuit to the target and
// waits for its echo, opening the circuit first when there is none.
func (c *simClient) message(ctx context.Context) {
	select {
	case <-c.target.reserved:
	default:
		return // the target is not reachable yet
	}
	if c.circ == nil {
		octx, cancel := c.opCtx(ctx)
		t := time.Now()
		resp, s, err := c.hopStream(octx, &circuitpb.HopMessage{
			Type: circuitpb.HopMessage_CONNECT.Enum(),
			Peer: &circuitpb.Peer{Id: []byte(c.target.id)},
		})
		cancel()
		if err == nil && resp.GetStatus() != circuitpb.Status_OK {
			_ = s.Reset()
			err = errStatus{resp.GetStatus().String()}
		}
		if c.rec.done(opCircuit, t, err) != nil {
			return
		}
		c.circ, c.circAt, c.circLim, c.circN = s, time.Now(), resp.GetLimit(), 0
	}
	buf := make([]byte, c.cfg.msgSize)
	_, _ = rand.Read(buf)
	echo := make([]byte, len(buf))
	_ = c.circ.SetDeadline(time.Now().Add(c.cfg.opTimeout))
	t := time.Now()
	_, err := c.circ.Write(buf)
	if err == nil {
		_, err = io.ReadFull(c.circ, echo)
	}
	if err == nil && !bytes.Equal(buf, echo) {
		err = fmt.Errorf("%w: echo differs", errBadAnswer)
	}
	if err != nil {
		_ = c.circ.Reset()
		c.circ = nil
		if c.circLimitReached() {
			// The relay ends circuits at its duration/byte limit; the app
			// redials on its next discover. Not an error of the relay.
			c.rec.note("circuits closed at the relay's limit (reopened)")
			return
		}
		c.rec.fail(opMessage, err)
		return
	}
	c.circN += int64(2 * len(buf))
	c.rec.ok(opMessage, time.Since(t))
}

func (c *simClient) circLimitReached() bool {
	l := c.circLim
	if l == nil {
		return false
	}
	if d := l.GetDuration(); d > 0 && time.Since(c.circAt) >= time.Duration(d)*time.Second-time.Second {
		return true
	}
	return l.GetData() > 0 && uint64(c.circN/2+int64(c.cfg.msgSize)) > l.GetData()
}

// serveStop accepts a relayed connection (the relay's STOP CONNECT) and
// echoes fixed-size messages on it.
func (c *simClient) serveStop(s network.MuxedStream) {
	defer s.Close()
	_ = s.SetDeadline(time.Now().Add(c.cfg.opTimeout))
	var m circuitpb.StopMessage
	if err := pbio.NewDelimitedReader(s, 4096).ReadMsg(&m); err != nil || m.GetType() != circuitpb.StopMessage_CONNECT {
		_ = s.Reset()
		return
	}
	ok := &circuitpb.StopMessage{Type: circuitpb.StopMessage_STATUS.Enum(), Status: circuitpb.Status_OK.Enum()}
	if err := pbio.NewDelimitedWriter(s).WriteMsg(ok); err != nil {
		_ = s.Reset()
		return
	}
	_ = s.SetDeadline(time.Time{})
	buf := make([]byte, c.cfg.msgSize)
	for {
		if _, err := io.ReadFull(s, buf); err != nil {
			return
		}
		if _, err := s.Write(buf); err != nil {
			return
		}
	}
}

// seenMax bounds a client's memory of message ids (a rust client keeps a
// time-bounded duplicate cache; the relay advertises ids for 3 heartbeats).
const seenMax = 512

// readGossip reads the relay's gossipsub stream, counts the messages it
// forwards to us and, as a rust client does, asks with IWANT for the ids
// it advertises in IHAVE that we have not seen.
func (c *simClient) readGossip(s network.MuxedStream) {
	r := pbio.NewDelimitedReader(s, 1<<20)
	seen := make(map[string]struct{})
	for {
		var rpc pubsubpb.RPC
		if err := r.ReadMsg(&rpc); err != nil {
			_ = s.Reset()
			return
		}
		if len(seen) >= seenMax {
			clear(seen)
		}
		for _, m := range rpc.GetPublish() {
			seen[federation.MessageID(m)] = struct{}{}
		}
		c.rec.gossipIn.Add(int64(len(rpc.GetPublish())))
		var want []string
		for _, ih := range rpc.GetControl().GetIhave() {
			for _, id := range ih.GetMessageIDs() {
				if _, ok := seen[id]; !ok {
					seen[id] = struct{}{}
					want = append(want, id)
				}
			}
		}
		if len(want) > 0 {
			c.writeRPC(&pubsubpb.RPC{Control: &pubsubpb.ControlMessage{Iwant: []*pubsubpb.ControlIWant{{MessageIDs: want}}}})
		}
	}
}

func (c *simClient) writeRPC(rpc *pubsubpb.RPC) {
	c.gsMu.Lock()
	defer c.gsMu.Unlock()
	if c.gs == nil {
		return
	}
	_ = c.gs.SetWriteDeadline(time.Now().Add(c.cfg.opTimeout))
	if err := pbio.NewDelimitedWriter(c.gs).WriteMsg(rpc); err != nil {
		c.rec.fail("gossip", err)
		_ = c.gs.Reset()
		c.gs = nil
	}
}

// publish sends one signed message (StrictSign, as rust's
// MessageAuthenticity::Signed): from, seqno, signature over the rest.
func (c *simClient) publish(topic string, data []byte) {
	c.seqno++
	seq := make([]byte, 8)
	binary.BigEndian.PutUint64(seq, c.seqno)
	m := &pubsubpb.Message{From: []byte(c.id), Data: data, Seqno: seq, Topic: proto.String(topic)}
	b, err := proto.Marshal(m)
	if err == nil {
		m.Signature, err = c.key.Sign(append([]byte("libp2p-pubsub:"), b...))
	}
	if err != nil {
		c.rec.fail("gossip", err)
		return
	}
	c.writeRPC(&pubsubpb.RPC{Publish: []*pubsubpb.Message{m}})
	c.rec.gossipOut.Add(1)
}

// requestSync is the app's SyncMessage::RequestSync (serde JSON, external tag).
func (c *simClient) requestSync() []byte {
	b, _ := json.Marshal(map[string]any{"RequestSync": map[string]string{"peer_id": c.id.String()}})
	return b
}

// profileAnnounce is the app's GossipMessage::ProfileAnnounce, the same
// size (the relay never interprets it, so the signature is filler).
func (c *simClient) profileAnnounce() []byte {
	pub, _ := crypto.MarshalPublicKey(c.key.GetPublic())
	sig := make([]byte, 64)
	b, _ := json.Marshal(map[string]any{"ProfileAnnounce": map[string]any{
		"peer_id":            c.id.String(),
		"display_name":       fmt.Sprintf("sim-%d", c.idx),
		"bio":                "",
		"public_key":         hex.EncodeToString(pub),
		"timestamp":          time.Now().UnixMilli(),
		"verification_proof": nil,
		"signature":          hex.EncodeToString(sig),
	}})
	return b
}

func (c *simClient) close() {
	if c.conn != nil {
		_ = c.conn.Close() // waits for readGossip
	}
	c.conn, c.ping, c.circ = nil, nil, nil
	c.gsMu.Lock()
	c.gs = nil
	c.gsMu.Unlock()
}

// simCPU returns this process's CPU time (for "is dusk-bench the bottleneck").
func simCPU() time.Duration {
	d, _ := bench.CPUTime(os.Getpid())
	return d
}
