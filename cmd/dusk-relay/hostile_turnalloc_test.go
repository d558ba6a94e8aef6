package main

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pion/turn/v4"

	"github.com/duskchat/dusk-relay/internal/turnauth"
)

// Hostile internet, TURN allocations: identities are free (credentials are
// an HMAC of the secret any libp2p identity can ask for), addresses are not.

// turnSecret reads the daemon's persisted TURN secret, from which the
// attacker's credentials are minted directly (each would otherwise cost one
// libp2p handshake).
func turnSecret(t *testing.T, d *daemon) []byte {
	t.Helper()
	secret, err := os.ReadFile(d.dataDir() + "/" + turnauth.SecretFile)
	if err != nil {
		t.Fatal(err)
	}
	return bytes.TrimSpace(secret)
}

// Ten addresses, each minting fresh peer IDs, used to take all 1000
// allocations (100 per address) and keep them by Refresh; newcomers got 486
// for as long as the attacker liked. With the default per-address cap (40)
// the same attack holds 400 and an honest client from another address
// allocates and relays.
func TestHostileTURNAllocationFlood(t *testing.T) {
	// Defaults for every quota; only the relay port range is widened to
	// hold the global maximum, and loopback peers are allowed for the relay check.
	env := append(testEnv(t.TempDir()),
		"DUSK_TURN_PORT_RANGE_START=41000", "DUSK_TURN_PORT_RANGE_END=42099",
		"DUSK_TURN_ALLOW_PEERS=127.0.0.0/8")
	d := startDaemon(t, env)
	udpAddr, _ := turnAddrs(t, d)
	key := turnSecret(t, d)

	const addrs, perAddr = 10, 100
	type result struct{ ok, quota, other int }
	results := make([]result, addrs)
	start := time.Now()
	for i := 0; i < addrs; i++ {
		src := fmt.Sprintf("127.0.0.%d", 10+i)
		for j := 0; j < perAddr; j++ {
			id := fmt.Sprintf("12D3KooWAllocFlood%02d%032d", i, j) // a fresh identity per allocation
			u, p := turnauth.Issue(key, id, time.Now(), time.Hour)
			err := dialTURNFrom(t, src, udpAddr, u, p).allocate()
			switch {
			case err == nil:
				results[i].ok++
			case turnCode(err) == 486:
				results[i].quota++
			default:
				results[i].other++
			}
		}
	}
	held := 0
	for i, r := range results {
		held += r.ok
		if r.ok != 40 || r.quota != perAddr-40 || r.other != 0 {
			t.Errorf("127.0.0.%d: %d allocated, %d × 486, %d other errors; want 40, %d, 0", 10+i, r.ok, r.quota, r.other, perAddr-40)
		}
	}
	t.Logf("allocation flood: %d addresses × %d fresh identities in %v: %d allocations held (global cap 1000)",
		addrs, perAddr, time.Since(start).Round(time.Millisecond), held)

	// The honest client: credentials over libp2p, another address, and its
	// allocation relays to a second honest client.
	creds := fetchCreds(t, d)
	a := dialTURNFrom(t, "127.0.0.2", udpAddr, creds.Username, creds.Password)
	if err := a.allocate(); err != nil {
		t.Fatalf("honest client cannot allocate after the flood: code %d (%v)", turnCode(err), err)
	}
	creds2 := fetchCreds(t, d)
	b := dialTURNFrom(t, "127.0.0.3", udpAddr, creds2.Username, creds2.Password)
	if err := b.allocate(); err != nil {
		t.Fatalf("second honest client: %v", err)
	}
	permitBoth(t, a, b)
	if got := relayOnce(t, a.relay, b.relay, []byte("still served")); !got {
		t.Fatal("honest clients' data not relayed after the flood")
	}
	assertServing(t, d)
}

func permitBoth(t *testing.T, a, b *turnClient) {
	t.Helper()
	if err := a.CreatePermission(b.relay.LocalAddr()); err != nil {
		t.Fatal(err)
	}
	if err := b.CreatePermission(a.relay.LocalAddr()); err != nil {
		t.Fatal(err)
	}
}

// relayOnce sends msg from one relayed conn to the other and reports
// whether it arrived within 5 s.
func relayOnce(t *testing.T, from, to net.PacketConn, msg []byte) bool {
	t.Helper()
	if _, err := from.WriteTo(msg, to.LocalAddr()); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1500)
	_ = to.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		n, _, err := to.ReadFrom(buf)
		if err != nil {
			return false
		}
		if bytes.Equal(buf[:n], msg) {
			return true
		}
	}
}

