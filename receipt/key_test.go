package receipt_test

import (
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/custodyhq/custody/receipt"
)

// TestLoadOrCreateKeyOnce: instances starting together on one data dir all sign with the key
// that is on disk. Once each could generate its own and the last write won, so the others
// signed receipts with a key no one could find again.
func TestLoadOrCreateKeyOnce(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keys", "receipt.jwk")
	const n = 8
	ids := make([]string, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Go(func() {
			<-start
			k, err := receipt.LoadOrCreateKey(path)
			if err != nil {
				t.Error(err)
				return
			}
			ids[i], _ = k.KeyID()
		})
	}
	close(start)
	wg.Wait()
	onDisk, err := receipt.LoadOrCreateKey(path)
	if err != nil {
		t.Fatal(err)
	}
	id, _ := onDisk.KeyID()
	want := make([]string, n)
	for i := range want {
		want[i] = id
	}
	if diff := cmp.Diff(want, ids); diff != "" {
		t.Errorf("key IDs (-on disk +returned):\n%s", diff)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("key file mode %v, %v; want 0600", fi.Mode().Perm(), err)
	}
}
