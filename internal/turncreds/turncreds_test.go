package turncreds

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/duskchat/dusk-relay/internal/config"
	"github.com/duskchat/dusk-relay/internal/reqresp"
	dtestutil "github.com/duskchat/dusk-relay/internal/testutil"
	"github.com/duskchat/dusk-relay/internal/turnauth"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, dtestutil.IgnoreLibp2p()...)
}

type vector struct {
	Name string `json:"name"`
	Hex  string `json:"hex"`
}

func vectors(t *testing.T) map[string][]byte {
	t.Helper()
	b := dtestutil.VectorsJSON()
	var doc struct {
		Vectors []vector `json:"vectors"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	out := map[string][]byte{}
	for _, v := range doc.Vectors {
		raw, err := hex.DecodeString(v.Hex)
		if err != nil {
			t.Fatal(err)
		}
		out[v.Name] = raw
	}
	return out
}

// Golden bytes copied from wire-vectors/vectors.json, so the test runs
// without the shared directory too; TestGoldenVectorsFile cross-checks them.
var golden = map[string]string{
	"turn_credential_request":               "a167706565725f69647834313244334b6f6f5744704a3741733742574177524d6675315655325743714e6a76713338374a45594b44426a346b78366e58544e",
	"turn_credential_request_empty_peer_id": "a167706565725f696460",
	"turn_credential_response":              "a468757365726e616d65783f313736343038363430303a313244334b6f6f5744704a3741733742574177524d6675315655325743714e6a76713338374a45594b44426a346b78366e58544e6870617373776f7264781c7132733075596236745977336d315a664530783362584a513366383d6374746c1a0001518064757269738278287475726e3a7475726e2e6578616d706c652e636f6d3a333437383f7472616e73706f72743d75647078287475726e3a7475726e2e6578616d706c652e636f6d3a333437383f7472616e73706f72743d746370",
	"turn_credential_response_empty":        "a468757365726e616d65606870617373776f7264606374746c00647572697380",
	"turn_credential_response_large_ttl":    "a468757365726e616d6561756870617373776f726461706374746c1a69248100647572697381777475726e3a5b323030313a6462383a3a315d3a33343738",
}

const vectorPeer = "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN"

func mustHex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestGoldenVectorsFile(t *testing.T) {
	vs := vectors(t)
	for name, h := range golden {
		if !bytes.Equal(vs[name], mustHex(t, h)) {
			t.Errorf("%s: copy differs from vectors.json", name)
		}
	}
}

func TestGoldenEncoding(t *testing.T) {
	for name, v := range map[string]any{
		"turn_credential_request":               Request{PeerID: vectorPeer},
		"turn_credential_request_empty_peer_id": Request{},
		"turn_credential_response": Response{
			Username: "1764086400:" + vectorPeer,
			Password: "q2s0uYb6tYw3m1ZfE0x3bXJQ3f8=",
			TTL:      86400,
			URIs:     []string{"turn:turn.example.com:3478?transport=udp", "turn:turn.example.com:3478?transport=tcp"},
		},
		"turn_credential_response_empty":     Response{}, // nil URIs must encode as 80, never null
		"turn_credential_response_large_ttl": Response{Username: "u", Password: "p", TTL: 1764000000, URIs: []string{"turn:[2001:db8::1]:3478"}},
	} {
		got, err := reqresp.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		if want := mustHex(t, golden[name]); !bytes.Equal(got, want) {
			t.Errorf("%s:\n got %x\nwant %x", name, got, want)
		}
	}
	var req Request
	if err := reqresp.Unmarshal(mustHex(t, golden["turn_credential_request"]), &req); err != nil || req.PeerID != vectorPeer {
		t.Fatalf("decode request: %+v %v", req, err)
	}
	var resp Response
	if err := reqresp.Unmarshal(mustHex(t, golden["turn_credential_response"]), &resp); err != nil || resp.TTL != 86400 || len(resp.URIs) != 2 {
		t.Fatalf("decode response: %+v %v", resp, err)
	}
}

func newHost(t testing.TB) host.Host {
	t.Helper()
	h, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"), libp2p.DisableRelay())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.Close() })
	return h
}

func connect(t testing.TB, a, b host.Host) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := a.Connect(ctx, peer.AddrInfo{ID: b.ID(), Addrs: b.Addrs()}); err != nil {
		t.Fatal(err)
	}
}

var testSecret = []byte("0123456789abcdef0123456789abcdef")

func testCfg() config.TURN {
	return config.TURN{
		Enabled:       true,
		PublicIP:      "203.0.113.7",
		PublicHost:    "relay.example.org",
		UDPPort:       3478,
		TCPPort:       3479,
		CredentialTTL: 24 * time.Hour,
	}
}

type rig struct {
	server, client host.Host
	svc            *Service
	logs           *observer.ObservedLogs
	reg            *prometheus.Registry
}

func newRig(t *testing.T, cfg config.TURN) *rig {
	t.Helper()
	core, logs := observer.New(zap.DebugLevel)
	reg := prometheus.NewRegistry()
	r := &rig{server: newHost(t), client: newHost(t), logs: logs, reg: reg}
	r.svc = New(cfg, testSecret, zap.New(core), reg)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	r.svc.Attach(ctx, r.server)
	connect(t, r.client, r.server)
	return r
}

func (r *rig) call(t *testing.T, req []byte) ([]byte, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return reqresp.Call(ctx, r.client, r.server.ID(), Protocol, req)
}

func encode(t *testing.T, v any) []byte {
	t.Helper()
	b, err := reqresp.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestIssueForConnectionPeer(t *testing.T) {
	r := newRig(t, testCfg())
	for _, asked := range []string{r.client.ID().String(), ""} {
		before := time.Now().Unix()
		raw, err := r.call(t, encode(t, Request{PeerID: asked}))
		if err != nil {
			t.Fatal(err)
		}
		after := time.Now().Unix()
		var resp Response
		if err := reqresp.Unmarshal(raw, &resp); err != nil {
			t.Fatal(err)
		}
		// Byte-level: re-encoding gives the same bytes (field order, ttl width, uris array).
		if !bytes.Equal(encode(t, resp), raw) {
			t.Fatalf("response not in canonical field order: %x", raw)
		}
		expS, id, ok := strings.Cut(resp.Username, ":")
		if !ok || id != r.client.ID().String() {
			t.Fatalf("username %q does not carry the connection peer %s", resp.Username, r.client.ID())
		}
		exp, err := strconv.ParseInt(expS, 10, 64)
		if err != nil || exp < before+86400 || exp > after+86400 {
			t.Fatalf("expiry %q not now+86400 (%d..%d)", expS, before+86400, after+86400)
		}
		if resp.TTL != 86400 {
			t.Fatalf("ttl %d", resp.TTL)
		}
		if _, err := turnauth.Check(testSecret, resp.Username, resp.Password, time.Now(), 24*time.Hour); err != nil {
			t.Fatalf("password does not verify with the configured secret: %v", err)
		}
		want := []string{"turn:relay.example.org:3478", "turn:relay.example.org:3479?transport=tcp"}
		if strings.Join(resp.URIs, " ") != strings.Join(want, " ") {
			t.Fatalf("uris %q, want %q", resp.URIs, want)
		}
		// ttl 86400 is the 5-byte head 1a00015180 on the wire.
		if !bytes.Contains(raw, mustHex(t, "6374746c1a00015180")) {
			t.Fatalf("ttl not encoded as u32 head: %x", raw)
		}
	}
	if got := gathered(t, r.reg, "dusk_turn_credentials_issued_total"); got != 2 {
		t.Fatalf("issued counter %v", got)
	}
	// Debug only: a per-request info line would let any peer fill the log.
	if n := r.logs.FilterMessage("credential issued").FilterLevelExact(zap.DebugLevel).Len(); n != 2 {
		t.Fatalf("want 2 debug logs \"credential issued\", got %d", n)
	}
	if n := r.logs.FilterLevelExact(zap.InfoLevel).Len() + r.logs.FilterLevelExact(zap.WarnLevel).Len(); n != 0 {
		t.Fatalf("info/warn lines per request: %v", r.logs.All())
	}
	for _, e := range r.logs.All() {
		for _, f := range e.Context {
			if f.Key == "password" {
				t.Fatalf("password logged: %v", e)
			}
		}
	}
}

func TestRequestForAnotherPeerRefused(t *testing.T) {
	r := newRig(t, testCfg())
	other := newHost(t).ID().String()
	for name, req := range map[string][]byte{
		"other peer":     encode(t, Request{PeerID: other}),
		"server's id":    encode(t, Request{PeerID: r.server.ID().String()}),
		"vector peer":    mustHex(t, golden["turn_credential_request"]),
		"not a peer id":  encode(t, Request{PeerID: "alice"}),
		"garbage":        []byte{0xff, 0x00, 0x13},
		"wrong shape":    encode(t, map[string]int{"peer_id": 7}),
		"trailing bytes": append(encode(t, Request{}), 0x00),
	} {
		raw, err := r.call(t, req)
		if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) {
			// A reset stream is also "no credentials"; only an answer is a failure.
			t.Logf("%s: %v", name, err)
		}
		if len(raw) != 0 {
			t.Fatalf("%s: got an answer %x", name, raw)
		}
	}
	if got := gathered(t, r.reg, "dusk_turn_credentials_issued_total"); got != 0 {
		t.Fatalf("issued %v", got)
	}
	if got := gathered(t, r.reg, "dusk_turn_credentials_refused_total"); got != 7 {
		t.Fatalf("refused %v", got)
	}
}

func TestDisabledNoAnswer(t *testing.T) {
	cfg := testCfg()
	cfg.Enabled = false
	r := newRig(t, cfg)
	raw, err := r.call(t, encode(t, Request{PeerID: r.client.ID().String()}))
	if err != nil {
		t.Fatal(err)
	}
	if len(raw) != 0 {
		t.Fatalf("answer while disabled: %x", raw)
	}
}

func TestURIHosts(t *testing.T) {
	for _, c := range []struct {
		cfg  config.TURN
		want []string
	}{
		{config.TURN{PublicHost: "turn.example.com", UDPPort: 3478, TCPPort: 3478},
			[]string{"turn:turn.example.com:3478", "turn:turn.example.com:3478?transport=tcp"}},
		{config.TURN{PublicIP: "198.51.100.1", UDPPort: 3478, TCPPort: 443},
			[]string{"turn:198.51.100.1:3478", "turn:198.51.100.1:443?transport=tcp"}},
		{config.TURN{PublicIP: "2001:db8::1", UDPPort: 3478, TCPPort: 3478},
			[]string{"turn:[2001:db8::1]:3478", "turn:[2001:db8::1]:3478?transport=tcp"}},
		{config.TURN{PublicIP: "192.0.2.1", PublicIPGuessed: true, UDPPort: 3478, TCPPort: 3478},
			[]string{"turn:relay.duskchat.app:3478", "turn:relay.duskchat.app:3478?transport=tcp"}},
	} {
		got := New(c.cfg, testSecret, zap.NewNop(), nil).URIs()
		if strings.Join(got, " ") != strings.Join(c.want, " ") {
			t.Errorf("%+v: %q, want %q", c.cfg, got, c.want)
		}
	}
}

// gathered reads one unlabelled counter from the registry.
func gathered(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatalf("metric %s not registered", name)
	return 0
}
