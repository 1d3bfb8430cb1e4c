package server_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/lestrrat-go/jwx/v3/jwk"
	"github.com/lestrrat-go/jwx/v3/jwt"

	"github.com/custodyhq/custody/decisionlog"
	"github.com/custodyhq/custody/identity"
	"github.com/custodyhq/custody/server"
)

// fakeLookup finds decisions that another instance made.
type fakeLookup map[string]*decisionlog.Record

func (f fakeLookup) Lookup(_ context.Context, id, _ string) (*decisionlog.Record, error) {
	return f[id], nil
}

func TestExecutions(t *testing.T) {
	iss := testIssuer(t)
	other := &decisionlog.Record{Schema: decisionlog.SchemaDecisionV1, DecisionID: "elsewhere", CorrelationID: "c-other", Allow: true, Timestamp: fixedNow}
	pub := &decisionlog.Memory{}
	s := server.New(engine(t), pub, decisionlog.NewIntentHasher(testKey),
		server.WithIDFunc(sequentialIDs()),
		server.WithClock(func() time.Time { return fixedNow }),
		server.WithInstance(decisionlog.Instance{Instance: "test-instance", Version: "test"}),
		server.WithReceipts(iss),
		server.WithDecisionLookup(fakeLookup{"elsewhere": other}),
	)
	h := s.Handler()

	allow := do(t, h, "POST", "/v1/authorize", "application/json", exampleRequest)
	if allow.Status != http.StatusOK || allow.Body["allow"] != true {
		t.Fatalf("authorize: %d %s", allow.Status, allow.Raw)
	}
	tok, _ := allow.Body["receipt"].(string)
	if tok == "" || allow.Header.Get(server.HeaderReceipt) != tok {
		t.Fatalf("allow carries no receipt in body and header: %s", allow.Raw)
	}
	jwks := do(t, h, "GET", server.EndpointJWKS, "", "")
	set, err := jwk.Parse([]byte(jwks.Raw))
	if err != nil {
		t.Fatalf("jwks: %v: %s", err, jwks.Raw)
	}
	// The test clock is fixed in the past, so check the signature and claims at that time.
	got, err := jwt.Parse([]byte(tok), jwt.WithKeySet(set), jwt.WithClock(jwt.ClockFunc(func() time.Time { return fixedNow })))
	if err != nil {
		t.Fatalf("receipt does not verify: %v", err)
	}
	if jti, _ := got.JwtID(); jti != allow.Body["decision_id"] {
		t.Errorf("receipt jti %q, decision %v", jti, allow.Body["decision_id"])
	}
	deny := do(t, h, "POST", "/v1/authorize", "application/json", `{"agent":{"id":"spiffe://acme.example/agents/mailer"},"user":{"id":"bob"},"tool":{"name":"delete_file"}}`)
	if deny.Body["allow"] != false || deny.Body["receipt"] != nil || deny.Header.Get(server.HeaderReceipt) != "" {
		t.Fatalf("deny: %s", deny.Raw)
	}
	allowID, denyID := allow.Body["decision_id"].(string), deny.Body["decision_id"].(string)

	for _, tc := range []struct {
		name, body, violation string
		status                int
	}{
		{"after allow", `{"decision_id":"` + allowID + `","status":"succeeded","target":{"system":"mail","request_id":"m-1"},"started_at":"2026-11-27T06:00:01Z","finished_at":"2026-11-27T06:00:02Z"}`, "", 200},
		{"after deny", `{"decision_id":"` + denyID + `","status":"succeeded","target":{"system":"fs"}}`, decisionlog.ViolationExecutedAfterDeny, 200},
		{"unknown", `{"decision_id":"nope","correlation_id":"c-9","status":"failed","target":{"system":"fs"},"error":"boom"}`, decisionlog.ViolationUnknownDecision, 200},
		// A finish after the report's arrival is a claim, not a late execution (arrival decides
		// decision_expired: TestExecutionReportsAreBound).
		{"finished after arrival", `{"decision_id":"` + allowID + `","status":"succeeded","target":{"system":"mail"},"finished_at":"2026-11-27T06:10:00Z"}`, "", 400},
		{"from another instance", `{"decision_id":"elsewhere","status":"skipped","target":{"system":"mail"}}`, "", 200},
		{"bad status", `{"decision_id":"` + allowID + `","status":"done","target":{"system":"mail"}}`, "", 400},
		{"no system", `{"decision_id":"` + allowID + `","status":"failed","target":{}}`, "", 400},
		{"no decision", `{"status":"failed","target":{"system":"mail"}}`, "", 400},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(pub.Records())
			r := do(t, h, "POST", server.EndpointExecutions, "application/json", tc.body)
			if r.Status != tc.status {
				t.Fatalf("status %d, want %d: %s", r.Status, tc.status, r.Raw)
			}
			recs := pub.Records()
			if tc.status != 200 {
				if len(recs) != before {
					t.Fatal("a refused report was recorded")
				}
				return
			}
			rec := recs[len(recs)-1]
			if rec.Schema != decisionlog.SchemaExecutionV1 || rec.Execution == nil {
				t.Fatalf("last record is not an execution: %+v", rec)
			}
			if diff := cmp.Diff(tc.violation, rec.Execution.Violation); diff != "" {
				t.Errorf("violation (-want +got):\n%s", diff)
			}
			if r.Body["execution_id"] != rec.ExecutionID || rec.ExecutionID == rec.DecisionID {
				t.Errorf("execution_id %v, record %q", r.Body["execution_id"], rec.ExecutionID)
			}
			if tc.name == "after allow" {
				if rec.CorrelationID != allow.Body["correlation_id"] || rec.AgentID() != "spiffe://acme.example/agents/mailer" || rec.Action.Name != "send_email" || rec.Task == nil || rec.Task.ID != "t-42" {
					t.Errorf("execution not linked to its decision: %+v", rec)
				}
				if want := "custody.execution.succeeded.spiffe___acme_example_agents_mailer.send_email." + decisionlog.Token(rec.CorrelationID); decisionlog.RecordSubject(&rec) != want {
					t.Errorf("subject %s, want %s", decisionlog.RecordSubject(&rec), want)
				}
			}
		})
	}
}

