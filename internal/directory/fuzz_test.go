package directory

import (
	"context"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
	"unicode"
	"unicode/utf8"

	"go.uber.org/zap"

	"github.com/duskchat/dusk-relay/internal/config"
	"github.com/duskchat/dusk-relay/internal/reqresp"
	"github.com/duskchat/dusk-relay/internal/testutil"
)

var directoryRequestSeeds = []string{
	"a1685265676973746572a26c646973706c61795f6e616d6565616c6963656a72656c61795f61646472785e2f6970342f3230332e302e3131332e372f7463702f343030312f7032702f313244334b6f6f57515968544e51646d723341725465554852597a46673934424b79546b6f57424457657a396b5343566532586f2f7032702d63697263756974",
	"a1685265676973746572a26c646973706c61795f6e616d6565616c6963656a72656c61795f6164647260",
	"a1685265676973746572a26c646973706c61795f6e616d65735a6fc3ab20f09fa68020e697a5e69cace8aa9e6a72656c61795f6164647260",
	"a1685265676973746572a16c646973706c61795f6e616d6565616c696365",
	"a1685265676973746572a16c646973706c61795f6e616d6560",
	"a166536561726368a165717565727963616c69",
	"a166536561726368a165717565727960",
	"6652656d6f7665",
	"a1685265676973746572a16a72656c61795f6164647260",
	"a1685265676973746572a26c646973706c61795f6e616d6565616c6963656a72656c61795f61646472f6",
	"a1685265676973746572a26a72656c61795f6164647261786c646973706c61795f6e616d6565616c696365",
	"a1685265676973746572a36c646973706c61795f6e616d6565616c6963656661766174617283016178a06a72656c61795f6164647260",
	"a1685265676973746572a26c646973706c61795f6e616d6561616c646973706c61795f6e616d656162",
	"a1685265676973746572bf6c646973706c61795f6e616d6565616c696365ff",
	"bf685265676973746572a16c646973706c61795f6e616d6565616c696365ff",
	"a266536561726368a165717565727961616652656d6f7665f6",
	"a16652656d6f7665f6",
	"6450696e67",
	"6652656d6f7665646a756e6b",
	"a166536561726368a16571756572796525",   // Search{"%"}
	"a166536561726368a165717565727962255f", // Search{"%_"}
}

// FuzzServiceHandle feeds arbitrary bytes to the /dusk/directory/1.0.0
// handler backed by a real SQLite file. Properties: no panic; undecodable
// input gets no answer; every answer decodes; a Register is answered Ok
// exactly when the name and relay_addr validate, and is then found by a
// search for the peer's own ID with the trimmed name; search results obey
// the limit and match the query; only wire error texts ever leave.
func FuzzServiceHandle(f *testing.F) {
	for _, h := range directoryRequestSeeds {
		f.Add(testutil.MustHex(h))
	}
	for _, b := range testutil.WireVectors("DirectoryRequest", "LegacyDirectoryRequest (old relay shape)") {
		f.Add(b)
	}
	st, err := Open(filepath.Join(f.TempDir(), "directory.sqlite3"), zap.NewNop())
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { _ = st.Close() })
	svc := NewService(st, config.Directory{}, zap.NewNop(), nil) // no rate limit: every input is judged
	_, remote := testutil.FixedKey(1)
	_, other := testutil.FixedKey(2)
	ctx := context.Background()
	// A constant second row makes searches non-trivial.
	if err := st.Register(ctx, other.String(), "Alice 100%_done", "", time.Unix(1_700_000_000, 0)); err != nil {
		f.Fatal(err)
	}
	wireErrors := map[string]bool{wireErrDisplayName: true, wireErrRelayAddr: true, wireErrRateLimited: true, wireErrInternal: true}

	f.Fuzz(func(t *testing.T, raw []byte) {
		// Each input starts from the same table: the fuzzer needs
		// repeatable coverage.
		defer func() { _, _ = st.Remove(ctx, remote.String()) }()
		var req Request
		decErr := reqresp.Unmarshal(raw, &req)
		out, err := svc.Handle(ctx, remote, raw)
		if decErr != nil {
			if err == nil || out != nil {
				t.Fatalf("answered undecodable input %x with %x", raw, out)
			}
			return
		}
		if err != nil {
			t.Fatalf("decodable request %+v refused: %v", req, err)
		}
		var resp Response
		if err := reqresp.Unmarshal(out, &resp); err != nil {
			t.Fatalf("undecodable answer %x: %v", out, err)
		}
		if resp.Kind == ResponseError && !wireErrors[resp.Error] {
			t.Fatalf("non-wire error text leaked: %q", resp.Error)
		}
		switch req.Kind {
		case RequestRegister:
			name, nerr := NormalizeDisplayName(req.DisplayName)
			valid := nerr == nil && ValidateRelayAddr(req.RelayAddr) == nil
			if valid != (resp.Kind == ResponseOk) {
				t.Fatalf("Register %+v (name err %v) answered %+v", req, nerr, resp)
			}
			if !valid {
				return
			}
			res, err := st.Search(ctx, remote.String())
			if err != nil || len(res) != 1 || res[0].PeerID != remote.String() || res[0].DisplayName != name || res[0].RelayAddr != req.RelayAddr {
				t.Fatalf("registered %+v, search by peer ID gives %+v (%v)", req, res, err)
			}
		case RequestSearch:
			if resp.Kind != ResponseResults {
				t.Fatalf("Search %q answered %+v", req.Query, resp)
			}
			if len(resp.Results) > SearchLimit {
				t.Fatalf("%d results", len(resp.Results))
			}
			q := normalizeQuery(req.Query)
			for _, p := range resp.Results {
				if p.PeerID != q && !strings.Contains(strings.ToLower(p.DisplayName), strings.ToLower(q)) {
					t.Fatalf("search %q returned %+v", q, p)
				}
			}
		case RequestRemove:
			if resp.Kind != ResponseOk {
				t.Fatalf("Remove answered %+v", resp)
			}
		}
	})
}

