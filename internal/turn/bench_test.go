package turn

import (
	"context"
	"net"
	"net/netip"
	"os/exec"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pion/stun/v3"
	"go.uber.org/zap"

	"github.com/duskchat/dusk-relay/internal/turnauth"
)

// Benchmarks run on loopback with the pion/turn client (so client-side
// pion costs are included, as in a real call leg). Run:
//
//	go test -run '^$' -bench . -benchtime 3s ./internal/turn
//
// BenchmarkCoturn runs the same client code against coturn's turnserver.

func benchServer(b *testing.B) *Server {
	b.Helper()
	cfg := testConfig()
	cfg.PortRangeStart, cfg.PortRangeEnd = 20000, 20999 // apart from the tests' range
	cfg.MaxAllocations = 1 << 20
	cfg.MaxPerUser = 1 << 20
	s, err := New(cfg, testSecret, zap.NewNop(), nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = s.Close() })
	return s
}

// target is a TURN server under benchmark: ours, or coturn for comparison.
type target struct {
	udp, tcp string
	secret   []byte
}

func ours(b *testing.B) target {
	s := benchServer(b)
	return target{udp: s.UDPAddr().String(), tcp: s.TCPAddr().String(), secret: testSecret}
}

func (tg target) addr(network string) string {
	if network == "tcp" {
		return tg.tcp
	}
	return tg.udp
}

func (tg target) creds(peer string) (string, string) {
	return turnauth.Issue(tg.secret, peer, time.Now(), time.Hour)
}

// BenchmarkAllocate measures allocation setup: the unauthenticated
// Allocate (401 + nonce) and the authenticated one, i.e. what a client
// waits for before it has a relayed address.
func BenchmarkAllocate(b *testing.B) { benchAllocate(b, ours) }

func benchAllocate(b *testing.B, start func(*testing.B) target) {
	for _, network := range []string{"udp", "tcp"} {
		b.Run(network, func(b *testing.B) {
			tg := start(b)
			u, p := tg.creds(peerA)
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				var c *client
				if network == "udp" {
					// A new source address each time: a reused client port
					// whose allocation the server has not deleted yet (coturn
					// keeps them after pion's fire-and-forget Refresh(0))
					// would get 437.
					pc, err := net.ListenPacket("udp4", net.JoinHostPort(loopbackN(i), "0"))
					if err != nil {
						b.Fatal(err)
					}
					c = clientOn(b, pc, tg.udp, u, p)
				} else {
					c = dialAddr(b, network, tg.tcp, u, p)
				}
				b.StartTimer()
				r, err := c.Client.Allocate()
				if err != nil {
					b.Fatalf("allocation %d: %v", i, err)
				}
				b.StopTimer()
				_ = r.Close() // Refresh(0): frees the relay port
				c.close()
				b.StartTimer()
			}
		})
	}
}

// pump sends n packets with at most window in flight and counts arrivals;
// a stalled window (loss) is given up on after a short wait, so the run is
// bounded even when packets are dropped.
func pump(n, window int, send func() error, recv func() error) (received int64, elapsed time.Duration, err error) {
	var got atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		for got.Load() < int64(n) {
			if recv() != nil {
				return // read deadline: the rest is lost
			}
			got.Add(1)
		}
	}()
	start := time.Now()
	for i := 0; i < n; i++ {
		if int64(i)-got.Load() >= int64(window) {
			// Wait for the receiver, but not for lost packets: a window
			// stalled for 200 ms (or a receiver that gave up) moves on.
			stalled := time.Now()
			for int64(i)-got.Load() >= int64(window) && time.Since(stalled) < 200*time.Millisecond && !closed(done) {
				time.Sleep(20 * time.Microsecond)
			}
		}
		if err := send(); err != nil {
			return got.Load(), time.Since(start), err
		}
	}
	<-done
	return got.Load(), time.Since(start), nil
}

