package main

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/custodyhq/custody/decisionlog"
	"github.com/custodyhq/custody/internal/app"
	"github.com/custodyhq/custody/internal/bundletest"
	"github.com/custodyhq/custody/pdp"
	"github.com/custodyhq/custody/server"
)

// Bodies a user sends, each of a call the default policies allow when it is asserted only.
const (
	nativeMail = `{
  "agent":    {"id": "spiffe://acme.example/agents/mailer"},
  "user":     {"id": "alice@acme.example", "properties": {"roles": ["employee"], "scopes": ["mail.send"]}},
  "tool":     {"name": "send_email", "server": "mail", "arguments": {"to": "bob@acme.example"}},
  "resource": {"type": "mailbox", "id": "alice", "properties": {"owner": "alice@acme.example"}},
  "context":  {"channel": "chat"},
  "task":     {"id": "t-42", "session_id": "s-1", "intent": "mail bob the report"},
  "correlation_id": "req-7f3a"
}`
	authzenMail = `{
  "subject":  {"type": "user", "id": "alice@acme.example", "properties": {"roles": ["employee"], "scopes": ["mail.send"]}},
  "action":   {"name": "send_email", "properties": {"server": "mail", "arguments": {"to": "bob@acme.example"}}},
  "resource": {"type": "mailbox", "id": "alice", "properties": {"owner": "alice@acme.example"}},
  "context":  {"agent": {"id": "spiffe://acme.example/agents/mailer"}, "task": {"id": "t-42", "intent": "mail bob the report"}, "correlation_id": "req-7f3a", "channel": "chat"}
}`
)

// testServer is a server deciding with the policy set at policies ("" for the embedded one) and
// recording in memory, with the token verifier opts give, if any.
func testServer(t *testing.T, policies string, opts ...server.Option) (*server.Server, *decisionlog.Memory) {
	t.Helper()
	set, err := app.LoadPolicySet(policies)
	if err != nil {
		t.Fatal(err)
	}
	eng, err := pdp.New(t.Context(), set)
	if err != nil {
		t.Fatal(err)
	}
	mem := &decisionlog.Memory{}
	return server.New(eng, mem, decisionlog.NewIntentHasher([]byte("0123456789abcdef0123456789abcdef")), opts...), mem
}

// post sends body to path on srv, with a bearer token when token is not "".
func post(t *testing.T, srv *server.Server, path, token, body string) *httptest.ResponseRecorder {
	t.Helper()
	req := httptest.NewRequest(http.MethodPost, path, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	rr := httptest.NewRecorder()
	srv.Handler().ServeHTTP(rr, req)
	return rr
}

// runEvalOn runs `custody eval` on input (written to a file) with args, and returns its output
// and stderr; a non-zero exit fails the test.
func runEvalOn(t *testing.T, input string, args ...string) (evalOutput, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "input.json")
	bundletest.WriteFile(t, path, []byte(input))
	var stdout, stderr bytes.Buffer
	if err := run(t.Context(), append([]string{"eval", "--input", path}, args...), &stdout, &stderr); err != nil {
		t.Fatalf("eval: %v\n%s", err, stderr.String())
	}
	var out evalOutput
	dec := json.NewDecoder(&stdout)
	dec.UseNumber()
	if err := dec.Decode(&out); err != nil {
		t.Fatalf("eval output %q: %v", stdout.String(), err)
	}
	return out, stderr.String()
}

