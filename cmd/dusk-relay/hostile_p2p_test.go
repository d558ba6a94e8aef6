package main

// Hostile libp2p clients against the real daemon: connections and relay
// reservations from a few addresses, idle connections, and the capacity
// today's Dusk clients need (every client reserves; one client sends many
// requests at once). Attacker addresses are 127.0.0.2 and up: the daemon
// exempts only 127.0.0.1 from its per-address caps.

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/client"
	pbv2 "github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/pb"
	"github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/util"
	"github.com/libp2p/go-msgio/pbio"
	ma "github.com/multiformats/go-multiaddr"
	pb "github.com/waku-org/go-libp2p-rendezvous/pb"

	"github.com/duskchat/dusk-relay/internal/bench/lightpeer"
)

const hopProtocol = "/libp2p/circuit/relay/0.2.0/hop"

// lightFromIP connects a fresh light identity to the daemon from local IP ip.
func lightFromIP(ctx context.Context, d *daemon, ip string) (*lightpeer.Conn, error) {
	return lightpeer.DialFrom(ctx, nil, ma.StringCast("/ip4/"+ip+"/tcp/0"), d.addrs[0], d.peerID)
}

// lightReserveHop sends a relay v2 RESERVE on c and returns the status.
func lightReserveHop(ctx context.Context, c *lightpeer.Conn) (pbv2.Status, error) {
	s, err := c.Stream(ctx, hopProtocol)
	if err != nil {
		return 0, err
	}
	defer s.Close()
	req := pbv2.HopMessage{Type: pbv2.HopMessage_RESERVE.Enum()}
	if err := util.NewDelimitedWriter(s).WriteMsg(&req); err != nil {
		return 0, err
	}
	var resp pbv2.HopMessage
	if err := util.NewDelimitedReader(s, 4096).ReadMsg(&resp); err != nil {
		return 0, err
	}
	return resp.GetStatus(), nil
}

// newClientFrom is a go-libp2p client whose connections come from ip.
func newClientFrom(t *testing.T, ip string) host.Host {
	t.Helper()
	h, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/"+ip+"/tcp/0"), libp2p.DisableRelay())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

// honestReserves checks that a brand-new client from ip connects, reserves
// a relay slot (with go-libp2p's own client) and gets a rendezvous answer.
func honestReserves(t *testing.T, d *daemon, ip string) {
	t.Helper()
	c := newClientFrom(t, ip)
	ctx := ctx10(t)
	info := peer.AddrInfo{ID: d.peerID, Addrs: d.addrs}
	if err := c.Connect(ctx, info); err != nil {
		t.Fatalf("honest client from %s: connect: %v", ip, err)
	}
	conns := c.Network().ConnsToPeer(d.peerID)
	if len(conns) == 0 || !strings.HasPrefix(conns[0].LocalMultiaddr().String(), "/ip4/"+ip+"/") {
		t.Fatalf("honest client did not connect from %s: %v", ip, conns)
	}
	if _, err := client.Reserve(ctx, c, info); err != nil {
		t.Fatalf("honest client from %s: reserve: %v", ip, err)
	}
	ns := "dusk/peer/" + c.ID().String()
	r, err := rdvCall(ctx, c, d.peerID, rdvRegister(ns, sealOwnRecord(t, c)))
	if err != nil || r.GetRegisterResponse().GetStatus() != pb.Message_OK {
		t.Fatalf("honest client from %s: rendezvous register: %v %v", ip, r, err)
	}
}

// dialMany opens up to n light connections from ip, concurrently, and
// returns the ones the daemon accepted.
func dialMany(ctx context.Context, d *daemon, ip string, n int) []*lightpeer.Conn {
	var mu sync.Mutex
	var out []*lightpeer.Conn
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	for range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			c, err := lightFromIP(ctx, d, ip)
			if err != nil {
				return
			}
			mu.Lock()
			out = append(out, c)
			mu.Unlock()
		}()
	}
	wg.Wait()
	return out
}

func closeLight(cs []*lightpeer.Conn) {
	for _, c := range cs {
		_ = c.Close()
	}
}

