package rendezvous

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/record"
	"github.com/libp2p/go-msgio/pbio"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/prometheus/client_golang/prometheus"
	waku "github.com/waku-org/go-libp2p-rendezvous"
	pb "github.com/waku-org/go-libp2p-rendezvous/pb"
	"go.uber.org/goleak"
	"go.uber.org/zap"

	"github.com/duskchat/dusk-relay/internal/config"
	"github.com/duskchat/dusk-relay/internal/testutil"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, testutil.IgnoreLibp2p()...)
}

// testCfg enables discover without a namespace so the tests can cover it;
// TestDiscoverAllOffByDefault covers the default.
var testCfg = config.Rendezvous{MinTTL: 2 * time.Hour, MaxTTL: 72 * time.Hour, MaxDiscover: 1000, DiscoverAll: true}

// testSrc is the source prefix of registrations made without a stream.
var testSrc = netip.MustParsePrefix("192.0.2.1/32")

// fakeClock is a settable clock for expiry tests.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{t: time.Unix(1_700_000_000, 0)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func newHost(t testing.TB, opts ...libp2p.Option) host.Host {
	t.Helper()
	opts = append([]libp2p.Option{libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"), libp2p.DisableRelay()}, opts...)
	h, err := libp2p.New(opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

// startServer attaches a Server to a fresh host; the server closes before the host.
func startServer(t testing.TB, reg prometheus.Registerer, opts ...Option) (*Server, host.Host) {
	t.Helper()
	h := newHost(t)
	s := New(testCfg, zap.NewNop(), reg, opts...)
	s.Attach(h)
	t.Cleanup(func() { s.Close() })
	return s, h
}

func connect(t testing.TB, client, server host.Host) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := client.Connect(ctx, peer.AddrInfo{ID: server.ID(), Addrs: server.Addrs()}); err != nil {
		t.Fatal(err)
	}
}

func clients(t testing.TB, server host.Host, n int) []host.Host {
	t.Helper()
	out := make([]host.Host, n)
	for i := range out {
		out[i] = newHost(t)
		connect(t, out[i], server)
	}
	return out
}

// sealRecord signs a peer record for id with key.
func sealRecord(t testing.TB, key crypto.PrivKey, id peer.ID, addrs []ma.Multiaddr) []byte {
	t.Helper()
	return sealSeq(t, key, id, addrs, uint64(time.Now().UnixNano()))
}

func sealSeq(t testing.TB, key crypto.PrivKey, id peer.ID, addrs []ma.Multiaddr, seq uint64) []byte {
	t.Helper()
	env, err := record.Seal(&peer.PeerRecord{PeerID: id, Addrs: addrs, Seq: seq}, key)
	if err != nil {
		t.Fatal(err)
	}
	b, err := env.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func ownRecord(t testing.TB, h host.Host) []byte {
	return sealRecord(t, h.Peerstore().PrivKey(h.ID()), h.ID(), h.Addrs())
}

func registerMsg(ns string, rec []byte, ttl *uint64) *pb.Message {
	r := &pb.Message_Register{SignedPeerRecord: rec, Ttl: ttl}
	r.Ns = &ns
	return &pb.Message{Type: pb.Message_REGISTER.Enum(), Register: r}
}

func discoverMsg(ns string, limit uint64, cookie []byte) *pb.Message {
	d := &pb.Message_Discover{Cookie: cookie}
	if ns != "" {
		d.Ns = &ns
	}
	if limit > 0 {
		d.Limit = &limit
	}
	return &pb.Message{Type: pb.Message_DISCOVER.Enum(), Discover: d}
}

func u64(v uint64) *uint64 { return &v }

// openStream opens a rendezvous stream with a deadline.
func openStream(t testing.TB, client host.Host, server peer.ID) network.Stream {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := client.NewStream(ctx, server, Protocol)
	if err != nil {
		t.Fatal(err)
	}
	_ = s.SetDeadline(time.Now().Add(10 * time.Second))
	return s
}

// roundTrip sends req the way a rust client does (write, half-close), reads
// one answer and asserts the server then closed gracefully (EOF, no reset).
func roundTrip(t testing.TB, client host.Host, server peer.ID, req *pb.Message) *pb.Message {
	t.Helper()
	s := openStream(t, client, server)
	defer s.Close()
	if err := pbio.NewDelimitedWriter(s).WriteMsg(req); err != nil {
		t.Fatal(err)
	}
	if err := s.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	r := pbio.NewDelimitedReader(s, MaxMessageSize)
	var resp pb.Message
	if err := r.ReadMsg(&resp); err != nil {
		t.Fatalf("read response: %v", err)
	}
	var extra pb.Message
	if err := r.ReadMsg(&extra); !errors.Is(err, io.EOF) {
		t.Fatalf("after the answer: got %v, want io.EOF (graceful close)", err)
	}
	return &resp
}

func registerStatus(t testing.TB, client host.Host, server peer.ID, req *pb.Message) *pb.Message_RegisterResponse {
	t.Helper()
	resp := roundTrip(t, client, server, req)
	if resp.GetType() != pb.Message_REGISTER_RESPONSE || resp.RegisterResponse == nil || resp.RegisterResponse.Status == nil {
		t.Fatalf("not a register response with status: %v", resp)
	}
	return resp.RegisterResponse
}

// rustDiscoverOK applies rust-libp2p 0.15's decoding rules for an OK
// DiscoverResponse and returns the registrations and the cookie.
func rustDiscoverOK(t testing.TB, resp *pb.Message) ([]*pb.Message_Register, []byte) {
	t.Helper()
	if resp.Type == nil || resp.GetType() != pb.Message_DISCOVER_RESPONSE {
		t.Fatalf("type %v, want DISCOVER_RESPONSE", resp.Type)
	}
	d := resp.DiscoverResponse
	if d == nil || d.Status == nil || d.GetStatus() != pb.Message_OK {
		t.Fatalf("discover response %v, want status OK", d)
	}
	if d.Cookie == nil || len(d.Cookie) < 8 {
		t.Fatalf("cookie %x: rust requires a cookie of >= 8 bytes", d.Cookie)
	}
	for i, r := range d.Registrations {
		if r.Ns == nil || len(r.GetNs()) > MaxNamespace {
			t.Fatalf("registration %d: ns %v", i, r.Ns)
		}
		if r.SignedPeerRecord == nil {
			t.Fatalf("registration %d: no signedPeerRecord", i)
		}
		if r.Ttl == nil {
			t.Fatalf("registration %d: no ttl", i)
		}
		if _, _, err := record.ConsumeEnvelope(r.SignedPeerRecord, peer.PeerRecordEnvelopeDomain); err != nil {
			t.Fatalf("registration %d: record: %v", i, err)
		}
	}
	return d.Registrations, d.Cookie
}

func discover(t testing.TB, client host.Host, server peer.ID, ns string, limit uint64, cookie []byte) ([]*pb.Message_Register, []byte) {
	t.Helper()
	return rustDiscoverOK(t, roundTrip(t, client, server, discoverMsg(ns, limit, cookie)))
}

func cookieID(t testing.TB, c []byte, ns string) uint64 {
	t.Helper()
	if len(c) != 8+len(ns) || string(c[8:]) != ns {
		t.Fatalf("cookie %x: want 8-byte id followed by %q", c, ns)
	}
	return binary.BigEndian.Uint64(c[:8])
}

func recordPeer(t testing.TB, b []byte) peer.ID {
	t.Helper()
	_, rec, err := record.ConsumeEnvelope(b, peer.PeerRecordEnvelopeDomain)
	if err != nil {
		t.Fatal(err)
	}
	return rec.(*peer.PeerRecord).PeerID
}

// eventually polls cond a bounded number of times.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	for i := 0; i < 500; i++ {
		if cond() {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s", what)
}

func TestWakuClient(t *testing.T) {
	clock := newFakeClock()
	srv, sh := startServer(t, nil, WithClock(clock.Now))
	hosts := clients(t, sh, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	points := make([]waku.RendezvousPoint, len(hosts))
	for i, h := range hosts {
		points[i] = waku.NewRendezvousPoint(h, sh.ID())
	}
	// Default TTL (none sent) and explicit TTLs.
	ttl, err := points[0].Register(ctx, "dusk/peers", 0)
	if err != nil {
		t.Fatal(err)
	}
	if ttl != 2*time.Hour {
		t.Fatalf("default ttl %v, want 2h", ttl)
	}
	for _, p := range points[1:] {
		if ttl, err := p.Register(ctx, "dusk/peers", 3*3600); err != nil || ttl != 3*time.Hour {
			t.Fatalf("register: ttl %v err %v", ttl, err)
		}
	}
	if _, err := points[0].Register(ctx, "dusk/community/com_0123456789abcdef", 7200); err != nil {
		t.Fatal(err)
	}
	if n := srv.Registrations(); n != 4 {
		t.Fatalf("Registrations() = %d, want 4", n)
	}

	regs, cookie, err := points[0].Discover(ctx, "dusk/peers", 10, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(regs) != 3 {
		t.Fatalf("discovered %d, want 3", len(regs))
	}
	for i, r := range regs {
		if r.Peer.ID != hosts[i].ID() || r.Ns != "dusk/peers" {
			t.Fatalf("registration %d: %s %q, want %s dusk/peers", i, r.Peer.ID, r.Ns, hosts[i].ID())
		}
		if len(r.Peer.Addrs) == 0 || !r.Peer.Addrs[0].Equal(hosts[i].Addrs()[0]) {
			t.Fatalf("registration %d: addrs %v, want %v", i, r.Peer.Addrs, hosts[i].Addrs())
		}
		want := 2 * 3600
		if i > 0 {
			want = 3 * 3600
		}
		if r.Ttl != want {
			t.Fatalf("registration %d: ttl %d, want %d", i, r.Ttl, want)
		}
	}
	cookieID(t, cookie, "dusk/peers")
	// Nothing new after the cookie.
	if regs, _, err := points[1].Discover(ctx, "dusk/peers", 10, cookie); err != nil || len(regs) != 0 {
		t.Fatalf("discover with cookie: %d regs, err %v", len(regs), err)
	}

	// All namespaces.
	all, cookie, err := points[2].Discover(ctx, "", 0, nil)
	if err != nil || len(all) != 4 {
		t.Fatalf("discover all: %d, %v", len(all), err)
	}
	cookieID(t, cookie, "")

	// Unregister has no answer; wait until it took effect.
	if err := points[1].Unregister(ctx, "dusk/peers"); err != nil {
		t.Fatal(err)
	}
	eventually(t, "unregister", func() bool { return srv.Registrations() == 3 })
	regs, _, err = points[0].Discover(ctx, "dusk/peers", 10, nil)
	if err != nil || len(regs) != 2 || regs[0].Peer.ID != hosts[0].ID() || regs[1].Peer.ID != hosts[2].ID() {
		t.Fatalf("after unregister: %v, %v", regs, err)
	}

	// Expiry: the 2h registrations go, the 3h one stays with 1h left.
	clock.Advance(2 * time.Hour) // expiry is inclusive
	regs, _, err = points[0].Discover(ctx, "dusk/peers", 10, nil)
	if err != nil || len(regs) != 1 || regs[0].Peer.ID != hosts[2].ID() {
		t.Fatalf("after expiry: %v, %v", regs, err)
	}
	if regs[0].Ttl != 3600 {
		t.Fatalf("remaining ttl %d, want 3600", regs[0].Ttl)
	}
	if n := srv.Registrations(); n != 1 {
		t.Fatalf("Registrations() after expiry = %d, want 1", n)
	}
	clock.Advance(time.Hour)
	if n := srv.Registrations(); n != 0 {
		t.Fatalf("Registrations() after all expired = %d, want 0", n)
	}
}

func TestRustShapeEmptyDiscover(t *testing.T) {
	_, sh := startServer(t, nil)
	c := clients(t, sh, 1)[0]

	regs, cookie := discover(t, c, sh.ID(), "dusk/peers", 0, nil)
	if len(regs) != 0 {
		t.Fatalf("got %d registrations", len(regs))
	}
	if id := cookieID(t, cookie, "dusk/peers"); id != 0 {
		t.Fatalf("empty first page cookie id %d, want 0", id)
	}
	regs, cookie = discover(t, c, sh.ID(), "", 5, nil)
	if len(regs) != 0 || len(cookie) != 8 {
		t.Fatalf("all namespaces: %d regs, cookie %x (want 8 bytes)", len(regs), cookie)
	}
	// Continuing from an empty page's cookie works and keeps its position.
	regs, cookie2 := discover(t, c, sh.ID(), "dusk/peers", 0, cookie)
	if len(regs) != 0 || !bytes.Equal(cookie2, encodeCookie(0, "dusk/peers")) {
		t.Fatalf("got %d regs, cookie %x", len(regs), cookie2)
	}
}

func TestRustShapeRegisterAndDiscover(t *testing.T) {
	var mu sync.Mutex
	var hooked []string
	srv, sh := startServer(t, nil, WithOnRegister(func(p peer.ID, ns string, ttl time.Duration) {
		mu.Lock()
		hooked = append(hooked, p.String()+" "+ns+" "+ttl.String())
		mu.Unlock()
	}))
	c := clients(t, sh, 1)[0]
	ns := "dusk/peer/" + c.ID().String()

	// Rust clients send no TTL by default.
	rr := registerStatus(t, c, sh.ID(), registerMsg(ns, ownRecord(t, c), nil))
	if rr.GetStatus() != pb.Message_OK || rr.Ttl == nil || rr.GetTtl() != 7200 {
		t.Fatalf("register response %v, want OK with ttl 7200", rr)
	}
	regs, cookie := discover(t, c, sh.ID(), ns, 0, nil)
	if len(regs) != 1 || regs[0].GetNs() != ns || regs[0].GetTtl() != 7200 || recordPeer(t, regs[0].SignedPeerRecord) != c.ID() {
		t.Fatalf("discover: %v", regs)
	}
	if cookieID(t, cookie, ns) == 0 {
		t.Fatal("cookie id 0 after a non-empty page")
	}

	// Re-register replaces, with the new TTL.
	rr = registerStatus(t, c, sh.ID(), registerMsg(ns, ownRecord(t, c), u64(72*3600)))
	if rr.GetStatus() != pb.Message_OK || rr.GetTtl() != 72*3600 {
		t.Fatalf("re-register: %v", rr)
	}
	if n := srv.Registrations(); n != 1 {
		t.Fatalf("Registrations() = %d after re-register, want 1", n)
	}
	// The refreshed registration appears after the old cookie.
	regs, _ = discover(t, c, sh.ID(), ns, 0, cookie)
	if len(regs) != 1 || regs[0].GetTtl() != 72*3600 {
		t.Fatalf("after refresh: %v", regs)
	}

	mu.Lock()
	defer mu.Unlock()
	want := []string{c.ID().String() + " " + ns + " 2h0m0s", c.ID().String() + " " + ns + " 72h0m0s"}
	if strings.Join(hooked, "|") != strings.Join(want, "|") {
		t.Fatalf("hook calls %q, want %q", hooked, want)
	}
}

func TestRegisterRejections(t *testing.T) {
	reg := prometheus.NewRegistry()
	srv, sh := startServer(t, reg)
	c := clients(t, sh, 1)[0]
	rec := ownRecord(t, c)

	otherKey, _, err := crypto.GenerateEd25519Key(nil)
	if err != nil {
		t.Fatal(err)
	}
	otherID, _ := peer.IDFromPrivateKey(otherKey)
	myKey := c.Peerstore().PrivKey(c.ID())
	httpPath, _ := ma.NewMultiaddr("/ip4/127.0.0.1/tcp/1/http/http-path/x")

	cases := []struct {
		name string
		msg  *pb.Message
		want pb.Message_ResponseStatus
	}{
		{"ttl below 2h", registerMsg("ns", rec, u64(7199)), pb.Message_E_INVALID_TTL},
		{"ttl zero", registerMsg("ns", rec, u64(0)), pb.Message_E_INVALID_TTL},
		{"ttl above 72h", registerMsg("ns", rec, u64(72*3600+1)), pb.Message_E_INVALID_TTL},
		{"ttl huge", registerMsg("ns", rec, u64(1<<63)), pb.Message_E_INVALID_TTL},
		{"namespace 256 bytes", registerMsg(strings.Repeat("a", 256), rec, nil), pb.Message_E_INVALID_NAMESPACE},
		{"namespace empty", registerMsg("", rec, nil), pb.Message_E_INVALID_NAMESPACE},
		{"namespace not utf-8", registerMsg("a\xff", rec, nil), pb.Message_E_INVALID_NAMESPACE},
		{"record of another peer", registerMsg("ns", sealRecord(t, otherKey, otherID, c.Addrs()), nil), pb.Message_E_NOT_AUTHORIZED},
		{"record id not the signer", registerMsg("ns", sealRecord(t, myKey, otherID, c.Addrs()), nil), pb.Message_E_INVALID_SIGNED_PEER_RECORD},
		{"record missing", registerMsg("ns", nil, nil), pb.Message_E_INVALID_SIGNED_PEER_RECORD},
		{"record garbage", registerMsg("ns", []byte("not an envelope"), nil), pb.Message_E_INVALID_SIGNED_PEER_RECORD},
		{"record too large", registerMsg("ns", make([]byte, MaxRecordSize+1), nil), pb.Message_E_INVALID_SIGNED_PEER_RECORD},
		{"address rust cannot parse", registerMsg("ns", sealRecord(t, myKey, c.ID(), []ma.Multiaddr{httpPath}), nil), pb.Message_E_INVALID_SIGNED_PEER_RECORD},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rr := registerStatus(t, c, sh.ID(), tc.msg)
			if rr.GetStatus() != tc.want {
				t.Fatalf("status %v (%s), want %v", rr.GetStatus(), rr.GetStatusText(), tc.want)
			}
			if rr.Ttl != nil {
				t.Fatalf("error response carries ttl %d", rr.GetTtl())
			}
		})
	}
	// Bounds are inclusive.
	for _, ttl := range []uint64{7200, 72 * 3600} {
		if rr := registerStatus(t, c, sh.ID(), registerMsg("ns", rec, u64(ttl))); rr.GetStatus() != pb.Message_OK || rr.GetTtl() != ttl {
			t.Fatalf("ttl %d: %v", ttl, rr)
		}
	}
	if rr := registerStatus(t, c, sh.ID(), registerMsg(strings.Repeat("a", 255), rec, nil)); rr.GetStatus() != pb.Message_OK {
		t.Fatalf("255-byte namespace: %v", rr)
	}
	if n := srv.Registrations(); n != 2 {
		t.Fatalf("Registrations() = %d, want 2", n)
	}

	got := gather(t, reg)
	for name, want := range map[string]float64{
		"dusk_rendezvous_registers_total":                                     3,
		"dusk_rendezvous_live_registrations":                                  2,
		`dusk_rendezvous_errors_total{status="E_INVALID_TTL"}`:                4,
		`dusk_rendezvous_errors_total{status="E_INVALID_NAMESPACE"}`:          3,
		`dusk_rendezvous_errors_total{status="E_NOT_AUTHORIZED"}`:             1,
		`dusk_rendezvous_errors_total{status="E_INVALID_SIGNED_PEER_RECORD"}`: 5,
	} {
		if got[name] != want {
			t.Errorf("%s = %v, want %v", name, got[name], want)
		}
	}
}

// gather flattens a registry into name{label="value"} -> value.
func gather(t testing.TB, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			name := mf.GetName()
			for _, l := range m.GetLabel() {
				name += `{` + l.GetName() + `="` + l.GetValue() + `"}`
			}
			switch {
			case m.Counter != nil:
				out[name] = m.Counter.GetValue()
			case m.Gauge != nil:
				out[name] = m.Gauge.GetValue()
			}
		}
	}
	return out
}

func TestNonEd25519RecordRejected(t *testing.T) {
	_, sh := startServer(t, nil)
	key, _, err := crypto.GenerateSecp256k1Key(nil)
	if err != nil {
		t.Fatal(err)
	}
	c := newHost(t, libp2p.Identity(key))
	connect(t, c, sh)
	rr := registerStatus(t, c, sh.ID(), registerMsg("ns", ownRecord(t, c), nil))
	if rr.GetStatus() != pb.Message_E_INVALID_SIGNED_PEER_RECORD {
		t.Fatalf("secp256k1 record: %v, want E_INVALID_SIGNED_PEER_RECORD", rr)
	}
}

func TestPagingWithCookies(t *testing.T) {
	_, sh := startServer(t, nil)
	hosts := clients(t, sh, 7)
	const ns = "dusk/community/com_0123456789abcdef"
	for _, h := range hosts {
		if rr := registerStatus(t, h, sh.ID(), registerMsg(ns, ownRecord(t, h), nil)); rr.GetStatus() != pb.Message_OK {
			t.Fatal(rr)
		}
	}
	// Another namespace must not leak into the pages.
	if rr := registerStatus(t, hosts[0], sh.ID(), registerMsg("other", ownRecord(t, hosts[0]), nil)); rr.GetStatus() != pb.Message_OK {
		t.Fatal(rr)
	}

	seen := map[peer.ID]bool{}
	var cookie []byte
	var sizes []int
	lastID := uint64(0)
	for page := 0; page < 10; page++ {
		regs, next := discover(t, hosts[0], sh.ID(), ns, 2, cookie)
		id := cookieID(t, next, ns)
		if len(regs) > 0 && id <= lastID {
			t.Fatalf("cookie id did not advance: %d after %d", id, lastID)
		}
		lastID = id
		sizes = append(sizes, len(regs))
		for _, r := range regs {
			if r.GetNs() != ns {
				t.Fatalf("ns %q", r.GetNs())
			}
			p := recordPeer(t, r.SignedPeerRecord)
			if seen[p] {
				t.Fatalf("peer %s returned twice", p)
			}
			seen[p] = true
		}
		cookie = next
		if len(regs) == 0 {
			break
		}
	}
	if want := []int{2, 2, 2, 1, 0}; len(sizes) != len(want) || sizes[0] != 2 || sizes[3] != 1 || sizes[4] != 0 {
		t.Fatalf("page sizes %v, want %v", sizes, want)
	}
	for i, h := range hosts {
		if !seen[h.ID()] {
			t.Fatalf("host %d never returned", i)
		}
	}
	// A new registration shows up after the final cookie.
	late := clients(t, sh, 1)[0]
	registerStatus(t, late, sh.ID(), registerMsg(ns, ownRecord(t, late), nil))
	regs, _ := discover(t, hosts[1], sh.ID(), ns, 2, cookie)
	if len(regs) != 1 || recordPeer(t, regs[0].SignedPeerRecord) != late.ID() {
		t.Fatalf("after final cookie: %v", regs)
	}

	// All-namespaces paging sees both namespaces.
	all, allCookie := discover(t, hosts[0], sh.ID(), "", 100, nil)
	if len(all) != 9 {
		t.Fatalf("all namespaces: %d, want 9", len(all))
	}
	cookieID(t, allCookie, "")
	// Rust accepts an all-namespaces cookie on a namespace discover.
	if regs, _ := discover(t, hosts[0], sh.ID(), ns, 0, allCookie); len(regs) != 0 {
		t.Fatalf("ns discover after all-namespaces cookie: %d", len(regs))
	}
}

func TestDiscoverRejections(t *testing.T) {
	_, sh := startServer(t, nil)
	c := clients(t, sh, 1)[0]
	cases := []struct {
		name string
		msg  *pb.Message
		want pb.Message_ResponseStatus
	}{
		{"cookie of another namespace", discoverMsg("a", 0, encodeCookie(1, "b")), pb.Message_E_INVALID_COOKIE},
		{"namespace cookie on all-namespaces discover", discoverMsg("", 0, encodeCookie(1, "b")), pb.Message_E_INVALID_COOKIE},
		{"short cookie", discoverMsg("a", 0, []byte{1, 2, 3}), pb.Message_E_INVALID_COOKIE},
		{"empty cookie", discoverMsg("a", 0, []byte{}), pb.Message_E_INVALID_COOKIE},
		{"cookie namespace not utf-8", discoverMsg("a", 0, append(encodeCookie(1, ""), 0xff)), pb.Message_E_INVALID_COOKIE},
		{"namespace 256 bytes", discoverMsg(strings.Repeat("n", 256), 0, nil), pb.Message_E_INVALID_NAMESPACE},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			resp := roundTrip(t, c, sh.ID(), tc.msg)
			d := resp.DiscoverResponse
			if resp.GetType() != pb.Message_DISCOVER_RESPONSE || d == nil || d.Status == nil || d.GetStatus() != tc.want {
				t.Fatalf("got %v, want %v", resp, tc.want)
			}
			if len(d.Registrations) != 0 || d.Cookie != nil {
				t.Fatalf("error response carries data: %v", d)
			}
		})
	}
}

