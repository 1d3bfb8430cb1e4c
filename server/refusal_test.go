package server_test

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"sync"
	"testing"
	"testing/fstest"

	"github.com/google/go-cmp/cmp"

	"github.com/custodyhq/custody/bundles"
	"github.com/custodyhq/custody/decisionlog"
	"github.com/custodyhq/custody/identity"
	"github.com/custodyhq/custody/pdp"
	"github.com/custodyhq/custody/server"
)

// refusalPolicy allows read_file and fails to evaluate when input.context.boom is set.
const refusalPolicy = `package custody.authz

default boom := false

boom := 1 if input.context.boom

boom := 2 if input.context.boom

decision := {"allow": input.action.name == "read_file", "reasons": ["checked"], "obligations": {}} if boom == false
`

const refusalSearch = `package custody.search

actions := [{"name": "read_file"}]
`

// stubTokens verifies any JWT-shaped token as bob's, acted on by no agent.
type stubTokens struct{}

func (stubTokens) Verify(context.Context, string) (*identity.Delegation, error) {
	return &identity.Delegation{Subject: "bob", Issuer: "https://idp.example"}, nil
}

// stubKeys knows one API key, the gateway's.
type stubKeys struct{}

func (stubKeys) Lookup(key string) (string, bool) { return "gateway", key == "ck_good" }

// attemptLog keeps every record it is asked to publish and, when down, refuses them all, so that a
// test sees what an unavailable decision log was asked to make durable.
type attemptLog struct {
	mu       sync.Mutex
	down     bool
	attempts []decisionlog.Record
}

func (l *attemptLog) Publish(_ context.Context, r *decisionlog.Record) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.attempts = append(l.attempts, *r)
	if l.down {
		return errors.New("nats: no responders available for request")
	}
	return nil
}

func (l *attemptLog) Close(context.Context) error { return nil }

func (l *attemptLog) records() []decisionlog.Record {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]decisionlog.Record(nil), l.attempts...)
}

// refusedFields is what every endpoint must record alike for one refusal: who was claimed or
// proven, by which caller, under which policy, and why. Endpoint, action and resource are the
// endpoint's own.
type refusedFields struct {
	Subject    pdp.Entity
	Agent      *pdp.Agent
	Delegation pdp.Delegation
	Caller     *decisionlog.Caller
	Policy     decisionlog.PolicyRef
	Allow      bool
	Reasons    []string
	HasError   bool
}

func fieldsOf(r decisionlog.Record) refusedFields {
	return refusedFields{
		Subject: r.Subject, Agent: r.Agent, Delegation: r.Delegation, Caller: r.Caller,
		Policy: r.Policy, Allow: r.Allow, Reasons: r.Reasons, HasError: r.Error != "",
	}
}