// TestEvalParity: the input eval builds from a request body is the one the server builds from
// it. A policy that echoes its input as an obligation shows both; only the task's intent hash
// differs, as eval has no intent key.
func TestEvalParity(t *testing.T) {
	echo := filepath.Join(t.TempDir(), "echo.tar.gz")
	bundletest.Write(t, bundletest.New(t, "echo-1", nil, map[string]string{"authz.rego": "package custody.authz\n\ndecision := {\"allow\": true, \"reasons\": [\"echo\"], \"obligations\": {\"input\": input}}\n"}, nil), echo)
	srv, _ := testServer(t, echo)
	withoutIntentHash := func(in any) any {
		if task, ok := in.(map[string]any)["task"].(map[string]any); ok {
			delete(task, "intent_sha256")
		}
		return in
	}
	tests := []struct {
		name, endpoint, body, kind string
	}{
		{"native", server.EndpointAuthorize, nativeMail, "authorize"},
		{"authzen", server.EndpointEvaluation, authzenMail, "authzen"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rr := post(t, srv, tc.endpoint, "", tc.body)
			if rr.Code != http.StatusOK {
				t.Fatalf("server: %d %s", rr.Code, rr.Body)
			}
			var answer map[string]any
			dec := json.NewDecoder(rr.Body)
			dec.UseNumber()
			if err := dec.Decode(&answer); err != nil {
				t.Fatal(err)
			}
			obligations := answer["obligations"] // native
			if c, ok := answer["context"].(map[string]any); ok {
				obligations = c["obligations"] // AuthZEN
			}
			serverInput := withoutIntentHash(obligations.(map[string]any)["input"])

			out, stderr := runEvalOn(t, tc.body, "--policies", echo)
			if out.Kind != tc.kind || !strings.HasPrefix(stderr, "custody eval: read "+evalKindNames[tc.kind]+"\n") {
				t.Errorf("kind %q, stderr %q; want %q", out.Kind, stderr, tc.kind)
			}
			evalInput := withoutIntentHash(out.Obligations["input"])
			if diff := cmp.Diff(serverInput, evalInput); diff != "" {
				t.Errorf("policy input (-server +eval):\n%s", diff)
			}
		})
	}
}

// TestEvalReadsWhatWasSent: eval takes the body a user just sent, native or AuthZEN, and says
// which it read; a body the server would refuse is refused alike.
func TestEvalReadsWhatWasSent(t *testing.T) {
	tests := []struct {
		name, input string
		args        []string
		want        evalOutput
	}{
		{"native body", nativeMail, nil, evalOutput{Kind: "authorize", Allow: true, Reasons: []string{"allowed"}}},
		{"AuthZEN evaluation", authzenMail, nil, evalOutput{Kind: "authzen", Allow: true, Reasons: []string{"allowed"}}},
		{"AuthZEN evaluations without a batch", `{"subject": {"type": "user", "id": "alice@acme.example"}, "action": {"name": "send_email"}, "resource": {"type": "tool", "id": "send_email"}, "evaluations": []}`, nil,
			evalOutput{Kind: "authzen", Reasons: []string{"tool_not_on_agent_server", "unknown_agent", "user_lacks_scope"}}},
		{"a policy input said to be one", aliceSendsMail, []string{"--kind", "input"}, evalOutput{Kind: "input", Allow: true, Reasons: []string{"allowed"}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, _ := runEvalOn(t, tc.input, tc.args...)
			got := evalOutput{Kind: out.Kind, Allow: out.Allow, Reasons: out.Reasons}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}

	refused := []struct {
		name, input string
		args        []string
		errText     string
	}{
		{"native body without a tool name", `{"agent": {"id": "a"}, "tool": {}}`, nil, "invalid_request: tool.name: required"},
		{"AuthZEN body without a subject type", `{"subject": {"id": "alice"}, "action": {"name": "x"}, "resource": {"type": "t", "id": "r"}, "options": {}}`, nil, "subject.type"},
		{"AuthZEN batch", `{"subject": {"type": "user", "id": "alice"}, "evaluations": [{"action": {"name": "x"}}]}`, nil, "eval decides one evaluation"},
		{"a native body said to be a policy input", nativeMail, []string{"--kind", "input"}, `unknown field "user"`},
		{"an unknown kind", aliceSendsMail, []string{"--kind", "guess"}, `--kind "guess"`},
		{"not an object", `[1]`, nil, "not a policy input object"},
		{"not JSON", `{`, nil, "not a policy input object (nor a /v1/authorize body, an AuthZEN evaluation request or a decision record): unexpected end of JSON input"},
	}
	for _, tc := range refused {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "input.json")
			bundletest.WriteFile(t, path, []byte(tc.input))
			var stdout, stderr bytes.Buffer
			err := run(t.Context(), append([]string{"eval", "--input", path}, tc.args...), &stdout, &stderr)
			if code := exitCode(err, &stderr); code != 2 || !strings.Contains(err.Error(), tc.errText) {
				t.Fatalf("exit %d, %v; want 2 and %q", code, err, tc.errText)
			}
			if stdout.Len() != 0 {
				t.Errorf("printed a decision for a refused input: %s", stdout.String())
			}
		})
	}
}

