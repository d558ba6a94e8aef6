package turnprof

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"slices"
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

func startServer(tb testing.TB, maxBPS int) *net.UDPAddr {
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
		MaxBPS:         maxBPS,
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
				addr := startServer(b, 0)
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

// defaultBPS is DUSK_TURN_MAX_BPS's default.
const defaultBPS = 1_000_000

// unboundedBPS turns the bandwidth limiter on at a rate no run reaches.
const unboundedBPS = 1 << 40

// BenchmarkTURNRelayLimit is the bandwidth limiter's cost: two servers,
// limiter off (DUSK_TURN_MAX_BPS=0) and on, driven in alternating rounds
// within one benchmark so the shared machine's drift hits both alike. It
// reports the median of the per-round on/off packet rates ("on/off").
// With 100 allocations each stays under the default limit, so the default
// is measured; with 1 and 10 this closed loop (sending as fast as echoes
// return) would exceed it and measure the limit, not its cost, so the
// limiter runs at a rate it never reaches (every packet pays the check,
// none is dropped).
func BenchmarkTURNRelayLimit(b *testing.B) {
	for _, payload := range []int{200, 1200} {
		for _, allocs := range []int{1, 10, 100} {
			limit, name := unboundedBPS, "unbounded"
			if allocs == 100 {
				limit, name = defaultBPS, "default"
			}
			b.Run(fmt.Sprintf("payload=%d/allocs=%d/limit=%s", payload, allocs, name), func(b *testing.B) {
				pairedRounds(b, payload, allocs, limit)
			})
		}
	}
}

func pairedRounds(b *testing.B, payload, allocs, limit int) {
	ctx := context.Background()
	var sets [2]*turnload.Set // off, on
	for i, bps := range []int{0, limit} {
		set, err := turnload.Setup(ctx, turnload.Target{Addr: startServer(b, bps), Realm: "duskchat.app", Secret: secret}, allocs, 10, payload)
		if err != nil {
			b.Fatal(err)
		}
		defer set.Close()
		sets[i] = set
	}
	rounds := min(10, b.N)
	per := uint64(max(b.N/(2*rounds), 1))
	var (
		elapsed [2]time.Duration
		relayed [2]uint64
		ratios  []float64
	)
	b.ReportAllocs()
	b.ResetTimer()
	for r := 0; r < rounds; r++ {
		var pps [2]float64
		for k := 0; k < 2; k++ {
			i := k ^ r&1 // alternate which goes first
			start := time.Now()
			n, err := sets[i].RunPackets(ctx, max(1, 64/allocs), per, 10*time.Minute)
			d := time.Since(start)
			if err != nil {
				b.Fatal(err)
			}
			elapsed[i] += d
			relayed[i] += n
			pps[i] = float64(n) / d.Seconds()
		}
		ratios = append(ratios, pps[1]/pps[0])
	}
	b.StopTimer()
	slices.Sort(ratios)
	b.ReportMetric(ratios[len(ratios)/2], "on/off")
	b.ReportMetric(float64(relayed[0])/elapsed[0].Seconds(), "off-pkts/s")
	b.ReportMetric(float64(relayed[1])/elapsed[1].Seconds(), "on-pkts/s")
}
