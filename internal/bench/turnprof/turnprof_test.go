package turnprof

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.uber.org/zap"

	"github.com/duskchat/dusk-relay/internal/bench"
	"github.com/duskchat/dusk-relay/internal/bench/turnload"
	"github.com/duskchat/dusk-relay/internal/config"
	"github.com/duskchat/dusk-relay/internal/turn"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const secret = "turnprof-shared-secret"

func startServer(tb testing.TB) *net.UDPAddr {
	tb.Helper()
	port, err := bench.FreePort()
	if err != nil {
		tb.Fatal(err)
	}
	cfg := config.TURN{
		Enabled:        true,
		PublicIP:       "127.0.0.1",
		ListenIP:       "127.0.0.1",
		UDPPort:        uint16(port),
		TCPPort:        uint16(port),
		Realm:          "duskchat.app",
		PortRangeStart: 20000,
		PortRangeEnd:   24999,
		MaxAllocations: 100000,
		MaxPerUser:     10,
		CredentialTTL:  24 * time.Hour,
		AllowPeers:     config.PrefixList{netip.MustParsePrefix("127.0.0.0/8")},
		UDPThreads:     runtime.NumCPU(),
	}
	s, err := turn.New(cfg, []byte(secret), zap.NewNop(), nil)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = s.Close() })
	return &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port}
}

// One op = one packet relayed by the server (either direction).
func BenchmarkTURNRelay(b *testing.B) {
	for _, payload := range []int{200, 1200} {
		for _, allocs := range []int{1, 10, 100} {
			b.Run(fmt.Sprintf("payload=%d/allocs=%d", payload, allocs), func(b *testing.B) {
				addr := startServer(b)
				ctx := context.Background()
				set, err := turnload.Setup(ctx, turnload.Target{Addr: addr, Realm: "duskchat.app", Secret: secret}, allocs, 10, payload)
				if err != nil {
					b.Fatal(err)
				}
				defer set.Close()
				b.ReportAllocs()
				b.ResetTimer()
				start := time.Now()
				n, err := set.RunPackets(ctx, max(1, 64/allocs), uint64(b.N), 10*time.Minute)
				b.StopTimer()
				if err != nil {
					b.Fatal(err)
				}
				b.ReportMetric(float64(n)/time.Since(start).Seconds(), "pkts/s")
			})
		}
	}
}