// Attack: free identities from three addresses open as many connections
// as they can and reserve with each. Before, 127.0.0.0/8 was exempt and the
// per-address cap was DUSK_MAX_CONNECTIONS/16 (625 at the default), so 16
// addresses held a default relay full forever. Now each address gets at
// most DUSK_MAX_CONNECTIONS_PER_IP (64), and an honest client from another
// address connects and reserves.
func TestHostileConnectionsPerAddress(t *testing.T) {
	d := startDaemon(t, testEnv(t.TempDir()))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const perIP, tries = 64, 90
	var held []*lightpeer.Conn
	defer func() { d.stop(); closeLight(held) }() // the daemon first: see TestCapacity1000Reservations
	for _, ip := range []string{"127.0.0.2", "127.0.0.3", "127.0.0.4"} {
		got := dialMany(ctx, d, ip, tries)
		held = append(held, got...)
		t.Logf("%s: %d of %d connections accepted", ip, len(got), tries)
		if len(got) > perIP {
			t.Errorf("%s holds %d connections, cap %d", ip, len(got), perIP)
		}
		if len(got) < perIP/2 {
			t.Errorf("%s holds only %d connections: the cap should admit %d", ip, len(got), perIP)
		}
	}
	var ok atomic.Int64
	var wg sync.WaitGroup
	for _, c := range held {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if st, err := lightReserveHop(ctx, c); err == nil && st == pbv2.Status_OK {
				ok.Add(1)
			}
		}()
	}
	wg.Wait()
	t.Logf("attackers hold %d connections and %d reservations", len(held), ok.Load())
	honestReserves(t, d, "127.0.0.50")
}

// Attack with the Rust relay's reservation total (128): 40 identities on
// each of four addresses reserve. Before, the per-address reservation cap
// was the total, so they took all 128 and everyone else got
// RESERVATION_REFUSED; now each address gets max(2, 128/64) = 2.
func TestHostileReservationsPerAddress(t *testing.T) {
	d := startDaemon(t, append(testEnv(t.TempDir()), "DUSK_RELAY_MAX_RESERVATIONS=128"))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var held []*lightpeer.Conn
	defer func() { d.stop(); closeLight(held) }() // the daemon first: see TestCapacity1000Reservations
	granted := map[string]int{}
	for _, ip := range []string{"127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"} {
		cs := dialMany(ctx, d, ip, 40)
		held = append(held, cs...)
		for _, c := range cs {
			if st, err := lightReserveHop(ctx, c); err == nil && st == pbv2.Status_OK {
				granted[ip]++
			}
		}
	}
	t.Logf("reservations granted per attacker address: %v", granted)
	for ip, n := range granted {
		if n > 2 {
			t.Errorf("%s holds %d reservations, cap 2", ip, n)
		}
	}
	honestReserves(t, d, "127.0.0.50")
}

// lightTarget is a light identity from 127.0.0.1 that holds a reservation
// and accepts every circuit the relay brings it (answers STOP with OK and
// reads until the circuit ends).
func lightTarget(ctx context.Context, t *testing.T, d *daemon) *lightpeer.Conn {
	t.Helper()
	stop := func(s network.MuxedStream) {
		defer s.Close()
		var req pbv2.StopMessage
		if err := util.NewDelimitedReader(s, 4096).ReadMsg(&req); err != nil {
			return
		}
		ok := pbv2.StopMessage{Type: pbv2.StopMessage_STATUS.Enum(), Status: pbv2.Status_OK.Enum()}
		if util.NewDelimitedWriter(s).WriteMsg(&ok) != nil {
			return
		}
		_, _ = io.Copy(io.Discard, s)
	}
	c, err := lightpeer.DialWith(ctx, nil, d.addrs[0], d.peerID, lightpeer.Options{
		Local:    ma.StringCast("/ip4/127.0.0.1/tcp/0"),
		Handlers: map[protocol.ID]lightpeer.Handler{"/libp2p/circuit/relay/0.2.0/stop": stop},
	})
	if err != nil {
		t.Fatal(err)
	}
	if st, err := lightReserveHop(ctx, c); err != nil || st != pbv2.Status_OK {
		t.Fatalf("target reserve: %v %v", st, err)
	}
	return c
}

