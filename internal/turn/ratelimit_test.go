package turn

import (
	"encoding/binary"
	"net"
	"net/netip"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pion/stun/v3"
	"github.com/pion/turn/v4"

	"github.com/duskchat/dusk-relay/internal/turnauth"
)

func TestAnswerLimiter(t *testing.T) {
	l := newAnswerLimiter(10, 5, 8)
	p := netip.MustParsePrefix("192.0.2.1/32")
	t0 := time.Unix(1000, 0)
	for i := 0; i < 5; i++ {
		if !l.allow(p, answerBinding, t0) {
			t.Fatalf("answer %d of the burst refused", i)
		}
	}
	if l.allow(p, answerBinding, t0) {
		t.Fatal("answer beyond the burst allowed")
	}
	// 10/s: one token per 100 ms.
	if l.allow(p, answerUnauth, t0.Add(50*time.Millisecond)) || !l.allow(p, answerUnauth, t0.Add(150*time.Millisecond)) {
		t.Fatal("refill is not 10/s")
	}
	if l.dropped[answerBinding].Load() != 1 || l.dropped[answerUnauth].Load() != 1 {
		t.Fatalf("dropped %d/%d", l.dropped[answerBinding].Load(), l.dropped[answerUnauth].Load())
	}
	// Other prefixes have their own bucket; an hour later the bucket is
	// full again, no more.
	if !l.allow(netip.MustParsePrefix("192.0.2.2/32"), answerBinding, t0) {
		t.Fatal("another prefix refused")
	}
	later := t0.Add(time.Hour)
	n := 0
	for l.allow(p, answerBinding, later) {
		n++
	}
	if n != 5 {
		t.Fatalf("%d answers after an hour, want the burst (5)", n)
	}
	// Bounded: spoofed prefixes do not grow the table past max.
	for i := 0; i < 1000; i++ {
		a := netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 1})
		l.allow(netip.PrefixFrom(a, 32), answerBinding, later)
		if l.size() > 8 {
			t.Fatalf("%d prefixes tracked, max 8", l.size())
		}
	}
}

// TestWrongCredentials441: a request on an existing allocation (same
// 5-tuple) with another peer's valid credentials gets 441; before, pion
// refreshed or extended the allocation for anyone with any valid username.
func TestWrongCredentials441(t *testing.T) {
	s := startServer(t, testConfig())
	for _, network := range []string{"udp", "tcp"} {
		t.Run(network, func(t *testing.T) {
			var r *rawTURN
			if network == "udp" {
				pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
				if err != nil {
					t.Fatal(err)
				}
				defer pc.Close()
				r = &rawTURN{pc: pc, server: s.UDPAddr()}
			} else {
				c, err := net.Dial("tcp", s.TCPAddr().String())
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				r = &rawTURN{pc: turn.NewSTUNConn(c), server: s.TCPAddr()}
			}
			before := s.gate.wrongCreds.Load()
			ua, pa := creds(peerA)
			ub, pb := creds(peerB)
			r.allocate(t, ua, pa)
			refresh := stun.NewType(stun.MethodRefresh, stun.ClassRequest)
			m := r.roundTrip(t, append([]stun.Setter{refresh, lifetime(60)}, r.auth(ub, pb)...)...)
			if code(m) != 441 {
				t.Fatalf("Refresh with another username: %v (code %d), want 441", m, code(m))
			}
			key := turn.GenerateAuthKey(ub, r.realm, pb)
			if err := stun.MessageIntegrity(key).Check(m); err != nil {
				t.Fatalf("441 without the request's MESSAGE-INTEGRITY: %v", err)
			}
			if m := r.createPermission(t, ub, pb, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 9}); code(m) != 441 {
				t.Fatalf("CreatePermission with another username: %v (code %d), want 441", m, code(m))
			}
			alloc := stun.NewType(stun.MethodAllocate, stun.ClassRequest)
			udp := stun.RawAttribute{Type: stun.AttrRequestedTransport, Value: []byte{17, 0, 0, 0}}
			if m := r.roundTrip(t, append([]stun.Setter{alloc, udp}, r.auth(ub, pb)...)...); code(m) != 441 {
				t.Fatalf("Allocate with another username: %v (code %d), want 441", m, code(m))
			}
			// The owner's fresh credentials (another expiry, same peer ID)
			// are the owner's: it may renew them during a long call.
			ua2, pa2 := turnauth.Issue(testSecret, peerA, time.Now().Add(time.Hour), time.Hour)
			if ua2 == ua {
				t.Fatal("test needs a second username for the same peer")
			}
			if m := r.roundTrip(t, append([]stun.Setter{refresh, lifetime(60)}, r.auth(ua2, pa2)...)...); m.Type.Class != stun.ClassSuccessResponse {
				t.Fatalf("owner's Refresh with renewed credentials: %v (code %d)", m, code(m))
			}
			// The owner still refreshes (and deletes) it.
			if m := r.roundTrip(t, append([]stun.Setter{refresh, lifetime(0)}, r.auth(ua, pa)...)...); m.Type.Class != stun.ClassSuccessResponse {
				t.Fatalf("owner's Refresh: %v (code %d)", m, code(m))
			}
			if got := s.gate.wrongCreds.Load() - before; got != 3 {
				t.Fatalf("counted %d wrong-credential requests, want 3", got)
			}
			// After the allocation ended the 5-tuple is free for anyone.
			waitFor(t, "owner forgotten", func() bool { _, ok := s.gate.owners.get(r.pc.LocalAddr()); return !ok })
			r.allocate(t, ub, pb)
		})
	}
}

