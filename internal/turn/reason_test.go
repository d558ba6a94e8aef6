package turn

import (
	"errors"
	"net"
	"testing"

	"github.com/pion/stun/v3"
)

// pion answers 437, 486 and its other errors with an empty reason phrase;
// clients see the standard one (coturn's test client printed "error 437 ()").
func TestErrorResponsesCarryReasonPhrase(t *testing.T) {
	cfg := testConfig()
	cfg.MaxPerUser = 1
	s := startServer(t, cfg)
	u, p := creds(peerA)

	// 437: a second Allocate on the same 5-tuple with another transaction.
	conn, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	allocate := stun.NewType(stun.MethodAllocate, stun.ClassRequest)
	transport := stun.RawAttribute{Type: stun.AttrRequestedTransport, Value: []byte{17, 0, 0, 0}}
	first := stunRoundTrip(t, conn, s.UDPAddr(), stun.TransactionID, allocate, transport, stun.Fingerprint)
	var nonce stun.Nonce
	var realm stun.Realm
	if nonce.GetFrom(first) != nil || realm.GetFrom(first) != nil {
		t.Fatalf("401 without NONCE/REALM: %v", first)
	}
	authed := func() *stun.Message {
		return stunRoundTrip(t, conn, s.UDPAddr(), stun.TransactionID, allocate, transport, stun.NewUsername(u), realm, nonce,
			stun.NewLongTermIntegrity(u, realm.String(), p), stun.Fingerprint)
	}
	if ok := authed(); ok.Type.Class != stun.ClassSuccessResponse {
		t.Fatalf("allocate: %v", ok)
	}
	mismatch := authed()
	var code stun.ErrorCodeAttribute
	if err := code.GetFrom(mismatch); err != nil || code.Code != stun.CodeAllocMismatch {
		t.Fatalf("second allocate: %v %v, want 437", code, err)
	}
	if string(code.Reason) != "Allocation Mismatch" {
		t.Fatalf("437 reason %q, want %q", code.Reason, "Allocation Mismatch")
	}
	if mismatch.Contains(stun.AttrFingerprint) {
		if err := stun.Fingerprint.Check(mismatch); err != nil {
			t.Fatalf("437 fingerprint: %v", err)
		}
	}
	// Release the allocation so the quota below counts only pion clients.
	refresh := stun.NewType(stun.MethodRefresh, stun.ClassRequest)
	if r := stunRoundTrip(t, conn, s.UDPAddr(), stun.TransactionID, refresh, stun.RawAttribute{Type: stun.AttrLifetime, Value: []byte{0, 0, 0, 0}},
		stun.NewUsername(u), realm, nonce, stun.NewLongTermIntegrity(u, realm.String(), p), stun.Fingerprint); r.Type.Class != stun.ClassSuccessResponse {
		t.Fatalf("refresh 0: %v", r)
	}

	// 486 over UDP and TCP (pion client, as a browser meets it).
	if _, err := dialClient(t, s, "udp", u, p).Allocate(); err != nil {
		t.Fatal(err)
	}
	for _, network := range []string{"udp", "tcp"} {
		_, err := dialClient(t, s, network, u, p).Allocate()
		var te *stun.TurnError
		if !errors.As(err, &te) || te.ErrorCodeAttr.Code != stun.CodeAllocQuotaReached {
			t.Fatalf("%s: over quota: %v, want 486", network, err)
		}
		if string(te.ErrorCodeAttr.Reason) != "Allocation Quota Reached" {
			t.Fatalf("%s: 486 reason %q", network, te.ErrorCodeAttr.Reason)
		}
	}
}

func TestWithReasonPhraseLeavesOthersAlone(t *testing.T) {
	errType := stun.NewType(stun.MethodAllocate, stun.ClassErrorResponse)
	// Success responses and non-STUN bytes come back as the same slice.
	for _, p := range [][]byte{
		stun.MustBuild(stun.TransactionID, stun.BindingSuccess, stun.Fingerprint).Raw,
		{0x40, 0x00, 0x00, 0x04, 1, 2, 3, 4}, // ChannelData
		{0x01},
	} {
		if q := withReasonPhrase(p); &q[0] != &p[0] || len(q) != len(p) {
			t.Fatalf("%x rewritten", p)
		}
	}
	// A message with MESSAGE-INTEGRITY is left as it is: the phrase would break it.
	withMI := stun.MustBuild(stun.TransactionID, errType, &stun.ErrorCodeAttribute{Code: stun.CodeAllocMismatch},
		stun.NewShortTermIntegrity("k"), stun.Fingerprint).Raw
	if q := withReasonPhrase(withMI); &q[0] != &withMI[0] {
		t.Fatal("message with MESSAGE-INTEGRITY rewritten")
	}
	// A phrase that is there is kept.
	own := stun.MustBuild(stun.TransactionID, errType, &stun.ErrorCodeAttribute{Code: stun.CodeAllocMismatch, Reason: []byte("mine")}).Raw
	if q := withReasonPhrase(own); &q[0] != &own[0] {
		t.Fatal("own phrase replaced")
	}
	// An empty phrase is filled; other attributes, order and the
	// fingerprint stay valid.
	nonce := stun.NewNonce("n0")
	bare := stun.MustBuild(stun.TransactionID, errType, &stun.ErrorCodeAttribute{Code: stun.CodeAllocQuotaReached}, nonce, stun.Fingerprint)
	m := &stun.Message{Raw: withReasonPhrase(bare.Raw)}
	if err := m.Decode(); err != nil {
		t.Fatal(err)
	}
	var code stun.ErrorCodeAttribute
	var got stun.Nonce
	if code.GetFrom(m) != nil || string(code.Reason) != "Allocation Quota Reached" || code.Code != stun.CodeAllocQuotaReached {
		t.Fatalf("code %v", code)
	}
	if got.GetFrom(m) != nil || got.String() != "n0" || m.TransactionID != bare.TransactionID || m.Type != errType {
		t.Fatalf("rewritten message lost fields: %v", m)
	}
	if err := stun.Fingerprint.Check(m); err != nil {
		t.Fatalf("fingerprint: %v", err)
	}
	// A code without a standard phrase is left empty.
	odd := stun.MustBuild(stun.TransactionID, errType, &stun.ErrorCodeAttribute{Code: 499}).Raw
	if q := withReasonPhrase(odd); &q[0] != &odd[0] {
		t.Fatal("code without a standard phrase rewritten")
	}
}