// lightConnectHop sends a relay v2 CONNECT for dst on c; on OK the stream
// (the circuit) is left open.
func lightConnectHop(ctx context.Context, c *lightpeer.Conn, dst peer.ID) (pbv2.Status, error) {
	s, err := c.Stream(ctx, hopProtocol)
	if err != nil {
		return 0, err
	}
	req := pbv2.HopMessage{Type: pbv2.HopMessage_CONNECT.Enum(), Peer: &pbv2.Peer{Id: []byte(dst)}}
	if err := util.NewDelimitedWriter(s).WriteMsg(&req); err != nil {
		_ = s.Reset()
		return 0, err
	}
	var resp pbv2.HopMessage
	if err := util.NewDelimitedReader(s, 4096).ReadMsg(&resp); err != nil {
		_ = s.Reset()
		return 0, err
	}
	if resp.GetStatus() != pbv2.Status_OK {
		_ = s.Close()
	}
	return resp.GetStatus(), nil
}

// Attack: 20 addresses, each with 12 free identities, open circuits to
// 60 reserved targets (4 each, the per-peer cap). Without a per-address
// cap they would take 240 of the relay's 320 circuits; each address now
// gets max(2 x 4, 320/32) = 10, and a client from another address still
// gets a circuit.
func TestHostileCircuitsPerAddress(t *testing.T) {
	d := startDaemon(t, append(testEnv(t.TempDir()), "DUSK_RELAY_MAX_CIRCUITS=320"))
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	var held []*lightpeer.Conn
	defer func() { d.stop(); closeLight(held) }() // the daemon first: see TestCapacity1000Reservations
	var targets []peer.ID
	for range 61 {
		c := lightTarget(ctx, t, d)
		held = append(held, c)
		targets = append(targets, c.ID)
	}
	granted := map[string]int{}
	next := 0
	for a := 2; a < 22; a++ {
		ip := fmt.Sprintf("127.0.0.%d", a)
		cs := dialMany(ctx, d, ip, 12)
		held = append(held, cs...)
		for _, c := range cs {
			st, err := lightConnectHop(ctx, c, targets[next%60])
			next++
			if err == nil && st == pbv2.Status_OK {
				granted[ip]++
			}
		}
	}
	t.Logf("circuits granted per attacker address: %v", granted)
	full := 0
	for ip, n := range granted {
		if n > 10 {
			t.Errorf("%s holds %d circuits, cap 10", ip, n)
		}
		if n == 10 {
			full++
		}
	}
	if full == 0 {
		t.Fatal("no attacker address reached its cap: the attack did not run")
	}
	honest, err := lightFromIP(ctx, d, "127.0.0.60")
	if err != nil {
		t.Fatal(err)
	}
	held = append(held, honest)
	if st, err := lightConnectHop(ctx, honest, targets[60]); err != nil || st != pbv2.Status_OK {
		t.Fatalf("honest client's circuit: %v %v", st, err)
	}
}

