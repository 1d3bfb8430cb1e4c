package bundles

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/custodyhq/custody/pdp"
)

// Loader makes a policy set the one that decides. *pdp.Engine implements it: it compiles the set
// beside the current one and swaps it in only if it compiles, so a refused set changes nothing.
type Loader interface {
	Load(ctx context.Context, set pdp.PolicySet) error
}

var _ Loader = (*pdp.Engine)(nil)

// Status is what an operator sees of the policy set: the one serving and the last attempt to
// replace it that failed. The JSON is the body of GET /v1/policy.
type Status struct {
	// Revision names the policy set serving: its manifest revision, else its content hash.
	// Empty while none is loaded.
	Revision string `json:"revision"`
	// Source is where the serving set came from: a path, or nats:<bucket>/<object>.
	Source string `json:"source"`
	// LoadedAt is when the serving set was swapped in.
	LoadedAt time.Time `json:"loaded_at,omitzero"`
	// LastError is why the last refused policy set was refused, and LastErrorAt when. They stay
	// after a later success: compare LastErrorAt with LoadedAt.
	LastError   string    `json:"last_error,omitempty"`
	LastErrorAt time.Time `json:"last_error_at,omitzero"`
	// Reloads counts policy sets swapped in after the first; Failures counts those refused.
	Reloads  uint64 `json:"reloads"`
	Failures uint64 `json:"failures"`
	// Rollbacks counts the refused sets the Ledger refused (ErrRollback), among Failures.
	Rollbacks uint64 `json:"rollbacks"`
}

// Reloader hands policy sets to a Loader one at a time and keeps the Status. Sources, the
// Watcher of a path and bundles/natsobj, feed it. It is safe for concurrent use.
type Reloader struct {
	loader Loader
	logger zerolog.Logger
	now    func() time.Time
	ledger *Ledger // nil: no order is kept

	applyMu sync.Mutex // one load at a time, in the order sources hand them over
	ident   string     // identity of the set serving, guarded by applyMu

	mu     sync.Mutex // guards status; never held across a compile, so Status never waits on one
	status Status
}

// ReloaderOption configures a Reloader.
type ReloaderOption func(*Reloader)

// WithLogger sets the logger. The default discards.
func WithLogger(l zerolog.Logger) ReloaderOption { return func(r *Reloader) { r.logger = l } }

// WithClock sets the clock that stamps loads and failures.
func WithClock(now func() time.Time) ReloaderOption { return func(r *Reloader) { r.now = now } }

// WithLedger makes the Reloader admit every policy set through l before loading it, refusing
// any that is not newer than those served (see Ledger). Give it only with signature
// verification: the order of unsigned bundles is whatever their writer says.
func WithLedger(l *Ledger) ReloaderOption { return func(r *Reloader) { r.ledger = l } }

// NewReloader returns a Reloader that loads into loader.
func NewReloader(loader Loader, opts ...ReloaderOption) *Reloader {
	r := &Reloader{loader: loader, logger: zerolog.Nop(), now: time.Now}
	for _, o := range opts {
		o(r)
	}
	r.logger = r.logger.With().Str("component", "bundles").Logger()
	return r
}

// Apply makes set the serving policy set, unless it is the very set already serving (same
// revision, manifest and content), which is left alone. It reports whether the loader swapped
// a set in. On error the previous set keeps serving and the failure is recorded.
func (r *Reloader) Apply(ctx context.Context, set pdp.PolicySet) (bool, error) {
	r.applyMu.Lock()
	defer r.applyMu.Unlock()
	id, err := identity(set)
	if err != nil {
		r.fail(set.Source, err)
		return false, err
	}
	if id == r.ident {
		r.logger.Debug().Str("revision", set.Revision).Str("source", set.Source).Msg("policy set unchanged")
		return false, nil
	}
	if r.ledger != nil {
		if err := r.ledger.Admit(set, r.now()); err != nil {
			r.fail(set.Source, err)
			return false, err
		}
	}
	if err := r.loader.Load(ctx, set); err != nil {
		r.fail(set.Source, err)
		return false, err
	}
	r.ident = id

	r.mu.Lock()
	prev := r.status.Revision
	first := r.status.LoadedAt.IsZero()
	r.status.Revision, r.status.Source, r.status.LoadedAt = set.Revision, set.Source, r.now().UTC()
	if !first {
		r.status.Reloads++
	}
	r.mu.Unlock()
	if !first {
		r.logger.Info().Str("from_revision", prev).Str("revision", set.Revision).Str("source", set.Source).Msg("policy set reloaded")
	}
	return true, nil
}

