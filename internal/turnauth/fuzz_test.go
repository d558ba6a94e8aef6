package turnauth

import (
	"strconv"
	"strings"
	"testing"
	"time"
)

// FuzzVerify feeds arbitrary TURN usernames, clocks and TTLs to the REST
// credential checks. Properties: no panic; whatever Verify accepts has the
// documented shape and time window, and verifies with exactly the password
// Issue would have produced.
func FuzzVerify(f *testing.F) {
	const now = 1_764_000_000
	for _, u := range []string{
		"1764086400:12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN",
		"1764000000:a", ":abc", "abc:", "17640864001:x", "-1:abc", "+1764086400:abc",
		"99999999999999999999:abc", "9223372036854775807:abc", "1764086400:abc:def",
		"1764086400:12D3KooW\x00", "1764086400:ünïcode", "", ":", "1764086400",
		"1764086400:" + strings.Repeat("z", 129),
	} {
		f.Add(u, int64(now), uint32(86400))
	}
	f.Add("0:abc", int64(0), uint32(0))
	f.Add("9223372036854775807:abc", int64(9223372036854775807), uint32(4294967295))
	f.Add("1:abc", int64(-9223372036854775808), uint32(1))

	secret := []byte("fuzz-secret")
	f.Fuzz(func(t *testing.T, username string, nowUnix int64, ttlSecs uint32) {
		now := time.Unix(nowUnix, 0)
		ttl := time.Duration(ttlSecs) * time.Second

		expiry, id, perr := Parse(username)
		peerID, password, err := Verify(secret, username, now, ttl)
		if perr != nil {
			if err == nil {
				t.Fatalf("Verify accepted %q that Parse rejects (%v)", username, perr)
			}
			return
		}
		// Parse's documented shape.
		ts, rest, ok := strings.Cut(username, ":")
		if !ok || rest != id || len(id) == 0 || len(id) > MaxPeerIDLen || strings.ContainsAny(id, ":") {
			t.Fatalf("Parse(%q) = %d, %q", username, expiry, id)
		}
		if n, err := strconv.ParseInt(ts, 10, 64); err != nil || n != expiry || expiry < 0 {
			t.Fatalf("Parse(%q) expiry %d", username, expiry)
		}
		// Callers pass time.Now(): judge the window only for real clocks
		// (expiry-now would overflow for clocks near the int64 limits).
		if err != nil || nowUnix < 0 || nowUnix > 1<<40 {
			return
		}
		if peerID != id {
			t.Fatalf("Verify peer %q, Parse %q", peerID, id)
		}
		if expiry < nowUnix {
			t.Fatalf("expired username %q accepted at %d", username, nowUnix)
		}
		if limit := int64((ttl + FutureSkew) / time.Second); expiry-nowUnix > limit {
			t.Fatalf("username %q beyond now+ttl+skew accepted (now %d, ttl %v)", username, nowUnix, ttl)
		}
		if password != Password(secret, username) {
			t.Fatalf("Verify password differs from Password()")
		}
		if _, err := Check(secret, username, password, now, ttl); err != nil {
			t.Fatalf("Check rejects Verify's own password: %v", err)
		}
		if _, err := Check(secret, username, password+"x", now, ttl); err == nil {
			t.Fatalf("Check accepted a wrong password")
		}
		if _, err := Check([]byte("other secret"), username, password, now, ttl); err == nil {
			t.Fatalf("Check accepted a password made with another secret")
		}
	})
}

// FuzzIssueVerify: whatever Issue produces for a well-formed peer ID
// verifies at issue time, and only for that peer.
func FuzzIssueVerify(f *testing.F) {
	f.Add("12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN", int64(1_764_000_000), uint32(86400))
	f.Add("a", int64(0), uint32(1))
	f.Fuzz(func(t *testing.T, id string, nowUnix int64, ttlSecs uint32) {
		if nowUnix < 0 || nowUnix > 1<<40 || ttlSecs == 0 {
			return // Issue's caller: a real clock and a TTL >= 1 s (config)
		}
		now := time.Unix(nowUnix, 0)
		ttl := time.Duration(ttlSecs) * time.Second
		user, pass := Issue([]byte("s"), id, now, ttl)
		got, err := Check([]byte("s"), user, pass, now, ttl)
		_, _, perr := Parse(strconv.FormatInt(nowUnix, 10) + ":" + id)
		if perr != nil {
			if err == nil {
				t.Fatalf("credentials for malformed peer ID %q verified", id)
			}
			return
		}
		if err != nil || got != id {
			t.Fatalf("Issue(%q) -> %q does not verify: %v", id, user, err)
		}
	})
}
