package turn

import (
	"bytes"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/pion/stun/v3"
	"github.com/pion/turn/v4"
	"go.uber.org/zap"

	"github.com/duskchat/dusk-relay/internal/turnauth"
)

// fuzzEmbeddedV4 extracts, straight from the bytes and without the package's
// Canonical, the IPv4 address an IPv6 address carries in the forms a
// relay could be steered through: ::ffff:a.b.c.d, ::ffff:0:a.b.c.d,
// 64:ff9b::a.b.c.d, 2002:aabb:ccdd::/48 and ::a.b.c.d.
func fuzzEmbeddedV4(b [16]byte) (netip.Addr, bool) {
	zero := func(s []byte) bool { return bytes.Equal(s, make([]byte, len(s))) }
	switch {
	case zero(b[:10]) && b[10] == 0xff && b[11] == 0xff,
		zero(b[:8]) && b[8] == 0xff && b[9] == 0xff && zero(b[10:12]),
		bytes.Equal(b[:4], []byte{0x00, 0x64, 0xff, 0x9b}) && zero(b[4:12]),
		zero(b[:12]):
		return netip.AddrFrom4([4]byte(b[12:16])), true
	case b[0] == 0x20 && b[1] == 0x02:
		return netip.AddrFrom4([4]byte(b[2:6])), true
	}
	return netip.Addr{}, false
}

var fuzzCGNAT = netip.MustParsePrefix("100.64.0.0/10")

// fuzzMustNotRelay is the netip-semantics oracle: addresses no TURN relay may
// send to, whatever their spelling.
func fuzzMustNotRelay(a netip.Addr) bool {
	return a.IsLoopback() || a.IsPrivate() || a.IsUnspecified() || a.IsLinkLocalUnicast() ||
		a.IsLinkLocalMulticast() || a.IsInterfaceLocalMulticast() || a.IsMulticast() ||
		(a.Is4() && (a.As4()[0] == 0 || fuzzCGNAT.Contains(a) || a == netip.AddrFrom4([4]byte{255, 255, 255, 255})))
}

// FuzzPeerFilterOracle checks PeerFilter.Allowed against netip semantics
// for any 4- or 16-byte input: if the address, or the IPv4 address it
// embeds, is loopback/private/unspecified/link-local/multicast/CGNAT/
// "this network", it is never allowed — with the default lists, with
// unrelated configured lists, with this host's addresses, and with a zone.
func FuzzPeerFilterOracle(f *testing.F) {
	for _, s := range []string{
		"127.0.0.1", "::ffff:127.0.0.1", "::ffff:0:7f00:1", "64:ff9b::7f00:1", "64:ff9b::a00:1", "2002:7f00:1::",
		"2002:a9fe:a9fe::1", "::7f00:1", "::1", "::", "::ffff:0.0.0.0", "8.8.8.8", "2606:4700::1111", "fe80::1",
		"fd00::1", "ff02::1", "100.64.0.1", "::ffff:100.127.255.255", "224.0.0.1", "169.254.169.254",
		"64:ff9b:1::a00:1", "2001::1", "0.1.2.3",
	} {
		a := netip.MustParseAddr(s)
		if a.Is4() {
			b := a.As4()
			f.Add(b[:])
		}
		b := a.As16()
		f.Add(b[:])
	}
	plain := NewPeerFilter(nil, nil, nil)
	withHost := NewPeerFilter(nil, nil, hostAddrs("203.0.113.9"))
	// Allow lists that do not cover special ranges must not open them.
	unrelated := NewPeerFilter(
		[]netip.Prefix{netip.MustParsePrefix("8.8.8.0/24"), netip.MustParsePrefix("2606:4700::/32")},
		[]netip.Prefix{netip.MustParsePrefix("1.1.1.0/24")}, nil)

	f.Fuzz(func(t *testing.T, in []byte) {
		var a netip.Addr
		switch {
		case len(in) >= 16:
			a = netip.AddrFrom16([16]byte(in[:16]))
		case len(in) >= 4:
			a = netip.AddrFrom4([4]byte(in[:4]))
		default:
			return
		}
		bad := fuzzMustNotRelay(a)
		if v4, ok := fuzzEmbeddedV4(a.As16()); ok && fuzzMustNotRelay(v4) {
			bad = true
		}
		for name, flt := range map[string]*PeerFilter{"default": plain, "host": withHost, "unrelated": unrelated} {
			got := flt.Allowed(a)
			if bad && got {
				t.Fatalf("%s filter allows %v (%x)", name, a, in)
			}
			if a.Is6() {
				if z := a.WithZone("eth0"); flt.Allowed(z) != got {
					t.Fatalf("%s filter: zone changes the verdict for %v", name, a)
				}
			}
			if a.Is4() && flt.Allowed(netip.AddrFrom16(a.As16())) != got {
				t.Fatalf("%s filter: %v and its ::ffff: form disagree", name, a)
			}
			// Configured lists never open more than they name.
			if name == "unrelated" && got && !plain.Allowed(a) {
				c := Canonical(a)
				if !netip.MustParsePrefix("8.8.8.0/24").Contains(c) && !netip.MustParsePrefix("2606:4700::/32").Contains(a) {
					t.Fatalf("allow list opened %v", a)
				}
			}
		}
		// The permission handler (what pion calls) agrees with the filter.
		s := &Server{filter: plain, log: zap.NewNop(), permLog: newLimiter(time.Second)}
		if bad && s.permit(&net.UDPAddr{IP: net.IPv4(198, 51, 100, 1), Port: 1}, net.IP(a.AsSlice())) {
			t.Fatalf("permit() lets %v through", a)
		}
	})
}

