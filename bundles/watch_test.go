package bundles_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/custodyhq/custody/bundles"
	"github.com/custodyhq/custody/internal/bundletest"
	"github.com/custodyhq/custody/internal/natstest"
	"github.com/custodyhq/custody/pdp"
)

var t0 = time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)

// fakeClock is a clock a test moves by hand.
type fakeClock struct{ n atomic.Int64 }

func (c *fakeClock) now() time.Time         { return t0.Add(time.Duration(c.n.Load()) * time.Second) }
func (c *fakeClock) set(sec int64)          { c.n.Store(sec) }
func (c *fakeClock) at(sec int64) time.Time { return t0.Add(time.Duration(sec) * time.Second) }

func newReloader(t *testing.T, clock *fakeClock) (*pdp.Engine, *bundles.Reloader) {
	t.Helper()
	e, err := pdp.NewEmpty()
	if err != nil {
		t.Fatal(err)
	}
	return e, bundles.NewReloader(e, bundles.WithClock(clock.now))
}

func policyRego(reason string) string {
	return fmt.Sprintf("package custody.authz\n\ndecision := {\"allow\": true, \"reasons\": [%q]}\n", reason)
}

func write(t *testing.T, path, content string) {
	t.Helper()
	bundletest.WriteFile(t, path, []byte(content))
}

