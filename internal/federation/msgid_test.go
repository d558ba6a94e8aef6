package federation

import (
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"os"
	"strconv"
	"testing"

	pb "github.com/libp2p/go-libp2p-pubsub/pb"
	"github.com/libp2p/go-libp2p/core/peer"
)

// goldenID is one entry of testdata/gossip-message-id.json: ids computed
// by Rust's own std DefaultHasher with the closure body of the Rust relay
// and the Dusk app (rust-libp2p 0.54 Hash impls), cross-checked.
type goldenID struct {
	Name        string  `json:"name"`
	DataHex     string  `json:"data_hex"`
	Source      *string `json:"source"`
	SourceMHHex *string `json:"source_multihash_hex"`
	Code        *uint64 `json:"source_multihash_code"`
	DigestLen   *int    `json:"source_digest_len"`
	InputHex    string  `json:"hasher_input_hex"`
	MessageID   string  `json:"message_id"`
}

func loadGolden(t *testing.T) []goldenID {
	t.Helper()
	raw, err := os.ReadFile("testdata/gossip-message-id.json")
	if err != nil {
		t.Fatal(err)
	}
	var vs []goldenID
	if err := json.Unmarshal(raw, &vs); err != nil {
		t.Fatal(err)
	}
	if len(vs) != 16 {
		t.Fatalf("%d vectors, want 16", len(vs))
	}
	return vs
}

func mustHex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestMessageIDGolden reproduces every Rust golden id, from the base58
// peer id as a client would see it and from the wire bytes of `from`.
func TestMessageIDGolden(t *testing.T) {
	for _, v := range loadGolden(t) {
		t.Run(v.Name, func(t *testing.T) {
			m := &pb.Message{Data: mustHex(t, v.DataHex)}
			if v.Source != nil {
				id, err := peer.Decode(*v.Source)
				if err != nil {
					t.Fatal(err)
				}
				if got := hex.EncodeToString([]byte(id)); got != *v.SourceMHHex {
					t.Fatalf("peer id bytes %s, want %s", got, *v.SourceMHHex)
				}
				m.From = []byte(id)
			}
			if got := MessageID(m); got != v.MessageID {
				t.Fatalf("MessageID = %s, want %s", got, v.MessageID)
			}
			// The exact bytes Rust fed its hasher give the same id
			// in one write (streaming == one shot).
			var h sip13
			h.init()
			h.write(mustHex(t, v.InputHex))
			if got := h.sum(); formatU64(got) != v.MessageID {
				t.Fatalf("sip13(hasher_input) = %d, want %s", got, v.MessageID)
			}
		})
	}
}

// TestSipHashReference checks the shared core against the SipHash paper's
// SipHash-2-4 test vector (key 00..0f, message 00..0e).
func TestSipHashReference(t *testing.T) {
	key := mustHex(t, "000102030405060708090a0b0c0d0e0f")
	msg := mustHex(t, "000102030405060708090a0b0c0d0e")
	var h sip13
	h.initKey(binary.LittleEndian.Uint64(key), binary.LittleEndian.Uint64(key[8:]), 2, 4)
	h.write(msg)
	if got := h.sum(); got != 0xa129ca6149be45e5 {
		t.Fatalf("SipHash-2-4 = %x, want a129ca6149be45e5", got)
	}
}

// TestSipHashStreaming: any split of the input gives the same hash.
func TestSipHashStreaming(t *testing.T) {
	in := make([]byte, 41)
	for i := range in {
		in[i] = byte(i * 7)
	}
	var whole sip13
	whole.init()
	whole.write(in)
	want := whole.sum()
	for a := 0; a <= len(in); a++ {
		for b := a; b <= len(in); b += 3 {
			var h sip13
			h.init()
			h.write(in[:a])
			h.write(in[a:b])
			h.write(in[b:])
			if got := h.sum(); got != want {
				t.Fatalf("split %d/%d: %x, want %x", a, b, got, want)
			}
		}
	}
}

// TestMessageIDSemantics: the seqno does not matter, the source does, and
// a malformed `from` still gives an id (the message is rejected later).
func TestMessageIDSemantics(t *testing.T) {
	vs := loadGolden(t)
	from := mustHex(t, *vs[1].SourceMHHex)
	m1 := &pb.Message{Data: []byte("x"), From: from}
	m2 := &pb.Message{Data: []byte("x"), From: from, Seqno: []byte{1}}
	m3 := &pb.Message{Data: []byte("x")}
	if MessageID(m1) != MessageID(m2) {
		t.Error("same data and author must give the same ID")
	}
	if MessageID(m1) == MessageID(m3) {
		t.Error("different authors must give different IDs")
	}
	if id := MessageID(&pb.Message{Data: []byte("x"), From: []byte{0xff}}); id == "" || id == MessageID(m3) {
		t.Errorf("malformed from gave id %q", id)
	}
}

func BenchmarkMessageID(b *testing.B) {
	m := &pb.Message{Data: make([]byte, 64<<10), From: []byte(mustPeer(b))}
	b.SetBytes(int64(len(m.Data)))
	for b.Loop() {
		_ = MessageID(m)
	}
}

func mustPeer(tb testing.TB) peer.ID {
	id, err := peer.Decode("12D3KooWGQkCkACcibJPKzus7Q6U1aYngfTuS4gwYwmJkJJtrSaw")
	if err != nil {
		tb.Fatal(err)
	}
	return id
}

func formatU64(v uint64) string { return strconv.FormatUint(v, 10) }
