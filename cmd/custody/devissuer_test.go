package main

import (
	"bytes"
	"errors"
	"flag"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/custodyhq/custody/decisionlog"
	"github.com/custodyhq/custody/identity"
	"github.com/custodyhq/custody/internal/app"
	"github.com/custodyhq/custody/pdp"
	"github.com/custodyhq/custody/server"
)

// devIssuerServer is a server that trusts the dev issuer's JWKS in dir, through the verifier
// serve builds from --issuer, --jwks and --audience, deciding with the default policies.
func devIssuerServer(t *testing.T, jwks string) (*server.Server, *decisionlog.Memory) {
	t.Helper()
	set, err := app.LoadPolicySet("")
	if err != nil {
		t.Fatal(err)
	}
	eng, err := pdp.New(t.Context(), set)
	if err != nil {
		t.Fatal(err)
	}
	v, err := identity.NewVerifier(identity.Config{
		Issuers:  []identity.Issuer{{Issuer: "https://idp.acme.example", JWKS: jwks}},
		Audience: "custody",
	})
	if err != nil {
		t.Fatal(err)
	}
	mem := &decisionlog.Memory{}
	return server.New(eng, mem, decisionlog.NewIntentHasher([]byte("0123456789abcdef0123456789abcdef")), server.WithTokenVerifier(v), server.WithRequireAuth(true)), mem
}

// devToken runs `custody keys dev-issuer` with args and returns the token it prints and its stderr.
func devToken(t *testing.T, args ...string) (string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	if err := run(t.Context(), append([]string{"keys", "dev-issuer"}, args...), &stdout, &stderr); err != nil {
		t.Fatalf("keys dev-issuer %v: %v\n%s", args, err, stderr.String())
	}
	return strings.TrimSpace(stdout.String()), stderr.String()
}

// TestDevIssuerTokenIsVerified: the README's token examples run as pasted. The token `custody keys
// dev-issuer` prints is accepted by a server trusting the JWKS it wrote, and proves the
// delegation from --sub to --act with --scope; a later run reuses the key, so the first token
// stays valid.
func TestDevIssuerTokenIsVerified(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "dev-idp")
	first, stderr := devToken(t, "--out", dir, "--act", "spiffe://acme.example/agents/ops", "--scope", "payments.send files.write", "--ttl", "10m")
	for _, want := range []string{"not for production", "custody serve --issuer https://idp.acme.example --jwks " + filepath.Join(dir, "jwks.json") + " --audience custody"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("stderr %q does not say %q", stderr, want)
		}
	}
	keyPath := filepath.Join(dir, devIssuerKeyFile)
	fi, err := os.Stat(keyPath)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("%s has mode %v, want 0600", keyPath, fi.Mode().Perm())
	}
	key1, _ := os.ReadFile(keyPath)
	second, _ := devToken(t, "--out", dir, "--sub", "bob@acme.example", "--act", "")
	if key2, _ := os.ReadFile(keyPath); !bytes.Equal(key1, key2) {
		t.Fatal("a second run replaced the issuer key: tokens minted before no longer verify")
	}

	srv, mem := devIssuerServer(t, filepath.Join(dir, devIssuerJWKSFile))
	type seen struct {
		Status   int
		Subject  string
		Scopes   any
		Agent    string
		Verified bool
		Chain    []any
	}
	tests := []struct {
		name  string
		token string
		body  string
		want  seen
	}{
		{
			name:  "the first token, after a second run",
			token: first,
			body:  `{"agent": {"id": "spiffe://acme.example/agents/ops"}, "tool": {"name": "transfer_funds", "server": "payments", "arguments": {"amount": 1200, "currency": "EUR"}}}`,
			want: seen{Status: 200, Subject: "alice@acme.example", Scopes: []any{"payments.send", "files.write"}, Agent: "spiffe://acme.example/agents/ops", Verified: true, Chain: []any{
				map[string]any{"type": "user", "id": "alice@acme.example", "issuer": "https://idp.acme.example", "verified_by": "jwt"},
				map[string]any{"type": "agent", "id": "spiffe://acme.example/agents/ops", "issuer": "https://idp.acme.example", "verified_by": "jwt"},
			}},
		},
		{
			name:  "a token without act proves the subject only",
			token: second,
			body:  `{"agent": {"id": "spiffe://acme.example/agents/mailer"}, "tool": {"name": "send_email", "server": "mail"}}`,
			want: seen{Status: 200, Subject: "bob@acme.example", Scopes: []any{"mail.send", "files.read"}, Agent: "spiffe://acme.example/agents/mailer", Verified: false, Chain: []any{
				map[string]any{"type": "user", "id": "bob@acme.example", "issuer": "https://idp.acme.example", "verified_by": "jwt"},
				map[string]any{"type": "agent", "id": "spiffe://acme.example/agents/mailer"},
			}},
		},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req := httptest.NewRequest(http.MethodPost, "/v1/authorize", strings.NewReader(tc.body))
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("Authorization", "Bearer "+tc.token)
			rr := httptest.NewRecorder()
			srv.Handler().ServeHTTP(rr, req)
			recs := mem.Records()
			if len(recs) != i+1 {
				t.Fatalf("%d records, want %d; answer %d %s", len(recs), i+1, rr.Code, rr.Body)
			}
			r := recs[i]
			got := seen{Status: rr.Code, Subject: r.Subject.ID, Scopes: r.Subject.Properties["scopes"], Verified: r.Delegation.Verified, Chain: r.Delegation.Chain}
			if r.Agent != nil {
				got.Agent = r.Agent.ID
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("decision (-want +got):\n%s\nanswer: %s", diff, rr.Body)
			}
		})
	}
}

// TestDevIssuerUsage: bad flags are usage errors, and --help says what the command is not for.
func TestDevIssuerUsage(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name    string
		args    []string
		errText string
	}{
		{"no --out", nil, "--out DIR is required"},
		{"no subject", []string{"--out", dir, "--sub", ""}, "subject is required"},
		{"a ttl of zero", []string{"--out", dir, "--ttl", "0s"}, "ttl must be positive"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			err := run(t.Context(), append([]string{"keys", "dev-issuer"}, tc.args...), &stdout, &stderr)
			if code := exitCode(err, &stderr); code != 2 || !strings.Contains(err.Error(), tc.errText) {
				t.Fatalf("exit %d, %v; want 2 and %q", code, err, tc.errText)
			}
			if stdout.Len() != 0 {
				t.Errorf("printed %q on a usage error", stdout.String())
			}
		})
	}
	var stdout, stderr bytes.Buffer
	err := run(t.Context(), []string{"keys", "dev-issuer", "--help"}, &stdout, &stderr)
	if !errors.Is(err, flag.ErrHelp) || !strings.Contains(stderr.String(), "not for production") {
		t.Errorf("--help: %v, %q; want help that says it is not for production", err, stderr.String())
	}
	if _, err := os.Stat(filepath.Join(dir, devIssuerKeyFile)); err == nil {
		t.Error("a refused run wrote a key")
	}
}
