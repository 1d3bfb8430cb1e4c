package bundles_test

import (
	"bytes"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/bundle"

	"github.com/custodyhq/custody/bundles"
	"github.com/custodyhq/custody/internal/bundletest"
)

const (
	allowRego = "package custody.authz\n\ndecision := {\"allow\": true, \"reasons\": [\"ok\"]}\n"
	testRego  = "package custody.authz_test\n\nimport data.custody.authz\n\ntest_allow if authz.decision.allow\n"
)

// sampleBundle is a bundle as `opa build` makes one: modules, a Rego test, data and a manifest
// with revision and roots.
func sampleBundle(t testing.TB, revision string) bundle.Bundle {
	return bundletest.New(t, revision, []string{"custody"},
		map[string]string{"authz.rego": allowRego, "authz_test.rego": testRego},
		map[string]any{"custody": map[string]any{"admins": []any{"alice"}}})
}

func setModule(b *bundle.Bundle, name, src string) {
	for i := range b.Modules {
		if b.Modules[i].Path == "/"+name {
			b.Modules[i].Raw = []byte(src)
			b.Modules[i].Parsed = ast.MustParseModule(src)
		}
	}
}

// TestSignedBundles loads bundles signed by OPA's own signing code (what `opa build
// --signing-key` and `opa sign` run), checks that good signatures pass under each algorithm
// family, and that every way of getting a bundle past a verifier without the signer's blessing
// is refused as ErrSignature.
func TestSignedBundles(t *testing.T) {
	rsaKey, ecKey, otherKey := bundletest.RSAKey(t), bundletest.ECKey(t), bundletest.RSAKey(t)
	hsKey := bundletest.HMACKey("s3cret-shared-with-the-build")

	tests := []struct {
		name    string
		bundle  func(t *testing.T) bundle.Bundle
		verify  bundles.VerifyConfig // zero: no verification
		wantRev string
		wantErr error  // nil: loads
		errText string // part of the error message
	}{
		{
			name:    "unsigned, no key",
			bundle:  func(t *testing.T) bundle.Bundle { return sampleBundle(t, "r1") },
			wantRev: "r1",
		},
		{
			name:    "RS256 signed, verified",
			bundle:  signed(rsaKey, "default", ""),
			verify:  bundles.VerifyConfig{Key: rsaKey.Verify},
			wantRev: "r1",
		},
		{
			name:    "ES256 signed, verified",
			bundle:  signed(ecKey, "default", ""),
			verify:  bundles.VerifyConfig{Key: ecKey.Verify, Algorithm: "ES256"},
			wantRev: "r1",
		},
		{
			name:    "HS256 signed, verified with the secret",
			bundle:  signed(hsKey, "default", ""),
			verify:  bundles.VerifyConfig{Key: hsKey.Verify, Algorithm: "HS256"},
			wantRev: "r1",
		},
		{
			name:    "key ID and scope as configured",
			bundle:  signed(rsaKey, "release", "prod"),
			verify:  bundles.VerifyConfig{Key: rsaKey.Verify, KeyID: "release", Scope: "prod"},
			wantRev: "r1",
		},
		{
			name:    "signed, but no key configured",
			bundle:  signed(rsaKey, "default", ""),
			wantErr: bundles.ErrSignature,
			errText: "no verification key is configured",
		},
		{
			name:    "unsigned, key configured",
			bundle:  func(t *testing.T) bundle.Bundle { return sampleBundle(t, "r1") },
			verify:  bundles.VerifyConfig{Key: rsaKey.Verify},
			wantErr: bundles.ErrSignature,
			errText: "missing .signatures.json",
		},
		{
			name:    "signed by another key",
			bundle:  signed(otherKey, "default", ""),
			verify:  bundles.VerifyConfig{Key: rsaKey.Verify},
			wantErr: bundles.ErrSignature,
			errText: "verify JWT signature",
		},
		{
			name:    "wrong algorithm",
			bundle:  signed(rsaKey, "default", ""),
			verify:  bundles.VerifyConfig{Key: rsaKey.Verify, Algorithm: "PS256"},
			wantErr: bundles.ErrSignature,
		},
		{
			name:    "scope mismatch",
			bundle:  signed(rsaKey, "default", "staging"),
			verify:  bundles.VerifyConfig{Key: rsaKey.Verify, Scope: "prod"},
			wantErr: bundles.ErrSignature,
			errText: "scope mismatch",
		},
		{
			name: "module edited after signing",
			bundle: tampered(rsaKey, func(b *bundle.Bundle) {
				setModule(b, "authz.rego", strings.Replace(allowRego, `"ok"`, `"pwned"`, 1))
			}),
			verify:  bundles.VerifyConfig{Key: rsaKey.Verify},
			wantErr: bundles.ErrSignature,
			errText: "authz.rego: digest mismatch",
		},
		{
			name: "data edited after signing",
			bundle: tampered(rsaKey, func(b *bundle.Bundle) {
				b.Data = map[string]any{"custody": map[string]any{"admins": []any{"alice", "mallory"}}}
			}),
			verify:  bundles.VerifyConfig{Key: rsaKey.Verify},
			wantErr: bundles.ErrSignature,
			errText: "data.json: digest mismatch",
		},
		{
			name: "revision relabelled after signing",
			bundle: tampered(rsaKey, func(b *bundle.Bundle) {
				b.Manifest.Revision = "r2"
			}),
			verify:  bundles.VerifyConfig{Key: rsaKey.Verify},
			wantErr: bundles.ErrSignature,
			errText: ".manifest: digest mismatch",
		},
		{
			name: "module added after signing",
			bundle: tampered(rsaKey, func(b *bundle.Bundle) {
				src := "package custody.extra\n\nx := 1\n"
				b.Modules = append(b.Modules, bundle.ModuleFile{URL: "/extra.rego", Path: "/extra.rego", Raw: []byte(src), Parsed: ast.MustParseModule(src)})
			}),
			verify:  bundles.VerifyConfig{Key: rsaKey.Verify},
			wantErr: bundles.ErrSignature,
			errText: "not included in bundle signature",
		},
		{
			name: "module removed after signing",
			bundle: tampered(rsaKey, func(b *bundle.Bundle) {
				b.Modules = b.Modules[:1]
			}),
			verify:  bundles.VerifyConfig{Key: rsaKey.Verify},
			wantErr: bundles.ErrSignature,
			errText: "not found in the target bundle",
		},
		{
			name: "validly signed but not Rego",
			bundle: func(t *testing.T) bundle.Bundle {
				b := sampleBundle(t, "r1")
				b.Modules[0].Raw = []byte("package custody.authz\n\ndecision := \n")
				bundletest.Sign(t, &b, rsaKey, "default", "")
				return b
			},
			verify:  bundles.VerifyConfig{Key: rsaKey.Verify},
			wantErr: bundles.ErrLoad,
			errText: "rego_parse_error",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			vc, err := tc.verify.Verification()
			if err != nil {
				t.Fatalf("Verification: %v", err)
			}
			raw := bundletest.Bytes(t, tc.bundle(t))
			path := filepath.Join(t.TempDir(), "bundle.tar.gz")
			bundletest.WriteFile(t, path, raw)

			fromFile, ferr := bundles.Load(path, bundles.WithVerification(vc))
			fromBytes, rerr := bundles.Read(bytes.NewReader(raw), "pushed", bundles.WithVerification(vc))
			for _, got := range []struct {
				how string
				rev string
				err error
			}{{"Load", fromFile.Revision, ferr}, {"Read", fromBytes.Revision, rerr}} {
				if tc.wantErr == nil {
					if got.err != nil {
						t.Fatalf("%s: %v", got.how, got.err)
					}
					if got.rev != tc.wantRev {
						t.Errorf("%s: revision %q, want %q", got.how, got.rev, tc.wantRev)
					}
					continue
				}
				if !errors.Is(got.err, tc.wantErr) || !strings.Contains(got.err.Error(), tc.errText) {
					t.Errorf("%s: error %v, want %v containing %q", got.how, got.err, tc.wantErr, tc.errText)
				}
			}
			if tc.wantErr == nil {
				for _, m := range fromFile.Bundle.Modules {
					if strings.HasSuffix(m.Path, "_test.rego") {
						t.Errorf("Rego test %s is in the served policy set", m.Path)
					}
				}
			}
		})
	}
}