// writeInPlace rewrites path the way a careless deploy does: truncate, then write, no rename.
func writeInPlace(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestWatcherDirectory walks a policy directory through the changes an operator makes, polling
// by hand, and checks what serves and what the status says after each.
func TestWatcherDirectory(t *testing.T) {
	dir := t.TempDir()
	rego, manifest := filepath.Join(dir, "authz.rego"), filepath.Join(dir, ".manifest")
	write(t, rego, policyRego("first"))
	write(t, manifest, `{"revision": "r1"}`)

	clock := &fakeClock{}
	engine, r := newReloader(t, clock)
	w, err := bundles.NewWatcher(bundles.WatchConfig{Path: dir}, r)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Load(t.Context()); err != nil {
		t.Fatalf("first Load: %v", err)
	}

	type want struct {
		status  bundles.Status // LastError compared by errText
		errText string
	}
	steps := []struct {
		name   string
		change func(t *testing.T)
		polls  int
		want   want
	}{
		{
			name:  "first load",
			polls: 0,
			want:  want{status: bundles.Status{Revision: "r1", Source: dir, LoadedAt: clock.at(0)}},
		},
		{
			name:   "a change is not loaded at the poll that sees it",
			change: func(t *testing.T) { write(t, manifest, `{"revision": "r2"}`); write(t, rego, policyRego("second")) },
			polls:  1,
			want:   want{status: bundles.Status{Revision: "r1", Source: dir, LoadedAt: clock.at(0)}},
		},
		{
			name:  "but once it held still for a poll",
			polls: 1,
			want:  want{status: bundles.Status{Revision: "r2", Source: dir, LoadedAt: clock.at(2), Reloads: 1}},
		},
		{
			name: "a touch changes nothing",
			change: func(t *testing.T) {
				later := time.Now().Add(time.Hour)
				if err := os.Chtimes(rego, later, later); err != nil {
					t.Fatal(err)
				}
			},
			polls: 3,
			want:  want{status: bundles.Status{Revision: "r2", Source: dir, LoadedAt: clock.at(2), Reloads: 1}},
		},
		{
			name:   "nor does rewriting the same bytes",
			change: func(t *testing.T) { writeInPlace(t, rego, policyRego("second")) },
			polls:  3,
			want:   want{status: bundles.Status{Revision: "r2", Source: dir, LoadedAt: clock.at(2), Reloads: 1}},
		},
		{
			name:   "a file caught half written is refused and the old set serves",
			change: func(t *testing.T) { writeInPlace(t, rego, policyRego("third")[:30]) },
			polls:  2,
			want: want{
				status:  bundles.Status{Revision: "r2", Source: dir, LoadedAt: clock.at(2), Reloads: 1, Failures: 1, LastErrorAt: clock.at(5)},
				errText: "rego_parse_error",
			},
		},
		{
			name:  "and is not tried again until it changes",
			polls: 4,
			want: want{
				status:  bundles.Status{Revision: "r2", Source: dir, LoadedAt: clock.at(2), Reloads: 1, Failures: 1, LastErrorAt: clock.at(5)},
				errText: "rego_parse_error",
			},
		},
		{
			name: "once written in full it loads; the last error stays for the record",
			change: func(t *testing.T) {
				writeInPlace(t, rego, policyRego("third"))
				write(t, manifest, `{"revision": "r3"}`)
			},
			polls: 2,
			want: want{
				status:  bundles.Status{Revision: "r3", Source: dir, LoadedAt: clock.at(7), Reloads: 2, Failures: 1, LastErrorAt: clock.at(5)},
				errText: "rego_parse_error",
			},
		},
		{
			name:   "a policy that parses but does not compile is refused",
			change: func(t *testing.T) { write(t, rego, "package custody.authz\n\ndecision := undefined_function(1)\n") },
			polls:  2,
			want: want{
				status:  bundles.Status{Revision: "r3", Source: dir, LoadedAt: clock.at(7), Reloads: 2, Failures: 2, LastErrorAt: clock.at(8)},
				errText: "undefined function",
			},
		},
		{
			name:   "a removed directory is refused",
			change: func(t *testing.T) { os.RemoveAll(dir) },
			polls:  2,
			want: want{
				status:  bundles.Status{Revision: "r3", Source: dir, LoadedAt: clock.at(7), Reloads: 2, Failures: 3, LastErrorAt: clock.at(9)},
				errText: "no such file",
			},
		},
		{
			name: "and loads again when restored",
			change: func(t *testing.T) {
				if err := os.Mkdir(dir, 0o755); err != nil {
					t.Fatal(err)
				}
				write(t, rego, policyRego("fourth"))
				write(t, manifest, `{"revision": "r4"}`)
			},
			polls: 2,
			want: want{
				status:  bundles.Status{Revision: "r4", Source: dir, LoadedAt: clock.at(10), Reloads: 3, Failures: 3, LastErrorAt: clock.at(9)},
				errText: "no such file",
			},
		},
	}
	for i, st := range steps {
		clock.set(int64(i))
		if st.change != nil {
			st.change(t)
		}
		for range st.polls {
			w.Poll(t.Context())
		}
		got := r.Status()
		if diff := cmp.Diff(st.want.status, got, cmpopts.IgnoreFields(bundles.Status{}, "LastError")); diff != "" {
			t.Fatalf("step %d, %s: status (-want +got):\n%s", i, st.name, diff)
		}
		if !strings.Contains(got.LastError, st.want.errText) || (st.want.errText == "") != (got.LastError == "") {
			t.Fatalf("step %d, %s: last error %q, want one containing %q", i, st.name, got.LastError, st.want.errText)
		}
		if rev := engine.Policy().Revision; rev != got.Revision {
			t.Fatalf("step %d, %s: engine serves %q, status says %q", i, st.name, rev, got.Revision)
		}
	}
}

// TestWatcherTarball replaces a signed bundle file the two ways deploys do it, atomically and in
// place, with good, unsigned and half-written bundles.
func TestWatcherTarball(t *testing.T) {
	key := bundletest.ECKey(t)
	vc, err := (&bundles.VerifyConfig{Key: key.Verify, Algorithm: key.Alg}).Verification()
	if err != nil {
		t.Fatal(err)
	}
	signedBundle := func(rev string) []byte {
		b := bundletest.New(t, rev, []string{"custody"}, map[string]string{"authz.rego": policyRego(rev)}, nil)
		bundletest.Sign(t, &b, key, "default", "")
		return bundletest.Bytes(t, b)
	}
	path := filepath.Join(t.TempDir(), "bundle.tar.gz")
	bundletest.WriteFile(t, path, signedBundle("v1"))

	clock := &fakeClock{}
	engine, r := newReloader(t, clock)
	w, err := bundles.NewWatcher(bundles.WatchConfig{Path: path, LoadOptions: []bundles.LoadOption{bundles.WithVerification(vc)}}, r)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Load(t.Context()); err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		name         string
		write        func()
		wantRevision string
		wantFailures uint64
		errText      string
	}{
		{"renamed into place", func() { bundletest.WriteFile(t, path, signedBundle("v2")) }, "v2", 0, ""},
		{"unsigned", func() {
			bundletest.Write(t, bundletest.New(t, "v3", nil, map[string]string{"authz.rego": policyRego("v3")}, nil), path)
		}, "v2", 1, "missing .signatures.json"},
		{"half written in place", func() { raw := signedBundle("v4"); writeInPlace(t, path, string(raw[:len(raw)/2])) }, "v2", 2, "unexpected EOF"},
		{"written in full in place", func() { writeInPlace(t, path, string(signedBundle("v4"))) }, "v4", 2, "unexpected EOF"},
	}
	for _, st := range steps {
		st.write()
		w.Poll(t.Context())
		w.Poll(t.Context())
		got := r.Status()
		if got.Revision != st.wantRevision || engine.Policy().Revision != st.wantRevision || got.Failures != st.wantFailures || !strings.Contains(got.LastError, st.errText) {
			t.Fatalf("%s: status %+v, engine at %q; want revision %s, %d failures, last error containing %q",
				st.name, got, engine.Policy().Revision, st.wantRevision, st.wantFailures, st.errText)
		}
	}
}

