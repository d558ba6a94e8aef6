package p2p

import (
	"context"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	pbv2 "github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/pb"
	"github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/util"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/duskchat/dusk-relay/internal/bench/lightpeer"
	"github.com/duskchat/dusk-relay/internal/config"
)

// lightFrom connects a fresh light identity to n from local IP ip.
func lightFrom(ctx context.Context, n *Node, ip string) (*lightpeer.Conn, error) {
	var local ma.Multiaddr
	if ip != "" {
		local = ma.StringCast("/ip4/" + ip + "/tcp/0")
	}
	return lightpeer.DialFrom(ctx, nil, local, n.ListenAddrs()[0], n.ID())
}

// lightReserve sends a relay v2 RESERVE on c and returns the status.
func lightReserve(ctx context.Context, c *lightpeer.Conn) (pbv2.Status, error) {
	s, err := c.Stream(ctx, hopProto)
	if err != nil {
		return 0, err
	}
	defer s.Close()
	req := pbv2.HopMessage{Type: pbv2.HopMessage_RESERVE.Enum()}
	if err := util.NewDelimitedWriter(s).WriteMsg(&req); err != nil {
		return 0, err
	}
	var resp pbv2.HopMessage
	if err := util.NewDelimitedReader(s, maxHopMessage).ReadMsg(&resp); err != nil {
		return 0, err
	}
	return resp.GetStatus(), nil
}

func closeAll(cs []*lightpeer.Conn) {
	for _, c := range cs {
		_ = c.Close()
	}
}

// Connections without a stream and without a reservation are closed after
// the idle timeout; a stream (held or recent) or a reservation keeps them.
func TestIdleConnectionsClosed(t *testing.T) {
	const idle = 500 * time.Millisecond
	n := startRelay(t, relayOpt{cfg: func(c *config.Relay) { c.IdleConnTimeout = idle }})
	ctx := ctxT(t, 20*time.Second)

	idleConn, err := lightFrom(ctx, n, "")
	if err != nil {
		t.Fatal(err)
	}
	defer idleConn.Close()
	reserved, err := lightFrom(ctx, n, "")
	if err != nil {
		t.Fatal(err)
	}
	defer reserved.Close()
	if st, err := lightReserve(ctx, reserved); err != nil || st != pbv2.Status_OK {
		t.Fatalf("reserve: %v %v", st, err)
	}
	pinger, err := lightFrom(ctx, n, "")
	if err != nil {
		t.Fatal(err)
	}
	defer pinger.Close()
	ps, err := pinger.Stream(ctx, lightpeer.PingID)
	if err != nil {
		t.Fatal(err)
	}
	defer ps.Close()
	busy, err := lightFrom(ctx, n, "") // a short stream every idle/3
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()

	start := time.Now()
	for time.Since(start) < 5*idle && !idleConn.Closed() {
		if _, err := lightpeer.PingOnce(ps); err != nil {
			t.Fatalf("ping on a held stream: %v", err)
		}
		if _, err := busy.Ping(ctx, 1); err != nil {
			t.Fatalf("short ping stream: %v", err)
		}
		time.Sleep(idle / 3)
	}
	closedAfter := time.Since(start)
	if !idleConn.Closed() {
		t.Fatalf("a connection without streams was kept %v with idle timeout %v", closedAfter, idle)
	}
	t.Logf("idle connection closed after %v (timeout %v)", closedAfter.Round(time.Millisecond), idle)
	// Keep going past another timeout: the others stay.
	for range 6 {
		if _, err := lightpeer.PingOnce(ps); err != nil {
			t.Fatalf("ping on a held stream: %v", err)
		}
		if _, err := busy.Ping(ctx, 1); err != nil {
			t.Fatalf("short ping stream: %v", err)
		}
		time.Sleep(idle / 3)
	}
	for name, c := range map[string]*lightpeer.Conn{"reserved": reserved, "held ping stream": pinger, "recent streams": busy} {
		if c.Closed() || n.h.Network().Connectedness(c.ID) != network.Connected {
			t.Errorf("%s connection was closed", name)
		}
	}
	if got := counterValue(n.m.idleClosed); got < 1 {
		t.Errorf("idle_connections_closed_total = %v", got)
	}
}

