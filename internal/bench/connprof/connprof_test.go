package connprof

import (
	"context"
	"crypto/rand"
	"os"
	"runtime"
	"runtime/pprof"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	ma "github.com/multiformats/go-multiaddr"
	"go.uber.org/goleak"
	"go.uber.org/zap"

	"github.com/duskchat/dusk-relay/internal/bench"
	"github.com/duskchat/dusk-relay/internal/bench/lightpeer"
	"github.com/duskchat/dusk-relay/internal/config"
	"github.com/duskchat/dusk-relay/internal/p2p"
	"github.com/duskchat/dusk-relay/internal/testutil"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m, testutil.IgnoreLibp2p()...) }

func TestConnMemory(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("DUSK_CONNPROF_N"))
	if n <= 0 {
		t.Skip("set DUSK_CONNPROF_N (and DUSK_CONNPROF_HEAP) to run")
	}
	if _, err := bench.RaiseNoFile(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	key, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	cfg := config.Relay{
		ListenAddrs: config.MultiaddrList{ma.StringCast("/ip4/127.0.0.1/tcp/0")},
		MaxConns:    10000, MaxReservations: 128, MaxReservationsPerPeer: 4, MaxCircuits: 16,
		MaxCircuitsPerPeer: 4, CircuitDuration: 2 * time.Minute, CircuitBytes: 131072, ReservationTTL: time.Hour,
	}
	node, err := p2p.New(ctx, cfg, p2p.Options{Version: "connprof"}, key, zap.NewNop(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer node.Close()
	if err := node.Listen(ctx); err != nil {
		t.Fatal(err)
	}
	addr := node.ListenAddrs()[0]

	var m0 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&m0)
	g0 := runtime.NumGoroutine()

	conns := make([]*lightpeer.Conn, n)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 32)
	for i := range conns {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c, err := lightpeer.Dial(ctx, nil, addr, node.ID())
			if err == nil {
				_, err = c.Identify(ctx)
			}
			if err != nil {
				t.Error(err)
				return
			}
			conns[i] = c
		}()
	}
	wg.Wait()
	defer func() {
		for _, c := range conns {
			if c != nil {
				_ = c.Close()
			}
		}
	}()
	time.Sleep(3 * time.Second)
	runtime.GC()
	var m1 runtime.MemStats
	runtime.ReadMemStats(&m1)
	per := func(a, b uint64) float64 { return float64(int64(b)-int64(a)) / 1024 / float64(n) }
	t.Logf("%d conns (both ends in process): heap inuse %.1f KiB/conn, stack inuse %.1f KiB/conn, goroutines %.1f/conn, sys %.1f KiB/conn, node sees %d",
		n, per(m0.HeapInuse, m1.HeapInuse), per(m0.StackInuse, m1.StackInuse),
		float64(runtime.NumGoroutine()-g0)/float64(n), per(m0.Sys, m1.Sys), node.Connections())
	if path := os.Getenv("DUSK_CONNPROF_HEAP"); path != "" {
		f, err := os.Create(path)
		if err != nil {
			t.Fatal(err)
		}
		if err := pprof.WriteHeapProfile(f); err != nil {
			t.Fatal(err)
		}
		_ = f.Close()
	}
}