// TestWatcherRunUnderLoad runs the watcher's own loop on a bundle file replaced by rename, while
// deciders hammer the engine and read the status: under -race this is the concurrency test of
// the swap. Each decider must see revisions only move forward, each decision made by the
// revision it names, and never a refused set.
func TestWatcherRunUnderLoad(t *testing.T) {
	path := filepath.Join(t.TempDir(), "bundle.tar.gz")
	writeRev := func(rev string) {
		bundletest.Write(t, bundletest.New(t, rev, nil, map[string]string{"authz.rego": policyRego(rev)}, nil), path)
	}
	writeRev("r1")
	engine, err := pdp.NewEmpty()
	if err != nil {
		t.Fatal(err)
	}
	r := bundles.NewReloader(engine)
	w, err := bundles.NewWatcher(bundles.WatchConfig{Path: path, PollInterval: 5 * time.Millisecond}, r)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Load(t.Context()); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	wg.Go(func() { _ = w.Run(ctx) })
	for range 4 {
		wg.Go(func() {
			last := 0
			for ctx.Err() == nil {
				d := engine.Decide(ctx, &pdp.Input{})
				if ctx.Err() != nil {
					return
				}
				var n int
				if _, err := fmt.Sscanf(d.Policy.Revision, "r%d", &n); err != nil || !d.Allow || d.Reasons[0] != d.Policy.Revision {
					t.Errorf("decision %+v: want an allow by the revision it names", d)
					return
				}
				if n < last {
					t.Errorf("revision went back from r%d to r%d", last, n)
					return
				}
				last = n
				_ = r.Status()
			}
		})
	}
	for i := 2; i <= 4; i++ {
		bundletest.WriteFile(t, path, []byte("not a tarball"))
		natstest.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
			if st := r.Status(); st.Failures < uint64(i-1) {
				return fmt.Errorf("status %+v: broken bundle not refused yet", st)
			}
			return nil
		})
		rev := fmt.Sprintf("r%d", i)
		writeRev(rev)
		natstest.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
			if got := engine.Policy().Revision; got != rev {
				return fmt.Errorf("serving %s, want %s", got, rev)
			}
			return nil
		})
	}
	cancel()
	wg.Wait()
	if st := r.Status(); st.Reloads != 3 || st.Failures != 3 {
		t.Fatalf("status %+v: want 3 reloads and 3 failures", st)
	}
}