func signed(key bundletest.Key, keyID, scope string) func(t *testing.T) bundle.Bundle {
	return func(t *testing.T) bundle.Bundle {
		b := sampleBundle(t, "r1")
		bundletest.Sign(t, &b, key, keyID, scope)
		return b
	}
}

func tampered(key bundletest.Key, edit func(*bundle.Bundle)) func(t *testing.T) bundle.Bundle {
	return func(t *testing.T) bundle.Bundle {
		b := sampleBundle(t, "r1")
		bundletest.Sign(t, &b, key, "default", "")
		edit(&b)
		return b
	}
}

func TestVerifyConfigValidate(t *testing.T) {
	rsaKey := bundletest.RSAKey(t)
	privFile := filepath.Join(t.TempDir(), "private.pem")
	bundletest.WriteFile(t, privFile, []byte(rsaKey.Signing))
	tests := []struct {
		name    string
		cfg     bundles.VerifyConfig
		errText string // "" for valid
	}{
		{name: "off", cfg: bundles.VerifyConfig{}},
		{name: "RSA public key", cfg: bundles.VerifyConfig{Key: rsaKey.Verify}},
		{name: "HMAC secret", cfg: bundles.VerifyConfig{Key: "secret", Algorithm: "HS512"}},
		{name: "scope without key", cfg: bundles.VerifyConfig{Scope: "prod"}, errText: "scope is set but no key"},
		{name: "missing key file", cfg: bundles.VerifyConfig{Key: "/nonexistent/key.pem"}, errText: "no such file"},
		{name: "private key given", cfg: bundles.VerifyConfig{Key: privFile}, errText: "got a PRIVATE KEY"},
		{name: "not PEM", cfg: bundles.VerifyConfig{Key: filepath.Join("testdata", "opa-build", "README.md")}, errText: "no PEM block"},
		{name: "unknown algorithm", cfg: bundles.VerifyConfig{Key: rsaKey.Verify, Algorithm: "none"}, errText: `algorithm "none"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := tc.cfg
			cfg.SetDefaults()
			err := cfg.Validate()
			if tc.errText == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.errText) {
				t.Fatalf("Validate: %v, want an error containing %q", err, tc.errText)
			}
		})
	}
}
