package directory

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	"github.com/duskchat/dusk-relay/internal/reqresp"
	"github.com/duskchat/dusk-relay/internal/testutil"
)

type wireVector struct {
	Name     string `json:"name"`
	RustType string `json:"rust_type"`
	Hex      string `json:"hex"`
}

type decodeCheck struct {
	Name       string `json:"name"`
	TargetType string `json:"target_type"`
	InputHex   string `json:"input_hex"`
	Cbor4ii    string `json:"cbor4ii_from_slice"`
}

// loadVectors parses the golden wire vectors (shared/ beside the clone,
// else the copy in internal/testutil).
func loadVectors(t *testing.T) ([]wireVector, []decodeCheck) {
	t.Helper()
	var doc struct {
		Vectors      []wireVector  `json:"vectors"`
		DecodeChecks []decodeCheck `json:"decode_checks"`
	}
	if err := json.Unmarshal(testutil.VectorsJSON(), &doc); err != nil {
		t.Fatalf("parse vectors.json: %v", err)
	}
	return doc.Vectors, doc.DecodeChecks
}

const (
	vecPeerA = "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN"
	vecPeerB = "12D3KooWQYhTNQdmr3ArTeUHRYzFg94BKyTkoWBDWez9kSCVe2Xo"
	vecRelay = "/ip4/203.0.113.7/tcp/4001/p2p/" + vecPeerB + "/p2p-circuit"
)

// The Go value of every directory vector (from its rust_value).
var directoryVectorValues = map[string]any{
	"directory_request_register":                   Request{Kind: RequestRegister, DisplayName: "alice", RelayAddr: vecRelay},
	"directory_request_register_empty_relay_addr":  Request{Kind: RequestRegister, DisplayName: "alice"},
	"directory_request_register_unicode":           Request{Kind: RequestRegister, DisplayName: "Zoë 🦀 日本語"},
	"directory_request_register_legacy":            Request{Kind: RequestRegister, DisplayName: "alice"},
	"directory_request_register_legacy_empty_name": Request{Kind: RequestRegister},
	"directory_request_search":                     Request{Kind: RequestSearch, Query: "ali"},
	"directory_request_search_empty":               Request{Kind: RequestSearch},
	"directory_request_remove":                     Request{Kind: RequestRemove},
	"directory_response_ok":                        Response{Kind: ResponseOk},
	"directory_response_results_empty":             Response{Kind: ResponseResults, Results: []Profile{}},
	"directory_response_results_one": Response{Kind: ResponseResults, Results: []Profile{
		{PeerID: vecPeerA, DisplayName: "alice", LastSeen: 1764000000, RelayAddr: vecRelay}}},
	"directory_response_results_two": Response{Kind: ResponseResults, Results: []Profile{
		{PeerID: vecPeerA, DisplayName: "alice", LastSeen: 1764000000, RelayAddr: vecRelay},
		{PeerID: vecPeerB, DisplayName: "Zoë 🦀 日本語", LastSeen: 23}}},
	"directory_response_results_legacy_entry": Response{Kind: ResponseResults, Results: []Profile{
		{PeerID: vecPeerA, DisplayName: "alice", LastSeen: 1764000000}}},
	"directory_response_results_u64_ms": Response{Kind: ResponseResults, Results: []Profile{
		{PeerID: vecPeerA, DisplayName: "bob", LastSeen: 1764000000123}}},
	"directory_response_error":       Response{Kind: ResponseError, Error: "display name already taken"},
	"directory_response_error_empty": Response{Kind: ResponseError, Error: ""},
}

func TestGoldenVectors(t *testing.T) {
	vecs, _ := loadVectors(t)
	seen := 0
	for _, v := range vecs {
		if !strings.HasPrefix(v.Name, "directory_") {
			continue
		}
		seen++
		want, ok := directoryVectorValues[v.Name]
		if !ok {
			t.Errorf("%s: no Go value for this vector", v.Name)
			continue
		}
		golden, err := hex.DecodeString(v.Hex)
		if err != nil {
			t.Fatalf("%s: bad hex: %v", v.Name, err)
		}
		legacy := strings.HasPrefix(v.RustType, "Legacy")
		t.Run(v.Name, func(t *testing.T) {
			// Rust bytes -> Go value.
			var got any
			switch want.(type) {
			case Request:
				var r Request
				if err := reqresp.Unmarshal(golden, &r); err != nil {
					t.Fatalf("decode: %v", err)
				}
				got = r
			case Response:
				var r Response
				if err := reqresp.Unmarshal(golden, &r); err != nil {
					t.Fatalf("decode: %v", err)
				}
				got = r
			}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("decode:\n got %#v\nwant %#v", got, want)
			}
			// Go value -> Rust bytes. Legacy shapes re-encode in the
			// current shape (relay_addr always emitted), like the Rust client.
			enc, err := reqresp.Marshal(want)
			if err != nil {
				t.Fatalf("encode: %v", err)
			}
			if legacy {
				if bytes.Equal(enc, golden) {
					t.Fatalf("legacy vector re-encoded without relay_addr")
				}
				var again any
				switch want.(type) {
				case Request:
					var r Request
					err = reqresp.Unmarshal(enc, &r)
					again = r
				case Response:
					var r Response
					err = reqresp.Unmarshal(enc, &r)
					again = r
				}
				if err != nil || !reflect.DeepEqual(again, want) {
					t.Fatalf("legacy round trip: %v %#v", err, again)
				}
				if !bytes.Contains(enc, []byte("relay_addr")) {
					t.Fatalf("current shape must carry relay_addr: %x", enc)
				}
				return
			}
			if !bytes.Equal(enc, golden) {
				t.Fatalf("encode:\n got %x\nwant %x", enc, golden)
			}
		})
	}
	if seen != len(directoryVectorValues) {
		t.Fatalf("vectors.json has %d directory vectors, test knows %d", seen, len(directoryVectorValues))
	}
}

