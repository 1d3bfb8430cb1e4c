package main

import (
	"bytes"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/custodyhq/custody/bundles/natsobj"
	"github.com/custodyhq/custody/internal/bundletest"
	"github.com/custodyhq/custody/internal/natstest"
	"github.com/custodyhq/custody/policies"
)

// TestBundlePush pushes bundles with `custody bundle push` and checks what lands in the bucket,
// and that a bundle the fleet would refuse is not pushed.
func TestBundlePush(t *testing.T) {
	ns := natstest.Start(t)
	dir := t.TempDir()
	key := bundletest.RSAKey(t)

	signed := func(name, rev string, serial uint64) string {
		b := bundletest.FromFS(t, policies.FS, rev)
		if serial > 0 {
			bundletest.SetSerial(&b, serial)
		}
		bundletest.Sign(t, &b, key, "default", "")
		path := filepath.Join(dir, name)
		bundletest.Write(t, b, path)
		return path
	}
	good := signed("good.tar.gz", "2026.05.1", 2)
	noSerial := signed("no-serial.tar.gz", "2026.05.3", 0)
	older := signed("older.tar.gz", "2026.04.9", 1)
	newer := signed("newer.tar.gz", "2026.05.4", 3)
	unsigned := filepath.Join(dir, "unsigned.tar.gz")
	bundletest.Write(t, bundletest.FromFS(t, policies.FS, "2026.05.2"), unsigned)
	noCompile := filepath.Join(dir, "no-compile.tar.gz")
	bundletest.Write(t, bundletest.New(t, "bad", nil, map[string]string{"authz.rego": "package custody.authz\n\ndecision := nope(1)\n"}, nil), noCompile)
	notBundle := filepath.Join(dir, "not-a-bundle.tar.gz")
	bundletest.WriteFile(t, notBundle, []byte("hello"))

	tests := []struct {
		name     string
		args     []string
		wantCode int
		wantOut  string // part of stdout, or of the error
		wantRev  string // revision in the bucket after, "" when nothing is expected there
	}{
		{
			name:    "signed, flags after the file",
			args:    []string{good, "--nats-url", ns.ClientURL(), "--bundle-verification-key", key.Verify},
			wantOut: "pushed " + good + " to nats:custody-bundles/bundle.tar.gz: revision 2026.05.1",
			wantRev: "2026.05.1",
		},
		{
			name:     "unsigned, when the key says it must be signed",
			args:     []string{"--nats-url", ns.ClientURL(), "--bundle-verification-key", key.Verify, unsigned},
			wantCode: 1,
			wantOut:  "missing .signatures.json",
			wantRev:  "2026.05.1",
		},
		{
			name:     "signed without a serial",
			args:     []string{"--nats-url", ns.ClientURL(), "--bundle-verification-key", key.Verify, noSerial},
			wantCode: 1,
			wantOut:  "no metadata.custody_serial",
			wantRev:  "2026.05.1",
		},
		{
			name:     "signed, older than the bucket's",
			args:     []string{"--nats-url", ns.ClientURL(), "--bundle-verification-key", key.Verify, older},
			wantCode: 1,
			wantOut:  "serial 1, not above serial 2 (revision 2026.05.1)",
			wantRev:  "2026.05.1",
		},
		{
			name:     "the same serial again",
			args:     []string{"--nats-url", ns.ClientURL(), good},
			wantCode: 1,
			wantOut:  "rollback",
			wantRev:  "2026.05.1",
		},
		{
			name:     "does not compile",
			args:     []string{"--nats-url", ns.ClientURL(), noCompile},
			wantCode: 1,
			wantOut:  "undefined function nope",
			wantRev:  "2026.05.1",
		},
		{
			name:     "not a bundle",
			args:     []string{"--nats-url", ns.ClientURL(), notBundle},
			wantCode: 1,
			wantOut:  "not pushed",
			wantRev:  "2026.05.1",
		},
		{
			name:    "signed, newer",
			args:    []string{"--nats-url", ns.ClientURL(), "--bundle-verification-key", key.Verify, newer},
			wantOut: "revision 2026.05.4",
			wantRev: "2026.05.4",
		},
		{
			name:     "a directory",
			args:     []string{"--nats-url", ns.ClientURL(), dir},
			wantCode: 2,
			wantOut:  "opa build -b",
		},
		{
			name:     "no file",
			args:     []string{"--nats-url", ns.ClientURL()},
			wantCode: 2,
			wantOut:  "want a bundle file",
		},
		{
			name:    "other bucket and name",
			args:    []string{"--nats-url", ns.ClientURL(), "--bucket", "staging", "--name", "team-a.tar.gz", unsigned},
			wantOut: "to nats:staging/team-a.tar.gz: revision 2026.05.2",
		},
	}
	nc := natstest.Connect(t, ns)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			err := run(t.Context(), append([]string{"bundle", "push"}, tc.args...), &stdout, &stderr)
			if code := exitCode(err, &stderr); code != tc.wantCode {
				t.Fatalf("exit %d, want %d: %v", code, tc.wantCode, err)
			}
			if got := stdout.String() + stderr.String(); !strings.Contains(got, tc.wantOut) {
				t.Fatalf("output %q, want it to contain %q", got, tc.wantOut)
			}
			if tc.wantRev == "" {
				return
			}
			store, err := js.ObjectStore(t.Context(), natsobj.DefaultBucket)
			if err != nil {
				t.Fatal(err)
			}
			info, err := store.GetInfo(t.Context(), natsobj.DefaultObject)
			if err != nil {
				t.Fatal(err)
			}
			if got := info.Metadata[natsobj.MetadataRevision]; got != tc.wantRev {
				t.Fatalf("bucket holds revision %q, want %q", got, tc.wantRev)
			}
			if got, want := info.Metadata[natsobj.MetadataSerial], map[string]string{"2026.05.1": "2", "2026.05.4": "3"}[tc.wantRev]; got != want {
				t.Fatalf("bucket holds serial %q, want %q", got, want)
			}
		})
	}
}
