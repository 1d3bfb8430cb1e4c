package server_test

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/custodyhq/custody/decisionlog"
	"github.com/custodyhq/custody/identity"
	"github.com/custodyhq/custody/internal/tokentest"
	"github.com/custodyhq/custody/server"
)

const opsAgent = "spiffe://acme.example/agents/ops"

// transferRequest asks for transfer_funds (high risk) from Alice's account.
func transferRequest(amount string) string {
	return `{"agent":{"id":"` + opsAgent + `"},"tool":{"name":"transfer_funds","server":"payments","arguments":{"amount":` + amount + `,"to":"acct-9"}},
	 "resource":{"type":"account","id":"acct-1","properties":{"owner":"alice@acme.example"}}}`
}

type approvalFixture struct {
	srv       *server.Server
	mem       *decisionlog.Memory
	now       *atomic.Pointer[time.Time]
	token     string            // the ops agent acting for alice, verified
	gateway   string            // a caller API key named "gateway"
	approvers map[string]string // approver keys by name
}

func newApprovalFixture(t *testing.T) *approvalFixture {
	t.Helper()
	idp := tokentest.NewIssuer(t, idpName)
	path := filepath.Join(t.TempDir(), "jwks.json")
	idp.WriteJWKS(t, path)
	v, err := identity.NewVerifier(identity.Config{Issuers: []identity.Issuer{{Issuer: idpName, JWKS: path}}, Audience: audience})
	if err != nil {
		t.Fatal(err)
	}
	keyset := func(names ...string) (map[string]string, *identity.APIKeys) {
		keys, lines := map[string]string{}, ""
		for _, n := range names {
			k, line, err := identity.NewAPIKey(n)
			if err != nil {
				t.Fatal(err)
			}
			keys[n], lines = k, lines+line+"\n"
		}
		set, err := identity.ParseAPIKeys(strings.NewReader(lines), "test")
		if err != nil {
			t.Fatal(err)
		}
		return keys, set
	}
	callers, callerSet := keyset("gateway")
	approvers, approverSet := keyset("carol", "alice@acme.example", "gateway", opsAgent)
	f := &approvalFixture{mem: &decisionlog.Memory{}, now: &atomic.Pointer[time.Time]{}, gateway: callers["gateway"], approvers: approvers}
	start := fixedNow
	f.now.Store(&start)
	f.srv = server.New(engine(t), f.mem, decisionlog.NewIntentHasher(testKey),
		server.WithTokenVerifier(v), server.WithAPIKeys(callerSet),
		server.WithClock(func() time.Time { return *f.now.Load() }),
		server.WithApprovals(server.ApprovalConfig{Approvers: approverSet, TTL: 10 * time.Minute, LinkTTL: 2 * time.Minute}))
	f.token = idp.Token(t, tokentest.Claims{"sub": "alice@acme.example", "aud": audience, "scope": "payments.send files.write", "act": map[string]any{"sub": opsAgent}})
	return f
}

func (f *approvalFixture) advance(d time.Duration) {
	n := f.now.Load().Add(d)
	f.now.Store(&n)
}

// ask posts a call with the agent's token, and the approval ID when given.
func (f *approvalFixture) ask(t *testing.T, body, approvalID string) response {
	t.Helper()
	h := []string{"Authorization", "Bearer " + f.token}
	if approvalID != "" {
		h = append(h, server.HeaderApprovalID, approvalID)
	}
	return do(t, f.srv.Handler(), http.MethodPost, "/v1/authorize", "application/json", body, h...)
}

// open asks for transfer_funds and returns the pending approval's ID.
func (f *approvalFixture) open(t *testing.T, amount string) string {
	t.Helper()
	r := f.ask(t, transferRequest(amount), "")
	ob, _ := r.Body["obligations"].(map[string]any)
	ap, _ := r.Body["approval"].(map[string]any)
	if r.Status != 200 || r.Body["allow"] != true || ob["require_approval"] != true || ap["status"] != "pending" {
		t.Fatalf("first ask: %d %s, want an allow with require_approval and a pending approval", r.Status, r.Raw)
	}
	return ap["approval_id"].(string)
}

