package server_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/custodyhq/custody/decisionlog"
	"github.com/custodyhq/custody/identity"
	"github.com/custodyhq/custody/internal/tokentest"
	"github.com/custodyhq/custody/pdp"
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
	  "action":{"name":"send_email","properties":{"server":"mail"}},"resource":{"type":"tool","id":"send_email"},
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

const partnerName = "https://idp.partner.example"

// twoIssuers is a server trusting the acme and the partner issuer; partnerSubjects, when set,
// is the partner's subject pattern.
func twoIssuers(t *testing.T, partnerSubjects string, opts ...server.Option) (acme, partner *tokentest.Issuer, mem *decisionlog.Memory, srv *server.Server) {
	t.Helper()
	acme, partner = tokentest.NewIssuer(t, idpName), tokentest.NewIssuer(t, partnerName)
	dir := t.TempDir()
	acme.WriteJWKS(t, filepath.Join(dir, "acme.json"))
	partner.WriteJWKS(t, filepath.Join(dir, "partner.json"))
	v, err := identity.NewVerifier(identity.Config{Issuers: []identity.Issuer{
		{Issuer: idpName, JWKS: filepath.Join(dir, "acme.json")},
		{Issuer: partnerName, JWKS: filepath.Join(dir, "partner.json"), Subjects: partnerSubjects},
	}, Audience: audience})
	if err != nil {
		t.Fatal(err)
	}
	mem = &decisionlog.Memory{}
	srv = server.New(engine(t), mem, decisionlog.NewIntentHasher(testKey), append([]server.Option{server.WithTokenVerifier(v)}, opts...)...)
	return acme, partner, mem, srv
}

// TestCrossIssuerImpersonation: with two trusted issuers, a token from the second naming
// alice@acme.example is not alice (issue 16: it was allowed). The default policy binds
// acme.example to its issuer; an issuer's subject pattern refuses the token outright.
func TestCrossIssuerImpersonation(t *testing.T) {
	claims := func(sub string) tokentest.Claims {
		return tokentest.Claims{"sub": sub, "aud": audience, "scope": "mail.send", "act": map[string]any{"sub": mailerID}}
	}
	t.Run("default policy", func(t *testing.T) {
		acme, partner, mem, srv := twoIssuers(t, "")
		r := do(t, srv.Handler(), http.MethodPost, "/v1/authorize", "application/json", bareRequest, "Authorization", "Bearer "+partner.Token(t, claims("alice@acme.example")))
		if r.Status != 200 || r.Body["allow"] != false || !strings.Contains(r.Raw, "subject_issuer_not_trusted") {
			t.Fatalf("partner's alice: status %d %s, want a subject_issuer_not_trusted deny", r.Status, r.Raw)
		}
		r = do(t, srv.Handler(), http.MethodPost, "/v1/authorize", "application/json", bareRequest, "Authorization", "Bearer "+acme.Token(t, claims("alice@acme.example")))
		if r.Status != 200 || r.Body["allow"] != true {
			t.Fatalf("acme's alice: status %d %s, want an allow", r.Status, r.Raw)
		}
		recs := mem.Records()
		for i, want := range []string{partnerName, idpName} {
			if got := recs[i].Subject.Properties["iss"]; got != want {
				t.Errorf("record %d: subject.properties.iss = %v, want %s", i, got, want)
			}
		}
	})
	t.Run("subject pattern", func(t *testing.T) {
		_, partner, mem, srv := twoIssuers(t, `[^@]+@partner\.example`)
		r := do(t, srv.Handler(), http.MethodPost, "/v1/authorize", "application/json", bareRequest, "Authorization", "Bearer "+partner.Token(t, claims("alice@acme.example")))
		e, _ := r.Body["error"].(map[string]any)
		if r.Status != http.StatusForbidden || e["code"] != server.CodeSubjectNotAllowed || r.Body["allow"] != false {
			t.Fatalf("status %d %s, want 403 subject_not_allowed", r.Status, r.Raw)
		}
		if recs := mem.Records(); len(recs) != 1 || recs[0].Allow || recs[0].Reasons[0] != server.CodeSubjectNotAllowed {
			t.Fatalf("records %+v, want one refused subject_not_allowed attempt", recs)
		}
	})
}

// TestAssertedIssuerIsDropped: only a token sets subject.properties.iss; a body claiming one is
// not believed, so a policy may trust the property.
func TestAssertedIssuerIsDropped(t *testing.T) {
	spy := &spyDecider{}
	mem := &decisionlog.Memory{}
	srv := server.New(spy, mem, decisionlog.NewIntentHasher(testKey))
	body := `{"agent":{"id":"spiffe://acme.example/agents/mailer"},"user":{"id":"alice@acme.example","properties":{"iss":"https://idp.acme.example","scopes":["mail.send"]}},
	  "tool":{"name":"send_email","server":"mail"}}`
	r := do(t, srv.Handler(), http.MethodPost, "/v1/authorize", "application/json", body)
	if r.Status != 200 {
		t.Fatalf("status %d %s", r.Status, r.Raw)
	}
	if got := spy.inputs[0].Subject.Properties; got["iss"] != nil || got["scopes"] == nil {
		t.Fatalf("policy saw subject properties %v, want scopes without iss", got)
	}
	if got := mem.Records()[0].Subject.Properties; got["iss"] != nil {
		t.Fatalf("record subject properties %v, want no iss", got)
	}
}