// countingLoader is a Loader that fails on demand and counts what it loaded.
type countingLoader struct {
	loads int
	fail  error
}

func (l *countingLoader) Load(context.Context, pdp.PolicySet) error {
	if l.fail != nil {
		return l.fail
	}
	l.loads++
	return nil
}

// TestReloaderApply: a set identical to the serving one is not loaded again; a changed set, even
// under the same manifest revision, is.
func TestReloaderApply(t *testing.T) {
	l := &countingLoader{}
	r := bundles.NewReloader(l)
	set := func(rev, reason string) pdp.PolicySet {
		b := bundletest.New(t, rev, nil, map[string]string{"authz.rego": policyRego(reason)}, nil)
		return pdp.PolicySet{Bundle: &b, Revision: rev, Source: "test"}
	}
	steps := []struct {
		set         pdp.PolicySet
		fail        error
		wantChanged bool
		wantErr     bool
	}{
		{set: set("r1", "a"), wantChanged: true},
		{set: set("r1", "a")},
		{set: set("r1", "b"), wantChanged: true}, // same revision, other content: still served
		{set: set("r2", "b"), wantChanged: true}, // same content, relabelled
		{set: set("r3", "c"), fail: errors.New("does not compile"), wantErr: true},
		{set: set("r2", "b")},
	}
	for i, st := range steps {
		l.fail = st.fail
		changed, err := r.Apply(t.Context(), st.set)
		if changed != st.wantChanged || (err != nil) != st.wantErr {
			t.Fatalf("step %d: Apply = %v, %v; want %v, error %v", i, changed, err, st.wantChanged, st.wantErr)
		}
	}
	want := bundles.Status{Revision: "r2", Source: "test", Reloads: 2, Failures: 1, LastError: "does not compile"}
	if diff := cmp.Diff(want, r.Status(), cmpopts.IgnoreFields(bundles.Status{}, "LoadedAt", "LastErrorAt")); diff != "" {
		t.Fatalf("status (-want +got):\n%s", diff)
	}
	if l.loads != 3 {
		t.Fatalf("%d loads, want 3", l.loads)
	}
}

// TestWatcherSymlinkSwap: a multi-file policy set is replaced at once by pointing a symbolic link
// at a new directory (as a Kubernetes ConfigMap mount does); content-hash revisions do not
// depend on where the files are.
func TestWatcherSymlinkSwap(t *testing.T) {
	root := t.TempDir()
	for _, v := range []string{"v1", "v2"} {
		if err := os.Mkdir(filepath.Join(root, v), 0o755); err != nil {
			t.Fatal(err)
		}
		write(t, filepath.Join(root, v, "authz.rego"), policyRego(v))
		write(t, filepath.Join(root, v, "data.json"), fmt.Sprintf(`{"custody": {"version": %q}}`, v))
	}
	link := filepath.Join(root, "current")
	swap := func(target string) {
		tmp := link + ".tmp"
		if err := os.Symlink(target, tmp); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, link); err != nil {
			t.Fatal(err)
		}
	}
	swap("v1")
	engine, r := newReloader(t, &fakeClock{})
	w, err := bundles.NewWatcher(bundles.WatchConfig{Path: link}, r)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Load(t.Context()); err != nil {
		t.Fatal(err)
	}
	for _, v := range []string{"v1", "v2", "v1"} {
		swap(v)
		w.Poll(t.Context())
		w.Poll(t.Context())
		direct, err := bundles.Load(filepath.Join(root, v))
		if err != nil {
			t.Fatal(err)
		}
		d := engine.Decide(t.Context(), &pdp.Input{})
		if d.Reasons[0] != v || d.Policy.Revision != direct.Revision || d.Policy.Source != link {
			t.Fatalf("after pointing at %s: decision %+v; want reason %s, revision %s, source %s", v, d, v, direct.Revision, link)
		}
	}
	if st := r.Status(); st.Reloads != 2 || st.Failures != 0 {
		t.Fatalf("status %+v: want 2 reloads", st)
	}
}