// Fail records that the policy set at source could not be read; the serving set stays.
func (r *Reloader) Fail(source string, err error) {
	r.fail(source, err)
}

func (r *Reloader) fail(source string, err error) {
	r.mu.Lock()
	r.status.LastError, r.status.LastErrorAt = err.Error(), r.now().UTC()
	r.status.Failures++
	rollback := errors.Is(err, ErrRollback)
	if rollback {
		r.status.Rollbacks++
	}
	serving := r.status.Revision
	r.mu.Unlock()
	r.logger.Error().Err(err).Str("source", source).Str("serving_revision", serving).Bool("rollback", rollback).Msg("policy set refused")
}

// Status returns the current status.
func (r *Reloader) Status() Status {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.status
}

// identity tells one policy set from another: revision, manifest (roots and all) and content.
func identity(set pdp.PolicySet) (string, error) {
	if set.Bundle == nil {
		return "", fmt.Errorf("bundles: policy set %s: %w: no bundle", set.Source, ErrLoad)
	}
	content, err := ContentHash(set.Bundle, set.Source)
	if err != nil {
		return "", fmt.Errorf("bundles: hash %s: %w", set.Source, err)
	}
	manifest, err := json.Marshal(set.Bundle.Manifest)
	if err != nil {
		return "", fmt.Errorf("bundles: hash %s manifest: %w", set.Source, err)
	}
	return set.Revision + "\n" + content + "\n" + string(manifest), nil
}

// DefaultPollInterval is how often a Watcher looks at its path.
const DefaultPollInterval = time.Second

// WatchConfig says what a Watcher watches.
type WatchConfig struct {
	// Path is a policy directory or bundle .tar.gz, as for Load.
	Path string
	// PollInterval is how often the path is looked at. Default DefaultPollInterval.
	PollInterval time.Duration
	// LoadOptions are passed to Load, such as WithVerification.
	LoadOptions []LoadOption
}

// SetDefaults fills unset fields.
func (c *WatchConfig) SetDefaults() {
	if c.PollInterval == 0 {
		c.PollInterval = DefaultPollInterval
	}
}

// Validate reports the first field that cannot work.
func (c *WatchConfig) Validate() error {
	switch {
	case c.Path == "":
		return errors.New("bundles: watch config: path is required")
	case c.PollInterval <= 0:
		return errors.New("bundles: watch config: poll interval must be positive")
	}
	return nil
}

// Watcher reloads a policy directory or bundle file when it changes.
//
// It polls: each interval it stats the path (every file under it, for a directory, following
// symbolic links the way a Kubernetes ConfigMap mount swaps them) and hashes the content of each
// file whose size or modification time changed, or that was modified too recently for those to
// be trusted (a same-size rewrite within one timestamp tick). Unchanged files are not read
// again, and a touch changes nothing. fsnotify is not in the module graph, and polling a handful
// of files once a second costs little, works on every file system (network and bind mounts,
// ConfigMaps) and needs no care for the events editors and `mv` produce.
//
// A change is loaded once the path has held still for one interval, so a file caught half
// written is usually not even tried; one that is tried fails to load, is refused, and is not
// tried again until it changes. A set identical to the serving one does not swap the engine.
type Watcher struct {
	cfg WatchConfig
	r   *Reloader

	// Owned by the goroutine that calls Load, then Run.
	tried fingerprint          // the state of the path last loaded or refused
	seen  fingerprint          // the state of the path at the previous poll
	files map[string]fileState // the files at the previous poll
}