func (f *approvalFixture) approve(t *testing.T, id, decision string, headers ...string) response {
	t.Helper()
	return do(t, f.srv.Handler(), http.MethodPost, "/v1/approvals/"+id, "application/json", `{"decision":"`+decision+`"}`, headers...)
}

func (f *approvalFixture) last() decisionlog.Record {
	recs := f.mem.Records()
	return recs[len(recs)-1]
}

// TestOutOfBandApproval: the whole channel. The approver's answer is its own record; the
// retried call's record says how and by whom it was approved, and the obligation is lifted.
func TestOutOfBandApproval(t *testing.T) {
	f := newApprovalFixture(t)
	id := f.open(t, "100")
	ask := f.last()

	// Retrying before anyone answered names the same approval; nothing new is opened.
	r := f.ask(t, transferRequest("100"), id)
	if ap, _ := r.Body["approval"].(map[string]any); r.Status != 200 || ap["approval_id"] != id || ap["status"] != "pending" {
		t.Fatalf("early retry: %d %s, want the same pending approval", r.Status, r.Raw)
	}

	view := do(t, f.srv.Handler(), http.MethodGet, "/v1/approvals/"+id, "", "", "X-API-Key", f.approvers["carol"])
	if view.Status != 200 || view.Body["tool"] != "transfer_funds" || view.Body["subject"].(map[string]any)["id"] != "alice@acme.example" {
		t.Fatalf("approver's view: %d %s", view.Status, view.Raw)
	}

	a := f.approve(t, id, "approve", "X-API-Key", f.approvers["carol"])
	if a.Status != 200 || a.Body["status"] != "approved" {
		t.Fatalf("approve: %d %s", a.Status, a.Raw)
	}
	answer := f.last()
	if diff := cmp.Diff(&decisionlog.Approval{ID: id, Status: "approved", Approver: "carol", ApprovedVia: "approver_cli", RequestDecisionID: ask.DecisionID}, answer.Approval); diff != "" {
		t.Errorf("answer record approval (-want +got):\n%s", diff)
	}
	if answer.Endpoint != "/v1/approvals" || !answer.Allow || answer.CorrelationID != ask.CorrelationID || answer.Action.Name != "transfer_funds" ||
		answer.Caller == nil || answer.Caller.ID != "carol" {
		t.Errorf("answer record = %+v", answer)
	}

	r = f.ask(t, transferRequest("100"), id)
	if r.Status != 200 || r.Body["allow"] != true || len(r.Body["obligations"].(map[string]any)) != 0 {
		t.Fatalf("approved retry: %d %s, want an allow without obligations", r.Status, r.Raw)
	}
	done := f.last()
	if diff := cmp.Diff(&decisionlog.Approval{ID: id, Status: "used", Approver: "carol", ApprovedVia: "approver_cli", RequestDecisionID: ask.DecisionID}, done.Approval); diff != "" {
		t.Errorf("retried call's record approval (-want +got):\n%s", diff)
	}

	// Single use.
	r = f.ask(t, transferRequest("100"), id)
	if r.Status != http.StatusConflict || errCode(r) != "approval_invalid" || r.Body["allow"] == true {
		t.Fatalf("reused approval: %d %s, want 409 approval_invalid", r.Status, r.Raw)
	}
	if rec := f.last(); rec.Allow || rec.Reasons[0] != "approval_invalid" {
		t.Errorf("reuse record = %+v", rec)
	}
}