func TestPerPeerAndGlobalCaps(t *testing.T) {
	_, sh := startServer(t, nil, WithMaxPerPeer(2), WithMaxRegistrations(3))
	hosts := clients(t, sh, 2)
	a, b := hosts[0], hosts[1]
	status := func(h host.Host, ns string) pb.Message_ResponseStatus {
		return registerStatus(t, h, sh.ID(), registerMsg(ns, ownRecord(t, h), nil)).GetStatus()
	}
	for _, step := range []struct {
		h    host.Host
		ns   string
		want pb.Message_ResponseStatus
	}{
		{a, "1", pb.Message_OK},
		{a, "2", pb.Message_OK},
		{a, "3", pb.Message_E_NOT_AUTHORIZED}, // per-peer cap
		{a, "2", pb.Message_OK},               // refresh is not a new registration
		{b, "1", pb.Message_OK},
		{b, "2", pb.Message_E_UNAVAILABLE}, // global cap
	} {
		if got := status(step.h, step.ns); got != step.want {
			t.Fatalf("register %s: %v, want %v", step.ns, got, step.want)
		}
	}
}

func TestUnregisterNoAnswerGracefulClose(t *testing.T) {
	srv, sh := startServer(t, nil)
	c := clients(t, sh, 1)[0]
	for _, ns := range []string{"a", "b", "c"} {
		registerStatus(t, c, sh.ID(), registerMsg(ns, ownRecord(t, c), nil))
	}
	unregister := func(ns *string) {
		s := openStream(t, c, sh.ID())
		defer s.Close()
		msg := &pb.Message{Type: pb.Message_UNREGISTER.Enum(), Unregister: &pb.Message_Unregister{Ns: ns}}
		if err := pbio.NewDelimitedWriter(s).WriteMsg(msg); err != nil {
			t.Fatal(err)
		}
		if err := s.CloseWrite(); err != nil {
			t.Fatal(err)
		}
		n, err := io.ReadAll(s)
		if err != nil || len(n) != 0 {
			t.Fatalf("unregister answer %x, err %v: want no bytes then EOF", n, err)
		}
	}
	ns := "a"
	unregister(&ns)
	if n := srv.Registrations(); n != 2 {
		t.Fatalf("Registrations() = %d, want 2", n)
	}
	unregister(nil) // no namespace: all of the peer's registrations
	if n := srv.Registrations(); n != 0 {
		t.Fatalf("Registrations() = %d, want 0", n)
	}
}

