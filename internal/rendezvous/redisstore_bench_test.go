package rendezvous

import (
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

// BenchmarkStores runs the same register and discover load on the
// in-memory and the Redis store in one run, so their numbers compare:
//
//	go test ./internal/rendezvous -run '^$' -bench BenchmarkStores -benchtime 2s
//
// register: refreshes by 1000 peers over 20 namespaces (~300-byte
// records, what Dusk clients send every 120 s); parallel: 16 goroutines
// per CPU, as concurrent streams are. discover: pages of 100 through a
// namespace of 10,000 registrations with cookies.
func BenchmarkStores(b *testing.B) {
	peers := make([]peer.ID, 1000)
	for i := range peers {
		peers[i] = pid(i%250 + 1)
		if i >= 250 { // FixedKey takes a byte: vary the rest by suffix
			peers[i] = peer.ID(string(pid(i%250+1)) + fmt.Sprint(i))
		}
	}
	nss := make([]string, 20)
	for i := range nss {
		nss[i] = fmt.Sprintf("dusk/community/com_%016x", i)
	}
	rec := make([]byte, 300)
	for _, bc := range backendCases() {
		mk := func(b *testing.B) *Server {
			return bc.mk(b, WithMaxPerPeer(1000), WithMaxPeerBytes(0), WithMaxSourceBytes(0), WithMaxBytes(0), WithMaxRegistrations(1<<30))
		}
		b.Run("register/"+bc.name, func(b *testing.B) {
			s := mk(b)
			exp := time.Now().Add(time.Hour)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, _, err := s.be.add(bg, peers[i%len(peers)], testSrc, nss[i%len(nss)], rec, exp, time.Now()); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
		})
		b.Run("register-parallel/"+bc.name, func(b *testing.B) {
			s := mk(b)
			exp := time.Now().Add(time.Hour)
			var n atomic.Int64
			b.SetParallelism(16)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					i := int(n.Add(1))
					if _, _, err := s.be.add(bg, peers[i%len(peers)], testSrc, nss[i%len(nss)], rec, exp, time.Now()); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
		})
		b.Run("discover100/"+bc.name, func(b *testing.B) {
			s := mk(b)
			exp := time.Now().Add(time.Hour)
			for i := range 10_000 {
				p := peer.ID(fmt.Sprint("bench-peer-", i))
				if _, _, err := s.be.add(bg, p, testSrc, "dusk/peers", rec, exp, time.Now()); err != nil {
					b.Fatal(err)
				}
			}
			after := uint64(0)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				hits, err := s.be.discover(bg, "dusk/peers", after, 100, responseBudget, time.Now())
				if err != nil {
					b.Fatal(err)
				}
				if len(hits) == 0 {
					after = 0
					continue
				}
				after = hits[len(hits)-1].id
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
		})
	}
}