// IdleConnTimeout 0 keeps idle connections.
func TestIdleTimeoutZeroKeeps(t *testing.T) {
	n := startRelay(t, relayOpt{cfg: func(c *config.Relay) { c.IdleConnTimeout = 0 }})
	c, err := lightFrom(ctxT(t, 10*time.Second), n, "")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	time.Sleep(300 * time.Millisecond)
	if c.Closed() {
		t.Fatal("closed with IdleConnTimeout 0")
	}
}

// Connections and reservations are capped per address; another address
// still gets in, and 127.0.0.1 is exempt from the connection cap.
func TestPerAddressCaps(t *testing.T) {
	const perIP = 4
	n := startRelay(t, relayOpt{cfg: func(c *config.Relay) {
		c.MaxConnsPerIP = perIP
		c.MaxReservations = 3 * 64 // reservationsPerIP: 3
	}})
	if n.rsvPerIP != 3 {
		t.Fatalf("reservations per address = %d, want 3", n.rsvPerIP)
	}
	ctx := ctxT(t, 30*time.Second)
	var held []*lightpeer.Conn
	defer func() { closeAll(held) }()
	refused := 0
	for range perIP + 3 {
		c, err := lightFrom(ctx, n, "127.0.0.2")
		if err != nil {
			refused++
			continue
		}
		held = append(held, c)
	}
	if len(held) != perIP {
		t.Fatalf("127.0.0.2 got %d connections (%d refused), cap %d", len(held), refused, perIP)
	}
	var ok, denied int
	for _, c := range held {
		st, err := lightReserve(ctx, c)
		switch {
		case err != nil:
			t.Fatalf("reserve: %v", err)
		case st == pbv2.Status_OK:
			ok++
		case st == pbv2.Status_RESERVATION_REFUSED:
			denied++
		default:
			t.Fatalf("reserve status %v", st)
		}
	}
	if ok != 3 || denied != 1 {
		t.Fatalf("127.0.0.2 reservations: %d accepted, %d refused; want 3 and 1", ok, denied)
	}
	if got := n.reservationsFrom(netip.MustParseAddr("127.0.0.2")); got != 3 {
		t.Errorf("counted %d reservations for 127.0.0.2", got)
	}
	// A renewal is always admitted.
	if st, err := lightReserve(ctx, held[0]); err != nil || st != pbv2.Status_OK {
		t.Errorf("renewal at the cap: %v %v", st, err)
	}

	honest, err := lightFrom(ctx, n, "127.0.0.3")
	if err != nil {
		t.Fatalf("another address refused: %v", err)
	}
	defer honest.Close()
	if st, err := lightReserve(ctx, honest); err != nil || st != pbv2.Status_OK {
		t.Fatalf("another address could not reserve: %v %v", st, err)
	}

	// A reservation's slot is given back when its peer disconnects.
	_ = held[0].Close()
	eventually(t, "slot released", func() bool { return n.reservationsFrom(netip.MustParseAddr("127.0.0.2")) == 2 })

	var local []*lightpeer.Conn
	defer func() { closeAll(local) }()
	for range perIP + 3 {
		c, err := lightFrom(ctx, n, "127.0.0.1")
		if err != nil {
			t.Fatalf("127.0.0.1 is exempt, got %v", err)
		}
		local = append(local, c)
	}
}

// Concurrent reservations from one address cannot overshoot the cap.
func TestReservationCapUnderConcurrency(t *testing.T) {
	n := startRelay(t, relayOpt{cfg: func(c *config.Relay) {
		c.MaxConnsPerIP = 32
		c.MaxReservations = 5 * 64
	}})
	ctx := ctxT(t, 30*time.Second)
	var cs []*lightpeer.Conn
	defer func() { closeAll(cs) }()
	for range 20 {
		c, err := lightFrom(ctx, n, "127.0.0.4")
		if err != nil {
			t.Fatal(err)
		}
		cs = append(cs, c)
	}
	var mu sync.Mutex
	ok := 0
	var wg sync.WaitGroup
	for _, c := range cs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if st, err := lightReserve(ctx, c); err == nil && st == pbv2.Status_OK {
				mu.Lock()
				ok++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if ok != 5 {
		t.Fatalf("%d concurrent reservations accepted from one address, cap 5", ok)
	}
}