// TestEveryEndpointRecordsARefusalAlike: the same refused call (bad credentials, a token for bob
// with a body claiming alice, a malformed body, a policy error, a decision log that is down) is
// recorded with the same subject, agent, delegation, caller, policy and reasons by every
// endpoint that decides calls. Once /access/v1/evaluation recorded an impersonation with no
// subject, agent, caller or policy.
func TestEveryEndpointRecordsARefusalAlike(t *testing.T) {
	set, err := bundles.FromFS(fstest.MapFS{
		"authz.rego":  {Data: []byte(refusalPolicy)},
		"search.rego": {Data: []byte(refusalSearch)},
	}, "refusals")
	if err != nil {
		t.Fatal(err)
	}
	eng, err := pdp.New(context.Background(), set)
	if err != nil {
		t.Fatal(err)
	}
	policy := decisionlog.PolicyRef{Query: eng.Policy().Query, Revision: eng.Policy().Revision}

	const agent = "spiffe://acme.example/agents/mailer"
	subject := `{"type": "user", "id": "alice"}`
	agentCtx := func(extra string) string { return `{"agent": {"id": "` + agent + `"}` + extra + `}` }
	// Each endpoint's body for alice and the agent calling read_file; ctx is extra context keys.
	endpoints := []struct {
		name, path string
		body       func(extra string) string
		malformed  string
	}{
		{"native", server.EndpointAuthorize, func(extra string) string {
			return `{"agent": {"id": "` + agent + `"}, "user": {"id": "alice"}, "tool": {"name": "read_file"}, "context": {` + strings.TrimPrefix(extra, ",") + `}}`
		}, `{"agent": {"id": "` + agent + `"}, "user": {"id": "alice"}}`},
		{"evaluation", server.EndpointEvaluation, func(extra string) string {
			return `{"subject": ` + subject + `, "action": {"name": "read_file"}, "resource": {"type": "tool", "id": "read_file"}, "context": ` + agentCtx(extra) + `}`
		}, `{"subject": ` + subject + `, "resource": {"type": "tool", "id": "read_file"}}`},
		{"evaluations single", server.EndpointEvaluations, func(extra string) string {
			return `{"subject": ` + subject + `, "action": {"name": "read_file"}, "resource": {"type": "tool", "id": "read_file"}, "context": ` + agentCtx(extra) + `}`
		}, `{"subject": ` + subject + `, "evaluations": 7}`},
		{"evaluations batch", server.EndpointEvaluations, func(extra string) string {
			return `{"subject": ` + subject + `, "context": ` + agentCtx(extra) + `, "evaluations": [{"action": {"name": "read_file"}, "resource": {"type": "tool", "id": "read_file"}}]}`
		}, `{"subject": ` + subject + `, "evaluations": [], "options": {"evaluations_semantic": "all"}}`},
		{"action search", server.EndpointSearchAction, func(extra string) string {
			return `{"subject": ` + subject + `, "resource": {"type": "tool", "id": "read_file"}, "context": ` + agentCtx(extra) + `}`
		}, `{"subject": ` + subject + `}`},
	}

	claimed := refusedFields{
		Subject: pdp.Entity{Type: "user", ID: "alice"},
		Agent:   &pdp.Agent{ID: agent, Type: "agent"},
		Delegation: pdp.Delegation{Chain: []any{
			map[string]any{"type": "user", "id": "alice"},
			map[string]any{"type": "agent", "id": agent},
		}},
		Policy:   policy,
		HasError: true,
	}
	with := func(f refusedFields, change func(*refusedFields)) *refusedFields {
		change(&f)
		return &f
	}
	gateway := &decisionlog.Caller{Method: server.AuthAPIKey, ID: "gateway"}
	kinds := []struct {
		name      string
		auth      string // Authorization header
		extra     string // extra context keys
		malformed bool
		down      bool
		status    int
		want      *refusedFields // nil: nothing recorded
	}{
		// A refused caller's attempt is a fixed summary (boundary_test.go): none of the body's
		// claims, only what the server knows.
		{name: "bad credentials", auth: "Bearer ck_wrong", status: http.StatusUnauthorized,
			want: &refusedFields{Delegation: pdp.Delegation{Chain: []any{}}, Policy: policy,
				Reasons: []string{server.ReasonAuthenticationFailed}, HasError: true}},
		{name: "impersonation", auth: "Bearer aaaa.bbbb.cccc", status: http.StatusBadRequest,
			want: with(claimed, func(f *refusedFields) {
				f.Caller = &decisionlog.Caller{Method: server.AuthJWT, ID: "bob"}
				f.Reasons = []string{server.ReasonIdentityMismatch}
			})},
		{name: "malformed body", auth: "Bearer ck_good", malformed: true, status: http.StatusBadRequest},
		{name: "policy error", auth: "Bearer ck_good", extra: `, "boom": true`, status: http.StatusOK,
			want: with(claimed, func(f *refusedFields) { f.Caller = gateway; f.Reasons = []string{pdp.ReasonPolicyError} })},
		{name: "decision log unavailable", auth: "Bearer ck_good", down: true, status: http.StatusServiceUnavailable,
			want: with(claimed, func(f *refusedFields) {
				f.Caller = gateway
				f.Reasons = []string{"checked"}
				f.Allow = true
				f.HasError = false
			})},
	}
	for _, k := range kinds {
		for _, ep := range endpoints {
			t.Run(k.name+"/"+ep.name, func(t *testing.T) {
				log := &attemptLog{down: k.down}
				srv := server.New(eng, log, decisionlog.NewIntentHasher(testKey),
					server.WithTokenVerifier(stubTokens{}), server.WithAPIKeys(stubKeys{}))
				body := ep.body(k.extra)
				if k.malformed {
					body = ep.malformed
				}
				r := do(t, srv.Handler(), http.MethodPost, ep.path, "application/json", body, "Authorization", k.auth)
				// A batch with an impersonating item is refused whole (TestRefusedBatchIsOneRecord).
				if r.Status != k.status {
					t.Errorf("status %d, want %d: %s", r.Status, k.status, r.Raw)
				}
				recs := log.records()
				if k.want == nil {
					if len(recs) != 0 {
						t.Errorf("%d records, want none: %+v", len(recs), recs)
					}
					return
				}
				if len(recs) != 1 {
					t.Fatalf("%d records, want 1: %+v", len(recs), recs)
				}
				if diff := cmp.Diff(*k.want, fieldsOf(recs[0])); diff != "" {
					t.Errorf("record (-want +got):\n%s", diff)
				}
				if recs[0].Endpoint != ep.path {
					t.Errorf("endpoint %q, want %q", recs[0].Endpoint, ep.path)
				}
			})
		}
	}
}
