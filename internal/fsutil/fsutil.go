// Package fsutil writes the daemon's secret files (keypair, TURN secret):
// atomically, 0600, and never over an existing file.
package fsutil

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// WriteNew writes data to path atomically (temp file, fsync, link, fsync of
// the directory) with mode 0600. If path already exists it returns an error
// matching fs.ErrExist and leaves the file untouched.
func WriteNew(path string, data []byte) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*.tmp") // CreateTemp uses 0600
	if err != nil {
		return fmt.Errorf("create temp file in %s: %w", dir, err)
	}
	tmpName := tmp.Name()
	defer func() { _ = os.Remove(tmpName) }() // after link (or failure) the temp name is not needed
	if err := writeSync(tmp, data); err != nil {
		return fmt.Errorf("write %s: %w", tmpName, err)
	}
	// link(2) never replaces an existing file, unlike rename(2).
	if err := os.Link(tmpName, path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("%s: %w", path, fs.ErrExist)
		}
		// Some filesystems have no hard links; rename is still atomic, and
		// the window in which another writer could appear is tiny.
		if _, serr := os.Lstat(path); serr == nil {
			return fmt.Errorf("%s: %w", path, fs.ErrExist)
		}
		if err := os.Rename(tmpName, path); err != nil {
			return fmt.Errorf("save %s: %w", path, err)
		}
	}
	return syncDir(dir)
}

func writeSync(f *os.File, data []byte) error {
	_, err := f.Write(data)
	if err == nil {
		err = f.Chmod(0o600)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// syncDir makes the new directory entry durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("open %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil && !errors.Is(err, fs.ErrInvalid) {
		return fmt.Errorf("fsync %s: %w", dir, err)
	}
	return nil
}

// ErrWideDir: a directory is open to group or others and could not be
// tightened.
var ErrWideDir = errors.New("directory open to other users")

// EnsurePrivateDir creates dir (0700) if needed and tightens an existing
// one that group or others may enter or list, since it holds the relay's
// key and TURN secret. It returns the permissions it found when they were
// wider than 0700 (zero otherwise), so the caller can warn. A failed
// tightening returns those permissions and an error matching ErrWideDir;
// the directory is still usable. dir itself may be a link (a volume
// mount); the files inside are loaded without following links.
func EnsurePrivateDir(dir string) (wide fs.FileMode, err error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return 0, fmt.Errorf("create %s: %w", dir, err)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return 0, fmt.Errorf("stat %s: %w", dir, err)
	}
	if !fi.IsDir() {
		return 0, fmt.Errorf("%s: not a directory", dir)
	}
	perm := fi.Mode().Perm()
	if perm&0o077 == 0 {
		return 0, nil
	}
	if err := os.Chmod(dir, perm&0o700); err != nil {
		return perm, fmt.Errorf("%w: %s is %#o: %w", ErrWideDir, dir, perm, err)
	}
	return perm, nil
}
