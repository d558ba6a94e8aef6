package turn

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/pion/stun/v3"
	"github.com/pion/turn/v4"
	"go.uber.org/zap"
)

// Both packets killed the whole process before TURN TCP was framed here:
// pion's uint16 frame size wraps to 0 and a 0-byte read recursed.
var (
	killerChannelData = []byte{0x40, 0x00, 0xFF, 0xFC, 0, 0, 0, 0, 0}
	killerSTUNHeader  = func() []byte {
		b := make([]byte, 20)
		binary.BigEndian.PutUint16(b[0:2], 0x0001) // Binding request
		binary.BigEndian.PutUint16(b[2:4], 0xFFEC)
		binary.BigEndian.PutUint32(b[4:8], stunCookie)
		copy(b[8:], "killer-txid!")
		return b
	}()
)

func TestNextFrame(t *testing.T) {
	stunMsg := func(l int) []byte {
		b := make([]byte, 20+l)
		binary.BigEndian.PutUint16(b[2:4], uint16(l))
		binary.BigEndian.PutUint32(b[4:8], stunCookie)
		return b
	}
	chanMsg := func(l, total int) []byte {
		b := make([]byte, total)
		b[0] = 0x40
		binary.BigEndian.PutUint16(b[2:4], uint16(l))
		return b
	}
	for _, tc := range []struct {
		name string
		in   []byte
		want int  // frame size, 0 = need more
		bad  bool // frame error
	}{
		{"empty", nil, 0, false},
		{"stun header part", stunMsg(0)[:3], 0, false},
		{"stun before cookie", stunMsg(8)[:7], 0, false},
		{"stun whole", stunMsg(8), 28, false},
		{"stun with more behind", append(stunMsg(4), 1, 2, 3), 24, false},
		{"stun partial body", stunMsg(8)[:27], 0, false},
		{"stun length not /4", func() []byte { b := stunMsg(8); b[3] = 7; return b }(), 0, true},
		{"stun no cookie", func() []byte { b := stunMsg(8); b[4] = 0; return b }(), 0, true},
		{"stun largest", stunMsg(tcpMaxFrame - 20), tcpMaxFrame, false},
		{"stun too long", stunMsg(tcpMaxFrame - 16)[:8], 0, true},
		{"killer stun header", killerSTUNHeader, 0, true},
		{"killer stun header, length only", killerSTUNHeader[:4], 0, true},
		{"chan empty payload", chanMsg(0, 4), 4, false},
		{"chan padded", chanMsg(5, 12), 12, false},
		{"chan padding missing", chanMsg(5, 9), 0, false},
		{"chan header part", []byte{0x40, 0x01, 0x00}, 0, false},
		{"chan largest", chanMsg(tcpMaxFrame-4, tcpMaxFrame), tcpMaxFrame, false},
		{"chan too long", chanMsg(tcpMaxFrame-3, 4), 0, true},
		{"killer channel data", killerChannelData, 0, true},
		{"chan 0x7fff", []byte{0x7f, 0xff, 0, 0}, 4, false},
		{"top bits 10", []byte{0x80, 0, 0, 0}, 0, true},
		{"top bits 11", []byte{0xff}, 0, true},
		{"http", []byte("GET / HTTP/1.1\r\n"), 0, true},
	} {
		n, err := nextFrame(tc.in, tcpMaxFrame)
		if tc.bad != (err != nil) || n != tc.want {
			t.Errorf("%s: nextFrame = %d, %v; want %d, error %v", tc.name, n, err, tc.want, tc.bad)
		}
		if err != nil && !errors.Is(err, errTCPFrame) {
			t.Errorf("%s: error %v does not wrap errTCPFrame", tc.name, err)
		}
	}
	// handOn: what pion's STUNConn would cut differently is held back.
	cookiePayload := chanMsg(16, 20)
	binary.BigEndian.PutUint32(cookiePayload[4:8], stunCookie)
	for _, tc := range []struct {
		name  string
		frame []byte
		want  bool
	}{
		{"stun", stunMsg(0), true},
		{"chan 4 bytes", chanMsg(0, 4), false},
		{"chan 8 bytes", chanMsg(4, 8), false},
		{"chan 12 bytes", chanMsg(5, 12), true},
		{"chan cookie payload", cookiePayload, false},
		{"chan 16 bytes cookie-like", func() []byte { b := chanMsg(12, 16); binary.BigEndian.PutUint32(b[4:8], stunCookie); return b }(), true},
	} {
		if got := handOn(tc.frame); got != tc.want {
			t.Errorf("handOn(%s) = %v, want %v", tc.name, got, tc.want)
		}
	}
}

