// Package bundletest builds OPA bundles for tests with OPA's own bundle writer and signer, the
// code behind `opa build` and `opa sign`, and generates the keys to sign them.
package bundletest

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/bundle"
)

// New returns a snapshot bundle of modules (file name to Rego source) and data, with a manifest
// naming revision (none when empty) and roots (none when nil).
func New(t testing.TB, revision string, roots []string, modules map[string]string, data map[string]any) bundle.Bundle {
	t.Helper()
	b := bundle.Bundle{Data: data, Manifest: bundle.Manifest{Revision: revision}}
	if b.Data == nil {
		b.Data = map[string]any{}
	}
	if roots != nil {
		b.Manifest.Roots = &roots
	}
	names := make([]string, 0, len(modules))
	for name := range modules {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		p := "/" + strings.TrimPrefix(name, "/")
		parsed, err := ast.ParseModule(p, modules[name])
		if err != nil {
			t.Fatalf("bundletest: parse %s: %v", name, err)
		}
		b.Modules = append(b.Modules, bundle.ModuleFile{URL: p, Path: p, Raw: []byte(modules[name]), Parsed: parsed})
	}
	return b
}

// FromFS returns a bundle of the .rego files and the data.json at the root of fsys, such as
// custody's default policies, with a manifest naming revision.
func FromFS(t testing.TB, fsys fs.FS, revision string) bundle.Bundle {
	t.Helper()
	modules := map[string]string{}
	var data map[string]any
	err := fs.WalkDir(fsys, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		raw, err := fs.ReadFile(fsys, p)
		if err != nil {
			return err
		}
		switch {
		case strings.HasSuffix(p, ".rego"):
			modules[p] = string(raw)
		case path.Base(p) == "data.json" && path.Dir(p) == ".":
			return json.Unmarshal(raw, &data)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("bundletest: read policies: %v", err)
	}
	return New(t, revision, nil, modules, data)
}

// Key signs bundles and says how to verify them.
type Key struct {
	// Alg is the JWS algorithm, such as RS256.
	Alg string
	// Signing is the private key, PEM, or the HMAC secret.
	Signing string
	// Verify is what custody's --bundle-verification-key takes: the path of a PEM public key
	// file, or the HMAC secret.
	Verify string
}

// RSAKey generates an RS256 key pair, its public key written to a file in a temporary directory.
func RSAKey(t testing.TB) Key {
	t.Helper()
	priv, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	return pemKey(t, "RS256", priv, &priv.PublicKey)
}

// ECKey generates an ES256 key pair, its public key written to a file in a temporary directory.
func ECKey(t testing.TB) Key {
	t.Helper()
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return pemKey(t, "ES256", priv, &priv.PublicKey)
}

// HMACKey is an HS256 shared secret.
func HMACKey(secret string) Key { return Key{Alg: "HS256", Signing: secret, Verify: secret} }

func pemKey(t testing.TB, alg string, priv, pub any) Key {
	t.Helper()
	privDER, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	pubDER, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	pubFile := filepath.Join(t.TempDir(), "public.pem")
	if err := os.WriteFile(pubFile, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	return Key{
		Alg:     alg,
		Signing: string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: privDER})),
		Verify:  pubFile,
	}
}

// Sign adds a .signatures.json to b as `opa build --signing-key` does, with key ID keyID and,
// when scope is set, a scope claim.
func Sign(t testing.TB, b *bundle.Bundle, key Key, keyID, scope string) {
	t.Helper()
	claims := ""
	if scope != "" {
		claims = filepath.Join(t.TempDir(), "claims.json")
		raw, _ := json.Marshal(map[string]string{"scope": scope})
		if err := os.WriteFile(claims, raw, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.GenerateSignature(bundle.NewSigningConfig(key.Signing, key.Alg, claims), keyID, false); err != nil {
		t.Fatalf("bundletest: sign: %v", err)
	}
}

// Bytes returns b as a .tar.gz, written by OPA's bundle writer.
func Bytes(t testing.TB, b bundle.Bundle) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := bundle.NewWriter(&buf).Write(b); err != nil {
		t.Fatalf("bundletest: write bundle: %v", err)
	}
	return buf.Bytes()
}

// Write writes b as a .tar.gz at path, atomically: to a temporary file, then renamed.
func Write(t testing.TB, b bundle.Bundle, path string) {
	t.Helper()
	WriteFile(t, path, Bytes(t, b))
}

// WriteFile writes data at path atomically: to a temporary file beside it, then renamed.
func WriteFile(t testing.TB, path string, data []byte) {
	t.Helper()
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-"+filepath.Base(path)+"-*")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tmp.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := tmp.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		t.Fatal(err)
	}
}

// SetSerial sets the custody_serial of b's manifest metadata, the number custody orders signed
// bundles by to refuse a rollback. Set it before Sign: the signature covers the manifest.
func SetSerial(b *bundle.Bundle, serial uint64) {
	if b.Manifest.Metadata == nil {
		b.Manifest.Metadata = map[string]any{}
	}
	b.Manifest.Metadata["custody_serial"] = serial
}
