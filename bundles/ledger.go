package bundles

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/open-policy-agent/opa/v1/bundle"

	"github.com/custodyhq/custody/pdp"
)

// MetadataSerial is the key, in the metadata of a bundle's .manifest, of its serial: a positive
// integer that orders signed bundles. The signature covers the manifest, so only the holder of
// the signing key can set it. Each new bundle takes a serial above every one served before, such
// as
//
//	{"revision": "2025-06-01.1", "metadata": {"custody_serial": 7}}
const MetadataSerial = "custody_serial"

// ErrRollback is returned, wrapped, for a bundle a Ledger refuses: its serial is missing, below
// the highest accepted, or equal to it with other content, or its revision names other content
// accepted before. Replaying an old signed bundle is the attack it stops.
var ErrRollback = errors.New("bundle rollback refused")

// Serial returns the MetadataSerial of b's manifest, or 0 when it has none. A value that is not
// a positive integer (a JSON number or a decimal string) is an error.
func Serial(b *bundle.Bundle) (uint64, error) {
	v, ok := b.Manifest.Metadata[MetadataSerial]
	if !ok || v == nil {
		return 0, nil
	}
	var (
		n   uint64
		err error
	)
	switch x := v.(type) {
	case json.Number:
		n, err = strconv.ParseUint(x.String(), 10, 64)
	case string:
		n, err = strconv.ParseUint(x, 10, 64)
	case float64:
		if x != math.Trunc(x) || x < 1 || x > 1<<53 {
			err = errors.New("not an integer")
		}
		n = uint64(x)
	case int:
		n = uint64(max(x, 0))
	case int64:
		n = uint64(max(x, 0))
	case uint64:
		n = x
	default:
		err = fmt.Errorf("a %T", v)
	}
	if err != nil || n == 0 {
		return 0, fmt.Errorf("manifest metadata %s %v: want a positive integer", MetadataSerial, v)
	}
	return n, nil
}

// LedgerEntry is one bundle a Ledger accepted.
type LedgerEntry struct {
	Serial   uint64 `json:"serial"`
	Revision string `json:"revision"`
	// Content is ContentHash of the policy set; Identity also covers the revision and manifest.
	Content  string    `json:"content"`
	Identity string    `json:"identity"`
	Source   string    `json:"source"`
	At       time.Time `json:"accepted_at"`
}

// Ledger remembers, in a file, the signed bundles accepted, so that none older can be served
// again, even after a restart. Bundles are ordered by their MetadataSerial. A bundle is
// admitted when its serial is above the highest accepted; or equal to it with the same identity
// (the same bundle loaded again, as at a restart); and its revision names no other content
// accepted before (a decision record names the revision: one revision, one policy).
//
// A bundle is recorded when admitted, before it is compiled: should the file not be written, the
// bundle is refused rather than served unrecorded, and a bundle that then fails to compile has
// used up its serial.
type Ledger struct {
	path string

	mu    sync.Mutex
	state ledgerState
}

type ledgerState struct {
	Accepted []LedgerEntry `json:"accepted"`
}

// OpenLedger reads the ledger at path, or starts an empty one when there is no file yet. A file
// that cannot be read is an error: starting empty would forget what was served.
func OpenLedger(path string) (*Ledger, error) {
	l := &Ledger{path: path}
	raw, err := os.ReadFile(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return l, nil
	case err != nil:
		return nil, fmt.Errorf("bundles: read ledger: %w", err)
	}
	if err := json.Unmarshal(raw, &l.state); err != nil {
		return nil, fmt.Errorf("bundles: read ledger %s: %w (restore it, or remove it to accept any signed serial again)", path, err)
	}
	return l, nil
}

// Highest returns the entry of the highest serial accepted, and false when none was.
func (l *Ledger) Highest() (LedgerEntry, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.highest()
}

func (l *Ledger) highest() (LedgerEntry, bool) {
	var top LedgerEntry
	for _, e := range l.state.Accepted {
		if e.Serial > top.Serial {
			top = e
		}
	}
	return top, top.Serial > 0
}

// Admit checks set against the bundles accepted before and, if it may be served, records it.
// The error wraps ErrRollback when set is refused for its order.
func (l *Ledger) Admit(set pdp.PolicySet, at time.Time) error {
	id, err := identity(set)
	if err != nil {
		return err
	}
	serial, err := Serial(set.Bundle)
	if err != nil {
		return fmt.Errorf("bundles: order %s: %w: %w", set.Source, ErrRollback, err)
	}
	if serial == 0 {
		return fmt.Errorf("bundles: order %s: %w: the signed manifest has no metadata.%s, so it cannot be told from an older bundle replayed; give each bundle a serial above the last one's", set.Source, ErrRollback, MetadataSerial)
	}
	content, err := ContentHash(set.Bundle, set.Source)
	if err != nil {
		return fmt.Errorf("bundles: hash %s: %w", set.Source, err)
	}
	e := LedgerEntry{Serial: serial, Revision: set.Revision, Content: content, Identity: digest(id), Source: set.Source, At: at.UTC()}

	l.mu.Lock()
	defer l.mu.Unlock()
	top, ok := l.highest()
	switch {
	case ok && serial < top.Serial:
		return fmt.Errorf("bundles: order %s: %w: serial %d (revision %s) is below serial %d (revision %s), the highest served", set.Source, ErrRollback, serial, set.Revision, top.Serial, top.Revision)
	case ok && serial == top.Serial && e.Identity != top.Identity:
		return fmt.Errorf("bundles: order %s: %w: serial %d (revision %s) was served before as revision %s with other content", set.Source, ErrRollback, serial, set.Revision, top.Revision)
	case ok && serial == top.Serial:
		return nil // the bundle serving before a restart, loaded again
	}
	for _, old := range l.state.Accepted {
		if old.Revision == set.Revision && old.Content != content {
			return fmt.Errorf("bundles: order %s: %w: revision %s was served before (serial %d) with other content; name each policy set by its own revision", set.Source, ErrRollback, set.Revision, old.Serial)
		}
	}
	next := ledgerState{Accepted: append(append([]LedgerEntry(nil), l.state.Accepted...), e)}
	if err := writeLedger(l.path, next); err != nil {
		return err
	}
	l.state = next
	return nil
}

func digest(s string) string {
	sum := sha256.Sum256([]byte(s))
	return "sha256:" + hex.EncodeToString(sum[:])
}

// writeLedger replaces the file at path with state, atomically and durably: a crash leaves the
// old ledger or the new one, never a torn one that would fail the next start.
func writeLedger(path string, state ledgerState) error {
	raw, err := json.MarshalIndent(state, "", "  ")
	if err != nil {
		return fmt.Errorf("bundles: write ledger: %w", err)
	}
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, ".tmp-"+filepath.Base(path)+"-*")
	if err != nil {
		return fmt.Errorf("bundles: write ledger: %w", err)
	}
	defer os.Remove(tmp.Name()) // after the rename, a no-op
	if _, err := tmp.Write(append(raw, '\n')); err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err == nil {
		err = syncDir(dir)
	}
	if err != nil {
		return fmt.Errorf("bundles: write ledger %s: %w", path, err)
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