// TestEvalReDecidesRecord: a decision record from the stream is re-decided under a candidate
// policy set with the identity it proved then (a verified delegation stays verified), and eval
// says whether the decision changed.
func TestEvalReDecidesRecord(t *testing.T) {
	dir := t.TempDir()
	token, _ := devToken(t, "--out", dir, "--act", "spiffe://acme.example/agents/ops", "--scope", "payments.send files.write", "--quiet")
	srv, mem := devIssuerServer(t, filepath.Join(dir, devIssuerJWKSFile))
	transfer := `{"agent": {"id": "spiffe://acme.example/agents/ops"}, "tool": {"name": "transfer_funds", "server": "payments", "arguments": {"amount": 1200, "currency": "EUR"}}}`
	if rr := post(t, srv, server.EndpointAuthorize, token, transfer); rr.Code != http.StatusOK {
		t.Fatalf("authorize: %d %s", rr.Code, rr.Body)
	}
	if rr := post(t, srv, server.EndpointAuthorize, "not.a.token", transfer); rr.Code != http.StatusUnauthorized {
		t.Fatalf("authorize with a bad token: %d %s", rr.Code, rr.Body)
	}
	recs := mem.Records()
	if len(recs) != 2 || !recs[0].Allow || !recs[0].Delegation.Verified {
		t.Fatalf("records %+v, want an allow on a verified delegation, then a refusal", recs)
	}
	allowed, _ := json.Marshal(recs[0])
	refusal, _ := json.Marshal(recs[1])

	strict := filepath.Join(dir, "strict.tar.gz")
	bundletest.Write(t, bundletest.New(t, "strict-1", nil, map[string]string{"authz.rego": "package custody.authz\n\ndecision := {\"allow\": false, \"reasons\": [\"frozen\"]}\n"}, nil), strict)

	yes, no := true, false
	recorded := &recordedDecision{DecisionID: recs[0].DecisionID, Allow: true, Reasons: recs[0].Reasons, Obligations: map[string]any{"approval_channels": []any{"approver_cli", "signed_url"}, "approval_reason": "high_risk_tool", "require_approval": true}, Revision: recs[0].Policy.Revision}
	tests := []struct {
		name string
		args []string
		want evalOutput
	}{
		{"the same policy set decides the same", nil, evalOutput{Kind: "record", Allow: true, Reasons: recs[0].Reasons, Obligations: recorded.Obligations, Recorded: recorded, Changed: &no}},
		{"a candidate set that denies", []string{"--policies", strict}, evalOutput{Kind: "record", Reasons: []string{"frozen"}, Recorded: recorded, Changed: &yes}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, stderr := runEvalOn(t, string(allowed), tc.args...)
			out.Revision, out.Query = "", ""
			if diff := cmp.Diff(tc.want, out); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
			if !strings.HasPrefix(stderr, "custody eval: read a decision record (decision "+recs[0].DecisionID) {
				t.Errorf("stderr %q does not say it read a record", stderr)
			}
			if wantWord := map[bool]string{true: "changed", false: "unchanged"}[*tc.want.Changed]; !strings.Contains(stderr, "the decision is "+wantWord) && !strings.Contains(stderr, "the decision "+wantWord) {
				t.Errorf("stderr %q does not say the decision %s", stderr, wantWord)
			}
		})
	}

	var stdout, stderr bytes.Buffer
	path := filepath.Join(dir, "refusal.json")
	bundletest.WriteFile(t, path, refusal)
	err := run(t.Context(), []string{"eval", "--input", path}, &stdout, &stderr)
	if code := exitCode(err, &stderr); code != 2 || !strings.Contains(err.Error(), "nothing to re-decide") {
		t.Errorf("a refusal record: exit %d, %v; want 2, nothing to re-decide", code, err)
	}
}
