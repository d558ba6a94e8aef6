package rendezvous

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-msgio/pbio"
	ma "github.com/multiformats/go-multiaddr"
	pb "github.com/waku-org/go-libp2p-rendezvous/pb"
	"go.uber.org/zap"

	"github.com/duskchat/dusk-relay/internal/testutil"
)

// fuzzSeeds are delimited requests a rust client sends, built for the
// fixed identity testutil.FixedKey(1) (the fuzzing client), plus records
// of another peer and broken framings.
func fuzzSeeds(f testing.TB) [][]byte {
	sk, id := testutil.FixedKey(1)
	sk2, id2 := testutil.FixedKey(2)
	addrs := []ma.Multiaddr{ma.StringCast("/ip4/203.0.113.7/tcp/4001"), ma.StringCast("/dns4/relay.example.org/tcp/4001/p2p/" + id2.String() + "/p2p-circuit")}
	own := sealFixed(f, sk, id, addrs)
	other := sealFixed(f, sk2, id2, nil)
	ns := "dusk/community/com_0123456789abcdef"
	msgs := []*pb.Message{
		registerMsg(ns, own, nil),
		registerMsg("dusk/peers", own, u64(7200)),
		registerMsg("dusk/peer/"+id.String(), own, u64(72*3600)),
		registerMsg(ns, own, u64(1)),
		registerMsg(ns, own, u64(1<<63)),
		registerMsg("", own, nil),
		registerMsg(ns, other, nil),
		registerMsg(ns, own[:len(own)-1], nil),
		discoverMsg(ns, 0, nil),
		discoverMsg("", 10, nil),
		discoverMsg(ns, 1, encodeCookie(1, ns)),
		discoverMsg(ns, 0, encodeCookie(1, "other")),
		discoverMsg("", 0, encodeCookie(1, "")),
		discoverMsg(ns, 0, []byte{1, 2, 3}),
		{Type: pb.Message_UNREGISTER.Enum(), Unregister: &pb.Message_Unregister{Ns: &ns}},
		{Type: pb.Message_REGISTER.Enum()},
		{Type: pb.Message_DISCOVER_RESPONSE.Enum()},
		{},
	}
	var out [][]byte
	for _, m := range msgs {
		out = append(out, mustDelimited(f, m))
	}
	return append(out, nil, []byte{0}, []byte{0xff, 0xff, 0xff, 0xff, 0x0f}, []byte{0x80, 0x80, 0x80, 0x01})
}

// sealFixed is sealRecord with a constant sequence number, so seeds are
// the same bytes in every process.
func sealFixed(t testing.TB, key crypto.PrivKey, id peer.ID, addrs []ma.Multiaddr) []byte {
	t.Helper()
	return sealSeq(t, key, id, addrs, 1)
}

// checkResponse asserts what a rust client needs of an answer.
func checkResponse(t *testing.T, req, resp *pb.Message, remote peer.ID, cfgMin, cfgMax time.Duration) {
	t.Helper()
	switch req.GetType() {
	case pb.Message_REGISTER:
		r := resp.GetRegisterResponse()
		if resp.GetType() != pb.Message_REGISTER_RESPONSE || r == nil || r.Status == nil {
			t.Fatalf("register answered with %v", resp)
		}
		if r.GetStatus() != pb.Message_OK {
			return
		}
		ns := req.Register.GetNs()
		if !validNamespace(ns) {
			t.Fatalf("registered invalid namespace %q", ns)
		}
		if p, err := parseRecord(req.Register.GetSignedPeerRecord()); err != nil || p != remote {
			t.Fatalf("registered a record for %s (%v), sender %s", p, err, remote)
		}
		if r.Ttl == nil {
			t.Fatalf("OK without ttl")
		}
		if ttl := time.Duration(r.GetTtl()) * time.Second; ttl < cfgMin || ttl > cfgMax {
			t.Fatalf("granted ttl %v outside [%v, %v]", ttl, cfgMin, cfgMax)
		}
	case pb.Message_DISCOVER:
		d := resp.GetDiscoverResponse()
		if resp.GetType() != pb.Message_DISCOVER_RESPONSE || d == nil || d.Status == nil {
			t.Fatalf("discover answered with %v", resp)
		}
		if d.GetStatus() != pb.Message_OK {
			return
		}
		ns := req.Discover.GetNs()
		_, cns, err := decodeCookie(d.Cookie)
		if err != nil || cns != ns {
			t.Fatalf("cookie %x for namespace %q: %q, %v", d.Cookie, ns, cns, err)
		}
		for _, r := range d.Registrations {
			if r.Ns == nil || r.SignedPeerRecord == nil || r.Ttl == nil || r.GetTtl() == 0 {
				t.Fatalf("registration lacks ns, record or ttl: %v", r)
			}
			if ns != "" && r.GetNs() != ns {
				t.Fatalf("discover %q returned namespace %q", ns, r.GetNs())
			}
		}
	default:
		t.Fatalf("answered a %v request", req.GetType())
	}
}

