package turnauth

import (
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

func observed() (*zap.Logger, *observer.ObservedLogs) {
	core, logs := observer.New(zap.DebugLevel)
	return zap.New(core), logs
}

func TestConfiguredSecretWins(t *testing.T) {
	dir := t.TempDir()
	s, err := LoadOrCreateSecret(dir, "operator secret!", zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	if string(s) != "operator secret!" {
		t.Fatalf("secret %q", s)
	}
	if _, err := os.Stat(filepath.Join(dir, SecretFile)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("configured secret must not create %s: %v", SecretFile, err)
	}
}

func TestGeneratedSecretPersists(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "a", "dusk-relay")
	log, logs := observed()
	s1, err := LoadOrCreateSecret(dir, "", log)
	if err != nil {
		t.Fatal(err)
	}
	if len(s1) != 2*SecretBytes {
		t.Fatalf("secret length %d", len(s1))
	}
	raw, err := hex.DecodeString(string(s1))
	if err != nil || len(raw) != SecretBytes {
		t.Fatalf("secret %q is not %d hex bytes: %v", s1, SecretBytes, err)
	}
	if n := logs.FilterLevelExact(zap.WarnLevel).Len(); n != 1 {
		t.Fatalf("want exactly one warning on generation, got %d: %v", n, logs.All())
	}
	path := filepath.Join(dir, SecretFile)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %#o, want 0600", fi.Mode().Perm())
	}
	di, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if di.Mode().Perm() != 0o700 {
		t.Fatalf("dir mode %#o, want 0700", di.Mode().Perm())
	}
	content, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if string(content) != string(s1)+"\n" {
		t.Fatalf("file %q, secret %q", content, s1)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Fatalf("temp files left behind: %v", entries)
	}

	// Restart: same secret, no new warning.
	log2, logs2 := observed()
	s2, err := LoadOrCreateSecret(dir, "", log2)
	if err != nil {
		t.Fatal(err)
	}
	if string(s2) != string(s1) {
		t.Fatalf("secret changed across restarts: %q -> %q", s1, s2)
	}
	if n := logs2.FilterLevelExact(zap.WarnLevel).Len(); n != 0 {
		t.Fatalf("unexpected warning on reuse: %v", logs2.All())
	}

	// Two fresh dirs give different secrets.
	s3, err := LoadOrCreateSecret(t.TempDir(), "", zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	if string(s3) == string(s1) {
		t.Fatal("two generated secrets are equal")
	}
}

func TestCorruptSecretFileRefused(t *testing.T) {
	for name, content := range map[string]string{
		"empty":     "",
		"newline":   "\n",
		"short":     "abcdef\n",
		"not hex":   strings.Repeat("zz", SecretBytes) + "\n",
		"too long":  strings.Repeat("ab", SecretBytes+1),
		"truncated": strings.Repeat("ab", SecretBytes)[:63],
		"huge":      strings.Repeat("a", 4096),
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, SecretFile)
			if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := LoadOrCreateSecret(dir, "", zap.NewNop())
			if !errors.Is(err, ErrBadSecretFile) {
				t.Fatalf("err %v, want ErrBadSecretFile", err)
			}
			got, _ := os.ReadFile(path)
			if string(got) != content {
				t.Fatal("corrupt secret file was modified")
			}
		})
	}
	t.Run("directory", func(t *testing.T) {
		dir := t.TempDir()
		if err := os.Mkdir(filepath.Join(dir, SecretFile), 0o700); err != nil {
			t.Fatal(err)
		}
		if _, err := LoadOrCreateSecret(dir, "", zap.NewNop()); !errors.Is(err, ErrBadSecretFile) {
			t.Fatalf("err %v, want ErrBadSecretFile", err)
		}
	})
}

func TestWideSecretPermsTightened(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, SecretFile)
	secret := strings.Repeat("0f", SecretBytes)
	if err := os.WriteFile(path, []byte(secret+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	log, logs := observed()
	s, err := LoadOrCreateSecret(dir, "", log)
	if err != nil {
		t.Fatal(err)
	}
	if string(s) != secret {
		t.Fatalf("secret %q", s)
	}
	fi, _ := os.Stat(path)
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %#o, want 0600", fi.Mode().Perm())
	}
	if logs.FilterLevelExact(zap.WarnLevel).Len() != 1 {
		t.Fatalf("want a warning: %v", logs.All())
	}
}

func TestPasswordKnownAnswer(t *testing.T) {
	// RFC 2202 test case 2 for HMAC-SHA1, base64-encoded.
	if got := Password([]byte("Jefe"), "what do ya want for nothing?"); got != "7/zfauXrL6LSdBbV8YTfnCWafHk=" {
		t.Fatalf("HMAC-SHA1 base64 %q", got)
	}
}

const peerID = "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN"

