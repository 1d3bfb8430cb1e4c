package bundles_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/open-policy-agent/opa/v1/bundle"
	"github.com/open-policy-agent/opa/v1/compile"

	"github.com/custodyhq/custody/bundles"
	"github.com/custodyhq/custody/internal/bundletest"
	"github.com/custodyhq/custody/pdp"
)

// signedSet is a signed bundle of revision rev whose policy gives reason, with serial (none
// when 0), read back the way a server reads it: from its tarball, the signature checked.
func signedSet(t *testing.T, key bundletest.Key, vc *bundle.VerificationConfig, rev, reason string, serial uint64) pdp.PolicySet {
	t.Helper()
	b := bundletest.New(t, rev, nil, map[string]string{"authz.rego": policyRego(reason)}, nil)
	if serial > 0 {
		bundletest.SetSerial(&b, serial)
	}
	bundletest.Sign(t, &b, key, "default", "")
	set, err := bundles.Read(bytes.NewReader(bundletest.Bytes(t, b)), "nats:b/o", bundles.WithVerification(vc))
	if err != nil {
		t.Fatalf("read %s: %v", rev, err)
	}
	return set
}

// TestLedgerRefusesRollback pushes, in order, what an operator and an attacker who can write the
// bundle but not sign one would, through a Reloader with a Ledger and a real engine: every
// replay of an older signed bundle is refused, the newest serving on, and so after a restart.
func TestLedgerRefusesRollback(t *testing.T) {
	key := bundletest.HMACKey("ledger-test-secret")
	vc, err := (&bundles.VerifyConfig{Key: key.Verify, Algorithm: key.Alg}).Verification()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "bundle-ledger.json")
	start := func() (*pdp.Engine, *bundles.Reloader) {
		t.Helper()
		l, err := bundles.OpenLedger(path)
		if err != nil {
			t.Fatal(err)
		}
		e, err := pdp.NewEmpty()
		if err != nil {
			t.Fatal(err)
		}
		return e, bundles.NewReloader(e, bundles.WithLedger(l))
	}
	v1 := signedSet(t, key, vc, "v1", "one", 1)
	v2 := signedSet(t, key, vc, "v2", "two", 2)
	v5 := signedSet(t, key, vc, "v5", "five", 5)
	steps := []struct {
		name    string
		set     pdp.PolicySet
		restart bool
		errText string // empty: served
		serving string
	}{
		{name: "first", set: v1, serving: "v1"},
		{name: "newer", set: v2, serving: "v2"},
		{name: "replay of an older one", set: v1, errText: "serial 1 (revision v1) is below serial 2", serving: "v2"},
		{name: "no serial", set: signedSet(t, key, vc, "v3", "three", 0), errText: "no metadata.custody_serial", serving: "v2"},
		{name: "same serial, other content", set: signedSet(t, key, vc, "v2b", "two-b", 2), errText: "serial 2 (revision v2b) was served before", serving: "v2"},
		{name: "revision reused for other content", set: signedSet(t, key, vc, "v1", "one-b", 3), errText: "revision v1 was served before (serial 1)", serving: "v2"},
		{name: "gap in serials", set: v5, serving: "v5"},
		{name: "restart on the newest", set: v5, restart: true, serving: "v5"},
		{name: "replay after a restart", set: v2, restart: true, errText: "serial 2 (revision v2) is below serial 5", serving: ""},
		{name: "newer after all", set: signedSet(t, key, vc, "v6", "six", 6), serving: "v6"},
	}
	engine, r := start()
	for _, st := range steps {
		if st.restart {
			engine, r = start()
		}
		_, err := r.Apply(t.Context(), st.set)
		switch {
		case st.errText == "" && err != nil:
			t.Fatalf("%s: Apply: %v", st.name, err)
		case st.errText != "" && (!errors.Is(err, bundles.ErrRollback) || !strings.Contains(err.Error(), st.errText)):
			t.Fatalf("%s: Apply: %v; want ErrRollback saying %q", st.name, err, st.errText)
		}
		if got := engine.Policy().Revision; got != st.serving {
			t.Fatalf("%s: serving %q, want %q", st.name, got, st.serving)
		}
	}
	if st := r.Status(); st.Rollbacks != 1 || st.Failures != 1 {
		t.Fatalf("status after the last restart %+v: want one rollback among one failure", st)
	}
	if top, ok := mustOpen(t, path).Highest(); !ok || top.Serial != 6 || top.Revision != "v6" {
		t.Fatalf("ledger on disk: highest %+v %v; want serial 6, v6", top, ok)
	}
}

