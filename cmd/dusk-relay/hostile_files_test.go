package main

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// TestHostileFilesSecretLink: whoever can write into the data directory
// puts a link (or a FIFO) where turn_secret belongs, pointing at a file the
// relay must not touch. The daemon refuses to start, naming turn_secret,
// and leaves the target's mode and content as they were.
//
// Before: the file was opened through the link, and its target chmod-ed
// to 0600 before its content was even checked (a valid-looking target
// was then used as the TURN secret).
func TestHostileFilesSecretLink(t *testing.T) {
	cases := map[string]struct {
		content string
		fifo    bool
	}{
		"link to a foreign file":   {content: "root:x:0:0:root:/root:/bin/sh\n"},
		"link to a valid secret":   {content: strings.Repeat("ab", 32) + "\n"},
		"fifo in turn_secret slot": {fifo: true},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			secret := filepath.Join(dir, "turn_secret")
			victim := filepath.Join(t.TempDir(), "victim")
			if tc.fifo {
				if err := syscall.Mkfifo(secret, 0o644); err != nil {
					t.Skip(err)
				}
			} else {
				if err := os.WriteFile(victim, []byte(tc.content), 0o644); err != nil {
					t.Fatal(err)
				}
				if err := os.Chmod(victim, 0o644); err != nil {
					t.Fatal(err)
				}
				if err := os.Symlink(victim, secret); err != nil {
					t.Fatal(err)
				}
			}
			code, _, stderr := runChild(t, testEnv(dir)) // runChild fails the test on a hang
			if code == 0 {
				t.Fatalf("daemon started with turn_secret a %s", name)
			}
			if !strings.Contains(stderr, "turn_secret") {
				t.Errorf("error does not name turn_secret: %s", stderr)
			}
			if tc.fifo {
				return
			}
			fi, err := os.Stat(victim)
			if err != nil || fi.Mode().Perm() != 0o644 {
				t.Errorf("link target's mode changed: %v %v", fi.Mode(), err)
			}
			if b, _ := os.ReadFile(victim); string(b) != tc.content {
				t.Errorf("link target's content changed")
			}
			if fi, err := os.Lstat(secret); err != nil || fi.Mode()&os.ModeSymlink == 0 {
				t.Errorf("the link was replaced: %v %v", fi.Mode(), err)
			}
		})
	}
}

// TestHostileFilesWideDataDir: a data directory others may enter (0755,
// as a umask or a careless mkdir leaves it) holding the keypair and TURN
// secret is tightened to 0700 at start, with a warning naming it.
func TestHostileFilesWideDataDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	d := startDaemon(t, testEnv(dir))
	fi, err := os.Stat(dir)
	if err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("data dir mode %v after start, want 0700 (%v)", fi.Mode().Perm(), err)
	}
	if !d.hasLog("data directory was open to other users") {
		t.Errorf("no warning about the data directory")
	}
	for _, f := range []string{"keypair", "turn_secret"} {
		if fi, err := os.Stat(filepath.Join(dir, f)); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v %v", f, fi.Mode(), err)
		}
	}
	assertServing(t, d)
}

// TestHostileFilesShortSecret: a DUSK_TURN_SECRET anyone could guess (here
// 7 bytes) stops the daemon with exit 2 and a message naming the variable
// but not repeating the secret; 16 bytes start it.
func TestHostileFilesShortSecret(t *testing.T) {
	code, _, stderr := runChild(t, append(testEnv(t.TempDir()), "DUSK_TURN_SECRET=hunter2"))
	if code != 2 || !strings.Contains(stderr, "DUSK_TURN_SECRET") || strings.Contains(stderr, "hunter2") {
		t.Fatalf("short secret: exit %d, stderr %q; want exit 2 naming DUSK_TURN_SECRET without the secret", code, stderr)
	}
	d := startDaemon(t, append(testEnv(t.TempDir()), "DUSK_TURN_SECRET=0123456789abcdef"))
	assertServing(t, d)
}
