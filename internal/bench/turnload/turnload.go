// Package turnload is the TURN load generator of dusk-bench: the same code
// drives our TURN server and coturn.
//
// Control plane (Allocate with the 401 nonce dance, CreatePermission,
// ChannelBind, refreshes) is pion/turn/v4's client. Data plane bypasses the
// client's per-packet work so the generator is not the bottleneck: once the
// channel is bound we write ChannelData frames (RFC 8656 §12: 2-byte channel
// number, 2-byte length, payload; no padding over UDP) straight onto the
// client's UDP socket, and the socket wrapper consumes inbound ChannelData
// before pion's demultiplexer sees it. Every allocation talks to its own
// loopback "peer" socket that echoes each packet back through the relay.
//
// Method (closed loop): each allocation keeps W packets in flight; every
// echo that returns to the client triggers the next send. A lost packet
// shrinks the window, and an allocation that has received nothing for
// 200 ms is re-primed with W packets (counted as a stall). Relayed packets
// per second count both directions through the server (client→peer packets
// seen by the peer plus peer→client packets seen by the client). Loss is
// 1 − (echoes received by clients ÷ packets sent by clients), measured
// after a drain period.
package turnload

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/pion/logging"
	"github.com/pion/turn/v4"
)

// Target is one TURN server under test.
type Target struct {
	Addr   *net.UDPAddr
	Realm  string
	Secret string
	// CredTTL is the credential lifetime put in usernames.
	CredTTL time.Duration
}

// ErrSetup marks allocation setup failures.
var ErrSetup = errors.New("turnload: setup")

// Quiet is a pion logger factory that discards everything.
func Quiet() logging.LoggerFactory {
	return &logging.DefaultLoggerFactory{Writer: io.Discard, DefaultLogLevel: logging.LogLevelDisabled, ScopeLevels: map[string]logging.LogLevel{}}
}

// Alloc is one TURN allocation with its echo peer.
type Alloc struct {
	client *turn.Client
	conn   *fastConn
	relay  net.PacketConn
	peer   *net.UDPConn
	server netip.AddrPort

	once    sync.Once
	bound   chan struct{}
	frame   []byte
	payload []byte // the frame's payload, random per allocation; never written after setup
	window  int

	running    atomic.Bool
	sent       atomic.Uint64
	recvClient atomic.Uint64
	recvPeer   atomic.Uint64
	sendErrs   atomic.Uint64
	corrupt    atomic.Uint64 // datagrams at the peer or back at the client with other bytes than sent
	peerDone   chan struct{}
}

// fastConn is the client's socket as pion sees it. Inbound ChannelData (the
// only data-plane traffic after binding) is consumed here; everything else
// (STUN responses, Data indications) goes to pion.
type fastConn struct {
	*net.UDPConn
	a *Alloc
}

func (c *fastConn) ReadFrom(p []byte) (int, net.Addr, error) {
	for {
		n, ap, err := c.UDPConn.ReadFromUDPAddrPort(p)
		if err != nil {
			return 0, nil, err
		}
		if n >= 4 && p[0]&0xC0 == 0x40 { // ChannelData: first two bits 01
			c.a.onChannelData(p[:n])
			continue
		}
		return n, net.UDPAddrFromAddrPort(ap), nil
	}
}

func (a *Alloc) onChannelData(p []byte) {
	a.once.Do(func() {
		frame := make([]byte, len(a.frame))
		copy(frame, a.frame)
		copy(frame[:2], p[:2]) // the channel pion bound to our peer
		a.frame = frame
		close(a.bound)
	})
	a.recvClient.Add(1)
	// The length field, not the datagram, ends the payload (servers may pad).
	if len(p) < 4 || int(binary.BigEndian.Uint16(p[2:4])) != len(a.payload) || !bytes.HasPrefix(p[4:], a.payload) {
		a.corrupt.Add(1)
	}
	if a.running.Load() {
		a.send()
	}
}

func (a *Alloc) send() {
	a.sent.Add(1)
	if _, err := a.conn.WriteToUDPAddrPort(a.frame, a.server); err != nil {
		a.sendErrs.Add(1)
	}
}

func (a *Alloc) echo() {
	defer close(a.peerDone)
	buf := make([]byte, 2048)
	for {
		n, from, err := a.peer.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		a.recvPeer.Add(1)
		if !bytes.Equal(buf[:n], a.payload) {
			a.corrupt.Add(1)
		}
		_, _ = a.peer.WriteToUDPAddrPort(buf[:n], from)
	}
}

