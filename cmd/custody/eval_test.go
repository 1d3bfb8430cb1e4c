package main

import (
	"bytes"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/custodyhq/custody/bundles"
	"github.com/custodyhq/custody/internal/app"
	"github.com/custodyhq/custody/internal/bundletest"
	"github.com/custodyhq/custody/policies"
)

// aliceSendsMail is a policy input the default policies allow.
const aliceSendsMail = `{
  "subject":  {"type": "user", "id": "alice@acme.example", "properties": {"roles": ["employee"], "scopes": ["mail.send"]}},
  "action":   {"name": "send_email", "properties": {"server": "mail", "arguments": {"to": "bob@acme.example"}}},
  "resource": {"type": "mailbox", "id": "alice", "properties": {"owner": "alice@acme.example"}},
  "agent":    {"id": "spiffe://acme.example/agents/mailer"}
}`

// TestEval runs `custody eval` as policy authors and their CI do, and checks what it prints and
// its exit status.
func TestEval(t *testing.T) {
	dir := t.TempDir()
	input := filepath.Join(dir, "input.json")
	bundletest.WriteFile(t, input, []byte(aliceSendsMail))
	wrongShape := filepath.Join(dir, "native.json")
	bundletest.WriteFile(t, wrongShape, []byte(`{"user": {"id": "alice@acme.example"}, "tool": {"name": "send_email"}}`))
	misspelled := filepath.Join(dir, "misspelled.json")
	bundletest.WriteFile(t, misspelled, []byte(`{"agent": {"id": "a"}, "delegaton": {"verified": true}}`))

	embedded, err := bundles.FromFS(policies.FS, app.EmbeddedSource)
	if err != nil {
		t.Fatal(err)
	}
	key := bundletest.ECKey(t)
	signedFile := filepath.Join(dir, "signed.tar.gz")
	b := bundletest.FromFS(t, policies.FS, "2026.05.1")
	bundletest.Sign(t, &b, key, "default", "")
	bundletest.Write(t, b, signedFile)
	tamperedFile := filepath.Join(dir, "tampered.tar.gz")
	b.Modules[0].Raw = append(b.Modules[0].Raw, []byte("\n# edited after signing\n")...)
	bundletest.Write(t, b, tamperedFile)

	// A policy that compiles but whose decision is neither a boolean nor an object.
	policyErrFile := filepath.Join(dir, "policy-error.tar.gz")
	bundletest.Write(t, bundletest.New(t, "bad-1", nil, map[string]string{"authz.rego": "package custody.authz\n\ndecision := \"yes\"\n"}, nil), policyErrFile)

	tests := []struct {
		name     string
		args     []string
		want     *evalOutput // nil: print nothing to check
		wantCode int
		errText  string
	}{
		{
			name: "embedded policies",
			args: []string{"--input", input},
			want: &evalOutput{Kind: "input", Allow: true, Reasons: []string{"allowed"}, Revision: embedded.Revision, Query: "data.custody.authz.decision"},
		},
		{
			name: "signed bundle, read like opa eval does without a key",
			args: []string{"--policies", signedFile, "--input", input},
			want: &evalOutput{Kind: "input", Allow: true, Reasons: []string{"allowed"}, Revision: "2026.05.1", Query: "data.custody.authz.decision"},
		},
		{
			name: "signed bundle, verified",
			args: []string{"--policies", signedFile, "--input", input, "--bundle-verification-key", key.Verify, "--bundle-verification-alg", key.Alg},
			want: &evalOutput{Kind: "input", Allow: true, Reasons: []string{"allowed"}, Revision: "2026.05.1", Query: "data.custody.authz.decision"},
		},
		{
			name:     "tampered bundle, verified",
			args:     []string{"--policies", tamperedFile, "--input", input, "--bundle-verification-key", key.Verify, "--bundle-verification-alg", key.Alg},
			wantCode: 1,
			errText:  "digest mismatch",
		},
		{
			name:     "policy error",
			args:     []string{"--policies", policyErrFile, "--input", input},
			want:     &evalOutput{Kind: "input", Reasons: []string{"policy_error"}, Revision: "bad-1", Query: "data.custody.authz.decision", Error: "pdp: decision is string, want boolean or object"},
			wantCode: 1,
			errText:  "policy error",
		},
		{
			name:     "a native request body is read as one, and checked as the server checks it",
			args:     []string{"--input", wrongShape},
			wantCode: 2,
			errText:  `a native /v1/authorize request body: invalid_request: agent.id: required`,
		},
		{
			name:     "a policy input with a misspelled field",
			args:     []string{"--input", misspelled},
			wantCode: 2,
			errText:  `unknown field "delegaton"`,
		},
		{
			name:     "a scope without a key",
			args:     []string{"--input", input, "--bundle-verification-scope", "prod"},
			wantCode: 2,
			errText:  "scope is set but no key",
		},
		{
			name:     "missing input",
			args:     []string{"--input", filepath.Join(dir, "nope.json")},
			wantCode: 1,
			errText:  "no such file",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			err := run(t.Context(), append([]string{"eval"}, tc.args...), &stdout, &stderr)
			if code := exitCode(err, &stderr); code != tc.wantCode {
				t.Fatalf("exit %d, want %d: %v", code, tc.wantCode, err)
			}
			if tc.errText != "" && (err == nil || !strings.Contains(err.Error(), tc.errText)) {
				t.Fatalf("error %v, want one containing %q", err, tc.errText)
			}
			if tc.want == nil {
				return
			}
			var got evalOutput
			if err := json.Unmarshal(stdout.Bytes(), &got); err != nil {
				t.Fatalf("output %q: %v", stdout.String(), err)
			}
			if diff := cmp.Diff(*tc.want, got); diff != "" {
				t.Errorf("output (-want +got):\n%s", diff)
			}
		})
	}
}