// BenchmarkAuthorizeReceipt is the in-memory cost of an allow with and without its receipt.
func BenchmarkAuthorizeReceipt(b *testing.B) {
	iss := testIssuer(b)
	for _, tc := range []struct {
		name string
		opts []server.Option
	}{{"without", nil}, {"with", []server.Option{server.WithReceipts(iss)}}} {
		b.Run(tc.name, func(b *testing.B) {
			h := server.New(engine(b), &discard{}, decisionlog.NewIntentHasher(testKey), tc.opts...).Handler()
			b.ReportAllocs()
			for b.Loop() {
				rec := httptest.NewRecorder()
				h.ServeHTTP(rec, jsonRequest(server.EndpointAuthorize, exampleRequest))
				if rec.Code != http.StatusOK {
					b.Fatal(rec.Code)
				}
			}
		})
	}
}

// BenchmarkExecution is the in-memory cost of one execution report of a remembered decision.
func BenchmarkExecution(b *testing.B) {
	h := server.New(engine(b), &discard{}, decisionlog.NewIntentHasher(testKey)).Handler()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, jsonRequest(server.EndpointAuthorize, exampleRequest))
	var a struct {
		DecisionID string `json:"decision_id"`
	}
	_ = json.Unmarshal(rec.Body.Bytes(), &a)
	body := `{"decision_id":"` + a.DecisionID + `","status":"succeeded","target":{"system":"mail","request_id":"m-1"}}`
	b.ReportAllocs()
	for b.Loop() {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, jsonRequest(server.EndpointExecutions, body))
		if rec.Code != http.StatusOK || strings.Contains(rec.Body.String(), "violation") {
			b.Fatal(rec.Code, rec.Body.String())
		}
	}
}

// discard is a Publisher that keeps nothing, for benchmarks.
type discard struct{}

func (discard) Publish(context.Context, *decisionlog.Record) error { return nil }
func (discard) Close(context.Context) error                        { return nil }

func jsonRequest(path, body string) *http.Request {
	r := httptest.NewRequest(http.MethodPost, path, strings.NewReader(body))
	r.Header.Set("Content-Type", "application/json")
	return r
}