func mustOpen(t *testing.T, path string) *bundles.Ledger {
	t.Helper()
	l, err := bundles.OpenLedger(path)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// TestSerialIsSigned: the serial is in the signed manifest, so raising it on a signed bundle
// without the key breaks the signature.
func TestSerialIsSigned(t *testing.T) {
	key := bundletest.RSAKey(t)
	vc, err := (&bundles.VerifyConfig{Key: key.Verify}).Verification()
	if err != nil {
		t.Fatal(err)
	}
	b := bundletest.New(t, "v1", nil, map[string]string{"authz.rego": policyRego("one")}, nil)
	bundletest.SetSerial(&b, 1)
	bundletest.Sign(t, &b, key, "default", "")
	set, err := bundles.Read(bytes.NewReader(bundletest.Bytes(t, b)), "signed", bundles.WithVerification(vc))
	if err != nil {
		t.Fatal(err)
	}
	if n, err := bundles.Serial(set.Bundle); n != 1 || err != nil {
		t.Fatalf("Serial = %d, %v; want 1", n, err)
	}
	bundletest.SetSerial(&b, 99) // an attacker's edit, signature kept
	_, err = bundles.Read(bytes.NewReader(bundletest.Bytes(t, b)), "edited", bundles.WithVerification(vc))
	if !errors.Is(err, bundles.ErrSignature) {
		t.Fatalf("Read of a bundle whose serial was raised after signing: %v; want ErrSignature", err)
	}
}

func TestSerial(t *testing.T) {
	tests := []struct {
		name    string
		value   any
		want    uint64
		errText string
	}{
		{name: "absent", value: nil},
		{name: "number", value: float64(7), want: 7},
		{name: "string", value: "12", want: 12},
		{name: "zero", value: float64(0), errText: "positive integer"},
		{name: "fraction", value: 1.5, errText: "positive integer"},
		{name: "negative string", value: "-3", errText: "positive integer"},
		{name: "object", value: map[string]any{}, errText: "positive integer"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := bundle.Bundle{Manifest: bundle.Manifest{Metadata: map[string]any{}}}
			if tc.value != nil {
				b.Manifest.Metadata[bundles.MetadataSerial] = tc.value
			}
			got, err := bundles.Serial(&b)
			if got != tc.want || (tc.errText == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.errText)) {
				t.Fatalf("Serial = %d, %v; want %d, error containing %q", got, err, tc.want, tc.errText)
			}
		})
	}
}

// TestLedgerFile: a torn or unreadable ledger stops the start rather than forgetting what was
// served; a ledger that cannot be written refuses the bundle rather than serve it unrecorded.
func TestLedgerFile(t *testing.T) {
	dir := t.TempDir()
	torn := filepath.Join(dir, "torn.json")
	if err := os.WriteFile(torn, []byte(`{"accepted": [`), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := bundles.OpenLedger(torn); err == nil || !strings.Contains(err.Error(), "read ledger") {
		t.Fatalf("OpenLedger of a torn file: %v; want an error", err)
	}
	key := bundletest.HMACKey("ledger-test-secret")
	vc, err := (&bundles.VerifyConfig{Key: key.Verify, Algorithm: key.Alg}).Verification()
	if err != nil {
		t.Fatal(err)
	}
	l := mustOpen(t, filepath.Join(dir, "missing-dir", "ledger.json"))
	err = l.Admit(signedSet(t, key, vc, "v1", "one", 1), t0)
	if err == nil || !strings.Contains(err.Error(), "write ledger") {
		t.Fatalf("Admit with an unwritable ledger: %v; want a write error", err)
	}
	if _, ok := l.Highest(); ok {
		t.Fatal("a bundle that could not be recorded counts as accepted")
	}
}

// TestOPABuildKeepsSerial builds a directory whose .manifest carries a serial the way
// `opa build -b DIR --signing-key KEY --revision R` does (OPA's compile package, the code
// behind it) and reads the serial back from the verified tarball: the documented workflow.
func TestOPABuildKeepsSerial(t *testing.T) {
	dir := t.TempDir()
	write(t, filepath.Join(dir, "authz.rego"), policyRego("built"))
	write(t, filepath.Join(dir, ".manifest"), `{"roots": ["custody"], "metadata": {"custody_serial": 7}}`)
	key := bundletest.RSAKey(t)
	var out bytes.Buffer
	c := compile.New().WithAsBundle(true).WithPaths(dir).WithRevision("2026-06-01.1").WithOutput(&out).
		WithBundleSigningConfig(bundle.NewSigningConfig(key.Signing, key.Alg, ""))
	if err := c.Build(t.Context()); err != nil {
		t.Fatal(err)
	}
	vc, err := (&bundles.VerifyConfig{Key: key.Verify}).Verification()
	if err != nil {
		t.Fatal(err)
	}
	set, err := bundles.Read(&out, "built", bundles.WithVerification(vc))
	if err != nil {
		t.Fatal(err)
	}
	if n, err := bundles.Serial(set.Bundle); n != 7 || err != nil || set.Revision != "2026-06-01.1" {
		t.Fatalf("built bundle: serial %d, %v, revision %q; want 7 and 2026-06-01.1", n, err, set.Revision)
	}
}