// FuzzDecodeResponse: the response decoder (used by clients and tests)
// never panics, and whatever it accepts re-encodes to bytes that decode
// to the same value.
func FuzzDecodeResponse(f *testing.F) {
	for _, h := range []string{
		"624f6b", "a167526573756c747380", "a1654572726f7260", "a167526573756c7473f6", "a167526573756c74739fff",
		"a1654572726f72781a646973706c6179206e616d6520616c72656164792074616b656e",
		"a167526573756c747381a467706565725f696461616c646973706c61795f6e616d656162696c6173745f7365656e016a72656c61795f6164647260",
	} {
		f.Add(testutil.MustHex(h))
	}
	for _, b := range testutil.WireVectors("DirectoryResponse", "LegacyDirectoryResponse (entries without relay_addr)") {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		var r Response
		if err := reqresp.Unmarshal(raw, &r); err != nil {
			return
		}
		b, err := reqresp.Marshal(r)
		if err != nil {
			t.Fatalf("re-encode %+v: %v", r, err)
		}
		var again Response
		if err := reqresp.Unmarshal(b, &again); err != nil || !reflect.DeepEqual(again, r) {
			t.Fatalf("round trip %+v -> %x -> %+v (%v)", r, b, again, err)
		}
	})
}

// FuzzNormalizeDisplayName: accepted names are trimmed, valid UTF-8,
// 1-64 code points without control characters, and normalizing is
// idempotent.
func FuzzNormalizeDisplayName(f *testing.F) {
	for _, s := range []string{"alice", "  alice  ", "", " ", "a\x00b", "Zoë 🦀 日本語", strings.Repeat("é", 64), strings.Repeat("é", 65), "\u2028x\u2029", "\xff"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		out, err := NormalizeDisplayName(in)
		if err != nil {
			return
		}
		n := utf8.RuneCountInString(out)
		if !utf8.ValidString(out) || n < 1 || n > MaxDisplayName || strings.TrimFunc(out, unicode.IsSpace) != out {
			t.Fatalf("NormalizeDisplayName(%q) = %q", in, out)
		}
		for _, r := range out {
			if unicode.IsControl(r) {
				t.Fatalf("control character %U kept in %q", r, out)
			}
		}
		if again, err := NormalizeDisplayName(out); err != nil || again != out {
			t.Fatalf("not idempotent: %q -> %q (%v)", out, again, err)
		}
	})
}