// TestExecutionReportsAreBound: a report is evidence against a decision, so only whoever holds
// the decision's receipt, or made the decision, may file one; and the times it reports cannot
// move a late execution into the decision's window. Once any caller could report on anyone's
// decision, and a report claiming finished_at inside the window hid a late execution.
func TestExecutionReportsAreBound(t *testing.T) {
	iss := testIssuer(t)
	var keyLines []string
	creds := map[string]string{}
	for _, name := range []string{"gateway", "intruder"} {
		k, line, err := identity.NewAPIKey(name)
		if err != nil {
			t.Fatal(err)
		}
		creds[name], keyLines = k, append(keyLines, line)
	}
	keys, err := identity.ParseAPIKeys(strings.NewReader(strings.Join(keyLines, "\n")+"\n"), "test")
	if err != nil {
		t.Fatal(err)
	}
	now := fixedNow
	pub := &decisionlog.Memory{}
	s := server.New(engine(t), pub, decisionlog.NewIntentHasher(testKey),
		server.WithIDFunc(sequentialIDs()),
		server.WithClock(func() time.Time { return now }),
		server.WithReceipts(iss), server.WithAPIKeys(keys), server.WithRequireAuth(true),
	)
	h := s.Handler()
	as := func(name string) []string { return []string{"X-API-Key", creds[name]} }
	allow := do(t, h, "POST", "/v1/authorize", "application/json", exampleRequest, as("gateway")...)
	if allow.Status != http.StatusOK || allow.Body["allow"] != true {
		t.Fatalf("authorize: %d %s", allow.Status, allow.Raw)
	}
	id, tok := allow.Body["decision_id"].(string), allow.Body["receipt"].(string)
	report := func(extra string) string {
		return `{"decision_id":"` + id + `","status":"succeeded","target":{"system":"mail"}` + extra + `}`
	}
	ts := func(d time.Duration) string { return fixedNow.Add(d).Format(time.RFC3339) }

	for _, tc := range []struct {
		name      string
		arrival   time.Duration // after the decision
		body      string
		headers   []string
		status    int
		violation string
	}{
		{name: "by the decision's caller", body: report(""), headers: as("gateway"), status: 200},
		{name: "by another caller", body: report(""), headers: as("intruder"), status: http.StatusForbidden},
		{name: "by another caller with the receipt in the body", body: report(`,"receipt":"` + tok + `"`), headers: as("intruder"), status: 200},
		{name: "by another caller with the receipt in the header", body: report(""), headers: append(as("intruder"), server.HeaderReceipt, tok), status: 200},
		{name: "by another caller with a forged receipt", body: report(`,"receipt":"` + tok[:len(tok)-4] + `AAAA"`), headers: as("intruder"), status: http.StatusForbidden},
		{name: "finished in the future", body: report(`,"finished_at":"` + ts(time.Hour) + `"`), headers: as("gateway"), status: http.StatusBadRequest},
		{name: "started before the decision", body: report(`,"started_at":"` + ts(-time.Hour) + `"`), headers: as("gateway"), status: http.StatusBadRequest},
		{name: "late, claiming a time in the window", arrival: 10 * time.Minute, body: report(`,"started_at":"` + ts(time.Second) + `","finished_at":"` + ts(2*time.Second) + `"`),
			headers: as("gateway"), status: 200, violation: decisionlog.ViolationDecisionExpired},
		{name: "in the window", arrival: 4 * time.Minute, body: report(`,"finished_at":"` + ts(3*time.Minute) + `"`), headers: as("gateway"), status: 200},
	} {
		t.Run(tc.name, func(t *testing.T) {
			now = fixedNow.Add(tc.arrival)
			before := len(pub.Records())
			r := do(t, h, "POST", server.EndpointExecutions, "application/json", tc.body, tc.headers...)
			if r.Status != tc.status {
				t.Fatalf("status %d, want %d: %s", r.Status, tc.status, r.Raw)
			}
			recs := pub.Records()
			if tc.status != 200 {
				if len(recs) != before {
					t.Fatal("a refused report was recorded")
				}
				return
			}
			rec := recs[len(recs)-1]
			if diff := cmp.Diff(tc.violation, rec.Execution.Violation); diff != "" {
				t.Errorf("violation (-want +got):\n%s", diff)
			}
			if tc.violation != "" && (rec.Execution.FinishedAt == nil || !rec.Execution.FinishedAt.Equal(fixedNow.Add(2*time.Second))) {
				t.Errorf("finished_at %v, want it kept as reported", rec.Execution.FinishedAt)
			}
		})
	}
}