func listenLoopback() (*net.UDPConn, error) {
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return nil, err
	}
	// Generous buffers keep the generator's own sockets from being where
	// packets drop (rmem_max caps this; root may exceed it, we don't need to).
	_ = c.SetReadBuffer(4 << 20)
	_ = c.SetWriteBuffer(4 << 20)
	return c, nil
}

// RandomPeerID returns a fresh Ed25519 peer ID, so each allocation has its own
// credential user (servers apply per-user quotas).
func RandomPeerID() (peer.ID, error) {
	_, pub, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		return "", err
	}
	return peer.IDFromPublicKey(pub)
}

// newAlloc allocates a relayed address on t for user; it does not bind the
// channel yet (see prime).
func newAlloc(t Target, user string, payload int) (*Alloc, error) {
	ttl := t.CredTTL
	if ttl == 0 {
		ttl = time.Hour
	}
	username, password, err := turn.GenerateLongTermTURNRESTCredentials(t.Secret, user, ttl)
	if err != nil {
		return nil, err
	}
	conn, err := listenLoopback()
	if err != nil {
		return nil, err
	}
	a := &Alloc{
		server:   t.Addr.AddrPort(),
		bound:    make(chan struct{}),
		peerDone: make(chan struct{}),
	}
	a.conn = &fastConn{UDPConn: conn, a: a}
	a.frame = make([]byte, 4+payload)
	binary.BigEndian.PutUint16(a.frame[2:4], uint16(payload))
	_, _ = rand.Read(a.frame[4:])
	a.payload = bytes.Clone(a.frame[4:])
	cl, err := turn.NewClient(&turn.ClientConfig{
		TURNServerAddr: t.Addr.String(),
		STUNServerAddr: t.Addr.String(),
		Username:       username,
		Password:       password,
		Realm:          t.Realm,
		Conn:           a.conn,
		LoggerFactory:  Quiet(),
	})
	if err != nil {
		_ = conn.Close()
		return nil, err
	}
	a.client = cl
	if err := cl.Listen(); err != nil {
		cl.Close()
		_ = conn.Close()
		return nil, err
	}
	relay, err := cl.Allocate()
	if err != nil {
		cl.Close()
		_ = conn.Close()
		return nil, fmt.Errorf("%w: allocate: %w", ErrSetup, err)
	}
	a.relay = relay
	return a, nil
}