func TestIssueVerifyCheck(t *testing.T) {
	secret := []byte("s3cret")
	now := time.Unix(1764000000, 500_000_000)
	ttl := 24 * time.Hour
	user, pass := Issue(secret, peerID, now, ttl)
	if user != "1764086400:"+peerID {
		t.Fatalf("username %q", user)
	}
	if pass != Password(secret, user) {
		t.Fatal("password is not HMAC of username")
	}
	id, want, err := Verify(secret, user, now, ttl)
	if err != nil || id != peerID || want != pass {
		t.Fatalf("Verify = %q %q %v", id, want, err)
	}
	if id, err := Check(secret, user, pass, now, ttl); err != nil || id != peerID {
		t.Fatalf("Check = %q %v", id, err)
	}
	if _, err := Check([]byte("other"), user, pass, now, ttl); !errors.Is(err, ErrBadPassword) {
		t.Fatalf("wrong secret: %v", err)
	}
	if _, err := Check(secret, user, pass[:len(pass)-2], now, ttl); !errors.Is(err, ErrBadPassword) {
		t.Fatalf("truncated password: %v", err)
	}
	// Still valid in the last second, expired one second later.
	if _, _, err := Verify(secret, user, time.Unix(1764086400, 0), ttl); err != nil {
		t.Fatalf("at expiry: %v", err)
	}
	if _, _, err := Verify(secret, user, time.Unix(1764086401, 0), ttl); !errors.Is(err, ErrExpired) {
		t.Fatalf("after expiry: %v", err)
	}
	// Expiry at most ttl + FutureSkew ahead.
	edge := strconv.FormatInt(now.Unix()+int64((ttl+FutureSkew)/time.Second), 10) + ":" + peerID
	if _, _, err := Verify(secret, edge, now, ttl); err != nil {
		t.Fatalf("at skew edge: %v", err)
	}
	beyond := strconv.FormatInt(now.Unix()+int64((ttl+FutureSkew)/time.Second)+1, 10) + ":" + peerID
	if _, _, err := Verify(secret, beyond, now, ttl); !errors.Is(err, ErrTooFarInFuture) {
		t.Fatalf("beyond skew: %v", err)
	}
}

func TestMalformedUsernames(t *testing.T) {
	now := time.Unix(1764000000, 0)
	for _, u := range []string{
		"", ":", "1764000100", "1764000100:", ":" + peerID, "abc:" + peerID,
		"-1764000100:" + peerID, "+1764000100:" + peerID, " 1764000100:" + peerID,
		"1764000100:" + peerID + ":x", "1764000100:peer id", "1764000100:pe\x00er",
		"1764000100:" + strings.Repeat("a", MaxPeerIDLen+1),
		"99999999999999999999:" + peerID, // 20 digits
		"9999999999999999999:" + peerID,  // > int64: ParseInt overflow
		"1764000100:ünïcode",
		peerID + ":1764000100",
	} {
		if _, _, err := Verify([]byte("k"), u, now, time.Hour); !errors.Is(err, ErrMalformed) {
			t.Errorf("%q: err %v, want ErrMalformed", u, err)
		}
	}
}

func FuzzParse(f *testing.F) {
	f.Add("1764086400:" + peerID)
	f.Add("1:a")
	f.Add("::")
	f.Add("18446744073709551616:x")
	f.Fuzz(func(t *testing.T, u string) {
		exp, id, err := Parse(u)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("untyped error %v", err)
			}
			return
		}
		if exp < 0 || id == "" || strings.ContainsAny(id, ": \x00") {
			t.Fatalf("Parse(%q) = %d %q", u, exp, id)
		}
		// Round trip through Issue's format (modulo leading zeros).
		if _, id2, err := Parse(strconv.FormatInt(exp, 10) + ":" + id); err != nil || id2 != id {
			t.Fatalf("re-parse %q: %v", u, err)
		}
	})
}

func TestShortConfiguredSecretRefused(t *testing.T) {
	if _, err := LoadOrCreateSecret(t.TempDir(), "fifteen bytes!!", zap.NewNop()); !errors.Is(err, ErrShortSecret) {
		t.Fatalf("15-byte secret: %v, want ErrShortSecret", err)
	}
}

// A link, a FIFO or any other non-regular file in turn_secret's place is
// refused without following it, reading it or changing its target; a
// wide-open file that is not a valid secret is refused before its mode is
// touched.
func TestSecretFileNotFollowed(t *testing.T) {
	valid := strings.Repeat("0f", SecretBytes) + "\n"
	cases := map[string]func(t *testing.T, dir, outside string){
		"symlink to a valid secret": func(t *testing.T, dir, outside string) {
			if err := os.Symlink(outside, filepath.Join(dir, SecretFile)); err != nil {
				t.Fatal(err)
			}
		},
		"dangling symlink": func(t *testing.T, dir, outside string) {
			if err := os.Symlink(outside+".missing", filepath.Join(dir, SecretFile)); err != nil {
				t.Fatal(err)
			}
		},
		"fifo": func(t *testing.T, dir, _ string) {
			if err := syscall.Mkfifo(filepath.Join(dir, SecretFile), 0o644); err != nil {
				t.Skip(err)
			}
		},
	}
	for name, setup := range cases {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			outside := filepath.Join(t.TempDir(), "victim")
			if err := os.WriteFile(outside, []byte(valid), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(outside, 0o644); err != nil {
				t.Fatal(err)
			}
			setup(t, dir, outside)
			done := make(chan error, 1)
			go func() {
				_, err := LoadOrCreateSecret(dir, "", zap.NewNop())
				done <- err
			}()
			select {
			case err := <-done:
				if !errors.Is(err, ErrBadSecretFile) {
					t.Fatalf("err %v, want ErrBadSecretFile", err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("LoadOrCreateSecret hangs")
			}
			fi, err := os.Stat(outside)
			if err != nil || fi.Mode().Perm() != 0o644 {
				t.Fatalf("link target mode changed: %v %v", fi.Mode(), err)
			}
			if fi, err := os.Lstat(filepath.Join(dir, SecretFile)); err != nil || fi.Mode().IsRegular() {
				t.Fatalf("the thing in turn_secret's place was replaced: %v %v", fi.Mode(), err)
			}
		})
	}
	t.Run("wide and invalid", func(t *testing.T) {
		dir := t.TempDir()
		path := filepath.Join(dir, SecretFile)
		if err := os.WriteFile(path, []byte("not a secret\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(path, 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := LoadOrCreateSecret(dir, "", zap.NewNop()); !errors.Is(err, ErrBadSecretFile) {
			t.Fatalf("err %v", err)
		}
		if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o644 {
			t.Fatalf("mode of a refused file changed to %#o", fi.Mode().Perm())
		}
	})
}