// dialTURNTCPFrom is dialTURNFrom over TCP: pion relays a TCP client's
// ChannelData itself, so this exercises pion's data path, not the fast path.
func dialTURNTCPFrom(t *testing.T, localIP, server, user, pass string) *turnClient {
	t.Helper()
	dialer := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(localIP)}, Timeout: 5 * time.Second}
	conn, err := dialer.Dial("tcp", server)
	if err != nil {
		t.Fatal(err)
	}
	pc := turn.NewSTUNConn(conn)
	cl, err := turn.NewClient(&turn.ClientConfig{
		STUNServerAddr: server, TURNServerAddr: server, Username: user, Password: pass,
		Conn: pc, RTO: 200 * time.Millisecond, LoggerFactory: quietPion(),
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := cl.Listen(); err != nil {
		t.Fatal(err)
	}
	tc := &turnClient{Client: cl, conn: pc}
	t.Cleanup(func() {
		if tc.relay != nil {
			_ = tc.relay.Close()
		}
		cl.Close()
		_ = pc.Close()
	})
	return tc
}

// A client sending far above DUSK_TURN_MAX_BPS (default 1 MB/s per
// allocation and direction) gets about the limit through, on the channel
// fast path (UDP client) and on pion's path (TCP client); afterwards the
// allocation, and another client, still relay.
func TestHostileTURNBandwidthLimit(t *testing.T) {
	env := append(testEnv(t.TempDir()), "DUSK_TURN_ALLOW_PEERS=127.0.0.0/8")
	d := startDaemon(t, env)
	udpAddr, tcpAddr := turnAddrs(t, d)
	key := turnSecret(t, d)
	const (
		limit    = 1_000_000 // the default
		burst    = 250_000   // a quarter second at the limit
		offered  = 3 * limit
		duration = 2 * time.Second
		size     = 1000
	)
	for i, network := range []string{"udp", "tcp"} {
		t.Run(network, func(t *testing.T) {
			ua, pa := turnauth.Issue(key, fmt.Sprintf("12D3KooWBandwidthA%d", i), time.Now(), time.Hour)
			ub, pb := turnauth.Issue(key, fmt.Sprintf("12D3KooWBandwidthB%d", i), time.Now(), time.Hour)
			var a *turnClient
			if network == "tcp" {
				a = dialTURNTCPFrom(t, "127.0.0.4", tcpAddr, ua, pa)
			} else {
				a = dialTURNFrom(t, "127.0.0.4", udpAddr, ua, pa)
			}
			b := dialTURNFrom(t, "127.0.0.5", udpAddr, ub, pb)
			if err := a.allocate(); err != nil {
				t.Fatal(err)
			}
			if err := b.allocate(); err != nil {
				t.Fatal(err)
			}
			permitBoth(t, a, b)
			// The first packets bind the channel (pion's client does it on first send).
			if !relayOnce(t, a.relay, b.relay, []byte("warm up")) {
				t.Fatal("no relay before the flood")
			}
			time.Sleep(300 * time.Millisecond) // channel bound, budget refilled

			var received atomic.Int64
			done := make(chan struct{})
			go func() {
				defer close(done)
				buf := make([]byte, 2048)
				for {
					_ = b.relay.SetReadDeadline(time.Now().Add(time.Second))
					n, _, err := b.relay.ReadFrom(buf)
					if err != nil {
						return
					}
					received.Add(int64(n))
				}
			}()
			payload := bytes.Repeat([]byte{0xd5}, size)
			to := b.relay.LocalAddr()
			perTick := offered / size / 1000 // packets per millisecond
			began := time.Now()
			sent := 0
			for time.Since(began) < duration {
				for k := 0; k < perTick; k++ {
					if _, err := a.relay.WriteTo(payload, to); err == nil {
						sent += size
					}
				}
				// Pace by the clock, not by sleeps: behind schedule, send at once.
				if ahead := time.Duration(sent)*time.Second/offered - time.Since(began); ahead > 0 {
					time.Sleep(ahead)
				}
			}
			elapsed := time.Since(began)
			<-done // ends a second after the last packet
			got := received.Load()
			want := int64(limit*elapsed.Seconds()) + burst
			t.Logf("%s: offered %d bytes in %v (%.1f MB/s), %d relayed (%.2f MB/s); limit allows ~%d",
				network, sent, elapsed.Round(time.Millisecond), float64(sent)/elapsed.Seconds()/1e6,
				got, float64(got)/elapsed.Seconds()/1e6, want)
			if float64(sent) < 2*float64(want) {
				t.Skipf("the sender managed only %d bytes (machine too busy to exceed the limit twice)", sent)
			}
			if float64(got) > 1.3*float64(want) || float64(got) < 0.5*float64(want) {
				t.Errorf("%d bytes relayed, want about %d (limit x time + burst)", got, want)
			}
			time.Sleep(300 * time.Millisecond)
			if !relayOnce(t, a.relay, b.relay, []byte("after the flood")) {
				t.Error("allocation over its limit relays nothing afterwards")
			}
		})
	}
	assertServing(t, d)
}
