package rendezvous

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	pb "github.com/waku-org/go-libp2p-rendezvous/pb"
	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"
)

// populate inserts n registrations under ns from distinct synthetic peers,
// bypassing record checks (the store does not look inside records).
func populate(tb testing.TB, s *Server, ns string, n int, rec []byte, expires time.Time) {
	tb.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := 0; i < n; i++ {
		if _, _, err := s.store.add(peer.ID(fmt.Sprintf("peer-%s-%d", ns, i)), testSrc, ns, rec, expires); err != nil {
			tb.Fatal(err)
		}
	}
}

func TestDiscoverStaysUnderRustFrameCap(t *testing.T) {
	clock := newFakeClock()
	s := New(testCfg, zap.NewNop(), nil, WithClock(clock.Now))
	defer s.Close()
	big := make([]byte, MaxRecordSize)
	populate(t, s, "big", 300, big, clock.Now().Add(time.Hour))

	ns := "big"
	var cookie []byte
	total := 0
	for page := 0; page < 10; page++ {
		d := s.discover("test", &pb.Message_Discover{Ns: &ns, Cookie: cookie})
		msg := &pb.Message{Type: pb.Message_DISCOVER_RESPONSE.Enum(), DiscoverResponse: d}
		if size := proto.Size(msg); size > MaxMessageSize {
			t.Fatalf("page %d: %d bytes > %d", page, size, MaxMessageSize)
		}
		if d.GetStatus() != pb.Message_OK || d.Cookie == nil {
			t.Fatalf("page %d: %v", page, d.GetStatus())
		}
		if page == 0 && (len(d.Registrations) == 0 || len(d.Registrations) >= 300) {
			t.Fatalf("first page has %d registrations; want a size-truncated page", len(d.Registrations))
		}
		total += len(d.Registrations)
		cookie = d.Cookie
		if len(d.Registrations) == 0 {
			break
		}
	}
	if total != 300 {
		t.Fatalf("paged through %d registrations, want 300", total)
	}
}

func TestCookieFromTheFutureServesFromStart(t *testing.T) {
	s := New(testCfg, zap.NewNop(), nil)
	defer s.Close()
	populate(t, s, "ns", 3, []byte("r"), time.Now().Add(time.Hour))
	ns := "ns"
	d := s.discover("test", &pb.Message_Discover{Ns: &ns, Cookie: encodeCookie(^uint64(0), ns)})
	if len(d.Registrations) != 3 {
		t.Fatalf("got %d, want 3", len(d.Registrations))
	}
}

func TestLimitClamp(t *testing.T) {
	cfg := testCfg
	cfg.MaxDiscover = 5
	s := New(cfg, zap.NewNop(), nil)
	defer s.Close()
	populate(t, s, "ns", 8, []byte("r"), time.Now().Add(time.Hour))
	ns := "ns"
	for _, tc := range []struct{ limit, want uint64 }{{0, 5}, {3, 3}, {5, 5}, {100, 5}} {
		d := s.discover("test", &pb.Message_Discover{Ns: &ns, Limit: &tc.limit})
		if uint64(len(d.Registrations)) != tc.want {
			t.Fatalf("limit %d: got %d, want %d", tc.limit, len(d.Registrations), tc.want)
		}
	}
}

// TestStoreMatchesModel drives random operations against the store and a
// plain map, checking that paging yields exactly the model's live set.
func TestStoreMatchesModel(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	now := time.Unix(1_700_000_000, 0)
	st := newStore(1, limits{maxPerPeer: 50, maxTotal: 1 << 20})
	type key struct {
		p  peer.ID
		ns string
	}
	model := map[key]time.Time{}
	peers := []peer.ID{"a", "b", "c", "d", "e", "f"}
	nss := []string{"x", "y", "z"}
	check := func(step int) {
		for _, ns := range append(nss, "") {
			want := 0
			for k, exp := range model {
				if (ns == "" || k.ns == ns) && exp.After(now) {
					want++
				}
			}
			got := 0
			after := uint64(0)
			for page := 0; page < 1000; page++ {
				hits := st.discover(ns, after, 2, 1<<20, now)
				if len(hits) == 0 {
					break
				}
				for _, h := range hits {
					if h.id <= after || (ns != "" && h.ns != ns) || !h.expires.After(now) {
						t.Fatalf("step %d: bad hit %+v after %d", step, h, after)
					}
					after = h.id
				}
				got += len(hits)
			}
			if got != want {
				t.Fatalf("step %d ns %q: paged %d, model %d", step, ns, got, want)
			}
		}
	}
	for step := 0; step < 3000; step++ {
		p := peers[rng.IntN(len(peers))]
		ns := nss[rng.IntN(len(nss))]
		switch rng.IntN(10) {
		case 0, 1, 2, 3, 4:
			exp := now.Add(time.Duration(1+rng.IntN(100)) * time.Second)
			if _, _, err := st.add(p, testSrc, ns, []byte("r"), exp); err != nil {
				t.Fatal(err)
			}
			model[key{p, ns}] = exp
		case 5, 6:
			st.unregister(p, ns)
			delete(model, key{p, ns})
		case 7:
			st.unregister(p, "")
			for k := range model {
				if k.p == p {
					delete(model, k)
				}
			}
		case 8:
			now = now.Add(time.Duration(rng.IntN(20)) * time.Second)
			st.expire(now, 1<<20)
			for k, exp := range model {
				if !exp.After(now) {
					delete(model, k)
				}
			}
			if st.len() != len(model) {
				t.Fatalf("step %d: store len %d, model %d", step, st.len(), len(model))
			}
		case 9:
			check(step)
		}
	}
	check(-1)
}

func TestSweeperDropsExpired(t *testing.T) {
	clock := newFakeClock()
	srv, _ := startServer(t, nil, WithClock(clock.Now), WithSweepInterval(5*time.Millisecond))
	populate(t, srv, "ns", 10, []byte("r"), clock.Now().Add(time.Hour))
	clock.Advance(time.Hour)
	stored := func() int {
		srv.mu.Lock()
		defer srv.mu.Unlock()
		return srv.store.len()
	}
	eventually(t, "sweeper", func() bool { return stored() == 0 })
	srv.mu.Lock()
	defer srv.mu.Unlock()
	if len(srv.store.byNS) != 0 || len(srv.store.byPeer) != 0 {
		t.Fatalf("indexes not emptied: %d namespaces, %d peers", len(srv.store.byNS), len(srv.store.byPeer))
	}
}
