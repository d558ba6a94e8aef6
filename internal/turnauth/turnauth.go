// Package turnauth holds the TURN REST credential functions shared by the
// credential protocol (which issues) and the TURN server (which verifies):
// username "<expiry unix seconds>:<peer id>", password
// base64(HMAC-SHA1(secret, username)), the scheme of coturn's
// static-auth-secret / draft-uberti-behave-turn-rest.
package turnauth

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha1" //nolint:gosec // HMAC-SHA1 is what the TURN REST scheme and every client use.
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/duskchat/dusk-relay/internal/config"
	"github.com/duskchat/dusk-relay/internal/fsutil"
)

const (
	// SecretFile is the file name of the generated secret in the data dir.
	SecretFile = "turn_secret"
	// SecretBytes is the entropy of a generated secret.
	SecretBytes = 32
	// FutureSkew is how far beyond now+ttl an expiry may lie (clock skew
	// between relays sharing a secret); anything later was not issued by us.
	FutureSkew = 5 * time.Minute
	// MaxPeerIDLen bounds the user part; libp2p peer IDs are ~52 characters.
	MaxPeerIDLen = 128
)

var (
	// ErrMalformed: the username is not "<digits>:<alphanumeric peer id>".
	ErrMalformed = errors.New("turnauth: malformed username")
	// ErrExpired: the expiry lies in the past.
	ErrExpired = errors.New("turnauth: credentials expired")
	// ErrTooFarInFuture: the expiry is later than now + ttl + FutureSkew.
	ErrTooFarInFuture = errors.New("turnauth: expiry too far in the future")
	// ErrBadPassword: the password is not the HMAC of the username.
	ErrBadPassword = errors.New("turnauth: wrong password")
	// ErrBadSecretFile: the stored secret is unreadable or not what we write.
	ErrBadSecretFile = errors.New("turnauth: bad secret file")
	// ErrShortSecret: the configured secret is shorter than config.MinTURNSecret.
	ErrShortSecret = errors.New("turnauth: DUSK_TURN_SECRET too short")
)

// LoadOrCreateSecret returns the shared secret: configured (DUSK_TURN_SECRET)
// when non-empty, else the content of <dataDir>/turn_secret, generating it on
// first start. The generated secret is 32 random bytes written as 64 hex
// characters, and that text itself is the HMAC key, so an operator can paste
// the file content into DUSK_TURN_SECRET (or coturn's static-auth-secret)
// and get the same credentials. An existing file is never overwritten: a
// corrupt one stops the start (replacing it would silently invalidate every
// credential already issued).
func LoadOrCreateSecret(dataDir, configured string, log *zap.Logger) ([]byte, error) {
	if configured != "" {
		// config.Validate refuses it first (naming the variable); this
		// keeps any other caller from running with a guessable key.
		if len(configured) < config.MinTURNSecret {
			return nil, fmt.Errorf("%w: %d bytes, want at least %d", ErrShortSecret, len(configured), config.MinTURNSecret)
		}
		return []byte(configured), nil
	}
	path := filepath.Join(dataDir, SecretFile)
	secret, err := readSecret(path, log)
	if err == nil {
		log.Info("using TURN secret from file", zap.String("path", path))
		return secret, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return nil, fmt.Errorf("create data dir %s: %w", dataDir, err)
	}
	raw := make([]byte, SecretBytes)
	if _, err := rand.Read(raw); err != nil {
		return nil, fmt.Errorf("generate TURN secret: %w", err)
	}
	text := hex.EncodeToString(raw)
	err = fsutil.WriteNew(path, []byte(text+"\n"))
	if err != nil && !errors.Is(err, fs.ErrExist) {
		return nil, fmt.Errorf("write TURN secret: %w", err)
	}
	if err != nil {
		// Another process created it between our read and write: use theirs.
		return readSecret(path, log)
	}
	log.Warn("DUSK_TURN_SECRET not set: generated a random TURN secret and saved it; "+
		"set DUSK_TURN_SECRET to share one secret between relays", zap.String("path", path))
	return []byte(text), nil
}

// maxSecretFile bounds what readSecret reads: the file holds 64 hex
// characters and a newline.
const maxSecretFile = 1024

