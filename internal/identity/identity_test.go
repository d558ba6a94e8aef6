package identity

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

func observed() (*zap.Logger, *observer.ObservedLogs) {
	core, logs := observer.New(zap.DebugLevel)
	return zap.New(core), logs
}

func mustID(t *testing.T, k crypto.PrivKey) peer.ID {
	t.Helper()
	id, err := peer.IDFromPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func TestCreateThenLoad(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "nested", "dusk-relay")
	log, logs := observed()
	k1, err := LoadOrCreate(dir, log)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, FileName)
	if got := logs.FilterMessage("saved new keypair to " + path).Len(); got != 1 {
		t.Fatalf("want one 'saved new keypair' log, got %d: %v", got, logs.All())
	}
	if k1.Type() != crypto.Ed25519 {
		t.Fatalf("key type %v, want Ed25519", k1.Type())
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("keypair mode %#o, want 0600", fi.Mode().Perm())
	}
	di, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if di.Mode().Perm() != 0o700 {
		t.Fatalf("data dir mode %#o, want 0700", di.Mode().Perm())
	}
	// Same encoding as rust-libp2p: 08 01 12 40 ‖ 64 bytes.
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(raw) != 68 || !bytes.HasPrefix(raw, []byte{0x08, 0x01, 0x12, 0x40}) {
		t.Fatalf("file is %d bytes %x, want 68 bytes starting 08011240", len(raw), raw[:min(8, len(raw))])
	}
	// No temp files left behind.
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Fatalf("data dir has %d entries, want only the keypair", len(ents))
	}

	log2, logs2 := observed()
	k2, err := LoadOrCreate(dir, log2)
	if err != nil {
		t.Fatal(err)
	}
	if mustID(t, k1) != mustID(t, k2) {
		t.Fatalf("peer ID changed across loads: %s vs %s", mustID(t, k1), mustID(t, k2))
	}
	if got := logs2.FilterMessage("loaded existing keypair from " + path).Len(); got != 1 {
		t.Fatalf("want one 'loaded existing keypair' log, got %v", logs2.All())
	}
	raw2, _ := os.ReadFile(path)
	if !bytes.Equal(raw, raw2) {
		t.Fatal("loading rewrote the keypair file")
	}
}

// TestRustWrittenKey builds the file the way rust-libp2p's
// Keypair::to_protobuf_encoding does for Ed25519 and checks the peer ID
// derived independently from the standard library key.
func TestRustWrittenKey(t *testing.T) {
	seed := make([]byte, ed25519.SeedSize)
	for i := range seed {
		seed[i] = byte(i*7 + 3)
	}
	std := ed25519.NewKeyFromSeed(seed)
	pubRaw := std.Public().(ed25519.PublicKey)

	file := []byte{0x08, 0x01, 0x12, 0x40} // field 1 varint Ed25519=1; field 2 length 64
	file = append(file, seed...)
	file = append(file, pubRaw...)

	pub, err := crypto.UnmarshalEd25519PublicKey(pubRaw)
	if err != nil {
		t.Fatal(err)
	}
	want, err := peer.IDFromPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}

	dir := t.TempDir()
	path := filepath.Join(dir, FileName)
	if err := os.WriteFile(path, file, 0o600); err != nil {
		t.Fatal(err)
	}
	k, err := LoadOrCreate(dir, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	if got := mustID(t, k); got != want {
		t.Fatalf("peer ID %s, want %s", got, want)
	}
	if !strings.HasPrefix(want.String(), "12D3KooW") {
		t.Fatalf("unexpected peer ID form %s", want)
	}
	// Re-encoding gives the Rust bytes back.
	enc, err := crypto.MarshalPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(enc, file) {
		t.Fatalf("re-encoded %x, want %x", enc, file)
	}
}

func TestCorruptFileIsRefusedAndKept(t *testing.T) {
	for name, content := range map[string][]byte{
		"garbage":   []byte("this is not a protobuf key\n"),
		"empty":     {},
		"truncated": {0x08, 0x01, 0x12, 0x40, 0x01, 0x02},
		"bad type":  append([]byte{0x08, 0x63, 0x12, 0x40}, make([]byte, 64)...),
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, FileName)
			if err := os.WriteFile(path, content, 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := LoadOrCreate(dir, zap.NewNop())
			if !errors.Is(err, ErrCorruptKeypair) {
				t.Fatalf("err = %v, want ErrCorruptKeypair", err)
			}
			if !strings.Contains(err.Error(), path) {
				t.Fatalf("error %q does not name %s", err, path)
			}
			after, rerr := os.ReadFile(path)
			if rerr != nil {
				t.Fatal(rerr)
			}
			if !bytes.Equal(after, content) {
				t.Fatalf("file changed: %x -> %x", content, after)
			}
		})
	}
}

