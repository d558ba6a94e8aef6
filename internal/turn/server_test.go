package turn

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pion/logging"
	"github.com/pion/stun/v3"
	"github.com/pion/turn/v4"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/duskchat/dusk-relay/internal/config"
	"github.com/duskchat/dusk-relay/internal/testutil"
	"github.com/duskchat/dusk-relay/internal/turnauth"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, testutil.IgnoreLibp2p()...)
}

var testSecret = []byte("5f2b0a6c4d3e1f708192a3b4c5d6e7f85f2b0a6c4d3e1f708192a3b4c5d6e7f8")

// Relay ports for tests: below Linux's ephemeral range (32768+) so that
// client sockets of parallel tests do not occupy them.
const (
	testRelayMin = 21000
	testRelayMax = 21399
)

// TestConfig is a loopback configuration with ports chosen by the kernel
// and loopback peers allowed.
func testConfig() config.TURN {
	return config.TURN{
		Enabled:        true,
		PublicIP:       "127.0.0.1",
		ListenIP:       "127.0.0.1",
		Realm:          "duskchat.app",
		PortRangeStart: testRelayMin,
		PortRangeEnd:   testRelayMax,
		MaxAllocations: 1000,
		MaxPerUser:     10,
		CredentialTTL:  24 * time.Hour,
		AllowPeers:     config.PrefixList{netip.MustParsePrefix("127.0.0.0/8")},
		UDPThreads:     2,
	}
}

