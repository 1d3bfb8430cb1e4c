package bundles_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/custodyhq/custody/bundles"
	"github.com/custodyhq/custody/internal/bundletest"
	"github.com/custodyhq/custody/pdp"
)

// TestOPABuildTarballs loads tarballs the opa CLI itself made (see testdata/opa-build/README.md),
// signed (ES256) and unsigned, and decides with them.
func TestOPABuildTarballs(t *testing.T) {
	dir := filepath.Join("testdata", "opa-build")
	signedRaw, err := os.ReadFile(filepath.Join(dir, "signed.tar.gz"))
	if err != nil {
		t.Fatal(err)
	}
	tamperedFile := filepath.Join(t.TempDir(), "tampered.tar.gz")
	bundletest.WriteFile(t, tamperedFile, retar(t, signedRaw, "/src/authz.rego", func(src []byte) []byte {
		return bytes.Replace(src, []byte(`default decision := {"allow": false`), []byte(`default decision := {"allow": true`), 1)
	}))
	key := bundles.VerifyConfig{Key: filepath.Join(dir, "public.pem"), Algorithm: "ES256"}
	tests := []struct {
		name    string
		file    string
		verify  bundles.VerifyConfig
		wantErr error
	}{
		{name: "unsigned", file: filepath.Join(dir, "unsigned.tar.gz")},
		{name: "signed, verified", file: filepath.Join(dir, "signed.tar.gz"), verify: key},
		{name: "signed, no key", file: filepath.Join(dir, "signed.tar.gz"), wantErr: bundles.ErrSignature},
		{name: "unsigned, key required", file: filepath.Join(dir, "unsigned.tar.gz"), verify: key, wantErr: bundles.ErrSignature},
		{name: "signed, then its policy edited", file: tamperedFile, verify: key, wantErr: bundles.ErrSignature},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			vc, err := tc.verify.Verification()
			if err != nil {
				t.Fatal(err)
			}
			set, err := bundles.Load(tc.file, bundles.WithVerification(vc))
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("Load: %v, want %v", err, tc.wantErr)
				}
				t.Logf("refused: %v", err)
				return
			}
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			if diff := cmp.Diff([]string{"custody"}, *set.Bundle.Manifest.Roots); diff != "" {
				t.Errorf("roots (-want +got):\n%s", diff)
			}
			e, err := pdp.New(t.Context(), set)
			if err != nil {
				t.Fatalf("pdp.New: %v", err)
			}
			for who, want := range map[string]bool{"alice@acme.example": true, "mallory@acme.example": false} {
				d := e.Decide(t.Context(), &pdp.Input{Subject: pdp.Entity{Type: "user", ID: who}})
				if d.Allow != want || d.Policy.Revision != "opa-build-1" {
					t.Errorf("%s: allow %v revision %q, want %v opa-build-1 (%v)", who, d.Allow, d.Policy.Revision, want, d.Err)
				}
			}
			if len(set.Bundle.Modules) != 1 {
				t.Errorf("%d modules served, want 1: the Rego test is left out", len(set.Bundle.Modules))
			}
		})
	}
}

// retar rewrites one file of a .tar.gz, keeping everything else, .signatures.json included.
func retar(t *testing.T, raw []byte, name string, edit func([]byte) []byte) []byte {
	t.Helper()
	gz, err := gzip.NewReader(bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(gz)
	var out bytes.Buffer
	zw := gzip.NewWriter(&out)
	tw := tar.NewWriter(zw)
	found := false
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		if h.Name == name {
			body, found = edit(body), true
			h.Size = int64(len(body))
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(body); err != nil {
			t.Fatal(err)
		}
	}
	if !found {
		t.Fatalf("%s not in the tarball", name)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

// TestRevision: the manifest's revision when there is one, else a content hash that is the same
// for a directory and a tarball of the same files, and changes with any module or datum.
func TestRevision(t *testing.T) {
	modules := map[string]string{"authz.rego": allowRego}
	data := map[string]any{"custody": map[string]any{"admins": []any{"alice"}}}

	dir := t.TempDir()
	bundletest.WriteFile(t, filepath.Join(dir, "authz.rego"), []byte(allowRego))
	bundletest.WriteFile(t, filepath.Join(dir, "authz_test.rego"), []byte(testRego))
	bundletest.WriteFile(t, filepath.Join(dir, "data.json"), []byte(`{"custody": {"admins": ["alice"]}}`))
	fromDir, err := bundles.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	tarball := filepath.Join(t.TempDir(), "b.tar.gz")
	bundletest.Write(t, bundletest.New(t, "", nil, modules, data), tarball)
	fromTar, err := bundles.Load(tarball)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(fromDir.Revision, "sha256:") || fromDir.Revision != fromTar.Revision {
		t.Fatalf("revision of a directory %q and a tarball %q of the same files: want one sha256: hash", fromDir.Revision, fromTar.Revision)
	}

	bundletest.WriteFile(t, filepath.Join(dir, "data.json"), []byte(`{"custody": {"admins": ["alice", "bob"]}}`))
	changed, err := bundles.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if changed.Revision == fromDir.Revision {
		t.Fatal("a change of data kept the content-hash revision")
	}

	bundletest.WriteFile(t, filepath.Join(dir, ".manifest"), []byte(`{"revision": "2026-05-01.3"}`))
	named, err := bundles.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if named.Revision != "2026-05-01.3" {
		t.Fatalf("revision %q, want the manifest's", named.Revision)
	}
}

// TestRootsEnforced: a bundle whose modules or data stray outside its manifest's roots is
// refused, as OPA refuses to activate it.
func TestRootsEnforced(t *testing.T) {
	tests := []struct {
		name    string
		modules map[string]string
		data    map[string]any
		errText string
	}{
		{
			name:    "module outside the roots",
			modules: map[string]string{"authz.rego": allowRego, "other.rego": "package other\n\nx := 1\n"},
			errText: "do not permit 'package other'",
		},
		{
			name:    "data outside the roots",
			modules: map[string]string{"authz.rego": allowRego},
			data:    map[string]any{"other": map[string]any{"x": 1}},
			errText: "do not permit data at path '/other",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "b.tar.gz")
			bundletest.Write(t, bundletest.New(t, "r1", []string{"custody"}, tc.modules, tc.data), path)
			_, err := bundles.Load(path)
			if !errors.Is(err, bundles.ErrLoad) || !strings.Contains(err.Error(), tc.errText) {
				t.Fatalf("Load: %v, want ErrLoad containing %q", err, tc.errText)
			}
		})
	}
}