func TestBadInputResetsStream(t *testing.T) {
	reg := prometheus.NewRegistry()
	_, sh := startServer(t, reg)
	c := clients(t, sh, 1)[0]

	oversized := binary.AppendUvarint(nil, MaxMessageSize+1)
	inputs := map[string][]byte{
		"garbage":          {0x05, 0xff, 0xff, 0xff, 0xff, 0xff},
		"oversized":        append(oversized, make([]byte, 64)...),
		"over request cap": append(binary.AppendUvarint(nil, MaxRequestSize+1), make([]byte, MaxRequestSize+1)...),
		"truncated":        {0x10, 0x08},
		"response type":    mustDelimited(t, &pb.Message{Type: pb.Message_REGISTER_RESPONSE.Enum(), RegisterResponse: &pb.Message_RegisterResponse{}}),
		"no type":          mustDelimited(t, &pb.Message{Discover: &pb.Message_Discover{}}),
		"register no body": mustDelimited(t, &pb.Message{Type: pb.Message_REGISTER.Enum()}),
		"discover no body": mustDelimited(t, &pb.Message{Type: pb.Message_DISCOVER.Enum()}),
		"unknown type":     mustDelimited(t, &pb.Message{Type: pb.Message_MessageType(42).Enum()}),
	}
	for name, in := range inputs {
		t.Run(name, func(t *testing.T) {
			s := openStream(t, c, sh.ID())
			defer s.Close()
			_, _ = s.Write(in)
			_ = s.CloseWrite()
			b, err := io.ReadAll(s)
			if len(b) != 0 || !errors.Is(err, network.ErrReset) {
				t.Fatalf("got %x, %v; want a reset without data", b, err)
			}
		})
	}
	// The server still serves.
	discover(t, c, sh.ID(), "x", 0, nil)
	if got := gather(t, reg)["dusk_rendezvous_malformed_requests_total"]; got != float64(len(inputs)) {
		t.Fatalf("malformed counter %v, want %d", got, len(inputs))
	}
}