// FuzzRequest decodes arbitrary bytes the way the stream handler does
// (varint-delimited pb.Message, 1 MiB cap) and dispatches them to the
// register/discover/unregister paths of a fresh server; the input may hold
// several messages, handled in order a minute apart, so sequences such as
// register-then-discover are explored. Every answer must be what a rust
// client accepts and fit its 1 MiB frame. A fresh server per input keeps
// coverage deterministic (the fuzzer minimizes flaky inputs endlessly).
func FuzzRequest(f *testing.F) {
	seeds := fuzzSeeds(f)
	for _, s := range seeds {
		f.Add(s)
	}
	// register + discover + unregister + discover
	f.Add(bytes.Join([][]byte{seeds[0], seeds[8], seeds[14], seeds[8]}, nil))
	_, remote := testutil.FixedKey(1)

	f.Fuzz(func(t *testing.T, raw []byte) {
		clock := newFakeClock()
		s := New(testCfg, zap.NewNop(), nil, WithClock(clock.Now), WithMaxPerPeer(8), WithMaxRegistrations(16))
		defer s.Close()
		r := pbio.NewDelimitedReader(bytes.NewReader(raw), MaxRequestSize)
		for i := 0; i < 16; i++ {
			var req pb.Message
			if err := r.ReadMsg(&req); err != nil {
				return
			}
			if req.Type == nil {
				continue
			}
			var resp *pb.Message
			switch req.GetType() {
			case pb.Message_REGISTER:
				if req.Register == nil {
					continue
				}
				resp = &pb.Message{Type: pb.Message_REGISTER_RESPONSE.Enum(), RegisterResponse: s.register(remote, testSrc, req.Register)}
			case pb.Message_DISCOVER:
				if req.Discover == nil {
					continue
				}
				resp = &pb.Message{Type: pb.Message_DISCOVER_RESPONSE.Enum(), DiscoverResponse: s.discover(remote, req.Discover)}
			case pb.Message_UNREGISTER:
				if req.Unregister != nil {
					s.unregister(remote, req.Unregister.GetNs())
				}
				continue
			default:
				continue
			}
			checkResponse(t, &req, resp, remote, s.cfg.MinTTL, s.cfg.MaxTTL)
			var buf bytes.Buffer
			if err := pbio.NewDelimitedWriter(&buf).WriteMsg(resp); err != nil || buf.Len() > MaxMessageSize {
				t.Fatalf("answer of %d bytes (%v) exceeds the rust frame cap", buf.Len(), err)
			}
			if n := s.Registrations(); n > 8 {
				t.Fatalf("%d live registrations for one peer, cap 8", n)
			}
			if tracked, want := budgetOf(s); tracked != want {
				t.Fatalf("byte budget tracks %d, live entries hold %d", tracked, want)
			}
			clock.Advance(time.Minute)
		}
	})
}