// bindingOverTCP sends a Binding request on a fresh TCP connection from
// the default source and returns the error, if any, of getting its answer.
func bindingOverTCP(addr string) error {
	return bindingOverTCPFrom("127.0.0.1", addr)
}

func bindingOverTCPFrom(localIP, addr string) error {
	d := net.Dialer{Timeout: 5 * time.Second}
	if localIP != "127.0.0.1" {
		// Binding first picks the port without knowing the destination:
		// on the default source, leave that to connect (many connections
		// in TIME_WAIT during fuzzing).
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(localIP)}
	}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		return err
	}
	defer abort(c)
	req := stun.MustBuild(stun.TransactionID, stun.BindingRequest, stun.Fingerprint)
	if _, err := c.Write(req.Raw); err != nil {
		return err
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	pc := turn.NewSTUNConn(c)
	buf := make([]byte, 1600)
	n, _, err := pc.ReadFrom(buf)
	if err != nil {
		return fmt.Errorf("binding answer: %w", err)
	}
	m := &stun.Message{Raw: buf[:n]}
	if err := m.Decode(); err != nil {
		return err
	}
	if m.Type != stun.BindingSuccess || m.TransactionID != req.TransactionID {
		return fmt.Errorf("binding answer %v", m)
	}
	return nil
}

// abort closes c with a reset: tests open thousands of connections on
// loopback, and TIME_WAIT (on either end, both are this host) would use up
// the ephemeral ports of everything else running here.
func abort(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = c.Close()
}

// expectClosed waits (bounded) for the server to close c.
func expectClosed(t *testing.T, c net.Conn, what string) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 256)
	for {
		_, err := c.Read(buf)
		if err == nil {
			continue
		}
		if isTimeout(err) {
			t.Fatalf("%s: the server did not close the connection within 5 s", what)
		}
		return
	}
}

func TestTCPKillerFrames(t *testing.T) {
	s := startServer(t, testConfig())
	for name, pkt := range map[string][]byte{"channeldata 0xfffc": killerChannelData, "stun length 0xffec": killerSTUNHeader} {
		c, err := net.Dial("tcp", s.TCPAddr().String())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Write(pkt); err != nil {
			t.Fatal(err)
		}
		expectClosed(t, c, name)
		_ = c.Close()
		if err := bindingOverTCP(s.TCPAddr().String()); err != nil {
			t.Fatalf("after %s: %v", name, err)
		}
	}
	if got := s.tcp.badFrames.Load(); got != 2 {
		t.Fatalf("bad frames counted: %d, want 2", got)
	}
	u, p := creds(peerA)
	relayRoundTrip(t, s, "tcp", u, p, 2)
}