func mustDelimited(t testing.TB, m *pb.Message) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := pbio.NewDelimitedWriter(&buf).WriteMsg(m); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestCloseRemovesHandler(t *testing.T) {
	h := newHost(t)
	s := New(testCfg, zap.NewNop(), nil)
	s.Attach(h)
	c := clients(t, h, 1)[0]
	discover(t, c, h.ID(), "x", 0, nil)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	str, err := c.NewStream(ctx, h.ID(), Protocol)
	if err == nil {
		// Protocol negotiation is lazy; the first read reveals the refusal.
		_ = str.SetDeadline(time.Now().Add(10 * time.Second))
		_, err = str.Read(make([]byte, 1))
		str.Reset()
	}
	if err == nil {
		t.Fatal("stream to a closed server succeeded")
	}
}

func TestSilentClientIsReset(t *testing.T) {
	_, sh := startServer(t, nil, WithStreamTimeout(200*time.Millisecond))
	c := clients(t, sh, 1)[0]
	s := openStream(t, c, sh.ID()) // its own deadline is 10 s
	defer s.Close()
	_, _ = s.Write([]byte{0x20}) // a length prefix, then nothing
	b, err := io.ReadAll(s)
	if len(b) != 0 || !errors.Is(err, network.ErrReset) {
		t.Fatalf("got %x, %v; want a reset from the server's read deadline", b, err)
	}
}