// TestStreamMutations sends the fuzz seeds, the stored FuzzRequest corpus
// and a bounded number of deterministic mutations of them over a real
// /rendezvous/1.0.0 stream between two loopback hosts, exactly as a client
// would (write, half-close, read to EOF). The server must answer a
// well-formed REGISTER or DISCOVER with exactly one message and a graceful
// close, and must survive anything. (Not a Fuzz target: libp2p's background
// goroutines make coverage nondeterministic, which stalls the fuzzer.)
func TestStreamMutations(t *testing.T) {
	inputs := fuzzSeeds(t)
	inputs = append(inputs, readCorpus(t, "testdata/fuzz/FuzzRequest")...)
	rng := rand.New(rand.NewPCG(7, 7))
	base := len(inputs)
	for i := 0; i < 300; i++ {
		in := append([]byte(nil), inputs[rng.IntN(base)]...)
		for j := 0; j < 1+rng.IntN(4); j++ {
			switch op := rng.IntN(4); {
			case op == 0 && len(in) > 0:
				in[rng.IntN(len(in))] ^= byte(1 << rng.IntN(8))
			case op == 1 && len(in) > 0:
				in = in[:rng.IntN(len(in))]
			case op == 2:
				in = append(in, byte(rng.IntN(256)))
			default:
				if len(in) > 0 {
					in[rng.IntN(len(in))] = byte(rng.IntN(256))
				}
			}
		}
		inputs = append(inputs, in)
	}

	sk, remote := testutil.FixedKey(1)
	srv, sh := startServer(t, nil, WithStreamTimeout(5*time.Second))
	c := newHost(t, libp2p.Identity(sk))
	connect(t, c, sh)
	for i, raw := range inputs {
		streamOnce(t, i, c, sh.ID(), raw, remote, srv)
	}
	// Still serving a valid client.
	discover(t, c, sh.ID(), "dusk/peers", 0, nil)
}

func streamOnce(t *testing.T, i int, c host.Host, server peer.ID, raw []byte, remote peer.ID, srv *Server) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	str, err := c.NewStream(ctx, server, Protocol)
	if err != nil {
		t.Fatalf("input %d: server unreachable: %v", i, err)
	}
	defer str.Close()
	_ = str.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := str.Write(raw); err != nil {
		return // reset early (e.g. a length prefix over MaxRequestSize)
	}
	_ = str.CloseWrite()
	got, readErr := io.ReadAll(io.LimitReader(str, 2*MaxMessageSize))

	var req pb.Message
	derr := pbio.NewDelimitedReader(bytes.NewReader(raw), MaxRequestSize).ReadMsg(&req)
	answerable := derr == nil && ((req.GetType() == pb.Message_REGISTER && req.Register != nil) ||
		(req.GetType() == pb.Message_DISCOVER && req.Discover != nil))
	if !answerable {
		if len(got) > 0 {
			t.Fatalf("input %d: answered unanswerable %x with %x", i, raw, got)
		}
		return
	}
	if readErr != nil && !errors.Is(readErr, io.EOF) {
		t.Fatalf("input %d: request %v: stream failed (%v) instead of a graceful close", i, &req, readErr)
	}
	r := pbio.NewDelimitedReader(bytes.NewReader(got), MaxMessageSize)
	var resp pb.Message
	if err := r.ReadMsg(&resp); err != nil {
		t.Fatalf("input %d: request %v: no decodable answer (%x): %v", i, &req, got, err)
	}
	if err := r.ReadMsg(&pb.Message{}); !errors.Is(err, io.EOF) {
		t.Fatalf("input %d: more than one answer: %v", i, err)
	}
	checkResponse(t, &req, &resp, remote, srv.cfg.MinTTL, srv.cfg.MaxTTL)
}

// readCorpus loads []byte entries of a go fuzz corpus directory.
func readCorpus(t *testing.T, dir string) [][]byte {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	var out [][]byte
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(b), "\n") {
			if q, ok := strings.CutPrefix(strings.TrimSpace(line), "[]byte("); ok {
				if s, err := strconv.Unquote(strings.TrimSuffix(q, ")")); err == nil {
					out = append(out, []byte(s))
				}
			}
		}
	}
	return out
}