// loopbackN spreads clients over 127.1.0.0/16.
func loopbackN(i int) string {
	return netip.AddrFrom4([4]byte{127, 1, byte(i >> 8), byte(i)}).String()
}

func closed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

func reportRate(b *testing.B, n int, received int64, elapsed time.Duration) {
	b.ReportMetric(float64(received)/elapsed.Seconds(), "pkts/s")
	b.ReportMetric(100*float64(int64(n)-received)/float64(n), "%lost")
}

// BenchmarkRelay measures relayed packets/s through the server (200-byte
// payloads, the size of an audio frame):
//   - peer-to-client: a plain UDP peer sends to a relayed address, the
//     server forwards to the pion client (relay socket read + TURN write);
//   - relay-to-relay: client A -> its relay -> B's relay -> client B, the
//     path of a call where both sides use this server (traverses it twice).
func BenchmarkRelay(b *testing.B) { benchRelay(b, ours) }

func benchRelay(b *testing.B, start func(*testing.B) target) {
	payload := make([]byte, 200)
	b.Run("peer-to-client/udp", func(b *testing.B) {
		tg := start(b)
		u, p := tg.creds(peerA)
		c := dialAddr(b, "udp", tg.udp, u, p)
		relay, err := c.Allocate()
		if err != nil {
			b.Fatal(err)
		}
		peer, err := net.ListenPacket("udp4", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		defer peer.Close()
		if err := c.CreatePermission(peer.LocalAddr()); err != nil {
			b.Fatal(err)
		}
		to := relay.LocalAddr()
		buf := make([]byte, 1500)
		b.SetBytes(int64(len(payload)))
		b.ResetTimer()
		got, el, err := pump(b.N, 64,
			func() error { _, err := peer.WriteTo(payload, to); return err },
			func() error {
				_ = relay.SetReadDeadline(time.Now().Add(time.Second))
				_, _, err := relay.ReadFrom(buf)
				return err
			})
		b.StopTimer()
		if err != nil {
			b.Fatal(err)
		}
		reportRate(b, b.N, got, el)
	})
	for _, network := range []string{"udp", "tcp"} {
		b.Run("relay-to-relay/"+network, func(b *testing.B) {
			tg := start(b)
			ua, pa := tg.creds(peerA)
			ub, pb := tg.creds(peerB)
			a, bb := dialAddr(b, network, tg.addr(network), ua, pa), dialAddr(b, network, tg.addr(network), ub, pb)
			ra, err := a.Allocate()
			if err != nil {
				b.Fatal(err)
			}
			rb, err := bb.Allocate()
			if err != nil {
				b.Fatal(err)
			}
			if err := a.CreatePermission(rb.LocalAddr()); err != nil {
				b.Fatal(err)
			}
			if err := bb.CreatePermission(ra.LocalAddr()); err != nil {
				b.Fatal(err)
			}
			// Warm up until the channel binding is in place.
			buf := make([]byte, 1500)
			for i := 0; i < 50; i++ {
				_, _ = ra.WriteTo(payload, rb.LocalAddr())
				_ = rb.SetReadDeadline(time.Now().Add(time.Second))
				_, _, _ = rb.ReadFrom(buf)
				time.Sleep(2 * time.Millisecond)
			}
			to := rb.LocalAddr()
			b.SetBytes(int64(len(payload)))
			b.ResetTimer()
			got, el, err := pump(b.N, 64,
				func() error { _, err := ra.WriteTo(payload, to); return err },
				func() error {
					_ = rb.SetReadDeadline(time.Now().Add(time.Second))
					_, _, err := rb.ReadFrom(buf)
					return err
				})
			b.StopTimer()
			if err != nil {
				b.Fatal(err)
			}
			reportRate(b, b.N, got, el)
		})
	}
}

// BenchmarkCoturn runs the same benchmarks against coturn's turnserver
// (Debian package coturn), configured like our server, for comparison.
func BenchmarkCoturn(b *testing.B) {
	bin, err := exec.LookPath("turnserver")
	if err != nil {
		b.Skip("turnserver (coturn) not installed")
	}
	start := func(b *testing.B) target {
		b.Helper()
		port := freePort(b)
		ctx, cancel := context.WithCancel(context.Background())
		cmd := exec.CommandContext(ctx, bin, "-n", "--no-cli", "--no-tls", "--no-dtls",
			"--listening-ip=127.0.0.1", "--relay-ip=127.0.0.1", "--listening-port="+strconv.Itoa(port),
			"--min-port=22000", "--max-port=22999", "--use-auth-secret", "--static-auth-secret="+string(testSecret),
			"--realm=duskchat.app", "--allow-loopback-peers", "--allowed-peer-ip=127.0.0.1",
			"--user-quota=0", "--total-quota=0", "--log-file=/dev/null", "--no-software-attribute")
		if err := cmd.Start(); err != nil {
			cancel()
			b.Fatal(err)
		}
		b.Cleanup(func() { cancel(); _ = cmd.Wait() })
		addr := "127.0.0.1:" + strconv.Itoa(port)
		for i := 0; ; i++ { // up to ~5 s for coturn to answer STUN
			c := dialAddr(b, "udp", addr, "", "")
			_, err := c.SendBindingRequest()
			c.close()
			if err == nil {
				break
			}
			if i == 50 {
				b.Fatalf("turnserver not answering on %s: %v", addr, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
		return target{udp: addr, tcp: addr, secret: testSecret}
	}
	b.Run("Allocate", func(b *testing.B) { benchAllocate(b, start) })
	b.Run("Relay", func(b *testing.B) { benchRelay(b, start) })
}

func freePort(b *testing.B) int {
	b.Helper()
	// A port free for both UDP and TCP (coturn listens on both).
	for i := 0; i < 20; i++ {
		l, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		_ = l.Close()
		if u, err := net.ListenPacket("udp4", "127.0.0.1:"+strconv.Itoa(port)); err == nil {
			_ = u.Close()
			return port
		}
	}
	b.Fatal("no free port")
	return 0
}

// BenchmarkGate is the per-packet cost the auth gate adds: a type check
// for data, a full check for authenticated requests.
func BenchmarkGate(b *testing.B) {
	s := &Server{secret: testSecret, log: zap.NewNop(), authLog: newLimiter(time.Second)}
	s.cfg.CredentialTTL = time.Hour
	s.cfg.Realm = "duskchat.app"
	src := net.UDPAddrFromAddrPort(netip.MustParseAddrPort("127.0.0.1:5000"))
	channelData := append([]byte{0x40, 0x00, 0x00, 200}, make([]byte, 200)...)
	u, p := turnauth.Issue(testSecret, peerA, time.Now(), time.Hour)
	req := stun.MustBuild(stun.TransactionID, stun.NewType(stun.MethodAllocate, stun.ClassRequest),
		stun.RawAttribute{Type: stun.AttrRequestedTransport, Value: []byte{17, 0, 0, 0}},
		stun.NewUsername(u), stun.NewRealm("duskchat.app"), stun.NewNonce("nonce"),
		stun.NewLongTermIntegrity(u, "duskchat.app", p), stun.Fingerprint)
	b.Run("channeldata", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			if s.inspect(channelData, src) != nil {
				b.Fatal("rejected")
			}
		}
	})
	b.Run("allocate-request", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			if s.inspect(req.Raw, src) != nil {
				b.Fatal("rejected")
			}
		}
	})
}

func BenchmarkPeerFilter(b *testing.B) {
	f := NewPeerFilter(nil, nil, hostAddrs())
	addrs := []netip.Addr{netip.MustParseAddr("8.8.8.8"), netip.MustParseAddr("10.1.2.3"),
		netip.MustParseAddr("2606:4700::1111"), netip.MustParseAddr("64:ff9b::7f00:1")}
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		_ = f.Check(addrs[i%len(addrs)])
	}
}