// prime creates the permission, starts the echo peer and sends probes until
// the server delivers ChannelData to us (the channel is bound both ways).
func (a *Alloc) prime(ctx context.Context) error {
	peerConn, err := listenLoopback()
	if err != nil {
		return err
	}
	a.peer = peerConn
	go a.echo()
	peerAddr := peerConn.LocalAddr()
	probe := a.payload // the same bytes as the load, so the integrity check holds from the start
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	deadline := time.NewTimer(10 * time.Second)
	defer deadline.Stop()
	for {
		if _, err := a.relay.WriteTo(probe, peerAddr); err != nil {
			return fmt.Errorf("%w: send via relay: %w", ErrSetup, err)
		}
		select {
		case <-a.bound:
			return nil
		case <-tick.C:
		case <-deadline.C:
			return fmt.Errorf("%w: channel not bound within 10 s", ErrSetup)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Close deallocates and releases every socket.
func (a *Alloc) Close() {
	a.running.Store(false)
	if a.relay != nil {
		_ = a.relay.Close() // Refresh(lifetime 0)
	}
	if a.client != nil {
		a.client.Close()
	}
	_ = a.conn.Close()
	if a.peer != nil {
		_ = a.peer.Close()
		<-a.peerDone
	}
}

// Set is a group of allocations on one server.
type Set struct {
	Allocs []*Alloc
	// AllocateTime is the wall time to Allocate all of them (Parallel at a time).
	AllocateTime time.Duration
}

// Setup allocates n allocations on t (parallel at a time), then binds and
// primes each. On error everything allocated so far is closed.
func Setup(ctx context.Context, t Target, n, parallel, payload int) (*Set, error) {
	if payload < 1 || payload > 1400 {
		return nil, fmt.Errorf("%w: payload %d out of 1..1400", ErrSetup, payload)
	}
	users := make([]string, n)
	for i := range users {
		id, err := RandomPeerID()
		if err != nil {
			return nil, err
		}
		users[i] = id.String()
	}
	s := &Set{Allocs: make([]*Alloc, n)}
	errs := make([]error, n)
	run := func(fn func(i int)) {
		var wg sync.WaitGroup
		next := atomic.Int64{}
		for range min(parallel, n) {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					i := int(next.Add(1) - 1)
					if i >= n || ctx.Err() != nil {
						return
					}
					fn(i)
				}
			}()
		}
		wg.Wait()
	}
	start := time.Now()
	run(func(i int) { s.Allocs[i], errs[i] = newAlloc(t, users[i], payload) })
	s.AllocateTime = time.Since(start)
	if err := s.firstErr(ctx, errs); err != nil {
		return nil, err
	}
	run(func(i int) { errs[i] = s.Allocs[i].prime(ctx) })
	if err := s.firstErr(ctx, errs); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *Set) firstErr(ctx context.Context, errs []error) error {
	err := ctx.Err()
	for i, e := range errs {
		if e != nil && err == nil {
			err = fmt.Errorf("allocation %d: %w", i, e)
		}
	}
	if err != nil {
		s.Close()
	}
	return err
}

// Close closes every allocation.
func (s *Set) Close() {
	for _, a := range s.Allocs {
		if a != nil {
			a.Close()
		}
	}
}

// Result of one measured run.
type Result struct {
	Duration   time.Duration // measured window
	Relayed    uint64        // packets relayed in the window (both directions)
	PPS        float64       // Relayed / Duration
	Sent       uint64        // client sends over the whole run
	Echoed     uint64        // echoes back at the clients over the whole run
	AtPeer     uint64        // packets that reached the peers over the whole run
	Loss       float64       // 1 - Echoed/Sent (round trip), after draining
	Stalls     uint64        // windows re-primed after 200 ms of silence
	ServerCPU  time.Duration // server process CPU in the window
	CPUPerKPkt time.Duration // ServerCPU per 1000 relayed packets
	GenCPU     time.Duration // load generator (RunOptions.GenCPU) CPU in the window
}

// Counters sums the client and peer counters of the set.
func (s *Set) counters() (sent, echoed, atPeer uint64) {
	for _, a := range s.Allocs {
		sent += a.sent.Load()
		echoed += a.recvClient.Load()
		atPeer += a.recvPeer.Load()
	}
	return
}

// RunOptions configures a closed-loop run.
type RunOptions struct {
	Window   int           // packets in flight per allocation
	Warmup   time.Duration // excluded from the rate
	Duration time.Duration // measured window
	Drain    time.Duration // wait for in-flight packets before counting loss
	// CPU returns the server's cumulative CPU time (nil = not measured).
	CPU func() (time.Duration, error)
	// GenCPU returns the generator's cumulative CPU time (nil = not measured).
	GenCPU func() (time.Duration, error)
}

// Run drives the set in a closed loop and measures.
func (s *Set) Run(ctx context.Context, o RunOptions) (Result, error) {
	if o.Window < 1 {
		o.Window = 1
	}
	for _, a := range s.Allocs {
		a.window = o.Window
		a.sent.Store(0)
		a.recvClient.Store(0)
		a.recvPeer.Store(0)
	}
	for _, a := range s.Allocs {
		a.running.Store(true)
		for range o.Window {
			a.send()
		}
	}
	var stalls atomic.Uint64
	wdCtx, stopWD := context.WithCancel(ctx)
	wdDone := make(chan struct{})
	go func() {
		defer close(wdDone)
		s.watchdog(wdCtx, &stalls)
	}()
	stop := func() {
		for _, a := range s.Allocs {
			a.running.Store(false)
		}
		stopWD()
		<-wdDone
	}

	r, err := s.measure(ctx, o, stop)
	r.Stalls = stalls.Load()
	return r, err
}

// RunPackets drives the set in a closed loop until at least packets have
// been relayed (both directions) or timeout passes, then drains. It returns
// the relayed count; Go benchmarks use it with b.N.
func (s *Set) RunPackets(ctx context.Context, window int, packets uint64, timeout time.Duration) (uint64, error) {
	window = max(window, 1)
	for _, a := range s.Allocs {
		a.window = window
		a.running.Store(true)
	}
	_, e0, p0 := s.counters()
	for _, a := range s.Allocs {
		for range window {
			a.send()
		}
	}
	var stalls atomic.Uint64
	wdCtx, stopWD := context.WithCancel(ctx)
	defer stopWD()
	wdDone := make(chan struct{})
	go func() {
		defer close(wdDone)
		s.watchdog(wdCtx, &stalls)
	}()
	deadline := time.Now().Add(timeout)
	var relayed uint64
	for {
		_, e, p := s.counters()
		relayed = (e - e0) + (p - p0)
		if relayed >= packets || time.Now().After(deadline) || ctx.Err() != nil {
			break
		}
		time.Sleep(200 * time.Microsecond)
	}
	for _, a := range s.Allocs {
		a.running.Store(false)
	}
	stopWD()
	<-wdDone
	if relayed < packets {
		return relayed, fmt.Errorf("turnload: relayed %d of %d packets within %v", relayed, packets, timeout)
	}
	return relayed, ctx.Err()
}

// RunPaced offers a fixed load: rate client sends per second in total, spread
// evenly over the allocations by one pacer goroutine ticking every
// millisecond (echoes do not trigger sends). Result.PPS is what the server
// delivered (both directions); Loss is over the whole run after draining.
func (s *Set) RunPaced(ctx context.Context, rate float64, o RunOptions) (Result, error) {
	for _, a := range s.Allocs {
		a.running.Store(false)
		a.sent.Store(0)
		a.recvClient.Store(0)
		a.recvPeer.Store(0)
	}
	pctx, stopPacer := context.WithCancel(ctx)
	pacerDone := make(chan struct{})
	go func() {
		defer close(pacerDone)
		s.pace(pctx, rate)
	}()
	stop := func() {
		stopPacer()
		<-pacerDone
	}
	return s.measure(ctx, o, stop)
}

// measure runs the warm-up, the measured window and the drain that Run and
// RunPaced share; stop ends the offered load before the drain.
func (s *Set) measure(ctx context.Context, o RunOptions, stop func()) (Result, error) {
	var once sync.Once
	halt := func() { once.Do(stop) }
	defer halt()
	if err := sleep(ctx, o.Warmup); err != nil {
		return Result{}, err
	}
	cpu0, err := cpuOf(o.CPU)
	if err != nil {
		return Result{}, err
	}
	gen0, err := cpuOf(o.GenCPU)
	if err != nil {
		return Result{}, err
	}
	_, e0, p0 := s.counters()
	t0 := time.Now()
	if err := sleep(ctx, o.Duration); err != nil {
		return Result{}, err
	}
	_, e1, p1 := s.counters()
	el := time.Since(t0)
	cpu1, err := cpuOf(o.CPU)
	if err != nil {
		return Result{}, err
	}
	gen1, err := cpuOf(o.GenCPU)
	if err != nil {
		return Result{}, err
	}
	halt()
	if err := sleep(ctx, o.Drain); err != nil {
		return Result{}, err
	}
	sent, echoed, atPeer := s.counters()
	var corrupt uint64
	for _, a := range s.Allocs {
		corrupt += a.corrupt.Swap(0)
	}
	if corrupt > 0 {
		return Result{}, fmt.Errorf("turnload: %d datagrams arrived with other bytes than were sent", corrupt)
	}
	r := Result{
		Duration:  el,
		Relayed:   (e1 - e0) + (p1 - p0),
		Sent:      sent,
		Echoed:    echoed,
		AtPeer:    atPeer,
		ServerCPU: cpu1 - cpu0,
		GenCPU:    gen1 - gen0,
	}
	r.PPS = float64(r.Relayed) / el.Seconds()
	if sent > 0 {
		r.Loss = 1 - float64(min(echoed, sent))/float64(sent)
	}
	if r.Relayed > 0 {
		r.CPUPerKPkt = time.Duration(float64(r.ServerCPU) * 1000 / float64(r.Relayed))
	}
	return r, nil
}

// pace sends rate packets per second in total, round-robin over the
// allocations, catching up on each 1 ms tick with what is due.
func (s *Set) pace(ctx context.Context, rate float64) {
	t := time.NewTicker(time.Millisecond)
	defer t.Stop()
	start := time.Now()
	var done uint64
	next := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		due := uint64(time.Since(start).Seconds() * rate)
		// Bounded burst: if the pacer fell far behind (a descheduled
		// process), skip ahead rather than flood.
		if due > done+uint64(rate/10)+1 {
			done = due - uint64(rate/10) - 1
		}
		for ; done < due; done++ {
			s.Allocs[next].send()
			if next++; next == len(s.Allocs) {
				next = 0
			}
		}
	}
}

// watchdog re-primes allocations that received nothing for 200 ms: their
// whole window was lost.
func (s *Set) watchdog(ctx context.Context, stalls *atomic.Uint64) {
	const tick, stallTicks = 50 * time.Millisecond, 4
	last := make([]uint64, len(s.Allocs))
	quiet := make([]int, len(s.Allocs))
	t := time.NewTicker(tick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for i, a := range s.Allocs {
			r := a.recvClient.Load()
			if r != last[i] {
				last[i], quiet[i] = r, 0
				continue
			}
			if quiet[i]++; quiet[i] >= stallTicks && a.running.Load() {
				quiet[i] = 0
				stalls.Add(1)
				for range a.window {
					a.send()
				}
			}
		}
	}
}

func cpuOf(fn func() (time.Duration, error)) (time.Duration, error) {
	if fn == nil {
		return 0, nil
	}
	return fn()
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