// FuzzGate feeds arbitrary datagrams to the auth gate that runs before
// pion on every packet. Properties: no panic; a non-nil answer is a 401
// error response to an Allocate/Refresh/CreatePermission/ChannelBind
// request with the request's transaction ID, given only when the REST
// credentials or the MESSAGE-INTEGRITY fail.
func FuzzGate(f *testing.F) {
	secret := []byte("gate-fuzz-secret")
	const realm = "duskchat.app"
	now := time.Now()
	good, pass := turnauth.Issue(secret, "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN", now, 24*time.Hour)
	expired, epass := turnauth.Issue(secret, "peer", now.Add(-48*time.Hour), time.Hour)
	build := func(m stun.Method, setters ...stun.Setter) []byte {
		all := append([]stun.Setter{stun.TransactionID, stun.NewType(m, stun.ClassRequest)}, setters...)
		msg, err := stun.Build(all...)
		if err != nil {
			f.Fatal(err)
		}
		return msg.Raw
	}
	auth := func(u, p string) []stun.Setter {
		return []stun.Setter{stun.RawAttribute{Type: stun.AttrRequestedTransport, Value: []byte{17, 0, 0, 0}},
			stun.NewUsername(u), stun.NewRealm(realm), stun.NewNonce("nonce"),
			stun.NewLongTermIntegrity(u, realm, p), stun.Fingerprint}
	}
	for _, seed := range [][]byte{
		build(stun.MethodAllocate, auth(good, pass)...),
		build(stun.MethodAllocate, auth(good, "wrong")...),
		build(stun.MethodRefresh, auth(expired, epass)...),
		build(stun.MethodCreatePermission, auth("garbage", "x")...),
		build(stun.MethodChannelBind, auth(good, pass)...),
		build(stun.MethodAllocate),
		build(stun.MethodBinding),
		append([]byte{0x40, 0x00, 0x00, 4}, 1, 2, 3, 4),
		{}, {0, 1, 0, 0, 0x21, 0x12, 0xa4, 0x42},
	} {
		f.Add(seed)
	}
	s := &Server{secret: secret, log: zap.NewNop(), authLog: newLimiter(time.Second)}
	s.cfg.CredentialTTL = 24 * time.Hour
	s.cfg.Realm = realm
	src := net.UDPAddrFromAddrPort(netip.MustParseAddrPort("127.0.0.1:5000"))

	f.Fuzz(func(t *testing.T, pkt []byte) {
		orig := append([]byte(nil), pkt...)
		resp := s.inspect(pkt, src)
		if !bytes.Equal(orig, pkt) {
			t.Fatalf("inspect modified the packet")
		}
		if resp == nil {
			return
		}
		req := &stun.Message{Raw: append([]byte(nil), pkt...)}
		if err := req.Decode(); err != nil {
			t.Fatalf("answered an undecodable packet %x", pkt)
		}
		switch req.Type.Method {
		case stun.MethodAllocate, stun.MethodRefresh, stun.MethodCreatePermission, stun.MethodChannelBind:
		default:
			t.Fatalf("answered method %v", req.Type.Method)
		}
		if req.Type.Class != stun.ClassRequest {
			t.Fatalf("answered class %v", req.Type.Class)
		}
		m := &stun.Message{Raw: resp}
		if err := m.Decode(); err != nil {
			t.Fatalf("undecodable answer: %v", err)
		}
		var code stun.ErrorCodeAttribute
		if m.Type.Class != stun.ClassErrorResponse || m.Type.Method != req.Type.Method ||
			code.GetFrom(m) != nil || code.Code != stun.CodeUnauthorized || m.TransactionID != req.TransactionID {
			t.Fatalf("answer is not a 401 for this request: %v %v", m, code)
		}
		// Only failing credentials are refused.
		var user stun.Username
		var rlm stun.Realm
		if user.GetFrom(req) != nil || rlm.GetFrom(req) != nil {
			t.Fatalf("401 for a request without username/realm")
		}
		if _, p, err := turnauth.Verify(secret, user.String(), time.Now(), s.cfg.CredentialTTL); err == nil &&
			stun.MessageIntegrity(turn.GenerateAuthKey(user.String(), rlm.String(), p)).Check(req) == nil {
			t.Fatalf("401 for valid credentials %q", user.String())
		}
	})
}
