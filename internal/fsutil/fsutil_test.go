package fsutil

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
)

func TestWriteNew(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "secret")
	if err := WriteNew(path, []byte("one")); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v, %v", st.Mode(), err)
	}
	if err := WriteNew(path, []byte("two")); !errors.Is(err, fs.ErrExist) {
		t.Errorf("second write: %v, want fs.ErrExist", err)
	}
	if b, _ := os.ReadFile(path); string(b) != "one" {
		t.Errorf("file replaced: %q", b)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("temp files left: %v", entries)
	}
	if err := WriteNew(filepath.Join(dir, "missing", "x"), nil); err == nil {
		t.Error("write into a missing directory succeeded")
	}
}

func TestEnsurePrivateDir(t *testing.T) {
	base := t.TempDir()
	fresh := filepath.Join(base, "a", "b")
	if wide, err := EnsurePrivateDir(fresh); err != nil || wide != 0 {
		t.Fatalf("fresh: %v %v", wide, err)
	}
	if fi, _ := os.Stat(fresh); fi.Mode().Perm() != 0o700 {
		t.Fatalf("created with %#o", fi.Mode().Perm())
	}
	for _, mode := range []fs.FileMode{0o755, 0o777, 0o710, 0o701} {
		if err := os.Chmod(fresh, mode); err != nil {
			t.Fatal(err)
		}
		wide, err := EnsurePrivateDir(fresh)
		if err != nil || wide != mode {
			t.Fatalf("%#o: reported %#o, %v", mode, wide, err)
		}
		if fi, _ := os.Stat(fresh); fi.Mode().Perm() != 0o700 {
			t.Fatalf("%#o: left at %#o", mode, fi.Mode().Perm())
		}
	}
	// Narrower than 0700 is the operator's choice: left alone.
	if err := os.Chmod(fresh, 0o500); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.Chmod(fresh, 0o700) })
	if wide, err := EnsurePrivateDir(fresh); err != nil || wide != 0 {
		t.Fatalf("0500: %v %v", wide, err)
	}
	if fi, _ := os.Stat(fresh); fi.Mode().Perm() != 0o500 {
		t.Fatalf("0500 changed to %#o", fi.Mode().Perm())
	}
	file := filepath.Join(base, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := EnsurePrivateDir(file); err == nil {
		t.Fatal("a file accepted as directory")
	}
}