// TestPolicySeesCaller: input.caller names who called, as authentication proved it (issue 16:
// the policy could not tell an anonymous caller from an API key or a certificate).
func TestPolicySeesCaller(t *testing.T) {
	f := newAuthServer(t, false)
	spy := &spyDecider{}
	srv := server.New(spy, f.mem, decisionlog.NewIntentHasher(testKey), server.WithAPIKeys(apiKeysOf(t, f.key)), server.WithTokenVerifier(verifierOf(t, f)))
	tok := f.delegationToken(t, "alice@acme.example", mailerID, "mail.send")
	tests := []struct {
		name    string
		headers []string
		want    pdp.Caller
	}{
		{"anonymous", nil, pdp.Caller{Kind: pdp.CallerAnonymous}},
		{"api key", []string{"X-API-Key", f.key}, pdp.Caller{Kind: pdp.CallerAPIKey, ID: "gateway"}},
		{"token", []string{"Authorization", "Bearer " + tok}, pdp.Caller{Kind: pdp.CallerToken, ID: "alice@acme.example"}},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := do(t, srv.Handler(), http.MethodPost, "/v1/authorize", "application/json", bareRequest, tc.headers...)
			if r.Status != 200 {
				t.Fatalf("status %d %s", r.Status, r.Raw)
			}
			got := spy.inputs[i].Caller
			if got == nil {
				t.Fatal("input.caller is missing")
			}
			if diff := cmp.Diff(tc.want, *got); diff != "" {
				t.Errorf("input.caller (-want +got):\n%s", diff)
			}
		})
	}
}

// TestEveryPresentedCredentialIsChecked: a bad credential is a 401 even beside a good one
// (issue 16: a bad bearer was ignored when an API key was valid).
func TestEveryPresentedCredentialIsChecked(t *testing.T) {
	f := newAuthServer(t, false)
	other, otherLine, err := identity.NewAPIKey("other")
	if err != nil {
		t.Fatal(err)
	}
	keys, err := identity.ParseAPIKeys(strings.NewReader(apiKeyLine(t, f.key, "gateway")+"\n"+otherLine+"\n"), "test")
	if err != nil {
		t.Fatal(err)
	}
	srv := server.New(engine(t), f.mem, decisionlog.NewIntentHasher(testKey), server.WithAPIKeys(keys), server.WithTokenVerifier(verifierOf(t, f)))
	tok := f.delegationToken(t, "alice@acme.example", mailerID, "mail.send")
	tests := []struct {
		name    string
		headers []string
		code    string
	}{
		{"bad bearer, good api key", []string{"Authorization", "Bearer cust_not-a-key", "X-API-Key", f.key}, server.CodeInvalidCredentials},
		{"forged jwt, good api key", []string{"Authorization", "Bearer a.b.c", "X-API-Key", f.key}, server.CodeInvalidToken},
		{"good jwt, bad api key", []string{"Authorization", "Bearer " + tok, "X-API-Key", "cust_not-a-key"}, server.CodeInvalidCredentials},
		{"two callers' api keys", []string{"Authorization", "Bearer " + other, "X-API-Key", f.key}, server.CodeInvalidCredentials},
		{"empty api key", []string{"X-API-Key", ""}, server.CodeInvalidCredentials},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req := httptest.NewRequest(http.MethodPost, "/v1/authorize", strings.NewReader(bareRequest))
			req.Header.Set("Content-Type", "application/json")
			for i := 0; i+1 < len(tc.headers); i += 2 {
				req.Header[http.CanonicalHeaderKey(tc.headers[i])] = []string{tc.headers[i+1]}
			}
			rec := httptest.NewRecorder()
			srv.Handler().ServeHTTP(rec, req)
			if rec.Code != http.StatusUnauthorized || !strings.Contains(rec.Body.String(), `"code":"`+tc.code+`"`) {
				t.Fatalf("status %d %s, want 401 %s", rec.Code, rec.Body, tc.code)
			}
		})
	}
	// Both credentials good: the token names the caller, the key is still checked.
	r := do(t, srv.Handler(), http.MethodPost, "/v1/authorize", "application/json", bareRequest, "Authorization", "Bearer "+tok, "X-API-Key", f.key)
	if r.Status != 200 || r.Body["allow"] != true {
		t.Fatalf("good token and key: status %d %s", r.Status, r.Raw)
	}
	if recs := f.mem.Records(); recs[len(recs)-1].Caller.Method != server.AuthJWT {
		t.Fatalf("caller %+v, want the token to name it", recs[len(recs)-1].Caller)
	}
}

func apiKeyLine(t *testing.T, key, name string) string {
	t.Helper()
	sum := sha256.Sum256([]byte(key))
	return name + " " + hex.EncodeToString(sum[:])
}

func apiKeysOf(t *testing.T, key string) *identity.APIKeys {
	t.Helper()
	k, err := identity.ParseAPIKeys(strings.NewReader(apiKeyLine(t, key, "gateway")+"\n"), "test")
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func verifierOf(t *testing.T, f *authFixture) *identity.Verifier {
	t.Helper()
	path := filepath.Join(t.TempDir(), "jwks.json")
	f.idp.WriteJWKS(t, path)
	v, err := identity.NewVerifier(identity.Config{Issuers: []identity.Issuer{{Issuer: idpName, JWKS: path}}, Audience: audience})
	if err != nil {
		t.Fatal(err)
	}
	return v
}
