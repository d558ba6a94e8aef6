package directory

import (
	"errors"
	"strings"
	"testing"
)

func TestNormalizeDisplayName(t *testing.T) {
	cjk64 := strings.Repeat("日", 64)      // 192 bytes
	emoji64 := strings.Repeat("🦀", 64)    // 256 bytes
	mixed64 := strings.Repeat("Zoë🦀", 16) // 64 code points
	for _, tc := range []struct {
		name, in, want string
		err            error
	}{
		{"empty", "", "", ErrDisplayNameEmpty},
		{"blank", "   ", "", ErrDisplayNameEmpty},
		{"unicode blank", "\u3000\u00a0\t\n", "", ErrDisplayNameEmpty},
		{"one", "a", "a", nil},
		{"64 ascii", strings.Repeat("a", 64), strings.Repeat("a", 64), nil},
		{"65 ascii", strings.Repeat("a", 65), "", ErrDisplayNameTooLong},
		{"64 cjk", cjk64, cjk64, nil},
		{"64 emoji", emoji64, emoji64, nil},
		{"64 mixed", mixed64, mixed64, nil},
		{"65 cjk", cjk64 + "日", "", ErrDisplayNameTooLong},
		{"trimmed", "  alice \t", "alice", nil},
		{"64 after trim", "  " + strings.Repeat("b", 64) + "  ", strings.Repeat("b", 64), nil},
		{"inner spaces kept", " a  b ", "a  b", nil},
		{"nul", "al\x00ice", "", ErrDisplayNameInvalid},
		{"newline inside", "al\nice", "", ErrDisplayNameInvalid},
		{"escape", "a\x1b[31m", "", ErrDisplayNameInvalid},
		{"del", "a\x7fb", "", ErrDisplayNameInvalid},
		{"c1 control", "a\u0085b", "", ErrDisplayNameInvalid},
		{"percent and underscore", "100%_sure", "100%_sure", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := NormalizeDisplayName(tc.in)
			if !errors.Is(err, tc.err) || got != tc.want {
				t.Fatalf("NormalizeDisplayName(%q) = %q, %v; want %q, %v", tc.in, got, err, tc.want, tc.err)
			}
		})
	}
}

func TestValidateRelayAddr(t *testing.T) {
	long := "/dns4/" + strings.Repeat("a", MaxRelayAddr) + "/tcp/1"
	for _, tc := range []struct {
		in string
		ok bool
	}{
		{"", true},
		{vecRelay, true},
		{"/dns4/relay.example.org/tcp/4001/p2p/" + vecPeerB + "/p2p-circuit", true},
		{"/ip6/::1/udp/4001/quic-v1", true},
		{"not a multiaddr", false},
		{"/ip4/999.1.1.1/tcp/1", false},
		{"/ip4/1.2.3.4/tcp", false},
		{long, false},
	} {
		err := ValidateRelayAddr(tc.in)
		if (err == nil) != tc.ok {
			t.Errorf("ValidateRelayAddr(%.40q) = %v, want ok=%v", tc.in, err, tc.ok)
		}
		if err != nil && !errors.Is(err, ErrRelayAddrInvalid) {
			t.Errorf("error %v does not wrap ErrRelayAddrInvalid", err)
		}
	}
}