func lifetime(seconds uint32) stun.RawAttribute {
	return stun.RawAttribute{Type: stun.AttrLifetime, Value: binary.BigEndian.AppendUint32(nil, seconds)}
}

// floodAnswers sends n copies of req (fresh transaction IDs) from local to
// the server's UDP port and returns how many answers came back.
func floodAnswers(t *testing.T, s *Server, local string, n int, build func() []byte) (answered, sentBytes, answerBytes int) {
	t.Helper()
	pc, err := net.ListenPacket("udp4", local+":0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	var got, gotBytes atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 1600)
		for {
			_ = pc.SetReadDeadline(time.Now().Add(time.Second))
			k, _, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			got.Add(1)
			gotBytes.Add(int64(k))
		}
	}()
	for i := 0; i < n; i++ {
		b := build()
		if _, err := pc.WriteTo(b, s.UDPAddr()); err != nil {
			t.Fatal(err)
		}
		sentBytes += len(b)
		if i%50 == 49 {
			time.Sleep(time.Millisecond) // stay under the loopback socket buffers
		}
	}
	<-done
	return int(got.Load()), sentBytes, int(gotBytes.Load())
}

// TestAnswerBudget: floods of 20-byte Bindings and 28-byte unauthenticated
// Allocates from one source are answered up to the prefix's budget, the
// rest dropped and counted; other sources and, once the flood stops, the
// flooding source itself are served.
func TestAnswerBudget(t *testing.T) {
	s := startServer(t, testConfig())
	const n = 2000
	for _, tc := range []struct {
		kind  int
		src   string // each kind from its own address: the budget is per prefix, not per kind
		build func() []byte
	}{
		{answerBinding, "127.0.0.5", func() []byte { return stun.MustBuild(stun.TransactionID, stun.BindingRequest).Raw }},
		{answerUnauth, "127.0.0.7", func() []byte {
			return stun.MustBuild(stun.TransactionID, stun.NewType(stun.MethodAllocate, stun.ClassRequest),
				stun.RawAttribute{Type: stun.AttrRequestedTransport, Value: []byte{17, 0, 0, 0}}).Raw
		}},
	} {
		name, src := answerKindNames[tc.kind], tc.src
		start := time.Now()
		answered, sent, back := floodAnswers(t, s, src, n, tc.build)
		elapsed := time.Since(start)
		limit := answerBurst + int(answerRate*elapsed.Seconds()) + 2
		dropped := int(s.gate.answers.dropped[tc.kind].Load())
		t.Logf("%s flood: %d requests (%d bytes) in %v: %d answered (%d bytes, %.2f× the bytes sent), %d dropped",
			name, n, sent, elapsed.Round(time.Millisecond), answered, back, float64(back)/float64(sent), dropped)
		if answered > limit || answered < answerBurst/2 {
			t.Fatalf("%s: %d answers, want at most %d (burst %d + %d/s) and not starved", name, answered, limit, answerBurst, answerRate)
		}
		if dropped < n-limit {
			t.Fatalf("%s: %d dropped, want at least %d", name, dropped, n-limit)
		}
	}
	// Exhaust 127.0.0.5 once more; 127.0.0.6 is unaffected meanwhile.
	floodAnswers(t, s, "127.0.0.5", 2*answerBurst, func() []byte { return stun.MustBuild(stun.TransactionID, stun.BindingRequest).Raw })
	u, p := creds(peerA)
	other, err := net.ListenPacket("udp4", "127.0.0.6:0")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := clientOn(t, other, s.UDPAddr().String(), u, p).Allocate(); err != nil {
		t.Fatalf("another address during the flood: %v", err)
	}
	// The flooding address itself: its bucket refills at answerRate/s and
	// the client retransmits.
	same, err := net.ListenPacket("udp4", "127.0.0.5:0")
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if _, err := clientOn(t, same, s.UDPAddr().String(), u, p).Allocate(); err != nil {
		t.Fatalf("the flooding address after the flood: %v", err)
	}
	t.Logf("allocation from the flooding address right after the flood: %v", time.Since(start).Round(time.Millisecond))
}

// An honest client's budget use: one 401 per allocation, nothing for the
// authenticated requests that follow; 20 clients behind one address (a
// NAT) set up and relay at once without a drop.
func TestAnswerBudgetHonestUse(t *testing.T) {
	s := startServer(t, testConfig())
	n := 0
	from := func(ip string) *client {
		pc, err := net.ListenPacket("udp4", ip+":0")
		if err != nil {
			t.Fatal(err)
		}
		n++
		u, p := creds(peerA + strconv.Itoa(n))
		return clientOn(t, pc, s.UDPAddr().String(), u, p)
	}
	for i := 0; i < 10; i++ {
		relayBetween(t, from("127.0.0.11"), from("127.0.0.11"), 2)
	}
	if d := &s.gate.answers.dropped; d[0].Load()+d[1].Load() != 0 {
		t.Fatalf("honest clients had answers dropped: %d/%d", d[0].Load(), d[1].Load())
	}
	if !s.gate.answers.budget.Tracks(ipKey(&net.UDPAddr{IP: net.IPv4(127, 0, 0, 11)})) {
		t.Fatal("127.0.0.11 not budgeted")
	}
	if !budgetExempt(&net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}) || !budgetExempt(&net.UDPAddr{IP: net.IPv6loopback}) ||
		budgetExempt(&net.UDPAddr{IP: net.IPv4(127, 0, 0, 2)}) || budgetExempt(&net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)}) {
		t.Fatal("budgetExempt: only 127.0.0.1 and ::1 over UDP")
	}
}