// NewWatcher returns a Watcher of cfg.Path that hands what it loads to r.
func NewWatcher(cfg WatchConfig, r *Reloader) (*Watcher, error) {
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Watcher{cfg: cfg, r: r}, nil
}

// Load loads the policy set at the path now. Call it once before Run: its error is the one that
// should stop a server from starting.
func (w *Watcher) Load(ctx context.Context) error {
	fp := w.fingerprint()
	w.tried, w.seen = fp, fp
	return w.load(ctx)
}

// Run polls the path until ctx is done, reloading it when it changes. It returns nil.
func (w *Watcher) Run(ctx context.Context) error {
	t := time.NewTicker(w.cfg.PollInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			w.Poll(ctx)
		}
	}
}

// Poll looks at the path once and loads it if it changed and then held still since the last
// poll. Run calls it; tests may call it directly instead of Run.
func (w *Watcher) Poll(ctx context.Context) {
	fp := w.fingerprint()
	prev := w.seen
	w.seen = fp
	if fp == w.tried || fp != prev {
		return // unchanged, or still changing
	}
	w.tried = fp
	w.r.logger.Debug().Str("source", w.cfg.Path).Msg("policy set changed")
	_ = w.load(ctx) // recorded in the status and logged by the Reloader
}

func (w *Watcher) load(ctx context.Context) error {
	set, err := Load(w.cfg.Path, w.cfg.LoadOptions...)
	if err != nil {
		w.r.Fail(w.cfg.Path, err)
		return err
	}
	_, err = w.r.Apply(ctx, set)
	return err
}

// fingerprint is a digest of the names and contents of the files at a path, or of the error
// that kept them from being read.
type fingerprint string

// fileState is what a Watcher remembers of a file between polls, to hash only what may have
// changed.
type fileState struct {
	size     int64
	modTime  time.Time
	hashedAt time.Time
	sum      [sha256.Size]byte
}

// recentWindow is far above any file system's timestamp granularity. A file whose content was
// hashed more than recentWindow after its modification time cannot change again without a new
// modification time or size; a file modified more recently than that can (a rewrite of the same
// size within one timestamp tick), so it is hashed again at each poll.
const recentWindow = 2 * time.Second

// fingerprint digests the files at the path: the contents of files that may have changed since
// the last poll are read and hashed, the others are taken from the last poll.
func (w *Watcher) fingerprint() fingerprint {
	now := time.Now()
	next := make(map[string]fileState, len(w.files))
	h := sha256.New()
	add := func(path string, fi fs.FileInfo) error {
		st, ok := w.files[path]
		if !ok || st.size != fi.Size() || !st.modTime.Equal(fi.ModTime()) || st.hashedAt.Sub(st.modTime) <= recentWindow {
			sum, err := hashFile(path)
			if err != nil {
				return err
			}
			st = fileState{size: fi.Size(), modTime: fi.ModTime(), hashedAt: now, sum: sum}
		}
		next[path] = st
		fmt.Fprintf(h, "%q %x\n", path, st.sum)
		return nil
	}
	err := walk(w.cfg.Path, add)
	w.files = next
	if err != nil {
		return fingerprint("error: " + err.Error())
	}
	return fingerprint(hex.EncodeToString(h.Sum(nil)))
}

// walk calls f for path if it is a file, else for every file under it in lexical order,
// following symbolic links.
func walk(path string, f func(string, fs.FileInfo) error) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return f(path, fi)
	}
	root, err := filepath.EvalSymlinks(path) // as Load reads it: a swapped link is a change
	if err != nil {
		return err
	}
	return filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		fi, err := os.Stat(p) // follow links
		if err != nil || fi.IsDir() {
			return err
		}
		return f(p, fi)
	})
}

func hashFile(path string) ([sha256.Size]byte, error) {
	var sum [sha256.Size]byte
	f, err := os.Open(path)
	if err != nil {
		return sum, err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return sum, err
	}
	copy(sum[:], h.Sum(nil))
	return sum, nil
}