// Attack: connections that never open a stream. Before, they were kept
// forever. With DUSK_IDLE_CONNECTION_TIMEOUT=1s they are closed after a
// second and their address can connect again, while a connection holding
// a reservation and one with an open ping stream stay.
func TestHostileIdleConnectionsReclaimed(t *testing.T) {
	d := startDaemon(t, append(testEnv(t.TempDir()), "DUSK_IDLE_CONNECTION_TIMEOUT=1s"))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	idle := dialMany(ctx, d, "127.0.0.6", 64)
	defer func() { closeLight(idle) }()
	if len(idle) != 64 {
		t.Fatalf("only %d of 64 idle connections accepted", len(idle))
	}
	reserved, err := lightFromIP(ctx, d, "127.0.0.7")
	if err != nil {
		t.Fatal(err)
	}
	defer reserved.Close()
	if st, err := lightReserveHop(ctx, reserved); err != nil || st != pbv2.Status_OK {
		t.Fatalf("reserve: %v %v", st, err)
	}
	pinger, err := lightFromIP(ctx, d, "127.0.0.8")
	if err != nil {
		t.Fatal(err)
	}
	defer pinger.Close()
	ps, err := pinger.Stream(ctx, lightpeer.PingID)
	if err != nil {
		t.Fatal(err)
	}
	defer ps.Close()

	start := time.Now()
	closed := func() int {
		n := 0
		for _, c := range idle {
			if c.Closed() {
				n++
			}
		}
		return n
	}
	for time.Since(start) < 15*time.Second && closed() < len(idle) {
		if _, err := lightpeer.PingOnce(ps); err != nil {
			t.Fatalf("ping on the held stream: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("%d of %d idle connections closed after %v", closed(), len(idle), time.Since(start).Round(time.Millisecond))
	if closed() != len(idle) {
		t.Fatalf("only %d of %d idle connections were closed", closed(), len(idle))
	}
	for range 8 { // well past another timeout
		if _, err := lightpeer.PingOnce(ps); err != nil {
			t.Fatalf("ping on the held stream: %v", err)
		}
		time.Sleep(250 * time.Millisecond)
	}
	if reserved.Closed() {
		t.Errorf("the connection holding a reservation was closed")
	}
	if pinger.Closed() {
		t.Errorf("the connection with an open ping stream was closed")
	}
	// The address can connect again (its connection rate limit refills at 2/s).
	again := dialMany(ctx, d, "127.0.0.6", 3)
	defer closeLight(again)
	if len(again) != 3 {
		t.Errorf("after the idle connections were closed, their address got %d of 3 new ones", len(again))
	}
	m := scrape(t, d.metrics)
	if v, _ := sum(m, "dusk_relay_connections"); v > 8 {
		t.Errorf("dusk_relay_connections = %v after the idle ones were closed", v)
	}
	if v, _ := sum(m, "dusk_relay_idle_connections_closed_total"); v < float64(len(idle)) {
		t.Errorf("dusk_relay_idle_connections_closed_total = %v, want >= %d", v, len(idle))
	}
}

// Capacity: every Dusk client reserves a slot. With the default
// configuration 1,000 distinct clients (50 per address from 20 addresses)
// all hold reservations; the Rust default total of 128 refused #129 on.
func TestCapacity1000Reservations(t *testing.T) {
	if testing.Short() {
		t.Skip("1,000 clients; skipped with -short")
	}
	d := startDaemon(t, testEnv(t.TempDir()))
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	const clients, addrs = 1000, 20
	rssBefore := d.rssKB(t)
	var cpuBefore time.Duration
	if ru, ok := d.cpuTime(); ok {
		cpuBefore = ru
	}
	selfBefore := selfCPU()
	start := time.Now()
	conns := make([]*lightpeer.Conn, clients)
	defer func() {
		// The daemon first: its side then holds the 1,000 TIME_WAIT
		// sockets instead of the clients' ephemeral ports.
		d.stop()
		for _, c := range conns {
			if c != nil {
				_ = c.Close()
			}
		}
	}()
	var mu sync.Mutex
	failures := map[string]int{}
	fail := func(what string) {
		mu.Lock()
		failures[what]++
		mu.Unlock()
	}
	var wg sync.WaitGroup
	sem := make(chan struct{}, 2*runtime.GOMAXPROCS(0)+8)
	for i := range clients {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			ip := fmt.Sprintf("127.0.0.%d", 10+i%addrs)
			c, err := lightFromIP(ctx, d, ip)
			if err != nil {
				fail("connect: " + err.Error())
				return
			}
			conns[i] = c
			st, err := lightReserveHop(ctx, c)
			switch {
			case err != nil:
				fail("reserve: " + err.Error())
			case st != pbv2.Status_OK:
				fail("reserve: " + st.String())
			}
		}()
	}
	wg.Wait()
	took := time.Since(start)
	if len(failures) > 0 {
		t.Fatalf("failures: %v", failures)
	}
	// All of them still hold their reservation and connection.
	m := scrape(t, d.metrics)
	rsv, _ := sum(m, "dusk_relay_reservations")
	cons, _ := sum(m, "dusk_relay_connections")
	if rsv != clients || cons < clients {
		closed := 0
		for _, c := range conns {
			if c.Closed() {
				closed++
			}
		}
		t.Errorf("daemon counts %v reservations and %v connections, want %d; %d client connections closed\n%s",
			rsv, cons, clients, closed, tail(grepLines(d.logs(), "disconnect", "closed", "error"), 30))
	}
	rssAfter := d.rssKB(t)
	msg := fmt.Sprintf("%d clients connected and reserved in %v; daemon VmRSS %.1f -> %.1f MiB (%.1f KiB per client)",
		clients, took.Round(time.Millisecond), float64(rssBefore)/1024, float64(rssAfter)/1024,
		float64(rssAfter-rssBefore)/clients)
	if cpu, ok := d.cpuTime(); ok {
		msg += fmt.Sprintf(", daemon CPU %v", (cpu - cpuBefore).Round(time.Millisecond))
	}
	msg += fmt.Sprintf(", clients' CPU %v", (selfCPU() - selfBefore).Round(time.Millisecond))
	t.Log(msg)
}

// Capacity: a client in 60 communities registers them all at once; the
// Rust relay allowed 100 concurrent requests per connection. Before,
// go-libp2p's 64 streams per protocol and peer reset the rest.
func TestCapacity100ConcurrentRendezvousRegistrations(t *testing.T) {
	d := startDaemon(t, testEnv(t.TempDir()))
	c := newUnlimitedClient(t)
	connectTo(t, c, d)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rec := sealOwnRecord(t, c)
	const n = 100
	// Hold every stream open until all are negotiated, so they are
	// concurrent on the daemon's side and not merely sent back to back.
	streams := make([]network.Stream, n)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := c.NewStream(ctx, d.peerID, protoRendezvous)
			if err != nil {
				errs <- fmt.Errorf("stream %d: %w", i, err)
				return
			}
			streams[i] = s
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		return
	}
	var okCount atomic.Int64
	errs = make(chan error, n)
	for i, s := range streams {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer s.Close()
			_ = s.SetDeadline(time.Now().Add(20 * time.Second))
			ns := fmt.Sprintf("dusk/community/%03d", i)
			if err := writeRdv(s, rdvRegister(ns, rec)); err != nil {
				errs <- fmt.Errorf("register %s: write: %w", ns, err)
				return
			}
			resp, err := readRdv(s)
			if err != nil {
				errs <- fmt.Errorf("register %s: read: %w", ns, err)
				return
			}
			if st := resp.GetRegisterResponse().GetStatus(); st != pb.Message_OK {
				errs <- fmt.Errorf("register %s: %v %s", ns, st, resp.GetRegisterResponse().GetStatusText())
				return
			}
			okCount.Add(1)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if okCount.Load() != n {
		t.Fatalf("%d of %d concurrent registrations on one connection succeeded", okCount.Load(), n)
	}
	if conns := c.Network().ConnsToPeer(d.peerID); len(conns) != 1 {
		t.Errorf("%d connections to the daemon, want the one", len(conns))
	}
}

func writeRdv(s network.Stream, m *pb.Message) error {
	if err := pbio.NewDelimitedWriter(s).WriteMsg(m); err != nil {
		_ = s.Reset()
		return err
	}
	return s.CloseWrite()
}

func readRdv(s network.Stream) (*pb.Message, error) {
	var resp pb.Message
	if err := pbio.NewDelimitedReader(s, 1<<20).ReadMsg(&resp); err != nil {
		_ = s.Reset()
		return nil, err
	}
	return &resp, nil
}

// cpuTime is the daemon's user+system CPU time so far (Linux /proc; ticks
// of 1/100 s, the USER_HZ of every Linux ABI).
func (d *daemon) cpuTime() (time.Duration, bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", d.cmd.Process.Pid))
	if err != nil {
		return 0, false
	}
	// Fields after the parenthesised command name; utime and stime are 14 and 15.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, false
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, false
	}
	u, err1 := strconv.ParseInt(f[11], 10, 64)
	s, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, false
	}
	return time.Duration(u+s) * 10 * time.Millisecond, true
}

// stop kills the daemon and waits for it (startDaemon's cleanup still works).
func (d *daemon) stop() {
	_ = d.cmd.Process.Kill()
	err := <-d.waitErr
	d.waitErr <- err
}

// selfCPU is this test process's user+system CPU time.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
