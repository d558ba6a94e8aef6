package directory

import (
	"context"
	"encoding/hex"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/duskchat/dusk-relay/internal/config"
	"github.com/duskchat/dusk-relay/internal/reqresp"
)

func newHost(t testing.TB) host.Host {
	t.Helper()
	h, err := libp2p.New(
		libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"),
		libp2p.Transport(tcp.NewTCPTransport),
		libp2p.DisableMetrics(),
		libp2p.DisableRelay(),
	)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.Close() })
	return h
}

func openStore(t testing.TB) *Store {
	t.Helper()
	s, err := Open(filepath.Join(t.TempDir(), FileName), zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// call sends req from client to the relay over a real stream.
func call(t *testing.T, client host.Host, relay peer.ID, req Request) Response {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var resp Response
	if err := reqresp.CallCBOR(ctx, client, relay, ProtocolID, req, &resp); err != nil {
		t.Fatalf("call %v: %v", req.Kind, err)
	}
	return resp
}

func connect(t *testing.T, client, relay host.Host) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := client.Connect(ctx, peer.AddrInfo{ID: relay.ID(), Addrs: relay.Addrs()}); err != nil {
		t.Fatal(err)
	}
}

func TestEndToEndTwoClients(t *testing.T) {
	store := openStore(t)
	reg := prometheus.NewRegistry()
	svc := NewService(store, config.Directory{DirectoryRegisterPerMinute: 30}, zap.NewNop(), reg)
	relay := newHost(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	svc.Attach(ctx, relay)
	alice, bob := newHost(t), newHost(t)
	connect(t, alice, relay)
	connect(t, bob, relay)

	circuit := relay.Addrs()[0].String() + "/p2p/" + relay.ID().String() + "/p2p-circuit"
	if r := call(t, alice, relay.ID(), Request{Kind: RequestRegister, DisplayName: "  Alice Liddell ", RelayAddr: circuit}); r.Kind != ResponseOk {
		t.Fatalf("alice register: %#v", r)
	}
	// Legacy client shape, raw bytes as the old Rust client sends them.
	legacy, _ := hex.DecodeString("a1685265676973746572a16c646973706c61795f6e616d6563626f62")
	cctx, ccancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer ccancel()
	raw, err := reqresp.Call(cctx, bob, relay.ID(), ProtocolID, legacy)
	if err != nil || hex.EncodeToString(raw) != "624f6b" {
		t.Fatalf("bob legacy register: %x %v", raw, err)
	}

	// Bob finds Alice: the stored peer ID is Alice's connection's, not
	// anything the request said.
	r := call(t, bob, relay.ID(), Request{Kind: RequestSearch, Query: "ALICE"})
	if r.Kind != ResponseResults || len(r.Results) != 1 {
		t.Fatalf("search: %#v", r)
	}
	got := r.Results[0]
	if got.PeerID != alice.ID().String() || got.DisplayName != "Alice Liddell" || got.RelayAddr != circuit {
		t.Fatalf("alice entry: %#v", got)
	}
	if d := time.Since(time.Unix(int64(got.LastSeen), 0)); d < -time.Minute || d > time.Minute {
		t.Fatalf("last_seen %d not now", got.LastSeen)
	}
	// Exact peer-ID search.
	r = call(t, alice, relay.ID(), Request{Kind: RequestSearch, Query: " " + bob.ID().String() + " "})
	if len(r.Results) != 1 || r.Results[0].PeerID != bob.ID().String() || r.Results[0].DisplayName != "bob" || r.Results[0].RelayAddr != "" {
		t.Fatalf("peer id search: %#v", r)
	}
	// Validation errors on the wire.
	for _, tc := range []struct {
		req  Request
		want string
	}{
		{Request{Kind: RequestRegister, DisplayName: "   "}, "display_name must be 1-64 characters"},
		{Request{Kind: RequestRegister, DisplayName: strings.Repeat("x", 65)}, "display_name must be 1-64 characters"},
		{Request{Kind: RequestRegister, DisplayName: "a\x00b"}, "display_name must be 1-64 characters"},
		{Request{Kind: RequestRegister, DisplayName: "ok", RelayAddr: "garbage"}, "invalid relay_addr"},
	} {
		if r := call(t, bob, relay.ID(), tc.req); r.Kind != ResponseError || r.Error != tc.want {
			t.Errorf("%#v -> %#v, want Error(%q)", tc.req, r, tc.want)
		}
	}
	// Empty query -> empty results (80 on the wire).
	raw, err = reqresp.Call(cctx, bob, relay.ID(), ProtocolID, mustHex("a166536561726368a165717565727963202020"))
	if err != nil || hex.EncodeToString(raw) != "a167526573756c747380" {
		t.Fatalf("blank search: %x %v", raw, err)
	}
	// Alice removes herself; Bob's own profile stays.
	if r := call(t, alice, relay.ID(), Request{Kind: RequestRemove}); r.Kind != ResponseOk {
		t.Fatalf("remove: %#v", r)
	}
	if r := call(t, bob, relay.ID(), Request{Kind: RequestSearch, Query: "alice"}); len(r.Results) != 0 {
		t.Fatalf("after remove: %#v", r)
	}
	if _, _, ok, _ := store.Get(context.Background(), bob.ID().String()); !ok {
		t.Fatal("bob's profile vanished")
	}
	// Undecodable request: closed without an answer.
	raw, err = reqresp.Call(cctx, bob, relay.ID(), ProtocolID, []byte{0xff, 0x00})
	if err == nil && len(raw) != 0 {
		t.Fatalf("garbage got an answer: %x", raw)
	}

	for _, c := range []struct {
		op, result string
		want       float64
	}{
		{"register", "ok", 2}, {"register", "invalid", 4}, {"search", "ok", 4}, {"remove", "ok", 1}, {"invalid", "bad_request", 1},
	} {
		if got := counterValue(t, svc, c.op, c.result); got != c.want {
			t.Errorf("ops_total{op=%s,result=%s} = %v, want %v", c.op, c.result, got, c.want)
		}
	}
	mfs, err := reg.Gather()
	if err != nil || len(mfs) != 2 || mfs[0].GetName() != "dusk_directory_ops_total" || len(mfs[0].GetMetric()) != 5 {
		t.Errorf("gathered %v (%v)", mfs, err)
	}
}

func counterValue(t *testing.T, svc *Service, op, result string) float64 {
	t.Helper()
	var m dto.Metric
	if err := svc.ops.WithLabelValues(op, result).Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

func mustHex(s string) []byte {
	b, err := hex.DecodeString(s)
	if err != nil {
		panic(err)
	}
	return b
}

func TestRegisterRateLimit(t *testing.T) {
	store := openStore(t)
	svc := NewService(store, config.Directory{DirectoryRegisterPerMinute: 3}, zap.NewNop(), nil)
	now := time.Unix(1_800_000_000, 0)
	svc.now = func() time.Time { return now }
	ctx := context.Background()
	a, b := peer.ID("peer-a"), peer.ID("peer-b")
	reg := func(p peer.ID) Response {
		return svc.Answer(ctx, p, Request{Kind: RequestRegister, DisplayName: "name"})
	}
	for i := 0; i < 3; i++ {
		if r := reg(a); r.Kind != ResponseOk {
			t.Fatalf("register %d: %#v", i, r)
		}
	}
	if r := reg(a); r.Kind != ResponseError || r.Error != "rate limited" {
		t.Fatalf("4th register: %#v", r)
	}
	if r := reg(b); r.Kind != ResponseOk { // other peers unaffected
		t.Fatalf("peer b: %#v", r)
	}
	// Search and Remove are not limited.
	if r := svc.Answer(ctx, a, Request{Kind: RequestSearch, Query: "name"}); r.Kind != ResponseResults || len(r.Results) != 2 {
		t.Fatalf("search: %#v", r)
	}
	now = now.Add(20 * time.Second) // 3/min refills one token in 20 s
	if r := reg(a); r.Kind != ResponseOk {
		t.Fatalf("after refill: %#v", r)
	}
	if r := reg(a); r.Kind != ResponseError {
		t.Fatalf("only one token refilled: %#v", r)
	}
	if got := counterValue(t, svc, "register", "rate_limited"); got != 2 {
		t.Fatalf("rate_limited = %v", got)
	}
}

func TestStorageErrorIsInternal(t *testing.T) {
	ctx := context.Background()
	reqs := []Request{
		{Kind: RequestRegister, DisplayName: "a"},
		{Kind: RequestSearch, Query: "abc"},
		{Kind: RequestSearch, Query: "ab"},
		{Kind: RequestRemove},
	}
	// A real SQL failure: the table vanished underneath. The wire says
	// "internal error", the SQL text goes to the error log only.
	store := openStore(t)
	core, logs := observer.New(zap.ErrorLevel)
	svc := NewService(store, config.Directory{}, zap.New(core), nil)
	if _, err := store.w.Exec(`ALTER TABLE peer_profiles RENAME TO gone`); err != nil {
		t.Fatal(err)
	}
	for _, req := range reqs {
		r := svc.Answer(ctx, "p", req)
		if r.Kind != ResponseError || r.Error != "internal error" {
			t.Fatalf("%v with a broken table: %#v", req.Kind, r)
		}
	}
	// One line, not one per request: any peer can send requests.
	if logs.Len() != 1 || !strings.Contains(fmt.Sprint(logs.All()[0].Context), "no such table") {
		t.Fatalf("error logs: %d %v", logs.Len(), logs.All())
	}
	// After Close (shutdown race): same answer, no error-level log.
	store2 := openStore(t)
	core2, logs2 := observer.New(zap.ErrorLevel)
	svc2 := NewService(store2, config.Directory{}, zap.New(core2), nil)
	if err := store2.Close(); err != nil {
		t.Fatal(err)
	}
	for _, req := range reqs {
		r := svc2.Answer(ctx, "p", req)
		if r.Kind != ResponseError || r.Error != "internal error" {
			t.Fatalf("%v on closed store: %#v", req.Kind, r)
		}
	}
	if logs2.Len() != 0 {
		t.Fatalf("error logs after Close: %v", logs2.All())
	}
}