func TestOversizedFileIsRefused(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, FileName)
	big := bytes.Repeat([]byte{0xAA}, maxKeyFileSize+1)
	if err := os.WriteFile(path, big, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreate(dir, zap.NewNop()); !errors.Is(err, ErrCorruptKeypair) {
		t.Fatalf("err = %v, want ErrCorruptKeypair", err)
	}
}

func TestLoosePermissionsTightened(t *testing.T) {
	dir := t.TempDir()
	k, err := LoadOrCreate(dir, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, FileName)
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	log, logs := observed()
	k2, err := LoadOrCreate(dir, log)
	if err != nil {
		t.Fatal(err)
	}
	if mustID(t, k) != mustID(t, k2) {
		t.Fatal("peer ID changed")
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %#o after load, want 0600", fi.Mode().Perm())
	}
	warns := logs.FilterLevelExact(zap.WarnLevel).All()
	if len(warns) != 1 || !strings.Contains(warns[0].Message, "permissions") {
		t.Fatalf("want one permissions warning, got %v", logs.All())
	}
}

func TestKeypairPathIsDirectory(t *testing.T) {
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, FileName), 0o700); err != nil {
		t.Fatal(err)
	}
	_, err := LoadOrCreate(dir, zap.NewNop())
	if !errors.Is(err, ErrUnreadableKeypair) {
		t.Fatalf("err = %v, want ErrUnreadableKeypair", err)
	}
	if fi, serr := os.Stat(filepath.Join(dir, FileName)); serr != nil || !fi.IsDir() {
		t.Fatal("the directory in the keypair's place was touched")
	}
}

func TestDataDirIsAFile(t *testing.T) {
	base := t.TempDir()
	file := filepath.Join(base, "not-a-dir")
	if err := os.WriteFile(file, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := LoadOrCreate(filepath.Join(file, "dusk-relay"), zap.NewNop())
	if !errors.Is(err, ErrDataDir) {
		t.Fatalf("err = %v, want ErrDataDir", err)
	}
}

func TestUnreadableDir(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("root ignores directory permissions; covered by TestDataDirIsAFile and TestKeypairPathIsDirectory")
	}
	dir := t.TempDir()
	if _, err := LoadOrCreate(dir, zap.NewNop()); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o000); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.Chmod(dir, 0o700) })
	_, err := LoadOrCreate(dir, zap.NewNop())
	if err == nil || !errors.Is(err, fs.ErrPermission) {
		t.Fatalf("err = %v, want a permission error", err)
	}
}

func TestUnreadableFile(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("root ignores file permissions")
	}
	dir := t.TempDir()
	if _, err := LoadOrCreate(dir, zap.NewNop()); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, FileName)
	if err := os.Chmod(path, 0o000); err != nil {
		t.Fatal(err)
	}
	_, err := LoadOrCreate(dir, zap.NewNop())
	if !errors.Is(err, ErrUnreadableKeypair) {
		t.Fatalf("err = %v, want ErrUnreadableKeypair", err)
	}
}

// A non-Ed25519 key written by another libp2p implementation still loads.
func TestOtherKeyTypeLoads(t *testing.T) {
	k, _, err := crypto.GenerateSecp256k1Key(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	data, err := crypto.MarshalPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, FileName), data, 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := LoadOrCreate(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	if mustID(t, got) != mustID(t, k) {
		t.Fatal("peer ID mismatch")
	}
}

// A data directory others may enter is tightened to 0700, with a warning.
func TestWideDataDirTightened(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	log, logs := observed()
	if _, err := LoadOrCreate(dir, log); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(dir); fi.Mode().Perm() != 0o700 {
		t.Fatalf("data dir left at %#o", fi.Mode().Perm())
	}
	warns := logs.FilterLevelExact(zap.WarnLevel).All()
	if len(warns) != 1 || !strings.Contains(warns[0].Message, "data directory") {
		t.Fatalf("want one data directory warning, got %v", logs.All())
	}
}