// TestApprovalAttacks: what an agent (or anyone but an approver) tries in order to approve its
// own call.
func TestApprovalAttacks(t *testing.T) {
	t.Run("approving one's own request", func(t *testing.T) {
		for _, name := range []string{"alice@acme.example", opsAgent} {
			f := newApprovalFixture(t)
			id := f.open(t, "100")
			a := f.approve(t, id, "approve", "X-API-Key", f.approvers[name])
			if a.Status != http.StatusForbidden || errCode(a) != "self_approval" {
				t.Fatalf("%s approves: %d %s, want 403 self_approval", name, a.Status, a.Raw)
			}
			if rec := f.last(); rec.Endpoint != "/v1/approvals" || rec.Allow || rec.Reasons[0] != "self_approval" {
				t.Errorf("refused answer record = %+v", rec)
			}
			if r := f.ask(t, transferRequest("100"), id); r.Body["approval"].(map[string]any)["status"] != "pending" {
				t.Errorf("after a refused self-approval the retry is %s, want still pending", r.Raw)
			}
		}
	})
	t.Run("a denied call opens no approval", func(t *testing.T) {
		f := newApprovalFixture(t)
		body := `{"agent":{"id":"` + opsAgent + `"},"user":{"id":"bob@acme.example","properties":{"scopes":["payments.send"]}},
		  "tool":{"name":"transfer_funds","server":"payments","arguments":{"amount":1}},"resource":{"type":"account","id":"b","properties":{"owner":"bob@acme.example"}}}`
		r := do(t, f.srv.Handler(), http.MethodPost, "/v1/authorize", "application/json", body, "X-API-Key", f.gateway)
		if r.Body["allow"] == true || r.Body["approval"] != nil {
			t.Fatalf("asserted identity for a high-risk tool: %s, want a deny and no approval", r.Raw)
		}
	})
	t.Run("unauthenticated or non-approver callers", func(t *testing.T) {
		f := newApprovalFixture(t)
		id := f.open(t, "100")
		cases := []struct {
			name    string
			headers []string
			code    string
		}{
			{"no credential", nil, "unauthenticated"},
			{"a caller's API key", []string{"X-API-Key", f.gateway}, "invalid_credentials"},
			{"the agent's own token", []string{"Authorization", "Bearer " + f.token}, "invalid_credentials"},
			{"a made-up key", []string{"X-API-Key", "cust_nope"}, "invalid_credentials"},
		}
		for _, tc := range cases {
			a := f.approve(t, id, "approve", tc.headers...)
			if a.Status != http.StatusUnauthorized || errCode(a) != tc.code {
				t.Errorf("%s: %d %s, want 401 %s", tc.name, a.Status, a.Raw, tc.code)
			}
			if g := do(t, f.srv.Handler(), http.MethodGet, "/v1/approvals/"+id, "", "", tc.headers...); g.Status != http.StatusUnauthorized {
				t.Errorf("%s reads the approval: %d", tc.name, g.Status)
			}
			if l := do(t, f.srv.Handler(), http.MethodPost, "/v1/approvals/"+id+"/link", "", "", tc.headers...); l.Status != http.StatusUnauthorized {
				t.Errorf("%s mints a link: %d", tc.name, l.Status)
			}
		}
		if rec := f.last(); rec.Allow || rec.Reasons[0] != "authentication_failed" || rec.Endpoint != "/v1/approvals" {
			t.Errorf("refused answer record = %+v", rec)
		}
		if r := f.ask(t, transferRequest("100"), id); r.Body["approval"].(map[string]any)["status"] != "pending" {
			t.Errorf("retry after refused answers = %s, want still pending", r.Raw)
		}
	})
	t.Run("replay for different arguments, tool or caller", func(t *testing.T) {
		f := newApprovalFixture(t)
		id := f.open(t, "100")
		if a := f.approve(t, id, "approve", "X-API-Key", f.approvers["carol"]); a.Status != 200 {
			t.Fatal(a.Raw)
		}
		deleteFile := `{"agent":{"id":"` + opsAgent + `"},"tool":{"name":"delete_file","server":"filesystem","arguments":{"path":"/a"}},
		  "resource":{"type":"file","id":"/a","properties":{"owner":"alice@acme.example"}}}`
		otherResource := strings.Replace(transferRequest("100"), "acct-1", "acct-2", 1)
		for name, body := range map[string]string{"arguments": transferRequest("100000"), "tool": deleteFile, "resource": otherResource} {
			r := f.ask(t, body, id)
			if r.Status != http.StatusConflict || errCode(r) != "approval_invalid" || r.Body["allow"] == true {
				t.Errorf("other %s: %d %s, want 409 approval_invalid", name, r.Status, r.Raw)
			}
		}
		// The approval was not used up by the replays: the approved call still goes through once.
		if r := f.ask(t, transferRequest("100"), id); r.Body["allow"] != true || len(r.Body["obligations"].(map[string]any)) != 0 {
			t.Errorf("approved call after replays: %s", r.Raw)
		}
	})
	t.Run("expired approval", func(t *testing.T) {
		f := newApprovalFixture(t)
		id := f.open(t, "100")
		f.advance(11 * time.Minute)
		a := f.approve(t, id, "approve", "X-API-Key", f.approvers["carol"])
		if a.Status != http.StatusConflict || errCode(a) != "approval_closed" {
			t.Fatalf("late answer: %d %s", a.Status, a.Raw)
		}
		if rec := f.last(); rec.Reasons[0] != "approval_expired" {
			t.Errorf("late answer record reasons %v", rec.Reasons)
		}
		if r := f.ask(t, transferRequest("100"), id); errCode(r) != "approval_invalid" {
			t.Errorf("retry with an expired approval: %s", r.Raw)
		}
	})
	t.Run("declined", func(t *testing.T) {
		f := newApprovalFixture(t)
		id := f.open(t, "100")
		if a := f.approve(t, id, "deny", "X-API-Key", f.approvers["carol"]); a.Status != 200 || a.Body["status"] != "declined" {
			t.Fatal(a.Raw)
		}
		if rec := f.last(); rec.Allow || rec.Reasons[0] != "approval_declined" {
			t.Errorf("decline record = %+v", rec)
		}
		if a := f.approve(t, id, "approve", "X-API-Key", f.approvers["carol"]); errCode(a) != "approval_closed" {
			t.Errorf("approve after decline: %s", a.Raw)
		}
		if r := f.ask(t, transferRequest("100"), id); errCode(r) != "approval_invalid" {
			t.Errorf("retry after decline: %s", r.Raw)
		}
	})
	t.Run("elicitation answer for a high-risk tool", func(t *testing.T) {
		f := newApprovalFixture(t)
		id := f.open(t, "100")
		// Anyone but the caller that asked may not relay an elicitation answer...
		if a := do(t, f.srv.Handler(), http.MethodPost, "/v1/approvals/"+id, "application/json", `{"decision":"approve","via":"mcp_elicitation"}`, "X-API-Key", f.gateway); a.Status != http.StatusForbidden || errCode(a) != "not_approver" {
			t.Errorf("another caller relays: %d %s", a.Status, a.Raw)
		}
		// ...and when it does, the answer is recorded for what it is and does not approve.
		a := do(t, f.srv.Handler(), http.MethodPost, "/v1/approvals/"+id, "application/json", `{"decision":"approve","via":"mcp_elicitation"}`, "Authorization", "Bearer "+f.token)
		if a.Status != 200 || a.Body["approved_via"] != "mcp_elicitation" || a.Body["approver"] != "alice@acme.example" {
			t.Fatalf("relay: %d %s", a.Status, a.Raw)
		}
		r := f.ask(t, transferRequest("100"), id)
		ob, _ := r.Body["obligations"].(map[string]any)
		if r.Status != 200 || ob["require_approval"] != true {
			t.Fatalf("high-risk retry with an elicitation answer: %s, want require_approval still", r.Raw)
		}
		if ap := f.last().Approval; ap == nil || ap.ApprovedVia != "mcp_elicitation" || ap.Status != "used" {
			t.Errorf("record approval = %+v", ap)
		}
	})
}