// Frames split across reads and several frames in one read are cut right.
func TestTCPFraming(t *testing.T) {
	s := startServer(t, testConfig())
	c, err := net.Dial("tcp", s.TCPAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var stream []byte
	var ids [][stun.TransactionIDSize]byte
	for i := 0; i < 3; i++ {
		m := stun.MustBuild(stun.TransactionID, stun.BindingRequest, stun.NewSoftware(string(bytes.Repeat([]byte("s"), i*5))), stun.Fingerprint)
		stream = append(stream, m.Raw...)
		ids = append(ids, m.TransactionID)
	}
	// A ChannelData frame of an unbound channel in between: pion drops it.
	stream = append(stream, 0x40, 0x00, 0x00, 0x05, 1, 2, 3, 4, 5, 0, 0, 0)
	m := stun.MustBuild(stun.TransactionID, stun.BindingRequest, stun.Fingerprint)
	stream = append(stream, m.Raw...)
	ids = append(ids, m.TransactionID)
	// First byte by byte, then the rest at once.
	for i := 0; i < 30; i++ {
		if _, err := c.Write(stream[i : i+1]); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Millisecond)
	}
	if _, err := c.Write(stream[30:]); err != nil {
		t.Fatal(err)
	}
	pc := turn.NewSTUNConn(c)
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 1600)
	for i, id := range ids {
		n, _, err := pc.ReadFrom(buf)
		if err != nil {
			t.Fatalf("answer %d: %v", i, err)
		}
		r := &stun.Message{Raw: buf[:n]}
		if err := r.Decode(); err != nil || r.Type != stun.BindingSuccess || r.TransactionID != id {
			t.Fatalf("answer %d: %v %v", i, r, err)
		}
	}
}

// attackerConns opens up to per connections from each of the given
// loopback addresses and keeps them (the server closes what it refuses).
func attackerConns(t *testing.T, addr string, from []string, per int) []net.Conn {
	t.Helper()
	var conns []net.Conn
	t.Cleanup(func() {
		for _, c := range conns {
			_ = c.Close()
		}
	})
	for _, ip := range from {
		d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
		for i := 0; i < per; i++ {
			c, err := d.Dial("tcp", addr)
			if err != nil {
				t.Fatalf("dial from %s: %v", ip, err)
			}
			_ = c.(*net.TCPConn).SetLinger(0)
			conns = append(conns, c)
		}
	}
	return conns
}

func loopbackAddrs(first, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("127.0.0.%d", first+i)
	}
	return out
}

// liveConns counts the connections the server has not closed: a read
// that times out at once means still open.
func liveConns(conns []net.Conn) int {
	live := 0
	for _, c := range conns {
		_ = c.SetReadDeadline(time.Now().Add(time.Millisecond))
		if _, err := c.Read(make([]byte, 1)); isTimeout(err) {
			live++
		}
	}
	return live
}