func startServer(t testing.TB, cfg config.TURN) *Server {
	t.Helper()
	s, err := New(cfg, testSecret, zap.NewNop(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	return s
}

func quietLogs() logging.LoggerFactory {
	lf := logging.NewDefaultLoggerFactory()
	lf.DefaultLogLevel = logging.LogLevelDisabled
	return lf
}

// client is a pion/turn client over UDP or TCP.
type client struct {
	*turn.Client
	conn   net.PacketConn
	relays []net.PacketConn
}

// Allocate records the relay so close ends its refresh timers.
func (c *client) Allocate() (net.PacketConn, error) {
	r, err := c.Client.Allocate()
	if err == nil {
		c.relays = append(c.relays, r)
	}
	return r, err
}

func dialClient(t testing.TB, s *Server, network, user, pass string) *client {
	t.Helper()
	addr := s.UDPAddr().String()
	if network == "tcp" {
		addr = s.TCPAddr().String()
	}
	return dialAddr(t, network, addr, user, pass)
}

func dialAddr(t testing.TB, network, server, user, pass string) *client {
	t.Helper()
	var pc net.PacketConn
	switch network {
	case "udp":
		c, err := net.ListenPacket("udp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		pc = c
	case "tcp":
		c, err := net.DialTimeout("tcp", server, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		pc = turn.NewSTUNConn(c)
	default:
		t.Fatalf("network %q", network)
	}
	return clientOn(t, pc, server, user, pass)
}

// clientOn runs a pion/turn client over pc.
func clientOn(t testing.TB, pc net.PacketConn, server, user, pass string) *client {
	t.Helper()
	c, err := turn.NewClient(&turn.ClientConfig{
		STUNServerAddr: server,
		TURNServerAddr: server,
		Username:       user,
		Password:       pass,
		Conn:           pc,
		RTO:            200 * time.Millisecond,
		LoggerFactory:  quietLogs(),
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Listen(); err != nil {
		t.Fatal(err)
	}
	cl := &client{Client: c, conn: pc}
	t.Cleanup(cl.close)
	return cl
}

func (c *client) close() {
	for _, r := range c.relays {
		_ = r.Close()
	}
	c.Client.Close()
	_ = c.conn.Close()
}

func creds(peer string) (string, string) {
	return turnauth.Issue(testSecret, peer, time.Now(), 24*time.Hour)
}

// turnCode extracts the STUN error code of a failed client call (0 if none).
func turnCode(err error) int {
	var te *stun.TurnError
	if errors.As(err, &te) {
		return int(te.ErrorCodeAttr.Code)
	}
	return 0
}

const (
	peerA = "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN"
	peerB = "12D3KooWJWoaqZhDaoEFshF7Rh1bpY9ohihFhzcW6d69Lr2NASuq"
)

// relayRoundTrip allocates on a (network) and on a UDP client b, lets each
// permit the other's relayed address, and bounces n messages a -> b -> a.
func relayRoundTrip(t *testing.T, s *Server, network, userA, passA string, n int) {
	t.Helper()
	ub, pb := creds(peerB)
	relayBetween(t, dialClient(t, s, network, userA, passA), dialClient(t, s, "udp", ub, pb), n)
}

// relayBetween allocates on both clients, lets each permit the other's
// relayed address, and bounces n messages a -> b -> a, byte for byte.
func relayBetween(t *testing.T, a, b *client, n int) {
	t.Helper()
	ra, err := a.Allocate()
	if err != nil {
		t.Fatalf("allocate a: %v", err)
	}
	rb, err := b.Allocate()
	if err != nil {
		t.Fatalf("allocate b: %v", err)
	}
	relayA := ra.LocalAddr().(*net.UDPAddr)
	relayB := rb.LocalAddr().(*net.UDPAddr)
	for _, r := range []*net.UDPAddr{relayA, relayB} {
		if !r.IP.Equal(net.IPv4(127, 0, 0, 1)) || r.Port < testRelayMin || r.Port > testRelayMax {
			t.Fatalf("relayed address %v outside 127.0.0.1:%d-%d", r, testRelayMin, testRelayMax)
		}
	}
	if err := a.CreatePermission(relayB); err != nil {
		t.Fatalf("permission a->b: %v", err)
	}
	if err := b.CreatePermission(relayA); err != nil {
		t.Fatalf("permission b->a: %v", err)
	}
	buf := make([]byte, 1500)
	for i := 0; i < n; i++ {
		msg := []byte(fmt.Sprintf("dusk message %d \x00\xff%s", i, strings.Repeat("x", i*37)))
		if _, err := ra.WriteTo(msg, relayB); err != nil {
			t.Fatal(err)
		}
		_ = rb.SetReadDeadline(time.Now().Add(5 * time.Second))
		k, from, err := rb.ReadFrom(buf)
		if err != nil {
			t.Fatalf("b read %d: %v", i, err)
		}
		if string(buf[:k]) != string(msg) || from.String() != relayA.String() {
			t.Fatalf("b got %q from %v, want %q from %v", buf[:k], from, msg, relayA)
		}
		echo := append([]byte("echo:"), buf[:k]...)
		if _, err := rb.WriteTo(echo, relayA); err != nil {
			t.Fatal(err)
		}
		_ = ra.SetReadDeadline(time.Now().Add(5 * time.Second))
		k, from, err = ra.ReadFrom(buf)
		if err != nil {
			t.Fatalf("a read %d: %v", i, err)
		}
		if string(buf[:k]) != string(echo) || from.String() != relayB.String() {
			t.Fatalf("a got %q from %v, want %q from %v", buf[:k], from, echo, relayB)
		}
	}
}

func TestRelayUDPAndTCP(t *testing.T) {
	s := startServer(t, testConfig())
	for _, network := range []string{"udp", "tcp"} {
		t.Run(network, func(t *testing.T) {
			u, p := creds(peerA)
			relayRoundTrip(t, s, network, u, p, 5)
		})
	}
	// 2 transports x 5 round trips x 2 directions, each relayed once to a
	// peer and received once from one. The sender's count lands just after
	// the packet left, so it may trail the receiver's read by a moment.
	waitFor(t, "relay counters", func() bool {
		st := s.Stats()
		return st.PacketsToPeer == 20 && st.PacketsFromPeer == 20
	})
	st := s.Stats()
	if st.AllocationsTotal != 4 || st.Permissions < 4 {
		t.Fatalf("stats %+v", st)
	}
	if st.PacketsToPeer != 20 || st.PacketsFromPeer != 20 {
		t.Fatalf("relayed packets to/from peer %d/%d, want 20/20", st.PacketsToPeer, st.PacketsFromPeer)
	}
	if st.BytesToPeer != st.BytesFromPeer || st.BytesToPeer < 20*20 {
		t.Fatalf("relayed bytes to/from peer %d/%d", st.BytesToPeer, st.BytesFromPeer)
	}
}

func TestSTUNBindingUnauthenticated(t *testing.T) {
	s := startServer(t, testConfig())
	for _, network := range []string{"udp", "tcp"} {
		c := dialClient(t, s, network, "", "")
		mapped, err := c.SendBindingRequest()
		if err != nil {
			t.Fatalf("%s binding: %v", network, err)
		}
		var local string
		if network == "udp" {
			local = c.conn.LocalAddr().String()
		} else {
			local = c.conn.(*turn.STUNConn).LocalAddr().String()
		}
		if mapped.String() != local {
			t.Fatalf("%s: mapped %v, want %v", network, mapped, local)
		}
	}
}

func TestAuthFailuresAre401(t *testing.T) {
	s := startServer(t, testConfig())
	now := time.Now()
	good := func(u string) string { return turnauth.Password(testSecret, u) }
	expU, expP := turnauth.Issue(testSecret, peerA, now.Add(-48*time.Hour), 24*time.Hour)
	farU := strconv.FormatInt(now.Add(24*time.Hour+turnauth.FutureSkew+time.Hour).Unix(), 10) + ":" + peerA
	wrongU, wrongP := turnauth.Issue([]byte("not the secret"), peerA, now, 24*time.Hour)
	okU, okP := creds(peerA)
	cases := []struct {
		name, network, user, pass, reason string
	}{
		{"wrong secret", "udp", wrongU, wrongP, "integrity"},
		{"wrong secret tcp", "tcp", wrongU, wrongP, "integrity"},
		{"wrong password", "udp", okU, okP[:len(okP)-4] + "AAA=", "integrity"},
		{"expired", "udp", expU, expP, "expired"},
		{"expired tcp", "tcp", expU, expP, "expired"},
		{"far future", "udp", farU, good(farU), "future"},
		{"malformed no colon", "udp", "alice", good("alice"), "malformed"},
		{"malformed expiry", "udp", "tomorrow:" + peerA, good("tomorrow:" + peerA), "malformed"},
		{"malformed peer", "tcp", strconv.FormatInt(now.Unix()+60, 10) + ":a b", good(strconv.FormatInt(now.Unix()+60, 10) + ":a b"), "malformed"},
	}
	want := map[string]uint64{}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cl := dialClient(t, s, c.network, c.user, c.pass)
			_, err := cl.Allocate()
			if code := turnCode(err); code != 401 {
				t.Fatalf("allocate: err %v (code %d), want 401", err, code)
			}
			want[c.reason]++
		})
	}
	st := s.Stats()
	for reason, n := range want {
		if st.AuthFailures[reason] != n {
			t.Errorf("auth failures %s = %d, want %d", reason, st.AuthFailures[reason], n)
		}
	}
	if st.AllocationsTotal != 0 {
		t.Fatalf("allocations %d after failed auth", st.AllocationsTotal)
	}
	// The right credentials still work after all that.
	if _, err := dialClient(t, s, "udp", okU, okP).Allocate(); err != nil {
		t.Fatal(err)
	}
}

// stunRoundTrip sends one request from conn to the server and decodes the
// answer with the same transaction ID.
func stunRoundTrip(t *testing.T, conn net.PacketConn, to net.Addr, setters ...stun.Setter) *stun.Message {
	t.Helper()
	req := stun.MustBuild(setters...)
	if _, err := conn.WriteTo(req.Raw, to); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1500)
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, _, err := conn.ReadFrom(buf)
	if err != nil {
		t.Fatal(err)
	}
	m := &stun.Message{Raw: append([]byte(nil), buf[:n]...)}
	if err := m.Decode(); err != nil {
		t.Fatal(err)
	}
	if m.TransactionID != req.TransactionID {
		t.Fatal("transaction ID mismatch")
	}
	return m
}

// A 401 from the gate must carry REALM and the NONCE, per RFC 5389 §10.2.2.
func TestUnauthorizedResponseShape(t *testing.T) {
	s := startServer(t, testConfig())
	conn, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	roundTrip := func(setters ...stun.Setter) *stun.Message {
		t.Helper()
		return stunRoundTrip(t, conn, s.UDPAddr(), setters...)
	}
	allocate := stun.NewType(stun.MethodAllocate, stun.ClassRequest)
	transport := stun.RawAttribute{Type: stun.AttrRequestedTransport, Value: []byte{17, 0, 0, 0}}
	first := roundTrip(stun.TransactionID, allocate, transport, stun.Fingerprint)
	var nonce stun.Nonce
	var realm stun.Realm
	if err := nonce.GetFrom(first); err != nil {
		t.Fatal(err)
	}
	if err := realm.GetFrom(first); err != nil || realm.String() != "duskchat.app" {
		t.Fatalf("realm %q %v", realm, err)
	}
	u, _ := turnauth.Issue([]byte("wrong"), peerA, time.Now(), time.Hour)
	p := turnauth.Password([]byte("wrong"), u)
	resp := roundTrip(stun.TransactionID, allocate, transport, stun.NewUsername(u), realm, nonce,
		stun.NewLongTermIntegrity(u, realm.String(), p), stun.Fingerprint)
	var code stun.ErrorCodeAttribute
	if err := code.GetFrom(resp); err != nil || code.Code != stun.CodeUnauthorized {
		t.Fatalf("code %v %v", code, err)
	}
	if resp.Type != stun.NewType(stun.MethodAllocate, stun.ClassErrorResponse) {
		t.Fatalf("type %v", resp.Type)
	}
	var realm2 stun.Realm
	var nonce2 stun.Nonce
	if realm2.GetFrom(resp) != nil || nonce2.GetFrom(resp) != nil || realm2.String() != "duskchat.app" || nonce2.String() != nonce.String() {
		t.Fatalf("401 without REALM/NONCE: %v", resp)
	}
	if resp.Contains(stun.AttrMessageIntegrity) {
		t.Fatal("401 must not carry MESSAGE-INTEGRITY")
	}
}

func TestPerPeerQuota(t *testing.T) {
	s := startServer(t, testConfig()) // MaxPerUser 10
	var held []net.PacketConn
	for i := 0; i < 10; i++ {
		// Fresh credentials each time: the quota is per peer ID, not per username.
		u, p := turnauth.Issue(testSecret, peerA, time.Now().Add(time.Duration(-i)*time.Second), 24*time.Hour)
		r, err := dialClient(t, s, []string{"udp", "tcp"}[i%2], u, p).Allocate()
		if err != nil {
			t.Fatalf("allocation %d: %v", i+1, err)
		}
		held = append(held, r)
	}
	u, p := creds(peerA)
	if _, err := dialClient(t, s, "udp", u, p).Allocate(); turnCode(err) != 486 {
		t.Fatalf("11th allocation of one peer: %v, want 486", err)
	}
	if _, err := dialClient(t, s, "tcp", u, p).Allocate(); turnCode(err) != 486 {
		t.Fatalf("11th allocation of one peer over tcp: %v, want 486", err)
	}
	ub, pb := creds(peerB)
	if _, err := dialClient(t, s, "udp", ub, pb).Allocate(); err != nil {
		t.Fatalf("another peer: %v", err)
	}
	if st := s.Stats(); st.Allocations != 11 || st.QuotaRejectedPeer != 2 {
		t.Fatalf("stats %+v", st)
	}
	// Deleting one allocation (Refresh lifetime 0) gives the slot back.
	_ = held[0].Close()
	waitFor(t, "allocation deleted", func() bool { return s.Stats().Allocations == 10 })
	if _, err := dialClient(t, s, "udp", u, p).Allocate(); err != nil {
		t.Fatalf("after release: %v", err)
	}
}

func TestGlobalQuota(t *testing.T) {
	cfg := testConfig()
	cfg.MaxAllocations = 3
	cfg.MaxPerUser = 2
	s := startServer(t, cfg)
	for i, peer := range []string{peerA, peerA, peerB} {
		u, p := creds(peer)
		if _, err := dialClient(t, s, "udp", u, p).Allocate(); err != nil {
			t.Fatalf("allocation %d: %v", i, err)
		}
	}
	u, p := creds(peerA)
	if _, err := dialClient(t, s, "udp", u, p).Allocate(); turnCode(err) != 486 {
		t.Fatalf("peer over its quota: %v, want 486", err)
	}
	u, p = creds("12D3KooWPeerC")
	if _, err := dialClient(t, s, "tcp", u, p).Allocate(); turnCode(err) != 486 {
		t.Fatalf("global cap: %v, want 486", err)
	}
	if st := s.Stats(); st.QuotaRejectedTotal != 1 || st.QuotaRejectedPeer != 1 {
		t.Fatalf("stats %+v", st)
	}
}

// An allocation that fails after the quota check (no free relay port)
// must not keep its quota slot.
func TestQuotaReclaimedWhenAllocationFails(t *testing.T) {
	port := freeUDPPortInRange(t, testRelayMax-50, testRelayMax)
	cfg := testConfig()
	cfg.PortRangeStart, cfg.PortRangeEnd = port, port
	cfg.MaxPerUser = 1
	s := startServer(t, cfg)
	blocker, err := net.ListenPacket("udp4", net.JoinHostPort("127.0.0.1", strconv.Itoa(int(port))))
	if err != nil {
		t.Fatal(err)
	}
	u, p := creds(peerA)
	if _, err := dialClient(t, s, "udp", u, p).Allocate(); turnCode(err) != 508 {
		_ = blocker.Close()
		t.Fatalf("allocate with the only relay port taken: %v, want 508", err)
	}
	_ = blocker.Close()
	// pion reports the failure (OnAllocationError) just after sending 508.
	waitFor(t, "slot released", func() bool { _, total, _ := s.quota.snapshot(); return total == 0 })
	if _, err := dialClient(t, s, "udp", u, p).Allocate(); err != nil {
		t.Fatalf("quota slot of the failed allocation not reclaimed: %v", err)
	}
}

func freeUDPPortInRange(t *testing.T, lo, hi uint16) uint16 {
	t.Helper()
	for p := lo; p <= hi; p++ {
		c, err := net.ListenPacket("udp4", net.JoinHostPort("127.0.0.1", strconv.Itoa(int(p))))
		if err == nil {
			_ = c.Close()
			return p
		}
	}
	t.Fatalf("no free UDP port in %d-%d", lo, hi)
	return 0
}

func TestQuotaReservationExpires(t *testing.T) {
	q := newQuota(1, 10, 10)
	now := time.Unix(1000, 0)
	q.now = func() time.Time { return now }
	ip := netip.MustParsePrefix("1.2.3.4/32")
	if q.reserve("p", "udp/1.2.3.4:5", ip) != quotaOK {
		t.Fatal("first reservation refused")
	}
	if q.reserve("p", "udp/1.2.3.4:6", ip) != quotaPeerFull {
		t.Fatal("second reservation accepted")
	}
	now = now.Add(pendingTTL + time.Second)
	if q.reserve("p", "udp/1.2.3.4:6", ip) != quotaOK {
		t.Fatal("expired reservation not reclaimed")
	}
	q.created("p", "udp/1.2.3.4:6", ip)
	q.deleted("p", "udp/1.2.3.4:6", ip)
	q.deleted("p", "udp/1.2.3.4:6", ip) // duplicate event: no effect
	if live, total, peers := q.snapshot(); live != 0 || total != 0 || peers != 0 {
		t.Fatalf("after delete: live %d total %d peers %d", live, total, peers)
	}
	if n := q.ipCount(ip); n != 0 {
		t.Fatalf("after delete: %d slots held by %v", n, ip)
	}
}

func TestCreatePermissionToDeniedPeerFails(t *testing.T) {
	cfg := testConfig()
	cfg.AllowPeers = nil // production default: loopback and private space denied
	s := startServer(t, cfg)
	u, p := creds(peerA)
	c := dialClient(t, s, "udp", u, p)
	r, err := c.Allocate()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	for _, ip := range []string{"127.0.0.1", "10.1.2.3", "169.254.169.254", "::ffff:127.0.0.1", "192.168.1.1"} {
		peer := &net.UDPAddr{IP: net.ParseIP(ip), Port: 4000}
		if err := c.CreatePermission(peer); err == nil {
			t.Errorf("CreatePermission(%s) succeeded", ip)
		}
	}
	// A public address is permitted (no packet is sent by CreatePermission).
	if err := c.CreatePermission(&net.UDPAddr{IP: net.ParseIP("8.8.8.8"), Port: 53}); err != nil {
		t.Fatalf("CreatePermission(8.8.8.8): %v", err)
	}
	if st := s.Stats(); st.PermissionsDenied != 5 || st.Permissions != 1 {
		t.Fatalf("stats %+v", st)
	}
}

func TestListenerConflictNamesPort(t *testing.T) {
	a := startServer(t, testConfig())
	cfg := testConfig()
	cfg.UDPPort = uint16(a.UDPAddr().Port)
	_, err := New(cfg, testSecret, zap.NewNop(), nil)
	want := "TURN UDP 127.0.0.1:" + strconv.Itoa(a.UDPAddr().Port) + ": bind: address already in use"
	t.Log(err)
	if err == nil || !strings.Contains(err.Error(), want) || !errors.Is(err, syscall.EADDRINUSE) {
		t.Fatalf("err %v, want %q and EADDRINUSE", err, want)
	}
	cfg = testConfig()
	cfg.TCPPort = uint16(a.TCPAddr().Port)
	_, err = New(cfg, testSecret, zap.NewNop(), nil)
	want = "TURN TCP 127.0.0.1:" + strconv.Itoa(a.TCPAddr().Port) + ": bind: address already in use"
	t.Log(err)
	if err == nil || !strings.Contains(err.Error(), want) || !errors.Is(err, syscall.EADDRINUSE) {
		t.Fatalf("err %v, want %q and EADDRINUSE", err, want)
	}
}

// The production default listens on every interface (dual-stack where
// available) and binds relays on 0.0.0.0.
func TestListenAllInterfaces(t *testing.T) {
	cfg := testConfig()
	cfg.ListenIP = "0.0.0.0"
	s := startServer(t, cfg)
	u, p := creds(peerA)
	for _, network := range []string{"udp", "tcp"} {
		port := s.UDPAddr().Port
		if network == "tcp" {
			port = s.TCPAddr().Port
		}
		c := dialAddr(t, network, "127.0.0.1:"+strconv.Itoa(port), u, p)
		r, err := c.Allocate()
		if err != nil {
			t.Fatalf("%s: %v", network, err)
		}
		if got := r.LocalAddr().(*net.UDPAddr); !got.IP.Equal(net.IPv4(127, 0, 0, 1)) {
			t.Fatalf("relayed address %v, want the public IP 127.0.0.1", got)
		}
	}
}

func TestBadConfigRefused(t *testing.T) {
	for name, mut := range map[string]func(*config.TURN){
		"ipv6 public ip":    func(c *config.TURN) { c.PublicIP = "2001:db8::1" },
		"bad listen ip":     func(c *config.TURN) { c.ListenIP = "nope" },
		"v6 listen ip":      func(c *config.TURN) { c.ListenIP = "::1" },
		"zero quota":        func(c *config.TURN) { c.MaxPerUser = 0 },
		"negative ip quota": func(c *config.TURN) { c.MaxPerIP = -1 },
		"inverted range":    func(c *config.TURN) { c.PortRangeStart, c.PortRangeEnd = 30000, 29999 },
	} {
		cfg := testConfig()
		mut(&cfg)
		if s, err := New(cfg, testSecret, zap.NewNop(), nil); err == nil {
			_ = s.Close()
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := New(testConfig(), nil, zap.NewNop(), nil); err == nil {
		t.Error("empty secret accepted")
	}
}

func TestReusePortSockets(t *testing.T) {
	cfg := testConfig()
	cfg.UDPThreads = 4
	s := startServer(t, cfg)
	if len(s.udp) != 4 {
		t.Fatalf("%d UDP sockets, want 4", len(s.udp))
	}
	for _, u := range s.udp {
		if u.LocalAddr().String() != s.UDPAddr().String() {
			t.Fatalf("socket on %v, want %v", u.LocalAddr(), s.UDPAddr())
		}
	}
	// Many clients (spread over the sockets by the kernel) all allocate.
	for i := 0; i < 8; i++ {
		u, p := creds(peerA + strconv.Itoa(i))
		if _, err := dialClient(t, s, "udp", u, p).Allocate(); err != nil {
			t.Fatalf("client %d: %v", i, err)
		}
	}
}

func TestReadyAndClose(t *testing.T) {
	reg := prometheus.NewRegistry()
	s, err := New(testConfig(), testSecret, zap.NewNop(), reg)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Ready(); err != nil {
		t.Fatal(err)
	}
	u, p := creds(peerA)
	c := dialClient(t, s, "tcp", u, p)
	if _, err := c.Allocate(); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			if m.GetGauge() != nil {
				names[mf.GetName()] += m.GetGauge().GetValue()
			} else {
				names[mf.GetName()] += m.GetCounter().GetValue()
			}
		}
	}
	for name, want := range map[string]float64{
		"dusk_turn_allocations": 1, "dusk_turn_allocations_total": 1, "dusk_turn_tcp_connections": 1,
		"dusk_turn_auth_failures_total": 0, "dusk_turn_relayed_bytes_total": 0,
		"dusk_turn_relayed_packets_total": 0, "dusk_turn_permissions_total": 0,
		"dusk_turn_allocation_quota_rejections_total": 0,
	} {
		if got, ok := names[name]; !ok || got != want {
			t.Errorf("metric %s = %v (present %v), want %v", name, got, ok, want)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second close: %v", err)
	}
	if s.Ready() == nil {
		t.Fatal("ready after close")
	}
	if st := s.Stats(); st.TCPConns != 0 || st.Allocations != 0 {
		t.Fatalf("after close: %+v", st)
	}
	// Ports are free again.
	s2, err := New(func() config.TURN {
		c := testConfig()
		c.UDPPort, c.TCPPort = uint16(s.UDPAddr().Port), uint16(s.TCPAddr().Port)
		return c
	}(), testSecret, zap.NewNop(), reg)
	if err != nil {
		t.Fatalf("restart on the same ports with the same registry: %v", err)
	}
	_ = s2.Close()
}

func TestAuthFailureLogRateLimited(t *testing.T) {
	core, logs := observer.New(zap.DebugLevel)
	s, err := New(testConfig(), testSecret, zap.New(core), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	u, p := turnauth.Issue([]byte("wrong"), peerA, time.Now(), time.Hour)
	for i := 0; i < 5; i++ {
		if _, err := dialClient(t, s, "udp", u, p).Allocate(); turnCode(err) != 401 {
			t.Fatalf("want 401, got %v", err)
		}
	}
	if got := s.Stats().AuthFailures["integrity"]; got != 5 {
		t.Fatalf("counted %d failures", got)
	}
	lines := logs.FilterMessage("TURN authentication failed").All()
	if len(lines) < 1 || len(lines) > 2 { // 5 failures within well under 2 s
		t.Fatalf("%d log lines for 5 failures", len(lines))
	}
	for _, e := range logs.All() {
		if strings.Contains(fmt.Sprint(e.ContextMap()), p) || strings.Contains(e.Message, p) {
			t.Fatalf("password in log: %v", e)
		}
	}
}

func TestTCPConnectionLimits(t *testing.T) {
	s := startServer(t, testConfig())
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			_ = c.Close()
		}
	}()
	// Connections without an allocation: their per-address cap binds first
	// (tcplisten_test.go tests the rest).
	for i := 0; i < tcpMaxUnauthPerIP; i++ {
		c, err := net.Dial("tcp", s.TCPAddr().String())
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	waitFor(t, "connections admitted", func() bool { return s.Stats().TCPConns == tcpMaxUnauthPerIP })
	extra, err := net.Dial("tcp", s.TCPAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer extra.Close()
	_ = extra.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := extra.Read(make([]byte, 1)); err == nil {
		t.Fatal("connection over the per-IP cap not closed")
	}
	if st := s.Stats(); st.TCPRejected != 1 {
		t.Fatalf("rejected %d", st.TCPRejected)
	}
}

func TestTCPGarbageClosesConnection(t *testing.T) {
	s := startServer(t, testConfig())
	c, err := net.Dial("tcp", s.TCPAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("\xff\xff not a TURN frame at all")); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 64)); err == nil {
		t.Fatal("garbage got an answer")
	}
	waitFor(t, "connection dropped", func() bool { return s.Stats().TCPConns == 0 })
}

// A connection that says nothing, or stops talking, is closed.
func TestTCPTimeouts(t *testing.T) {
	s, err := newServer(testConfig(), testSecret, zap.NewNop(), nil, tcpLimits{
		firstFrame: 200 * time.Millisecond, idle: 400 * time.Millisecond, maxConns: 8, maxPerIP: 8,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	silent, err := net.Dial("tcp", s.TCPAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	// "GET " parses as the start of a ChannelData frame that never completes.
	slow, err := net.Dial("tcp", s.TCPAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	if _, err := slow.Write([]byte("GET / HTTP/1.1\r\n")); err != nil {
		t.Fatal(err)
	}
	u, p := creds(peerA)
	c := dialClient(t, s, "tcp", u, p)
	if _, err := c.Allocate(); err != nil {
		t.Fatal(err)
	}
	for name, conn := range map[string]net.Conn{"silent": silent, "slow": slow} {
		_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := conn.Read(make([]byte, 1)); err == nil || isTimeout(err) {
			t.Fatalf("%s connection not closed by the server: %v", name, err)
		}
	}
	// The allocating client goes idle too: its connection and allocation end.
	waitFor(t, "idle connection closed", func() bool {
		st := s.Stats()
		return st.TCPConns == 0 && st.Allocations == 0
	})
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// waitFor polls cond (bounded: 5 s) for state that changes asynchronously.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	for i := 0; i < 250; i++ {
		if cond() {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s", what)
}