// TestSignedApprovalLink: an approver mints a link for a human without a key; it is single use,
// expires, cannot be forged and cannot be minted for one's own call.
func TestSignedApprovalLink(t *testing.T) {
	mint := func(t *testing.T, f *approvalFixture, id string) string {
		l := do(t, f.srv.Handler(), http.MethodPost, "/v1/approvals/"+id+"/link", "", "", "X-API-Key", f.approvers["carol"])
		if l.Status != 200 {
			t.Fatalf("mint: %d %s", l.Status, l.Raw)
		}
		u, err := url.Parse(l.Body["url"].(string))
		if err != nil {
			t.Fatal(err)
		}
		return u.RequestURI()
	}
	t.Run("approve once", func(t *testing.T) {
		f := newApprovalFixture(t)
		id := f.open(t, "100")
		link := mint(t, f, id)
		// A GET (a link previewer) shows the call and does not answer.
		req := httptestGet(t, f.srv.Handler(), link)
		if req.Code != 200 || !strings.Contains(req.Body.String(), "transfer_funds") {
			t.Fatalf("page: %d %s", req.Code, req.Body.String())
		}
		a := do(t, f.srv.Handler(), http.MethodPost, link+"&decision=approve", "", "")
		if a.Status != 200 || a.Body["approved_via"] != "signed_url" || a.Body["approver"] != "carol" {
			t.Fatalf("signed approve: %d %s", a.Status, a.Raw)
		}
		if rec := f.last(); rec.Approval.ApprovedVia != "signed_url" || rec.Caller.Method != "signed_url" {
			t.Errorf("record = %+v", rec)
		}
		again := do(t, f.srv.Handler(), http.MethodPost, link+"&decision=approve", "", "")
		if again.Status != http.StatusForbidden || errCode(again) != "approval_link_invalid" {
			t.Errorf("reused link: %d %s", again.Status, again.Raw)
		}
		if r := f.ask(t, transferRequest("100"), id); r.Body["allow"] != true || len(r.Body["obligations"].(map[string]any)) != 0 {
			t.Errorf("approved retry: %s", r.Raw)
		}
	})
	t.Run("expired, forged or foreign links", func(t *testing.T) {
		f := newApprovalFixture(t)
		id := f.open(t, "100")
		link := mint(t, f, id)
		other := f.open(t, "5")
		cases := map[string]string{
			"tampered signature": strings.Replace(link, "sig=", "sig=A", 1),
			"another approver":   strings.Replace(link, "by=carol", "by=mallory", 1),
			"another approval":   strings.Replace(link, id, other, 1),
			"later expiry":       strings.Replace(link, "exp=", "exp=9", 1),
		}
		for name, l := range cases {
			if a := do(t, f.srv.Handler(), http.MethodPost, l+"&decision=approve", "", ""); a.Status != http.StatusForbidden || errCode(a) != "approval_link_invalid" {
				t.Errorf("%s: %d %s", name, a.Status, a.Raw)
			}
		}
		f.advance(3 * time.Minute)
		if a := do(t, f.srv.Handler(), http.MethodPost, link+"&decision=approve", "", ""); a.Status != http.StatusForbidden || errCode(a) != "approval_link_invalid" {
			t.Errorf("expired link: %d %s", a.Status, a.Raw)
		}
		if r := f.ask(t, transferRequest("100"), id); r.Body["approval"].(map[string]any)["status"] != "pending" {
			t.Errorf("retry: %s, want still pending", r.Raw)
		}
	})
	t.Run("no link for one's own call", func(t *testing.T) {
		f := newApprovalFixture(t)
		id := f.open(t, "100")
		l := do(t, f.srv.Handler(), http.MethodPost, "/v1/approvals/"+id+"/link", "", "", "X-API-Key", f.approvers["alice@acme.example"])
		if l.Status != http.StatusForbidden || errCode(l) != "self_approval" {
			t.Errorf("self link: %d %s", l.Status, l.Raw)
		}
	})
}

func httptestGet(t *testing.T, h http.Handler, target string) *httptest.ResponseRecorder {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, target, nil))
	return rec
}
