// Package identity loads or creates the relay's persistent libp2p keypair.
//
// The file format is the libp2p protobuf encoding of the private key, which
// is byte for byte what rust-libp2p's Keypair::to_protobuf_encoding writes for
// Ed25519 (08 01 12 40 ‖ seed ‖ public key), so an operator's existing Rust
// relay keypair keeps the same peer ID.
package identity

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"go.uber.org/zap"

	"github.com/duskchat/dusk-relay/internal/fsutil"
)

// FileName is the keypair file name inside the data directory (same as the Rust relay).
const FileName = "keypair"

// maxKeyFileSize bounds what we read: an RSA-4096 protobuf key is ~2.4 KiB,
// so anything far larger is not a key file.
const maxKeyFileSize = 64 << 10

var (
	// ErrCorruptKeypair: the file exists but does not decode as a libp2p private key.
	ErrCorruptKeypair = errors.New("corrupt keypair file")
	// ErrUnreadableKeypair: the file exists (or may exist) but cannot be read.
	ErrUnreadableKeypair = errors.New("unreadable keypair file")
	// ErrDataDir: the data directory cannot be created or used.
	ErrDataDir = errors.New("unusable data directory")
)

// LoadOrCreate returns the keypair stored in <dataDir>/keypair, creating an
// Ed25519 one if the file does not exist. An existing file that cannot be
// read or decoded is an error: it is never replaced, because clients pin the
// relay's peer ID.
func LoadOrCreate(dataDir string, log *zap.Logger) (crypto.PrivKey, error) {
	if log == nil {
		log = zap.NewNop()
	}
	// The keypair is loaded first at start, so the data directory's
	// permissions are checked here, once.
	wide, err := fsutil.EnsurePrivateDir(dataDir)
	switch {
	case errors.Is(err, fsutil.ErrWideDir):
		log.Warn("data directory is open to other users and could not be tightened to 0700",
			zap.String("path", dataDir), zap.String("mode", fmt.Sprintf("%#o", wide)), zap.Error(err))
	case err != nil:
		return nil, fmt.Errorf("%w %s: %w", ErrDataDir, dataDir, err)
	case wide != 0:
		log.Warn("data directory was open to other users, tightened to 0700",
			zap.String("path", dataDir), zap.String("mode", fmt.Sprintf("%#o", wide)))
	}
	path := filepath.Join(dataDir, FileName)

	// Two rounds at most: if another process creates the file between our
	// stat and our link, load theirs instead of overwriting it.
	for range 2 {
		key, err := load(path, log)
		if err == nil {
			return key, nil
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
		key, err = create(path, log)
		if errors.Is(err, fs.ErrExist) {
			continue
		}
		return key, err
	}
	return nil, fmt.Errorf("%w %s: created concurrently and still missing", ErrUnreadableKeypair, path)
}

// load returns an fs.ErrNotExist-wrapping error when the file is absent.
func load(path string, log *zap.Logger) (crypto.PrivKey, error) {
	info, err := os.Lstat(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
		return nil, fmt.Errorf("%w %s: %w", ErrUnreadableKeypair, path, err)
	}
	if !info.Mode().IsRegular() {
		return nil, fmt.Errorf("%w %s: not a regular file (%s)", ErrUnreadableKeypair, path, info.Mode().Type())
	}
	if info.Size() > maxKeyFileSize {
		return nil, fmt.Errorf("%w %s: %d bytes is too large for a key", ErrCorruptKeypair, path, info.Size())
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%w %s: %w", ErrUnreadableKeypair, path, err)
	}
	key, err := crypto.UnmarshalPrivateKey(data)
	if err != nil {
		return nil, fmt.Errorf("%w %s: %w (refusing to replace it: clients pin this relay's peer ID; restore the file or move it away to generate a new identity)", ErrCorruptKeypair, path, err)
	}
	if perm := info.Mode().Perm(); perm&^0o600 != 0 {
		log.Warn("keypair file permissions too open, tightening to 0600",
			zap.String("path", path), zap.String("mode", fmt.Sprintf("%#o", perm)))
		if err := os.Chmod(path, 0o600); err != nil {
			log.Error("cannot tighten keypair file permissions", zap.String("path", path), zap.Error(err))
		}
	}
	log.Info("loaded existing keypair from "+path, zap.Stringer("peer_id", peerID(key)))
	return key, nil
}

func create(path string, log *zap.Logger) (crypto.PrivKey, error) {
	key, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate ed25519 key: %w", err)
	}
	data, err := crypto.MarshalPrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encode keypair: %w", err)
	}
	if err := fsutil.WriteNew(path, data); err != nil {
		return nil, fmt.Errorf("%w %s: %w", ErrDataDir, filepath.Dir(path), err)
	}
	log.Info("saved new keypair to "+path, zap.Stringer("peer_id", peerID(key)))
	return key, nil
}

func peerID(key crypto.PrivKey) peer.ID {
	id, err := peer.IDFromPrivateKey(key)
	if err != nil {
		return ""
	}
	return id
}
