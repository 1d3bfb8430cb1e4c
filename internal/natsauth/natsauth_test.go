package natsauth_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/custodyhq/custody/decisionlog"
	"github.com/custodyhq/custody/internal/embeddednats"
	"github.com/custodyhq/custody/internal/natsauth"
	"github.com/custodyhq/custody/internal/natstest"
)

// fixture is an embedded server in operator mode with a CUSTODY stream holding one record,
// written by custody's own (service) connection.
type fixture struct {
	ns    *server.Server
	trust *natsauth.Trust
	keys  string
	js    jetstream.JetStream // the service connection
}

func start(t *testing.T) *fixture {
	t.Helper()
	dir := t.TempDir()
	keys := filepath.Join(dir, "nats")
	trust, err := natsauth.LoadOrCreate(keys)
	if err != nil {
		t.Fatal(err)
	}
	ns, err := embeddednats.Start(embeddednats.Config{Listen: "127.0.0.1:0", StoreDir: filepath.Join(dir, "js"), Accounts: trust})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	creds, err := trust.Creds(natsauth.RoleService, "test service")
	if err != nil {
		t.Fatal(err)
	}
	jwtStr, seed, err := natsauth.JWTAndSeed(creds)
	if err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect("", nats.InProcessServer(ns), nats.UserJWTAndSeed(jwtStr, seed), nats.CustomInboxPrefix(natsauth.ServiceInboxPrefix))
	if err != nil {
		t.Fatalf("service connection: %v", err)
	}
	t.Cleanup(nc.Close)
	js, _ := jetstream.New(nc)
	ctx := t.Context()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{
		Name: decisionlog.StreamName, Subjects: []string{decisionlog.StreamSubjects},
		Storage: jetstream.FileStorage, Discard: jetstream.DiscardNew, DenyDelete: true, DenyPurge: true,
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(ctx, "custody.decision.allow.a.t.c1", []byte(`{"schema":"custody.decision.v1"}`)); err != nil {
		t.Fatal(err)
	}
	return &fixture{ns: ns, trust: trust, keys: keys, js: js}
}

// connect dials the TCP listener with a credential of role ("" for none), and collects the
// permission violations the server reports.
func (f *fixture) connect(t *testing.T, role natsauth.Role) (*nats.Conn, *violations, error) {
	t.Helper()
	v := &violations{}
	opts := []nats.Option{nats.Timeout(2 * time.Second), nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { v.add(err) })}
	if role != "" {
		path := filepath.Join(t.TempDir(), string(role)+".creds")
		if err := f.trust.WriteCreds(path, role, "test "+string(role), false); err != nil {
			t.Fatal(err)
		}
		opts = append(opts, nats.UserCredentials(path))
	}
	nc, err := nats.Connect(f.ns.ClientURL(), opts...)
	if err == nil {
		t.Cleanup(nc.Close)
	}
	return nc, v, err
}

type violations struct {
	mu   sync.Mutex
	errs []string
}

func (v *violations) add(err error) { v.mu.Lock(); v.errs = append(v.errs, err.Error()); v.mu.Unlock() }

// TestAnonymousClientsAreRefused is what an anonymous local process meets on the listener: no
// connection at all, so no stream rm, edit or pub.
func TestAnonymousClientsAreRefused(t *testing.T) {
	f := start(t)
	_, _, err := f.connect(t, "")
	if err == nil || !strings.Contains(strings.ToLower(err.Error()), "authorization") {
		t.Fatalf("anonymous connect: err = %v, want an authorization violation", err)
	}
	// A user credential of some other operator's account is refused too.
	other, err := natsauth.LoadOrCreate(filepath.Join(t.TempDir(), "other"))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "forged.creds")
	if err := other.WriteCreds(path, natsauth.RoleService, "forged", false); err != nil {
		t.Fatal(err)
	}
	if nc, err := nats.Connect(f.ns.ClientURL(), nats.UserCredentials(path), nats.Timeout(2*time.Second)); err == nil {
		nc.Close()
		t.Fatal("a credential signed by another operator's account connected")
	}
}