// readSecret loads the secret file without following a link in its place
// and validates it before touching its mode: a link (or a file swapped in
// between the checks) could otherwise make the relay chmod, or take its
// secret from, a file it does not own.
func readSecret(path string, log *zap.Logger) ([]byte, error) {
	fi, err := os.Lstat(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
		return nil, fmt.Errorf("%w: %s: %w", ErrBadSecretFile, path, err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%w: %s is not a regular file (%s); refusing to follow or read it", ErrBadSecretFile, path, fi.Mode().Type())
	}
	if fi.Size() > maxSecretFile {
		return nil, fmt.Errorf("%w: %s is %d bytes, want %d hex characters", ErrBadSecretFile, path, fi.Size(), 2*SecretBytes)
	}
	f, err := os.OpenFile(path, os.O_RDONLY|noFollow, 0)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrBadSecretFile, path, err)
	}
	defer f.Close()
	// The open must have reached the file Lstat saw, not a replacement.
	if ofi, err := f.Stat(); err != nil || !os.SameFile(fi, ofi) {
		return nil, fmt.Errorf("%w: %s changed while it was being opened", ErrBadSecretFile, path)
	}
	b, err := io.ReadAll(io.LimitReader(f, maxSecretFile+1))
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrBadSecretFile, path, err)
	}
	text := strings.TrimSpace(string(b))
	if len(text) != 2*SecretBytes {
		return nil, fmt.Errorf("%w: %s holds %d characters, want %d hex characters "+
			"(remove it to generate a new secret, or set DUSK_TURN_SECRET)", ErrBadSecretFile, path, len(text), 2*SecretBytes)
	}
	if _, err := hex.DecodeString(text); err != nil {
		return nil, fmt.Errorf("%w: %s is not hex (remove it to generate a new secret, or set DUSK_TURN_SECRET)", ErrBadSecretFile, path)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		log.Warn("TURN secret file readable by others; tightening to 0600",
			zap.String("path", path), zap.Stringer("mode", fi.Mode().Perm()))
		// Through the open descriptor: the file checked above, never a link.
		if err := f.Chmod(0o600); err != nil {
			return nil, fmt.Errorf("%w: chmod %s: %w", ErrBadSecretFile, path, err)
		}
	}
	return []byte(text), nil
}

// Password is base64(HMAC-SHA1(secret, username)), standard encoding with
// padding, as coturn computes it.
func Password(secret []byte, username string) string {
	mac := hmac.New(sha1.New, secret)
	_, _ = mac.Write([]byte(username))
	return base64.StdEncoding.EncodeToString(mac.Sum(nil))
}

// Issue returns credentials for peerID valid until now+ttl (whole seconds).
func Issue(secret []byte, peerID string, now time.Time, ttl time.Duration) (username, password string) {
	expiry := now.Unix() + int64(ttl/time.Second)
	username = strconv.FormatInt(expiry, 10) + ":" + peerID
	return username, Password(secret, username)
}

// Parse splits a REST username into expiry and peer ID, checking only the
// shape: 1-19 ASCII digits, ':', 1-MaxPeerIDLen ASCII letters and digits
// (libp2p peer IDs are base58btc or base32; refusing anything else keeps
// logs and quota keys clean).
func Parse(username string) (expiry int64, peerID string, err error) {
	ts, id, ok := strings.Cut(username, ":")
	if !ok || len(ts) == 0 || len(ts) > 19 || len(id) == 0 || len(id) > MaxPeerIDLen {
		return 0, "", ErrMalformed
	}
	for i := 0; i < len(ts); i++ {
		if ts[i] < '0' || ts[i] > '9' {
			return 0, "", ErrMalformed
		}
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z') {
			return 0, "", ErrMalformed
		}
	}
	expiry, err = strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return 0, "", ErrMalformed
	}
	return expiry, id, nil
}

// Verify checks the username's shape and time window and returns the peer
// ID and the password the username must be used with. The password itself
// is checked by the caller (the TURN server derives the long-term key from
// it and compares MESSAGE-INTEGRITY; Check compares a given password).
func Verify(secret []byte, username string, now time.Time, ttl time.Duration) (peerID, password string, err error) {
	expiry, peerID, err := Parse(username)
	if err != nil {
		return "", "", err
	}
	nowS := now.Unix()
	if expiry < nowS {
		return "", "", ErrExpired
	}
	if expiry-nowS > int64((ttl+FutureSkew)/time.Second) {
		return "", "", ErrTooFarInFuture
	}
	return peerID, Password(secret, username), nil
}

// Check verifies username and password together (constant-time compare).
func Check(secret []byte, username, password string, now time.Time, ttl time.Duration) (peerID string, err error) {
	peerID, want, err := Verify(secret, username, now, ttl)
	if err != nil {
		return "", err
	}
	if subtle.ConstantTimeCompare([]byte(want), []byte(password)) != 1 {
		return "", ErrBadPassword
	}
	return peerID, nil
}
