package server_test

import (
	"bytes"
	"encoding/json"
	"net/http"
	"path/filepath"
	"strings"
	"testing"

	"github.com/custodyhq/custody/decisionlog"
	"github.com/custodyhq/custody/identity"
	"github.com/custodyhq/custody/internal/tokentest"
	"github.com/custodyhq/custody/server"
)

const (
	idpName  = "https://idp.acme.example"
	audience = "custody"
	mailerID = "spiffe://acme.example/agents/mailer"
)

type authFixture struct {
	idp *tokentest.Issuer
	mem *decisionlog.Memory
	srv *server.Server
	key string // a valid API key, named "gateway"
}

func newAuthServer(t *testing.T, requireAuth bool) *authFixture {
	t.Helper()
	idp := tokentest.NewIssuer(t, idpName)
	path := filepath.Join(t.TempDir(), "jwks.json")
	idp.WriteJWKS(t, path)
	v, err := identity.NewVerifier(identity.Config{Issuers: []identity.Issuer{{Issuer: idpName, JWKS: path}}, Audience: audience})
	if err != nil {
		t.Fatal(err)
	}
	key, line, err := identity.NewAPIKey("gateway")
	if err != nil {
		t.Fatal(err)
	}
	keys, err := identity.ParseAPIKeys(strings.NewReader(line+"\n"), "test")
	if err != nil {
		t.Fatal(err)
	}
	mem := &decisionlog.Memory{}
	srv := server.New(engine(t), mem, decisionlog.NewIntentHasher(testKey),
		server.WithTokenVerifier(v), server.WithAPIKeys(keys), server.WithRequireAuth(requireAuth))
	return &authFixture{idp: idp, mem: mem, srv: srv, key: key}
}

func (f *authFixture) delegationToken(t *testing.T, sub, agent string, scopes string) string {
	return f.idp.Token(t, tokentest.Claims{"sub": sub, "aud": audience, "scope": scopes, "act": map[string]any{"sub": agent}})
}

// A request whose body asserts nothing about scopes: they must come from the token.
const bareRequest = `{"agent":{"id":"spiffe://acme.example/agents/mailer"},"tool":{"name":"send_email","server":"mail"},
 "resource":{"type":"mailbox","id":"alice","properties":{"owner":"alice@acme.example"}}}`

func TestVerifiedDelegationReachesPolicyAndRecord(t *testing.T) {
	f := newAuthServer(t, true)
	tok := f.delegationToken(t, "alice@acme.example", mailerID, "mail.send")
	r := do(t, f.srv.Handler(), http.MethodPost, "/v1/authorize", "application/json", bareRequest, "Authorization", "Bearer "+tok)
	if r.Status != 200 || r.Body["allow"] != true {
		t.Fatalf("status %d %s, want an allow from the token's scopes", r.Status, r.Raw)
	}
	rec := f.mem.Records()[0]
	if !rec.Delegation.Verified || rec.Subject.ID != "alice@acme.example" || rec.AgentID() != mailerID {
		t.Fatalf("record identity = verified %v subject %q agent %q", rec.Delegation.Verified, rec.Subject.ID, rec.AgentID())
	}
	if rec.Caller == nil || rec.Caller.Method != server.AuthJWT {
		t.Fatalf("caller = %+v, want jwt", rec.Caller)
	}
	raw, _ := json.Marshal(rec)
	if bytes.Contains(raw, []byte(tok)) || bytes.Contains(raw, []byte(strings.Split(tok, ".")[2])) {
		t.Fatal("record contains the token")
	}
}