// Decode checks: accept what cbor4ii accepts and reject what it rejects,
// with one deliberate difference: trailing bytes after the item are
// rejected (reqresp.Unmarshal is strict; no Rust client sends them).
func TestDecodeChecks(t *testing.T) {
	_, checks := loadVectors(t)
	n := 0
	for _, c := range checks {
		if c.TargetType != "DirectoryRequest" && c.TargetType != "DirectoryResponse" {
			continue
		}
		n++
		in, err := hex.DecodeString(c.InputHex)
		if err != nil {
			t.Fatalf("%s: bad hex", c.Name)
		}
		wantOK := strings.HasPrefix(c.Cbor4ii, "Ok(")
		if c.Name == "trailing_bytes" {
			wantOK = false
		}
		var derr error
		if c.TargetType == "DirectoryRequest" {
			var r Request
			derr = reqresp.Unmarshal(in, &r)
		} else {
			var r Response
			derr = reqresp.Unmarshal(in, &r)
		}
		if (derr == nil) != wantOK {
			t.Errorf("%s: decode err=%v, cbor4ii says %s", c.Name, derr, c.Cbor4ii)
		}
	}
	if n < 15 {
		t.Fatalf("only %d directory decode checks found", n)
	}
}

func TestDecodeSpecifics(t *testing.T) {
	legacy, _ := hex.DecodeString("a1685265676973746572a16c646973706c61795f6e616d6565616c696365")
	var r Request
	if err := reqresp.Unmarshal(legacy, &r); err != nil {
		t.Fatal(err)
	}
	if r != (Request{Kind: RequestRegister, DisplayName: "alice", RelayAddr: ""}) {
		t.Fatalf("legacy Register: %#v", r)
	}
	// Remove is a bare text string on the wire, never a map or null.
	b, err := reqresp.Marshal(Request{Kind: RequestRemove})
	if err != nil || hex.EncodeToString(b) != "6652656d6f7665" {
		t.Fatalf("Remove encodes as %x (%v)", b, err)
	}
	reordered, _ := hex.DecodeString("a1685265676973746572a26a72656c61795f6164647261786c646973706c61795f6e616d6565616c696365")
	if err := reqresp.Unmarshal(reordered, &r); err != nil || r.RelayAddr != "x" || r.DisplayName != "alice" {
		t.Fatalf("reordered: %#v %v", r, err)
	}
	// Nil Results encode as an empty array (80), never null (f6).
	b, err = reqresp.Marshal(Response{Kind: ResponseResults})
	if err != nil || hex.EncodeToString(b) != "a167526573756c747380" {
		t.Fatalf("nil Results: %x %v", b, err)
	}
	for _, bad := range []string{
		"", "f6", "00", "80", "a0", // not an enum
		"6852656769737465",                   // "Register" as a unit variant
		"a16653656172636860",                 // Search: "" instead of a struct
		"a166536561726368a0",                 // Search without query
		"a16652656d6f766501",                 // {"Remove": 1}
		"a2665365617263688066536561726368a0", // two entries
	} {
		in, _ := hex.DecodeString(bad)
		var r Request
		if err := reqresp.Unmarshal(in, &r); err == nil {
			t.Errorf("%s decoded as %#v", bad, r)
		}
	}
	if _, err := reqresp.Marshal(Request{}); err == nil {
		t.Fatal("zero Request encoded")
	}
	if _, err := reqresp.Marshal(Response{}); err == nil {
		t.Fatal("zero Response encoded")
	}
}

func FuzzDecodeRequest(f *testing.F) {
	for _, h := range []string{
		"a1685265676973746572a26c646973706c61795f6e616d6565616c6963656a72656c61795f6164647260",
		"a1685265676973746572a16c646973706c61795f6e616d6565616c696365",
		"a166536561726368a165717565727963616c69", "6652656d6f7665", "a16652656d6f7665f6",
	} {
		b, _ := hex.DecodeString(h)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		var r Request
		if err := reqresp.Unmarshal(in, &r); err != nil {
			return
		}
		// Whatever decodes re-encodes and decodes to the same value.
		b, err := reqresp.Marshal(r)
		if err != nil {
			t.Fatalf("re-encode %#v: %v", r, err)
		}
		var again Request
		if err := reqresp.Unmarshal(b, &again); err != nil || again != r {
			t.Fatalf("round trip %#v -> %x -> %#v (%v)", r, b, again, err)
		}
	})
}
