package keyfile

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// LoadOrCreate returns the content of path. When the file does not exist it writes gen()'s
// there first, mode 0600, in its directory (created 0700): the key is written to a temporary
// file, synced, linked into place without replacing anything and the directory synced, so that
// a crash leaves either no key or the whole key, and of processes starting together exactly one
// key wins and all of them use it.
func LoadOrCreate(path string, gen func() ([]byte, error)) ([]byte, error) {
	raw, err := os.ReadFile(path)
	if err == nil {
		return raw, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("keyfile: read %s: %w", path, err)
	}
	key, err := gen()
	if err != nil {
		return nil, fmt.Errorf("keyfile: generate %s: %w", path, err)
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("keyfile: create %s: %w", dir, err)
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*.tmp")
	if err != nil {
		return nil, fmt.Errorf("keyfile: write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	_, werr := tmp.Write(key)
	if werr == nil {
		werr = tmp.Sync()
	}
	if cerr := tmp.Close(); werr == nil {
		werr = cerr
	}
	if werr != nil {
		return nil, fmt.Errorf("keyfile: write %s: %w", path, werr)
	}
	// Link, unlike rename, fails when path exists: a key another process wrote meanwhile is
	// kept, and used here too.
	if err := os.Link(tmp.Name(), path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			raw, rerr := os.ReadFile(path)
			if rerr != nil {
				return nil, fmt.Errorf("keyfile: read %s: %w", path, rerr)
			}
			return raw, nil
		}
		return nil, fmt.Errorf("keyfile: write %s: %w", path, err)
	}
	if err := syncDir(dir); err != nil {
		return nil, fmt.Errorf("keyfile: write %s: %w", path, err)
	}
	return key, nil
}

// syncDir makes a new directory entry durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	serr := d.Sync()
	if cerr := d.Close(); serr == nil {
		serr = cerr
	}
	return serr
}