func TestBodyCannotWidenOrImpersonate(t *testing.T) {
	f := newAuthServer(t, false)
	// The token grants nothing; the body claims mail.send and admin. Body scopes are ignored.
	tok := f.delegationToken(t, "alice@acme.example", mailerID, "")
	body := `{"agent":{"id":"spiffe://acme.example/agents/mailer"},"user":{"id":"alice@acme.example","properties":{"scopes":["mail.send"],"roles":["admin"]}},
	  "tool":{"name":"send_email","server":"mail"},"context":{"delegation":{"verified":true}}}`
	r := do(t, f.srv.Handler(), http.MethodPost, "/v1/authorize", "application/json", body, "Authorization", "Bearer "+tok)
	if r.Status != 200 || r.Body["allow"] != false {
		t.Fatalf("status %d %s, want a deny: body scopes must not count", r.Status, r.Raw)
	}

	tests := []struct{ name, body string }{
		{"other user", strings.Replace(body, `"id":"alice@acme.example"`, `"id":"bob@acme.example"`, 1)},
		{"other agent", strings.Replace(body, mailerID, "spiffe://acme.example/agents/ops", 1)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newAuthServer(t, false)
			tok := f.delegationToken(t, "alice@acme.example", mailerID, "mail.send")
			r := do(t, f.srv.Handler(), http.MethodPost, "/v1/authorize", "application/json", tc.body, "Authorization", "Bearer "+tok)
			e, _ := r.Body["error"].(map[string]any)
			if r.Status != 400 || e["code"] != "identity_mismatch" || r.Body["allow"] != false {
				t.Fatalf("status %d %s, want 400 identity_mismatch", r.Status, r.Raw)
			}
			recs := f.mem.Records()
			if len(recs) != 1 || recs[0].Allow || recs[0].Reasons[0] != server.ReasonIdentityMismatch {
				t.Fatalf("records %+v, want one denied identity_mismatch attempt", recs)
			}
		})
	}
}

func TestRefusedCredentialsAreRecordedWithoutTheToken(t *testing.T) {
	tests := []struct {
		name    string
		require bool
		headers []string
		code    string
	}{
		{"garbage bearer", false, []string{"Authorization", "Bearer a.b.c"}, "invalid_token"},
		{"wrong scheme", false, []string{"Authorization", "Basic YWxpY2U6cHc="}, "invalid_token"},
		{"unknown api key", false, []string{"X-API-Key", "cust_nope"}, "invalid_credentials"},
		{"nothing when required", true, nil, "unauthenticated"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newAuthServer(t, tc.require)
			r := do(t, f.srv.Handler(), http.MethodPost, "/v1/authorize", "application/json", exampleRequest, tc.headers...)
			e, _ := r.Body["error"].(map[string]any)
			if r.Status != 401 || e["code"] != tc.code || r.Body["allow"] != false {
				t.Fatalf("status %d %s, want 401 %s", r.Status, r.Raw, tc.code)
			}
			if !strings.HasPrefix(r.Header.Get("WWW-Authenticate"), `Bearer realm="custody"`) {
				t.Errorf("WWW-Authenticate = %q", r.Header.Get("WWW-Authenticate"))
			}
			recs := f.mem.Records()
			if len(recs) != 1 || recs[0].Allow || recs[0].Reasons[0] != server.ReasonAuthenticationFailed {
				t.Fatalf("records %+v, want one denied authentication_failed attempt", recs)
			}
			if recs[0].Delegation.Verified {
				t.Fatal("a refused attempt recorded a verified delegation")
			}
			raw, _ := json.Marshal(recs[0])
			for i := 1; i < len(tc.headers); i += 2 {
				if bytes.Contains(raw, []byte(strings.TrimPrefix(tc.headers[i], "Bearer "))) {
					t.Fatalf("record contains the credential: %s", raw)
				}
			}
		})
	}
}

func TestAPIKeyCaller(t *testing.T) {
	f := newAuthServer(t, true)
	for _, h := range [][]string{{"X-API-Key", f.key}, {"Authorization", "Bearer " + f.key}} {
		r := do(t, f.srv.Handler(), http.MethodPost, "/v1/authorize", "application/json", exampleRequest, h...)
		if r.Status != 200 {
			t.Fatalf("%s: status %d %s", h[0], r.Status, r.Raw)
		}
	}
	for _, rec := range f.mem.Records() {
		if rec.Caller == nil || rec.Caller.Method != server.AuthAPIKey || rec.Caller.ID != "gateway" {
			t.Fatalf("caller %+v, want api_key gateway", rec.Caller)
		}
		if rec.Delegation.Verified {
			t.Fatal("an API key must not make asserted identities verified")
		}
	}
}

