package turncreds

import (
	"context"
	"reflect"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/duskchat/dusk-relay/internal/config"
	"github.com/duskchat/dusk-relay/internal/reqresp"
	"github.com/duskchat/dusk-relay/internal/testutil"
	"github.com/duskchat/dusk-relay/internal/turnauth"
)

// FuzzHandle feeds arbitrary request bytes to the credential handler the
// way reqresp delivers them. Properties: no panic; a decodable request
// re-encodes to bytes that decode to the same value; credentials are only
// ever issued for the authenticated remote, and they verify.
func FuzzHandle(f *testing.F) {
	_, remote := testutil.FixedKey(1)
	_, other := testutil.FixedKey(2)
	for _, h := range []string{
		"a167706565725f69647834313244334b6f6f5744704a3741733742574177524d6675315655325743714e6a76713338374a45594b44426a346b78366e58544e",
		"a167706565725f696460",
		"a167706565725f696443616263",
		"a167706565725f69647f6261626163ff",
		"a0", "f6", "", "ff", "a1",
	} {
		f.Add(testutil.MustHex(h))
	}
	for _, id := range []string{remote.String(), other.String()} {
		b, err := reqresp.Marshal(Request{PeerID: id})
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	for _, b := range testutil.WireVectors("TurnCredentialRequest") {
		f.Add(b)
	}

	secret := []byte("fuzz-secret")
	cfg := config.TURN{Enabled: true, PublicHost: "turn.example.org", UDPPort: 3478, TCPPort: 3478, CredentialTTL: 24 * time.Hour}
	svc := New(cfg, secret, zap.NewNop(), nil)
	now := time.Unix(1_764_000_000, 0)
	svc.now = func() time.Time { return now }

	f.Fuzz(func(t *testing.T, raw []byte) {
		var req Request
		decErr := reqresp.Unmarshal(raw, &req)
		if decErr == nil {
			enc, err := reqresp.Marshal(req)
			if err != nil {
				t.Fatalf("re-encode %+v: %v", req, err)
			}
			var again Request
			if err := reqresp.Unmarshal(enc, &again); err != nil || !reflect.DeepEqual(req, again) {
				t.Fatalf("round trip: %+v -> %x -> %+v (%v)", req, enc, again, err)
			}
		}

		out, err := svc.Handle(context.Background(), remote, raw)
		mayAnswer := decErr == nil && (req.PeerID == "" || req.PeerID == remote.String())
		if !mayAnswer {
			if err == nil || out != nil {
				t.Fatalf("answered a request it must refuse (%+v, decode err %v): %x", req, decErr, out)
			}
			return
		}
		if err != nil {
			t.Fatalf("refused a valid request %+v: %v", req, err)
		}
		var resp Response
		if err := reqresp.Unmarshal(out, &resp); err != nil {
			t.Fatalf("undecodable response %x: %v", out, err)
		}
		if !strings.HasSuffix(resp.Username, ":"+remote.String()) {
			t.Fatalf("username %q is not for %s", resp.Username, remote)
		}
		if id, err := turnauth.Check(secret, resp.Username, resp.Password, now, cfg.CredentialTTL); err != nil || id != remote.String() {
			t.Fatalf("issued credentials do not verify: %v (%s)", err, id)
		}
	})
}
