package turn

import (
	"encoding/binary"
	"net"

	"github.com/pion/stun/v3"
)

// pion writes its error responses (437, 486, 508, 400, ...) with an empty
// reason phrase. RFC 8489 §14.8 allows that, but the phrase is what an
// operator or a foreign client's log shows ("error 437 ()" in coturn's
// turnutils_uclient), so the listeners fill in the standard phrase on the
// way out. Only error responses are decoded; they carry no
// MESSAGE-INTEGRITY from pion (a message that does is left alone: its
// integrity covers the attribute), and a FINGERPRINT is recomputed.

// stunErrorClass is the class bits (C1 C0 = 1 1) of an error response.
const (
	stunErrorClass = 0x0110
	stunHeaderSize = 20
)

// withReasonPhrase returns p, or a copy of it with the default reason
// phrase when p is a STUN error response whose ERROR-CODE has none.
func withReasonPhrase(p []byte) []byte {
	if len(p) < stunHeaderSize || p[0]&0xC0 != 0 ||
		binary.BigEndian.Uint16(p[0:2])&stunErrorClass != stunErrorClass || !stun.IsMessage(p) {
		return p
	}
	m := &stun.Message{Raw: append([]byte(nil), p...)}
	if err := m.Decode(); err != nil {
		return p
	}
	if m.Contains(stun.AttrMessageIntegrity) || m.Contains(stun.AttrMessageIntegritySHA256) {
		return p
	}
	var code stun.ErrorCodeAttribute
	if code.GetFrom(m) != nil || len(code.Reason) > 0 {
		return p
	}
	out := &stun.Message{Type: m.Type, TransactionID: m.TransactionID}
	out.WriteHeader()
	fingerprint := false
	for _, a := range m.Attributes {
		switch a.Type {
		case stun.AttrErrorCode:
			if err := code.Code.AddTo(out); err != nil { // no standard phrase for this code
				return p
			}
		case stun.AttrFingerprint:
			fingerprint = true
		default:
			out.Add(a.Type, a.Value)
		}
	}
	if fingerprint {
		if err := stun.Fingerprint.AddTo(out); err != nil {
			return p
		}
	}
	return out.Raw
}

// WriteTo is pion's send to a client on this socket (STUN responses and
// Data indications; ChannelData of bound channels leaves by the fast path).
func (c *udpListener) WriteTo(p []byte, addr net.Addr) (int, error) {
	if _, err := c.PacketConn.WriteTo(withReasonPhrase(p), addr); err != nil {
		return 0, err
	}
	return len(p), nil
}