// TestAuthZENEndpointsAuthenticate: every AuthZEN endpoint takes the same credentials as
// /v1/authorize, so --require-auth cannot be bypassed through them.
func TestAuthZENEndpointsAuthenticate(t *testing.T) {
	eval := `{"subject":{"type":"user","id":"alice@acme.example","properties":{"scopes":["mail.send"]}},
	  "action":{"name":"send_email"},"resource":{"type":"tool","id":"send_email"},
	  "context":{"agent":{"id":"spiffe://acme.example/agents/mailer"}}}`
	paths := []string{"/access/v1/evaluation", "/access/v1/evaluations", "/access/v1/search/action"}
	for _, p := range paths {
		t.Run(p, func(t *testing.T) {
			f := newAuthServer(t, true)
			r := do(t, f.srv.Handler(), http.MethodPost, p, "application/json", eval)
			if r.Status != 401 || r.Header.Get("WWW-Authenticate") == "" {
				t.Fatalf("no credentials: status %d %s, want 401", r.Status, r.Raw)
			}
			if recs := f.mem.Records(); len(recs) != 1 || recs[0].Reasons[0] != server.ReasonAuthenticationFailed {
				t.Fatalf("records %+v, want one authentication_failed attempt", recs)
			}
			r = do(t, f.srv.Handler(), http.MethodPost, p, "application/json", eval, "X-API-Key", f.key)
			if r.Status != 200 {
				t.Fatalf("API key: status %d %s", r.Status, r.Raw)
			}
			for _, rec := range f.mem.Records()[1:] {
				if rec.Caller == nil || rec.Caller.ID != "gateway" {
					t.Fatalf("caller %+v, want the gateway's API key", rec.Caller)
				}
			}
		})
	}
	t.Run("token subject mismatch", func(t *testing.T) {
		f := newAuthServer(t, false)
		tok := f.delegationToken(t, "bob@acme.example", mailerID, "mail.send")
		r := do(t, f.srv.Handler(), http.MethodPost, "/access/v1/evaluation", "application/json", eval, "Authorization", "Bearer "+tok)
		e, _ := r.Body["error"].(map[string]any)
		if r.Status != 400 || e["code"] != "identity_mismatch" {
			t.Fatalf("status %d %s, want 400 identity_mismatch", r.Status, r.Raw)
		}
	})
	t.Run("verified token", func(t *testing.T) {
		f := newAuthServer(t, false)
		tok := f.delegationToken(t, "alice@acme.example", mailerID, "mail.send")
		r := do(t, f.srv.Handler(), http.MethodPost, "/access/v1/evaluation", "application/json", eval, "Authorization", "Bearer "+tok)
		if r.Status != 200 || r.Body["decision"] != true {
			t.Fatalf("status %d %s, want an allow", r.Status, r.Raw)
		}
		if rec := f.mem.Records()[0]; !rec.Delegation.Verified {
			t.Fatal("AuthZEN decision with a verified token not recorded as verified")
		}
	})
}

// TestExecutionReportsAuthenticate: a refused caller of /v1/executions is recorded as a denied
// attempt, as on every other endpoint, and never as an execution.
func TestExecutionReportsAuthenticate(t *testing.T) {
	f := newAuthServer(t, true)
	report := `{"decision_id":"d-1","status":"succeeded","target":{"system":"mail"}}`
	r := do(t, f.srv.Handler(), http.MethodPost, "/v1/executions", "application/json", report)
	if r.Status != 401 || r.Header.Get("WWW-Authenticate") == "" {
		t.Fatalf("no credentials: status %d %s, want 401", r.Status, r.Raw)
	}
	recs := f.mem.Records()
	if len(recs) != 1 || recs[0].Reasons[0] != server.ReasonAuthenticationFailed || recs[0].Endpoint != "/v1/executions" {
		t.Fatalf("records %+v, want one authentication_failed attempt on /v1/executions", recs)
	}
}