// TestTCPSlotsFullOfStrangers: 20 addresses open as many connections as
// they can (64 each: the old per-address cap; 1280 > 1256 slots filled
// the old pool), and an honest client over TCP still allocates and relays.
func TestTCPSlotsFullOfStrangers(t *testing.T) {
	s := startServer(t, testConfig())
	addr := s.TCPAddr().String()
	conns := attackerConns(t, addr, loopbackAddrs(2, 20), tcpMaxPerIP)
	waitFor(t, "attackers admitted or refused", func() bool {
		st := s.Stats()
		return st.TCPConns+st.TCPRejected+s.tcp.evicted.Load() == uint64(len(conns))
	})
	st := s.Stats()
	t.Logf("1280 stranger connections from 20 addresses: %d open, %d refused, %d evicted", st.TCPConns, st.TCPRejected, s.tcp.evicted.Load())
	if st.TCPConns != tcpSpareConns || s.tcp.unauthCount() != tcpSpareConns {
		t.Fatalf("%d connections open (%d without allocation), want the unauthenticated pool (%d) full",
			st.TCPConns, s.tcp.unauthCount(), tcpSpareConns)
	}
	evictedBefore := s.tcp.evicted.Load()
	u, p := creds(peerA)
	honest := dialAddr(t, "tcp", addr, u, p) // from 127.0.0.1
	ub, pb := creds(peerB)
	relayBetween(t, honest, dialClient(t, s, "udp", ub, pb), 3)
	if got := s.tcp.evicted.Load() - evictedBefore; got != 1 {
		t.Fatalf("%d strangers evicted for the honest client, want 1", got)
	}
	// The honest connection holds an allocation (its slot left the
	// unauthenticated pool, so one newcomer fits without eviction): 80 more
	// strangers evict each other, never it.
	more := attackerConns(t, addr, loopbackAddrs(30, 10), 8)
	waitFor(t, "second wave handled", func() bool { return s.tcp.evicted.Load()-evictedBefore == 1+79 })
	if _, err := honest.SendBindingRequest(); err != nil {
		t.Fatalf("honest connection after the second wave: %v", err)
	}
	// The eviction counter moves before the victim's close reaches its
	// client side, so the count may take a moment to settle.
	live := 0
	for try := 0; try < 20; try++ {
		if live = liveConns(append(conns, more...)); live == tcpSpareConns {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if live != tcpSpareConns {
		t.Fatalf("%d stranger connections open, want %d", live, tcpSpareConns)
	}
}

// Per prefix: at most tcpMaxUnauthPerIP connections without an allocation,
// at most tcpMaxPerIP in all; IPv6 addresses of one /56 count together.
func TestTCPPerPrefixCaps(t *testing.T) {
	s := startServer(t, testConfig())
	conns := attackerConns(t, s.TCPAddr().String(), []string{"127.0.0.9"}, tcpMaxUnauthPerIP+4)
	waitFor(t, "extra connections refused", func() bool { return s.Stats().TCPRejected == 4 })
	if live := liveConns(conns); live != tcpMaxUnauthPerIP {
		t.Fatalf("%d connections from one address open, want %d", live, tcpMaxUnauthPerIP)
	}
	// Another address is not affected.
	if err := bindingOverTCPFrom("127.0.0.10", s.TCPAddr().String()); err != nil {
		t.Fatal(err)
	}
	// The key is the prefix.
	a, b := ipKey(&net.TCPAddr{IP: net.ParseIP("2001:db8:1:ff::1")}), ipKey(&net.TCPAddr{IP: net.ParseIP("2001:db8:1:0::2")})
	if a != b || ipKey(&net.TCPAddr{IP: net.ParseIP("2001:db8:1:100::1")}) == a {
		t.Fatalf("IPv6 prefixes: %v %v", a, b)
	}
}

// Connections with an allocation count against the per-prefix total, not
// the unauthenticated pool, and are never evicted.
func TestTCPAllocatedNotEvicted(t *testing.T) {
	s, err := newServer(testConfig(), testSecret, zap.NewNop(), nil, tcpLimits{maxConns: 6, maxUnauth: 2, maxPerIP: 5, maxUnauthIP: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var clients []*client
	for i := 0; i < 4; i++ {
		u, p := creds(fmt.Sprintf("%s%d", peerA, i))
		c := dialClient(t, s, "tcp", u, p)
		if _, err := c.Allocate(); err != nil {
			t.Fatalf("client %d: %v", i, err)
		}
		clients = append(clients, c)
	}
	waitFor(t, "allocations", func() bool { return s.tcp.unauthCount() == 0 && s.tcp.count() == 4 })
	// 127.0.0.1 has 4 of its 5; strangers from elsewhere take the 2 spare
	// slots and then push each other out.
	strangers := attackerConns(t, s.TCPAddr().String(), loopbackAddrs(40, 3), 2)
	waitFor(t, "strangers handled", func() bool { return s.tcp.evicted.Load() == 4 })
	if live := liveConns(strangers); live != 2 {
		t.Fatalf("%d strangers open, want 2", live)
	}
	for i, c := range clients {
		if _, err := c.SendBindingRequest(); err != nil {
			t.Fatalf("allocated client %d lost its connection: %v", i, err)
		}
	}
	// The fifth connection from 127.0.0.1 fits (evicting a stranger), the
	// sixth is over the per-prefix total.
	own := attackerConns(t, s.TCPAddr().String(), []string{"127.0.0.1"}, 2)
	waitFor(t, "own connections handled", func() bool { return s.Stats().TCPRejected == 1 })
	if live := liveConns(own); live != 1 {
		t.Fatalf("%d of 2 more connections from a prefix at 4 of 5 open", live)
	}
}

// A connection without an allocation gets the short idle timeout; one
// with an allocation the long one, and the short one again when it ends.
func TestTCPIdleWithoutAllocation(t *testing.T) {
	s, err := newServer(testConfig(), testSecret, zap.NewNop(), nil, tcpLimits{
		firstFrame: 5 * time.Second, idle: 30 * time.Second, idleNoAlloc: 300 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	stunOnly, err := net.Dial("tcp", s.TCPAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer stunOnly.Close()
	if _, err := stunOnly.Write(stun.MustBuild(stun.TransactionID, stun.BindingRequest).Raw); err != nil {
		t.Fatal(err)
	}
	u, p := creds(peerA)
	c := dialClient(t, s, "tcp", u, p)
	r, err := c.Allocate()
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	expectClosed(t, stunOnly, "idle STUN-only connection")
	if held := time.Since(start); held > 3*time.Second {
		t.Fatalf("idle connection without allocation held %v", held)
	}
	time.Sleep(time.Second)
	if s.Stats().TCPConns != 1 {
		t.Fatalf("the allocated connection was closed after 1 s idle")
	}
	// Refresh with lifetime 0 ends the allocation: the short timeout applies again.
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "connection without allocation closed", func() bool { return s.Stats().TCPConns == 0 })
}

// rawTURN speaks STUN/TURN over a PacketConn (a UDP socket or pion's
// STUNConn over TCP) without pion's client: the test decides what to send
// and stops reading when it likes.
type rawTURN struct {
	pc     net.PacketConn
	server net.Addr
	realm  string
	nonce  string
}

func (r *rawTURN) roundTrip(t *testing.T, setters ...stun.Setter) *stun.Message {
	t.Helper()
	req := stun.MustBuild(append([]stun.Setter{stun.TransactionID}, setters...)...)
	if _, err := r.pc.WriteTo(req.Raw, r.server); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1600)
	_ = r.pc.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		n, _, err := r.pc.ReadFrom(buf)
		if err != nil {
			t.Fatalf("%v: %v", req.Type, err)
		}
		m := &stun.Message{Raw: append([]byte(nil), buf[:n]...)}
		if m.Decode() == nil && m.TransactionID == req.TransactionID {
			return m
		}
	}
}

func code(m *stun.Message) int {
	var c stun.ErrorCodeAttribute
	if m.Type.Class != stun.ClassErrorResponse || c.GetFrom(m) != nil {
		return 0
	}
	return int(c.Code)
}

func (r *rawTURN) auth(user, pass string) []stun.Setter {
	return []stun.Setter{stun.NewUsername(user), stun.NewRealm(r.realm), stun.NewNonce(r.nonce),
		stun.NewLongTermIntegrity(user, r.realm, pass), stun.Fingerprint}
}

// allocate does the 401 dance and returns the relayed address.
func (r *rawTURN) allocate(t *testing.T, user, pass string) *net.UDPAddr {
	t.Helper()
	udp := stun.RawAttribute{Type: stun.AttrRequestedTransport, Value: []byte{17, 0, 0, 0}}
	m := r.roundTrip(t, stun.NewType(stun.MethodAllocate, stun.ClassRequest), udp)
	var realm stun.Realm
	var nonce stun.Nonce
	if code(m) != 401 || realm.GetFrom(m) != nil || nonce.GetFrom(m) != nil {
		t.Fatalf("first Allocate: %v (code %d), want 401 with realm and nonce", m, code(m))
	}
	r.realm, r.nonce = realm.String(), nonce.String()
	m = r.roundTrip(t, append([]stun.Setter{stun.NewType(stun.MethodAllocate, stun.ClassRequest), udp}, r.auth(user, pass)...)...)
	var relayed stun.XORMappedAddress
	if m.Type != stun.NewType(stun.MethodAllocate, stun.ClassSuccessResponse) {
		t.Fatalf("Allocate: %v (code %d)", m, code(m))
	}
	if err := relayed.GetFromAs(m, stun.AttrXORRelayedAddress); err != nil {
		t.Fatal(err)
	}
	return &net.UDPAddr{IP: relayed.IP, Port: relayed.Port}
}

func (r *rawTURN) createPermission(t *testing.T, user, pass string, peer *net.UDPAddr) *stun.Message {
	t.Helper()
	return r.roundTrip(t, append([]stun.Setter{stun.NewType(stun.MethodCreatePermission, stun.ClassRequest),
		xorPeer{peer}}, r.auth(user, pass)...)...)
}

// xorPeer is an XOR-PEER-ADDRESS attribute.
type xorPeer struct{ a *net.UDPAddr }

func (p xorPeer) AddTo(m *stun.Message) error {
	return (&stun.XORMappedAddress{IP: p.a.IP, Port: p.a.Port}).AddToAs(m, stun.AttrXORPeerAddress)
}

// A client that stops reading while its relay receives a flood has its
// connection closed after the write timeout; the relay goroutine is freed.
func TestTCPWriteTimeout(t *testing.T) {
	s, err := newServer(testConfig(), testSecret, zap.NewNop(), nil, tcpLimits{write: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	conn, err := net.Dial("tcp", s.TCPAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.(*net.TCPConn).SetReadBuffer(4096)
	r := &rawTURN{pc: turn.NewSTUNConn(conn), server: s.TCPAddr()}
	u, p := creds(peerA)
	relay := r.allocate(t, u, p)
	peer, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	if m := r.createPermission(t, u, p, peer.LocalAddr().(*net.UDPAddr)); m.Type.Class != stun.ClassSuccessResponse {
		t.Fatalf("CreatePermission: %v", m)
	}
	// The client reads nothing from now on.
	payload := make([]byte, 1200)
	deadline := time.Now().Add(10 * time.Second)
	for s.tcp.writeTimeouts.Load() == 0 && time.Now().Before(deadline) {
		for i := 0; i < 100; i++ {
			_, _ = peer.WriteTo(payload, relay)
		}
		time.Sleep(time.Millisecond)
	}
	if s.tcp.writeTimeouts.Load() == 0 {
		t.Fatal("no write timed out in 10 s of a flood to a client that does not read")
	}
	waitFor(t, "connection and allocation gone", func() bool {
		st := s.Stats()
		return st.TCPConns == 0 && st.Allocations == 0
	})
	if err := bindingOverTCP(s.TCPAddr().String()); err != nil {
		t.Fatal(err)
	}
}

// The oldest connection may be the newcomer's own prefix's only one: its
// eviction empties the prefix's count just before the newcomer joins it.
func TestTCPEvictsOwnPrefixLastConnection(t *testing.T) {
	s, err := newServer(testConfig(), testSecret, zap.NewNop(), nil, tcpLimits{maxUnauth: 3})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	first := attackerConns(t, s.TCPAddr().String(), []string{"127.0.0.60"}, 1)
	waitFor(t, "first admitted", func() bool { return s.tcp.count() == 1 })
	others := attackerConns(t, s.TCPAddr().String(), loopbackAddrs(61, 2), 1)
	waitFor(t, "pool full", func() bool { return s.tcp.count() == 3 })
	again := attackerConns(t, s.TCPAddr().String(), []string{"127.0.0.60"}, 1)
	waitFor(t, "oldest evicted", func() bool { return s.tcp.evicted.Load() == 1 })
	if liveConns(first) != 0 || liveConns(others) != 2 || liveConns(again) != 1 {
		t.Fatalf("live: first %d, others %d, again %d; want 0, 2, 1", liveConns(first), liveConns(others), liveConns(again))
	}
	s.tcp.mu.Lock()
	pc := s.tcp.perIP[ipKey(&net.TCPAddr{IP: net.IPv4(127, 0, 0, 60)})]
	s.tcp.mu.Unlock()
	if pc == nil || pc.all != 1 || pc.unauth != 1 {
		t.Fatalf("127.0.0.60 counted as %+v, want 1 connection without allocation", pc)
	}
	if err := bindingOverTCP(s.TCPAddr().String()); err != nil {
		t.Fatal(err)
	}
}