// TestReaderReadsAndChangesNothing tries, with the reader credential, every call that would
// erase, rewrite or forge the record, then checks the stream is exactly as before.
func TestReaderReadsAndChangesNothing(t *testing.T) {
	f := start(t)
	nc, v, err := f.connect(t, natsauth.RoleReader)
	if err != nil {
		t.Fatalf("reader connect: %v", err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	js, _ := jetstream.New(nc)

	// What a reader is for: core subscriptions, stream info, ordered consumers.
	sub, err := nc.SubscribeSync("custody.>")
	if err != nil {
		t.Fatal(err)
	}
	stream, err := js.Stream(ctx, decisionlog.StreamName)
	if err != nil {
		t.Fatalf("reader stream info: %v", err)
	}
	before, err := stream.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	cons, err := stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatalf("reader ordered consumer: %v", err)
	}
	msg, err := cons.Next(jetstream.FetchMaxWait(5 * time.Second))
	if err != nil {
		t.Fatalf("reader read: %v", err)
	}
	if msg.Subject() != "custody.decision.allow.a.t.c1" {
		t.Fatalf("reader read %s", msg.Subject())
	}
	if _, err := stream.GetMsg(ctx, 1); err != nil {
		t.Fatalf("reader get message: %v", err)
	}
	// The service's records appear to a live reader, the reader's own forgeries do not.
	if _, err := f.js.Publish(ctx, "custody.decision.deny.a.t.c2", []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	if m, err := sub.NextMsg(5 * time.Second); err != nil || m.Subject != "custody.decision.deny.a.t.c2" {
		t.Fatalf("reader subscription: %v %v", m, err)
	}
	before.State.Msgs++ // the one just published

	// Each attempt is refused by the server, which reports the subject it would not accept as an
	// asynchronous permission violation; a request then only times out, so they run together.
	s := decisionlog.StreamName
	attacks := []struct {
		name, denied string
		do           func(context.Context) error
	}{
		{"nats pub custody.decision", "custody.decision.allow.forged.t.c3", func(context.Context) error {
			return nc.Publish("custody.decision.allow.forged.t.c3", []byte(`{}`))
		}},
		{"js publish custody.decision", "custody.decision.allow.forged.t.c4", func(c context.Context) error {
			_, err := js.Publish(c, "custody.decision.allow.forged.t.c4", []byte(`{}`))
			return err
		}},
		{"stream rm", "$JS.API.STREAM.DELETE." + s, func(c context.Context) error { return js.DeleteStream(c, s) }},
		{"stream purge", "$JS.API.STREAM.PURGE." + s, func(c context.Context) error { return stream.Purge(c) }},
		{"stream edit --max-msgs 1", "$JS.API.STREAM.UPDATE." + s, func(c context.Context) error {
			cfg := before.Config
			cfg.MaxMsgs = 1
			_, err := js.UpdateStream(c, cfg)
			return err
		}},
		{"message delete", "$JS.API.STREAM.MSG.DELETE." + s, func(c context.Context) error { return stream.DeleteMsg(c, 1) }},
		{"create a look-alike stream", "$JS.API.STREAM.CREATE.EVIL", func(c context.Context) error {
			_, err := js.CreateStream(c, jetstream.StreamConfig{Name: "EVIL", Subjects: []string{"evil.>"}})
			return err
		}},
		{"object store create", "$JS.API.STREAM.CREATE.OBJ_" + natsauth.BundleBucket, func(c context.Context) error {
			_, err := js.CreateObjectStore(c, jetstream.ObjectStoreConfig{Bucket: natsauth.BundleBucket})
			return err
		}},
		{"raw object chunk", "$O." + natsauth.BundleBucket + ".C.x", func(context.Context) error {
			return nc.Publish("$O."+natsauth.BundleBucket+".C.x", []byte("allow-all"))
		}},
	}
	var wg sync.WaitGroup
	for _, a := range attacks {
		wg.Go(func() {
			c, cancel := context.WithTimeout(ctx, 2*time.Second)
			defer cancel()
			if err := a.do(c); err == nil && !strings.HasPrefix(a.denied, "custody.") && !strings.HasPrefix(a.denied, "$O.") {
				t.Errorf("%s: succeeded with the reader credential", a.name)
			}
		})
	}
	wg.Wait()
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	natstest.CheckFor(t, 5*time.Second, 50*time.Millisecond, func() error {
		v.mu.Lock()
		got := strings.Join(v.errs, "\n")
		v.mu.Unlock()
		for _, a := range attacks {
			if !strings.Contains(got, "Permissions Violation for Publish to \""+a.denied+"\"") {
				return fmt.Errorf("%s: no permission violation for %s; got:\n%s", a.name, a.denied, got)
			}
		}
		return nil
	})

	after, err := f.js.Stream(ctx, decisionlog.StreamName)
	if err != nil {
		t.Fatalf("stream gone after the reader's attempts: %v", err)
	}
	ai, err := after.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if ai.State.Msgs != before.State.Msgs || !ai.Created.Equal(before.Created) || ai.Config.MaxMsgs != before.Config.MaxMsgs ||
		ai.Config.MaxAge != before.Config.MaxAge || !ai.Config.DenyDelete || !ai.Config.DenyPurge {
		t.Fatalf("stream changed by a reader: before %+v\nafter %+v", before.State, ai.State)
	}
	if _, err := f.js.Stream(ctx, "EVIL"); !errors.Is(err, jetstream.ErrStreamNotFound) {
		t.Errorf("look-alike stream: err = %v, want not found", err)
	}
}

// TestBundlePusherWritesOnlyBundles: the pusher may replace the bundle object and cannot touch
// the record.
func TestBundlePusherWritesOnlyBundles(t *testing.T) {
	f := start(t)
	nc, _, err := f.connect(t, natsauth.RoleBundlePusher)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	js, _ := jetstream.New(nc)
	obs, err := js.CreateObjectStore(ctx, jetstream.ObjectStoreConfig{Bucket: natsauth.BundleBucket})
	if err != nil {
		t.Fatalf("pusher creates the bundle bucket: %v", err)
	}
	for range 2 { // the second put replaces the first, purging its chunks
		if _, err := obs.PutBytes(ctx, "bundle.tar.gz", []byte("bundle bytes")); err != nil {
			t.Fatalf("pusher puts a bundle: %v", err)
		}
	}
	c, cancel2 := context.WithTimeout(ctx, 2*time.Second)
	defer cancel2()
	if err := js.DeleteStream(c, decisionlog.StreamName); err == nil {
		t.Fatal("bundle pusher deleted the CUSTODY stream")
	}
	if _, err := js.Publish(c, "custody.decision.allow.x.y.z", []byte(`{}`)); err == nil {
		t.Fatal("bundle pusher published a decision")
	}
	if _, err := js.CreateObjectStore(c, jetstream.ObjectStoreConfig{Bucket: "other"}); err == nil {
		t.Fatal("bundle pusher created another bucket")
	}
}

// TestKeysSurviveRestart: the reader credential written on first start still works on the next,
// and the files are private.
func TestKeysSurviveRestart(t *testing.T) {
	dir := t.TempDir()
	keys := filepath.Join(dir, "nats")
	trust, err := natsauth.LoadOrCreate(keys)
	if err != nil {
		t.Fatal(err)
	}
	path, err := trust.EnsureReaderCreds()
	if err != nil {
		t.Fatal(err)
	}
	first, _ := os.ReadFile(path)
	again, err := natsauth.LoadOrCreate(keys)
	if err != nil {
		t.Fatal(err)
	}
	if again.Account() != trust.Account() {
		t.Fatal("account key changed across loads")
	}
	if _, err := again.EnsureReaderCreds(); err != nil {
		t.Fatal(err)
	}
	if second, _ := os.ReadFile(path); string(second) != string(first) {
		t.Fatal("reader.creds was rewritten on the second start")
	}
	for _, p := range []string{keys, path, filepath.Join(keys, "account.nk"), filepath.Join(keys, "operator.nk")} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm()&0o077 != 0 {
			t.Errorf("%s has mode %v: want no group or other access", p, fi.Mode().Perm())
		}
	}
	ns, err := embeddednats.Start(embeddednats.Config{Listen: "127.0.0.1:0", StoreDir: filepath.Join(dir, "js"), Accounts: again})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { ns.Shutdown(); ns.WaitForShutdown() }()
	nc, err := nats.Connect(ns.ClientURL(), nats.UserCredentials(path))
	if err != nil {
		t.Fatalf("first start's reader.creds after a restart: %v", err)
	}
	nc.Close()
}

// TestDeletingReaderCredsRevokes: an operator who fears the reader credential leaked deletes it
// and restarts; the old credential (and any other issued before) is then refused, the new one
// works.
func TestDeletingReaderCredsRevokes(t *testing.T) {
	dir := t.TempDir()
	keys := filepath.Join(dir, "nats")
	startWith := func() (*server.Server, string) {
		trust, err := natsauth.LoadOrCreate(keys)
		if err != nil {
			t.Fatal(err)
		}
		path, err := trust.EnsureReaderCreds()
		if err != nil {
			t.Fatal(err)
		}
		ns, err := embeddednats.Start(embeddednats.Config{Listen: "127.0.0.1:0", StoreDir: filepath.Join(dir, "js"), Accounts: trust})
		if err != nil {
			t.Fatal(err)
		}
		return ns, path
	}
	ns, path := startWith()
	leaked := filepath.Join(t.TempDir(), "leaked.creds")
	raw, _ := os.ReadFile(path)
	if err := os.WriteFile(leaked, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	natstest.Shutdown(ns)

	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	ns, path = startWith()
	defer natstest.Shutdown(ns)
	if nc, err := nats.Connect(ns.ClientURL(), nats.UserCredentials(leaked), nats.Timeout(2*time.Second)); err == nil {
		nc.Close()
		t.Fatal("the deleted reader credential still connects")
	}
	nc, err := nats.Connect(ns.ClientURL(), nats.UserCredentials(path))
	if err != nil {
		t.Fatalf("the new reader credential: %v", err)
	}
	nc.Close()
	// And it survives the next restart.
	natstest.Shutdown(ns)
	ns, path = startWith()
	defer natstest.Shutdown(ns)
	nc, err = nats.Connect(ns.ClientURL(), nats.UserCredentials(path))
	if err != nil {
		t.Fatalf("the new reader credential after another restart: %v", err)
	}
	nc.Close()
}

// TestUpgradeKeepsTheStream: a data dir written before authentication (the stream in the
// server's global account) keeps its stream and records when the server starts in operator mode.
func TestUpgradeKeepsTheStream(t *testing.T) {
	dir := t.TempDir()
	store := filepath.Join(dir, "js")
	old := natstest.StartAt(t, "127.0.0.1:0", store)
	js, _ := jetstream.New(natstest.Connect(t, old))
	if _, err := js.CreateStream(t.Context(), jetstream.StreamConfig{Name: decisionlog.StreamName, Subjects: []string{decisionlog.StreamSubjects}}); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if _, err := js.Publish(t.Context(), "custody.decision.allow.a.t.c", []byte(`{}`)); err != nil {
			t.Fatal(err)
		}
	}
	natstest.Shutdown(old)

	trust, err := natsauth.LoadOrCreate(filepath.Join(dir, "nats"))
	if err != nil {
		t.Fatal(err)
	}
	path, err := trust.EnsureReaderCreds()
	if err != nil {
		t.Fatal(err)
	}
	ns, err := embeddednats.Start(embeddednats.Config{Listen: "127.0.0.1:0", StoreDir: store, Accounts: trust})
	if err != nil {
		t.Fatal(err)
	}
	defer natstest.Shutdown(ns)
	nc, err := nats.Connect(ns.ClientURL(), nats.UserCredentials(path))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	rjs, _ := jetstream.New(nc)
	s, err := rjs.Stream(t.Context(), decisionlog.StreamName)
	if err != nil {
		t.Fatalf("the stream after the upgrade: %v", err)
	}
	if n := s.CachedInfo().State.Msgs; n != 3 {
		t.Fatalf("%d records after the upgrade, want 3", n)
	}
}
