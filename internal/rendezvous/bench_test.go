package rendezvous

import (
	"fmt"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
	pb "github.com/waku-org/go-libp2p-rendezvous/pb"
	"go.uber.org/zap"
)

// BenchmarkDiscover100k pages through one namespace of 100k registrations
// with cookies, one page (MaxDiscover = 1000) per iteration, restarting at
// the end. Records are ~300 bytes like a Dusk client's.
func BenchmarkDiscover100k(b *testing.B) {
	for _, limit := range []uint64{100, 1000} {
		b.Run(fmt.Sprintf("limit=%d", limit), func(b *testing.B) {
			s := New(testCfg, zap.NewNop(), nil)
			defer s.Close()
			populate(b, s, "dusk/peers", 100_000, make([]byte, 300), time.Now().Add(time.Hour))
			ns := "dusk/peers"
			var cookie []byte
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				d := s.discover("bench", &pb.Message_Discover{Ns: &ns, Limit: &limit, Cookie: cookie})
				if len(d.Registrations) == 0 {
					cookie = nil
					continue
				}
				cookie = d.Cookie
			}
		})
	}
}

// BenchmarkRegister measures the register path (record verification +
// store insert) without the network, spread over 1000 keys.
func BenchmarkRegister(b *testing.B) {
	const keys = 1000
	addr, _ := ma.NewMultiaddr("/ip4/203.0.113.7/tcp/4001")
	type signer struct {
		id  peer.ID
		rec []byte
	}
	signers := make([]signer, keys)
	for i := range signers {
		k, _, err := crypto.GenerateEd25519Key(nil)
		if err != nil {
			b.Fatal(err)
		}
		id, _ := peer.IDFromPrivateKey(k)
		signers[i] = signer{id, sealRecord(b, k, id, []ma.Multiaddr{addr})}
	}
	nss := make([]string, 100)
	for i := range nss {
		nss[i] = fmt.Sprintf("dusk/community/com_%016x", i)
	}
	s := New(testCfg, zap.NewNop(), nil)
	defer s.Close()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		sg := signers[i%keys]
		ns := nss[(i/keys)%len(nss)]
		r := s.register(sg.id, testSrc, &pb.Message_Register{Ns: &ns, SignedPeerRecord: sg.rec})
		if r.GetStatus() != pb.Message_OK {
			b.Fatal(r.GetStatus(), r.GetStatusText())
		}
	}
}

// BenchmarkRegisterStream measures a full register round trip over a real
// libp2p stream on loopback (one stream per request, as clients do).
func BenchmarkRegisterStream(b *testing.B) {
	_, sh := startServer(b, nil)
	c := clients(b, sh, 1)[0]
	rec := ownRecord(b, c)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		rr := registerStatus(b, c, sh.ID(), registerMsg(fmt.Sprintf("ns-%d", i%200), rec, nil))
		if rr.GetStatus() != pb.Message_OK {
			b.Fatal(rr)
		}
	}
}
