package natsobj_test

import (
	"context"
	"crypto/rand"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/custodyhq/custody/bundles"
	"github.com/custodyhq/custody/bundles/natsobj"
	"github.com/custodyhq/custody/internal/bundletest"
	"github.com/custodyhq/custody/internal/natstest"
	"github.com/custodyhq/custody/pdp"
)

func policyRego(rev string) string {
	return fmt.Sprintf("package custody.authz\n\ndecision := {\"allow\": true, \"reasons\": [%q]}\n", rev)
}

// signedBundle is a bundle of revision rev, signed with key unless key is nil.
func signedBundle(t *testing.T, rev string, key *bundletest.Key) []byte {
	t.Helper()
	b := bundletest.New(t, rev, []string{"custody"}, map[string]string{"authz.rego": policyRego(rev)}, nil)
	if key != nil {
		bundletest.Sign(t, &b, *key, "default", "")
	}
	return bundletest.Bytes(t, b)
}

func connect(t *testing.T, url string) jetstream.JetStream {
	t.Helper()
	nc, err := nats.Connect(url, nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

// instance is one custody instance's policy machinery: an engine fed by a watcher of the bucket.
type instance struct {
	engine *pdp.Engine
	r      *bundles.Reloader
	w      *natsobj.Watcher
}

func startInstance(t *testing.T, js jetstream.JetStream, cfg natsobj.Config) *instance {
	t.Helper()
	store, err := natsobj.Bucket(t.Context(), js, cfg)
	if err != nil {
		t.Fatal(err)
	}
	engine, err := pdp.NewEmpty()
	if err != nil {
		t.Fatal(err)
	}
	in := &instance{engine: engine, r: bundles.NewReloader(engine)}
	in.w, err = natsobj.NewWatcher(store, cfg, in.r)
	if err != nil {
		t.Fatal(err)
	}
	if err := in.w.Load(t.Context()); err != nil {
		t.Fatalf("Load: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = in.w.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return in
}

// waitFor polls the instances' status until check accepts each.
func waitFor(t *testing.T, what string, check func(bundles.Status) bool, ins ...*instance) {
	t.Helper()
	natstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		for i, in := range ins {
			if st := in.r.Status(); !check(st) {
				return fmt.Errorf("instance %d: status %+v: want %s", i, st, what)
			}
		}
		return nil
	})
}

func serving(rev string, failures uint64) func(bundles.Status) bool {
	return func(st bundles.Status) bool { return st.Revision == rev && st.Failures == failures }
}

// TestFleetFollowsPushes: two watchers of one bucket, each with its own engine, start before
// anything is pushed, then follow every good push and refuse, together, every bad one (unsigned,
// not a bundle, too large), the previous revision serving on.
func TestFleetFollowsPushes(t *testing.T) {
	ns := natstest.Start(t)
	js := connect(t, ns.ClientURL())
	key := bundletest.RSAKey(t)
	vc, err := (&bundles.VerifyConfig{Key: key.Verify}).Verification()
	if err != nil {
		t.Fatal(err)
	}
	cfg := natsobj.Config{Bucket: "policies-test", MaxBytes: 64 << 10, RetryInterval: 50 * time.Millisecond,
		LoadOptions: []bundles.LoadOption{bundles.WithVerification(vc)}}
	a, b := startInstance(t, js, cfg), startInstance(t, js, cfg)
	for _, in := range []*instance{a, b} {
		if st := in.r.Status(); st.Revision != "" || in.engine.Policy().Revision != "" {
			t.Fatalf("before any push: status %+v, engine %+v", st, in.engine.Policy())
		}
	}
	store, err := natsobj.Bucket(t.Context(), js, cfg)
	if err != nil {
		t.Fatal(err)
	}
	push := func(raw []byte, rev string) {
		t.Helper()
		if _, err := natsobj.Push(t.Context(), store, cfg, raw, rev); err != nil {
			t.Fatal(err)
		}
	}
	large := make([]byte, 100<<10)
	_, _ = rand.Read(large)

	push(signedBundle(t, "v1", &key), "v1")
	waitFor(t, "v1 serving", serving("v1", 0), a, b)
	push(signedBundle(t, "v2", &key), "v2")
	waitFor(t, "v2 serving", serving("v2", 0), a, b)
	push(signedBundle(t, "v3", nil), "v3")
	waitFor(t, "unsigned v3 refused", serving("v2", 1), a, b)
	push([]byte("not a bundle"), "junk")
	waitFor(t, "junk refused", serving("v2", 2), a, b)
	push(large, "large")
	waitFor(t, "large object refused", serving("v2", 3), a, b)
	push(signedBundle(t, "v4", &key), "v4")
	waitFor(t, "v4 serving", serving("v4", 3), a, b)
	if err := store.Delete(t.Context(), natsobj.DefaultObject); err != nil {
		t.Fatal(err)
	}
	push(signedBundle(t, "v5", &key), "v5")
	waitFor(t, "v5 serving after a delete", serving("v5", 3), a, b)

	for _, in := range []*instance{a, b} {
		d := in.engine.Decide(t.Context(), &pdp.Input{})
		if !d.Allow || d.Policy.Revision != "v5" || d.Reasons[0] != "v5" {
			t.Fatalf("decision %+v: want an allow by v5", d)
		}
		if st := in.r.Status(); st.Reloads != 3 || !strings.Contains(st.LastError, "bundle too large") {
			t.Fatalf("status %+v: want 3 reloads and the last error about size", st)
		}
	}
	info, err := store.GetInfo(t.Context(), natsobj.DefaultObject)
	if err != nil {
		t.Fatal(err)
	}
	if got := info.Metadata[natsobj.MetadataRevision]; got != "v5" {
		t.Fatalf("object metadata revision %q, want v5", got)
	}
}

// TestWatcherLoadsOnStart: a bundle already in the bucket is serving when Load returns.
func TestWatcherLoadsOnStart(t *testing.T) {
	ns := natstest.Start(t)
	js := connect(t, ns.ClientURL())
	cfg := natsobj.Config{}
	store, err := natsobj.Bucket(t.Context(), js, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := natsobj.Push(t.Context(), store, cfg, signedBundle(t, "v1", nil), "v1"); err != nil {
		t.Fatal(err)
	}
	in := startInstance(t, js, cfg)
	if got := in.engine.Policy(); got.Revision != "v1" || got.Source != "nats:custody-bundles/bundle.tar.gz" {
		t.Fatalf("after Load: policy %+v, want v1 from nats:custody-bundles/bundle.tar.gz", got)
	}
}

// TestWatcherSurvivesNATSRestart: a push made after the NATS server restarted still reaches the
// watcher, by its resync while the watch's consumer is still finding out (its idle heartbeat
// is 5s).
func TestWatcherSurvivesNATSRestart(t *testing.T) {
	dir := t.TempDir()
	ns := natstest.StartAt(t, "127.0.0.1:0", dir)
	addr := ns.Addr().String()
	js := connect(t, ns.ClientURL())
	cfg := natsobj.Config{RetryInterval: 50 * time.Millisecond, ResyncInterval: 100 * time.Millisecond}
	in := startInstance(t, js, cfg)
	store, err := natsobj.Bucket(t.Context(), js, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := natsobj.Push(t.Context(), store, cfg, signedBundle(t, "v1", nil), "v1"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "v1 serving", serving("v1", 0), in)

	natstest.Shutdown(ns)
	natstest.StartAt(t, addr, dir)
	natstest.CheckFor(t, 20*time.Second, 50*time.Millisecond, func() error {
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		defer cancel()
		_, err := natsobj.Push(ctx, store, cfg, signedBundle(t, "v2", nil), "v2")
		return err
	})
	waitFor(t, "v2 serving after the restart", serving("v2", 0), in)
}

// TestBucketRace: instances starting together all open the one bucket.
func TestBucketRace(t *testing.T) {
	ns := natstest.Start(t)
	js := connect(t, ns.ClientURL())
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			if _, err := natsobj.Bucket(t.Context(), js, natsobj.Config{Bucket: "raced"}); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name    string
		cfg     natsobj.Config
		errText string
	}{
		{name: "defaults", cfg: natsobj.Config{}},
		{name: "replicas", cfg: natsobj.Config{Replicas: 7}, errText: "replicas"},
		{name: "max bytes", cfg: natsobj.Config{MaxBytes: -1}, errText: "max bytes"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := tc.cfg
			cfg.SetDefaults()
			err := cfg.Validate()
			if (tc.errText == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.errText)) {
				t.Fatalf("Validate: %v, want error containing %q", err, tc.errText)
			}
		})
	}
}
