package server_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/fstest"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/custodyhq/custody/bundles"
	"github.com/custodyhq/custody/decisionlog"
	"github.com/custodyhq/custody/pdp"
	"github.com/custodyhq/custody/server"
)

// azDocsPolicy is a small document policy for the AuthZEN tests: owners and everyone for public
// documents may do anything but delete; only admins delete. Downloads carry an obligation, and
// context.boom makes evaluation fail.
const azDocsPolicy = `package custody.authz

default allow := false

allow if {
	owner_or_public
	input.action.name != "delete"
}

allow if {
	input.action.name == "delete"
	input.subject.properties.admin == true
}

allow if boom == 3

owner_or_public if input.resource.properties.owner == input.subject.id

owner_or_public if input.resource.id in {"public-1", "public-2"}

boom := 1 if input.context.boom

boom := 2 if input.context.boom

default obligations := {}

obligations := {"watermark": true} if {
	allow
	input.action.name == "download"
}

reasons := ["allowed"] if allow

reasons := ["not_permitted"] if not allow

decision := {"allow": allow, "reasons": reasons, "obligations": obligations}
`

// azDocsSearch offers candidates for every search kind.
const azDocsSearch = `package custody.search

subjects := array.concat([{"type": "user", "id": id} | some id in ["alice", "bob", "carol"]], [{"type": "group", "id": "eng"}])

resources := [{"type": "doc", "id": id, "properties": {"owner": owner}} | some id, owner in data.docs]

actions := [{"name": "read"}, {"name": "download"}, {"name": "delete"}]
`

const azDocsData = `{"docs": {"d1": "alice", "d2": "bob", "d3": "alice", "d4": "alice", "d5": "carol"}}`

func azDocsEngine(t testing.TB) *pdp.Engine {
	t.Helper()
	set, err := bundles.FromFS(fstest.MapFS{
		"authz.rego":  {Data: []byte(azDocsPolicy)},
		"search.rego": {Data: []byte(azDocsSearch)},
		"data.json":   {Data: []byte(azDocsData)},
	}, "azdocs")
	if err != nil {
		t.Fatal(err)
	}
	e, err := pdp.New(context.Background(), set)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// spyDecider allows every request except those on a resource whose ID starts with "deny", keeps
// every input it saw, and tracks how many decisions run at once.
type spyDecider struct {
	delay time.Duration

	mu      sync.Mutex
	inputs  []*pdp.Input
	running atomic.Int64
	peak    atomic.Int64
}

func (s *spyDecider) Decide(_ context.Context, in *pdp.Input) pdp.Decision {
	n := s.running.Add(1)
	defer s.running.Add(-1)
	for p := s.peak.Load(); n > p && !s.peak.CompareAndSwap(p, n); p = s.peak.Load() {
	}
	time.Sleep(s.delay)
	s.mu.Lock()
	s.inputs = append(s.inputs, in)
	s.mu.Unlock()
	if strings.HasPrefix(in.Resource.ID, "deny") {
		return pdp.Decision{Reasons: []string{"denied"}}
	}
	return pdp.Decision{Allow: true, Reasons: []string{"allowed"}}
}

// byResource returns the inputs seen, keyed by resource ID.
func (s *spyDecider) byResource() map[string]*pdp.Input {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]*pdp.Input{}
	for _, in := range s.inputs {
		out[in.Resource.ID] = in
	}
	return out
}

// azFixture is the API over real HTTP, recording either to a real embedded JetStream (stream) or
// in memory (mem).
type azFixture struct {
	url    string
	client *http.Client
	stream jetstream.Stream
	mem    *decisionlog.Memory
}

func azJetStream(t *testing.T, d server.Decider, opts ...server.Option) *azFixture {
	t.Helper()
	hs, stream := jetstreamServerWith(t, d, opts...)
	return &azFixture{url: hs.URL, client: hs.Client(), stream: stream}
}

func azMemory(t *testing.T, d server.Decider, mem *decisionlog.Memory, opts ...server.Option) *azFixture {
	t.Helper()
	srv := server.New(d, mem, decisionlog.NewIntentHasher(testKey), opts...)
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(hs.Close)
	return &azFixture{url: hs.URL, client: hs.Client(), mem: mem}
}

type azResponse struct {
	Status int
	Header http.Header
	Body   any
	Raw    string
}

// decisionIDs splits the Custody-Decision-Id header.
func (r azResponse) decisionIDs() []string {
	h := r.Header.Get(server.HeaderDecisionID)
	if h == "" {
		return nil
	}
	return strings.Split(h, ", ")
}

func (f *azFixture) post(t *testing.T, path, body string, headers ...string) azResponse {
	t.Helper()
	return f.do(t, http.MethodPost, path, "application/json", body, headers...)
}

func (f *azFixture) do(t *testing.T, method, path, contentType, body string, headers ...string) azResponse {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, f.url+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := f.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	r := azResponse{Status: resp.StatusCode, Header: resp.Header, Raw: string(raw)}
	if err := json.Unmarshal(raw, &r.Body); err != nil {
		t.Fatalf("%s %s: response is not JSON: %v: %q", method, path, err, raw)
	}
	return r
}

// records returns every decision recorded so far: read back from the stream, or from memory.
func (f *azFixture) records(t *testing.T) []decisionlog.Record {
	t.Helper()
	if f.mem != nil {
		return f.mem.Records()
	}
	ctx := t.Context()
	info, err := f.stream.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	total := int(info.State.Msgs)
	if total == 0 {
		return nil
	}
	cons, err := f.stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	var out []decisionlog.Record
	for len(out) < total {
		batch, err := cons.Fetch(total-len(out), jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for msg := range batch.Messages() {
			n++
			var r decisionlog.Record
			if err := json.Unmarshal(msg.Data(), &r); err != nil {
				t.Fatalf("record on %s: %v", msg.Subject(), err)
			}
			if got := msg.Headers().Get("Nats-Msg-Id"); got != r.DecisionID {
				t.Fatalf("Nats-Msg-Id %q for record %s", got, r.DecisionID)
			}
			out = append(out, r)
		}
		if n == 0 {
			t.Fatalf("stream reports %d records, read %d", total, len(out))
		}
	}
	return out
}

// byDecisionID indexes records, failing on a duplicate.
func byDecisionID(t *testing.T, recs []decisionlog.Record) map[string]decisionlog.Record {
	t.Helper()
	out := map[string]decisionlog.Record{}
	for _, r := range recs {
		if _, dup := out[r.DecisionID]; dup {
			t.Fatalf("decision %s recorded twice", r.DecisionID)
		}
		out[r.DecisionID] = r
	}
	return out
}

func obj(s string) any {
	var v any
	if err := json.Unmarshal([]byte(s), &v); err != nil {
		panic(fmt.Sprintf("%v: %s", err, s))
	}
	return v
}

const (
	azAlice    = `{"type": "user", "id": "alice"}`
	azAliceDoc = `{"type": "doc", "id": "d1", "properties": {"owner": "alice"}}`
	azBobDoc   = `{"type": "doc", "id": "d2", "properties": {"owner": "bob"}}`
)

// TestAuthZENEvaluation sends single evaluations to both evaluation endpoints (the batch endpoint
// without an evaluations array is a single evaluation) and reads each decision back from the
// stream: one record, with the ID of the Custody-Decision-Id header, before the answer.
func TestAuthZENEvaluation(t *testing.T) {
	policyError := `{"status": 500, "code": "policy_error", "message": "the policy could not be evaluated, so the decision is a deny"}`
	tests := []struct {
		name      string
		body      string
		want      string // the answer; "$ID" stands for the decision ID
		wantError bool   // the record carries an evaluation error
	}{
		{
			name: "allow",
			body: `{"subject": ` + azAlice + `, "action": {"name": "read"}, "resource": ` + azAliceDoc + `}`,
			want: `{"decision": true}`,
		},
		{
			name: "deny",
			body: `{"subject": ` + azAlice + `, "action": {"name": "read"}, "resource": ` + azBobDoc + `}`,
			want: `{"decision": false}`,
		},
		{
			name: "obligations travel in the context",
			body: `{"subject": ` + azAlice + `, "action": {"name": "download"}, "resource": ` + azAliceDoc + `}`,
			want: `{"decision": true, "context": {"obligations": {"watermark": true}}}`,
		},
		{
			name:      "policy error is a deny with the error in the context",
			body:      `{"subject": ` + azAlice + `, "action": {"name": "read"}, "resource": ` + azBobDoc + `, "context": {"boom": true}}`,
			want:      `{"decision": false, "context": {"error": ` + policyError + `}}`,
			wantError: true,
		},
		{
			name: "custody_include_reasons adds decision_id and reasons",
			body: `{"subject": ` + azAlice + `, "action": {"name": "read"}, "resource": ` + azBobDoc + `, "options": {"custody_include_reasons": true}}`,
			want: `{"decision": false, "context": {"decision_id": "$ID", "reasons": ["not_permitted"]}}`,
		},
		{
			name: "unknown fields are ignored",
			body: `{"subject": {"type": "user", "id": "alice", "x": 1}, "action": {"name": "read", "y": []}, "resource": ` + azAliceDoc + `, "z": {"decision": true}, "options": {"w": 1}}`,
			want: `{"decision": true}`,
		},
		{
			// A case variant of a member is refused as a duplicate (TestStrictBodies); alone it
			// is an unknown member, ignored, and never read as the member it resembles.
			name: "keys match exactly, not case-insensitively",
			body: `{"subject": ` + azAlice + `, "action": {"name": "read"}, "resource": ` + azBobDoc + `, "context": {"Resource": ` + azAliceDoc + `}}`,
			want: `{"decision": false}`,
		},
	}
	for _, endpoint := range []string{server.EndpointEvaluation, server.EndpointEvaluations} {
		for _, tc := range tests {
			t.Run(endpoint+"/"+tc.name, func(t *testing.T) {
				f := azJetStream(t, azDocsEngine(t))
				reqID := "req-" + strings.ReplaceAll(tc.name, " ", "-")
				r := f.post(t, endpoint, tc.body, "X-Request-ID", reqID)
				if r.Status != http.StatusOK {
					t.Fatalf("status %d: %s", r.Status, r.Raw)
				}
				ids := r.decisionIDs()
				if len(ids) != 1 {
					t.Fatalf("%s = %q, want one decision ID", server.HeaderDecisionID, ids)
				}
				want := obj(strings.ReplaceAll(tc.want, "$ID", ids[0]))
				if diff := cmp.Diff(want, r.Body); diff != "" {
					t.Errorf("answer (-want +got):\n%s", diff)
				}
				if got := r.Header.Get("X-Request-ID"); got != reqID {
					t.Errorf("X-Request-ID = %q, want it echoed", got)
				}
				recs := f.records(t)
				if len(recs) != 1 {
					t.Fatalf("%d records, want 1", len(recs))
				}
				rec := recs[0]
				decision := r.Body.(map[string]any)["decision"]
				if rec.DecisionID != ids[0] || rec.Endpoint != endpoint || rec.Allow != decision || rec.RequestID != reqID {
					t.Errorf("record %s endpoint %s allow %v request %s; answered %s %v", rec.DecisionID, rec.Endpoint, rec.Allow, rec.RequestID, ids[0], decision)
				}
				if (rec.Error != "") != tc.wantError {
					t.Errorf("record error = %q, want error %v", rec.Error, tc.wantError)
				}
				if rec.Subject.ID != "alice" || rec.Subject.Type != "user" || rec.Resource.Type != "doc" {
					t.Errorf("record entities = %+v %+v", rec.Subject, rec.Resource)
				}
			})
		}
	}
}

// TestAuthZENLiftsTheAgentEnvelope: context.agent, context.task and context.correlation_id become
// the input's agent, task and correlation ID and leave the context; the task's intent reaches
// neither the policy nor the record, only its keyed hash does; the rest of the context is as sent.
func TestAuthZENLiftsTheAgentEnvelope(t *testing.T) {
	const intent = "PROMPT: forward every invoice to mallory"
	body := `{
  "subject":  {"type": "user", "id": "alice@acme.example", "properties": {"api_token": "sk-secret"}},
  "action":   {"name": "send_email", "properties": {"server": "mail"}},
  "resource": {"type": "mailbox", "id": "alice"},
  "context":  {
    "time": "2026-11-27T06:00:00Z",
    "agent": {"id": "spiffe://acme.example/agents/mailer", "properties": {"model": "m-1"}},
    "task": {"id": "t-42", "parent_id": "t-41", "attempt": 2, "session_id": "s-7", "intent": ` + quoteJSON(intent) + `},
    "correlation_id": "corr-ctx"
  }
}`
	spy := &spyDecider{}
	mem := &decisionlog.Memory{}
	f := azMemory(t, spy, mem)
	r := f.post(t, server.EndpointEvaluation, body, "X-Correlation-ID", "corr-header")
	if r.Status != http.StatusOK {
		t.Fatalf("status %d: %s", r.Status, r.Raw)
	}
	if got := r.Header.Get("X-Correlation-ID"); got != "corr-ctx" {
		t.Errorf("X-Correlation-ID = %q, want the context's corr-ctx", got)
	}
	hash := decisionlog.NewIntentHasher(testKey).Sum(intent)
	want := &pdp.Input{
		Subject:  pdp.Entity{Type: "user", ID: "alice@acme.example", Properties: map[string]any{"api_token": "sk-secret"}},
		Action:   pdp.Action{Name: "send_email", Properties: map[string]any{"server": "mail"}},
		Resource: pdp.Entity{Type: "mailbox", ID: "alice"},
		// The envelope is moved out of the context, as the native endpoint never puts it there.
		Context: map[string]any{"time": "2026-11-27T06:00:00Z"},
		Agent:   &pdp.Agent{ID: "spiffe://acme.example/agents/mailer", Type: "agent", Properties: map[string]any{"model": "m-1"}},
		Delegation: pdp.Delegation{Chain: []any{
			map[string]any{"type": "user", "id": "alice@acme.example"},
			map[string]any{"type": "agent", "id": "spiffe://acme.example/agents/mailer"},
		}},
		Task:          &pdp.Task{ID: "t-42", ParentID: "t-41", Attempt: 2, SessionID: "s-7", IntentSHA256: hash},
		CorrelationID: "corr-ctx",
		Caller:        &pdp.Caller{Kind: pdp.CallerAnonymous},
	}
	if diff := cmp.Diff(want, spy.inputs[0]); diff != "" {
		t.Errorf("policy input (-want +got):\n%s", diff)
	}
	recs := mem.Records()
	if len(recs) != 1 {
		t.Fatalf("%d records", len(recs))
	}
	rec := recs[0]
	if rec.CorrelationID != "corr-ctx" || rec.AgentID() != "spiffe://acme.example/agents/mailer" || rec.Task == nil || rec.Task.IntentSHA256 != hash {
		t.Errorf("record correlation %q agent %q task %+v", rec.CorrelationID, rec.AgentID(), rec.Task)
	}
	raw, _ := json.Marshal(rec)
	for _, leak := range []string{"forward every invoice", "sk-secret"} {
		if bytes.Contains(raw, []byte(leak)) {
			t.Errorf("record leaks %q: %s", leak, raw)
		}
	}
}

func quoteJSON(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// TestAuthZENCorrelationIDSources: the context, then X-Correlation-ID, then traceparent, then a
// minted one, as on the native endpoint.
func TestAuthZENCorrelationIDSources(t *testing.T) {
	const tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	body := func(ctx string) string {
		return `{"subject": ` + azAlice + `, "action": {"name": "read"}, "resource": ` + azAliceDoc + `, "context": ` + ctx + `}`
	}
	tests := []struct {
		name    string
		body    string
		headers []string
		want    string
	}{
		{"context wins", body(`{"correlation_id": "from-context"}`), []string{"X-Correlation-ID", "from-header", "traceparent", tp}, "from-context"},
		{"header next", body(`{}`), []string{"X-Correlation-ID", "from-header", "traceparent", tp}, "from-header"},
		{"traceparent next", body(`{}`), []string{"traceparent", tp}, "4bf92f3577b34da6a3ce929d0e0e4736"},
		{"minted last", body(`{}`), nil, "id-2"}, // id-1 is the request ID
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			mem := &decisionlog.Memory{}
			f := azMemory(t, azDocsEngine(t), mem, server.WithIDFunc(sequentialIDs()))
			r := f.post(t, server.EndpointEvaluation, tc.body, tc.headers...)
			if r.Status != http.StatusOK {
				t.Fatalf("status %d: %s", r.Status, r.Raw)
			}
			if got := r.Header.Get("X-Correlation-ID"); got != tc.want {
				t.Errorf("X-Correlation-ID = %q, want %q", got, tc.want)
			}
			if got := mem.Records()[0].CorrelationID; got != tc.want {
				t.Errorf("record correlation_id = %q, want %q", got, tc.want)
			}
		})
	}
}

// TestAuthZENEvaluationsDefaults: top-level subject, action, resource and context are defaults;
// an item's own key replaces the default whole, never merged field by field.
func TestAuthZENEvaluationsDefaults(t *testing.T) {
	type seen struct {
		Subject  pdp.Entity
		Action   pdp.Action
		Context  map[string]any
		CorrID   string
		HasAgent bool
	}
	alice := pdp.Entity{Type: "user", ID: "alice", Properties: map[string]any{"dept": "sales"}}
	tests := []struct {
		name string
		body string
		want map[string]seen // by resource ID
	}{
		{
			name: "spec example: one subject and context for all",
			body: `{"subject": {"type": "user", "id": "alice", "properties": {"dept": "sales"}}, "context": {"time": "t0"},
			  "evaluations": [
			    {"action": {"name": "can_read"}, "resource": {"type": "document", "id": "r1"}},
			    {"action": {"name": "can_read"}, "resource": {"type": "document", "id": "r2"}}]}`,
			want: map[string]seen{
				"r1": {Subject: alice, Action: pdp.Action{Name: "can_read"}, Context: map[string]any{"time": "t0"}},
				"r2": {Subject: alice, Action: pdp.Action{Name: "can_read"}, Context: map[string]any{"time": "t0"}},
			},
		},
		{
			name: "spec example: a default action overridden by one item",
			body: `{"subject": {"type": "user", "id": "alice", "properties": {"dept": "sales"}}, "action": {"name": "can_read"},
			  "evaluations": [
			    {"resource": {"type": "document", "id": "r1"}},
			    {"action": {"name": "can_edit"}, "resource": {"type": "document", "id": "r2"}}]}`,
			want: map[string]seen{
				"r1": {Subject: alice, Action: pdp.Action{Name: "can_read"}},
				"r2": {Subject: alice, Action: pdp.Action{Name: "can_edit"}},
			},
		},
		{
			name: "an item's subject replaces the default whole",
			body: `{"subject": {"type": "user", "id": "alice", "properties": {"dept": "sales"}}, "action": {"name": "a", "properties": {"p": 1}},
			  "evaluations": [
			    {"subject": {"type": "user", "id": "bob"}, "resource": {"type": "d", "id": "r1"}},
			    {"action": {"name": "b"}, "resource": {"type": "d", "id": "r2"}}]}`,
			want: map[string]seen{
				"r1": {Subject: pdp.Entity{Type: "user", ID: "bob"}, Action: pdp.Action{Name: "a", Properties: map[string]any{"p": json.Number("1")}}},
				"r2": {Subject: alice, Action: pdp.Action{Name: "b"}},
			},
		},
		{
			name: "an item's context replaces the default whole, agent and correlation ID with it",
			body: `{"subject": {"type": "user", "id": "alice", "properties": {"dept": "sales"}}, "action": {"name": "a"},
			  "context": {"time": "t0", "agent": {"id": "spiffe://a"}, "correlation_id": "c-default"},
			  "evaluations": [
			    {"resource": {"type": "d", "id": "r1"}},
			    {"resource": {"type": "d", "id": "r2"}, "context": {"time": "t1"}},
			    {"resource": {"type": "d", "id": "r3"}, "context": {"correlation_id": "c-item"}}]}`,
			want: map[string]seen{
				"r1": {Subject: alice, Action: pdp.Action{Name: "a"}, Context: map[string]any{"time": "t0"}, CorrID: "c-default", HasAgent: true},
				"r2": {Subject: alice, Action: pdp.Action{Name: "a"}, Context: map[string]any{"time": "t1"}, CorrID: "c-default"},
				"r3": {Subject: alice, Action: pdp.Action{Name: "a"}, CorrID: "c-item"},
			},
		},
		{
			name: "null defaults and null item keys count as absent",
			body: `{"subject": {"type": "user", "id": "alice", "properties": {"dept": "sales"}}, "action": null, "context": null,
			  "evaluations": [{"action": {"name": "a"}, "resource": {"type": "d", "id": "r1"}, "subject": null, "context": null}]}`,
			want: map[string]seen{
				"r1": {Subject: alice, Action: pdp.Action{Name: "a"}},
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			spy := &spyDecider{}
			mem := &decisionlog.Memory{}
			f := azMemory(t, spy, mem, server.WithIDFunc(sequentialIDs()))
			r := f.post(t, server.EndpointEvaluations, tc.body, "X-Correlation-ID", "c-header")
			if r.Status != http.StatusOK {
				t.Fatalf("status %d: %s", r.Status, r.Raw)
			}
			got := map[string]seen{}
			for id, in := range spy.byResource() {
				got[id] = seen{Subject: in.Subject, Action: in.Action, Context: in.Context, CorrID: in.CorrelationID, HasAgent: in.Agent != nil}
			}
			want := map[string]seen{}
			for id, s := range tc.want {
				if s.CorrID == "" {
					s.CorrID = "c-header"
				}
				want[id] = s
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("inputs by resource (-want +got):\n%s", diff)
			}
			if n := len(mem.Records()); n != len(tc.want) {
				t.Errorf("%d records for %d items", n, len(tc.want))
			}
		})
	}
}

// TestAuthZENEvaluationsSemantics: execute_all answers every item; the short-circuit semantics
// stop at the deciding item, which ends the answer. Exactly the executed items are on the stream,
// and the header lists their decision IDs in item order.
func TestAuthZENEvaluationsSemantics(t *testing.T) {
	items := func(ids ...string) string {
		var parts []string
		for _, id := range ids {
			parts = append(parts, `{"resource": {"type": "doc", "id": "`+id+`"}}`)
		}
		return "[" + strings.Join(parts, ", ") + "]"
	}
	tests := []struct {
		name     string
		semantic string // "" sends no options
		items    string
		want     []bool
		executed []string // resource IDs of the items on the stream, in item order
	}{
		{"execute_all by default", "", items("a0", "deny1", "a2", "deny3", "a4"), []bool{true, false, true, false, true}, []string{"a0", "deny1", "a2", "deny3", "a4"}},
		{"execute_all", "execute_all", items("a0", "deny1", "a2", "deny3", "a4"), []bool{true, false, true, false, true}, []string{"a0", "deny1", "a2", "deny3", "a4"}},
		{"deny_on_first_deny stops at the first deny", "deny_on_first_deny", items("a0", "deny1", "a2", "deny3"), []bool{true, false}, []string{"a0", "deny1"}},
		{"deny_on_first_deny without a deny runs all", "deny_on_first_deny", items("a0", "a1", "a2"), []bool{true, true, true}, []string{"a0", "a1", "a2"}},
		{"permit_on_first_permit stops at the first permit", "permit_on_first_permit", items("deny0", "deny1", "a2", "a3"), []bool{false, false, true}, []string{"deny0", "deny1", "a2"}},
		{"permit_on_first_permit first item permits", "permit_on_first_permit", items("a0", "deny1"), []bool{true}, []string{"a0"}},
		{"permit_on_first_permit without a permit runs all", "permit_on_first_permit", items("deny0", "deny1"), []bool{false, false}, []string{"deny0", "deny1"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := azJetStream(t, &spyDecider{})
			body := `{"subject": ` + azAlice + `, "action": {"name": "read"}, "evaluations": ` + tc.items
			if tc.semantic != "" {
				body += `, "options": {"evaluations_semantic": "` + tc.semantic + `"}`
			}
			r := f.post(t, server.EndpointEvaluations, body+"}")
			if r.Status != http.StatusOK {
				t.Fatalf("status %d: %s", r.Status, r.Raw)
			}
			var got []bool
			for _, e := range r.Body.(map[string]any)["evaluations"].([]any) {
				e := e.(map[string]any)
				if len(e) != 1 {
					t.Errorf("item %v carries more than the decision", e)
				}
				got = append(got, e["decision"].(bool))
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("decisions (-want +got):\n%s", diff)
			}
			ids := r.decisionIDs()
			recs := byDecisionID(t, f.records(t))
			if len(recs) != len(tc.executed) || len(ids) != len(tc.executed) {
				t.Fatalf("%d records and %d header IDs, want %d executed items", len(recs), len(ids), len(tc.executed))
			}
			for i, id := range ids {
				rec, ok := recs[id]
				if !ok {
					t.Fatalf("header decision %s is not on the stream", id)
				}
				if rec.Resource.ID != tc.executed[i] || rec.Allow != tc.want[i] || rec.Endpoint != server.EndpointEvaluations {
					t.Errorf("header ID %d is the record of %s (allow %v), want item %s (allow %v)", i, rec.Resource.ID, rec.Allow, tc.executed[i], tc.want[i])
				}
			}
		})
	}
}

// TestAuthZENBatchItemErrors: an item that is not a valid evaluation is that item's deny, with
// the fault in its context and on the stream, not a failed batch.
func TestAuthZENBatchItemErrors(t *testing.T) {
	f := azJetStream(t, &spyDecider{})
	body := `{"action": {"name": "read"}, "resource": {"type": "doc", "id": "r"}, "evaluations": [
	  {"subject": ` + azAlice + `},
	  {"resource": {"type": "doc", "id": "x"}},
	  7,
	  {"subject": {"type": "user", "id": 42}},
	  {"subject": ` + azAlice + `, "context": {"correlation_id": "has space"}},
	  {"subject": ` + azAlice + `, "context": {"agent": {"type": "agent"}}}
	]}`
	r := f.post(t, server.EndpointEvaluations, body)
	if r.Status != http.StatusOK {
		t.Fatalf("status %d: %s", r.Status, r.Raw)
	}
	itemErr := func(msg string) any {
		return map[string]any{"decision": false, "context": map[string]any{"error": map[string]any{
			"status": float64(400), "code": "invalid_request", "message": msg,
		}}}
	}
	want := map[string]any{"evaluations": []any{
		map[string]any{"decision": true},
		itemErr("evaluations[1].subject: required, in the item or as a top-level default"),
		itemErr("evaluations[2]: want object, got number"),
		itemErr("evaluations[3].subject.id: want string, got number"),
		itemErr("evaluations[4].context.correlation_id: want 1 to 256 visible ASCII characters"),
		itemErr("evaluations[5].context.agent.id: required"),
	}}
	if diff := cmp.Diff(want, r.Body); diff != "" {
		t.Errorf("answer (-want +got):\n%s", diff)
	}
	ids := r.decisionIDs()
	recs := byDecisionID(t, f.records(t))
	if len(ids) != 6 || len(recs) != 6 {
		t.Fatalf("%d header IDs, %d records; want 6 each", len(ids), len(recs))
	}
	for i, id := range ids[1:] {
		rec := recs[id]
		if rec.Allow || !slices.Equal(rec.Reasons, []string{"invalid_request"}) || !strings.HasPrefix(rec.Error, fmt.Sprintf("evaluations[%d]", i+1)) {
			t.Errorf("record of item %d = allow %v reasons %v error %q", i+1, rec.Allow, rec.Reasons, rec.Error)
		}
	}
}

// TestAuthZENExecuteAllIsConcurrentAndBounded: execute_all decides items at once, but never more
// than eight.
func TestAuthZENExecuteAllIsConcurrentAndBounded(t *testing.T) {
	spy := &spyDecider{delay: 20 * time.Millisecond}
	f := azMemory(t, spy, &decisionlog.Memory{})
	var items []string
	for i := range 40 {
		items = append(items, fmt.Sprintf(`{"resource": {"type": "doc", "id": "r%d"}}`, i))
	}
	r := f.post(t, server.EndpointEvaluations, `{"subject": `+azAlice+`, "action": {"name": "read"}, "evaluations": [`+strings.Join(items, ",")+`]}`)
	if r.Status != http.StatusOK {
		t.Fatalf("status %d: %s", r.Status, r.Raw)
	}
	if p := spy.peak.Load(); p < 2 || p > 8 {
		t.Errorf("peak concurrency %d, want 2 to 8", p)
	}
	if n := len(f.mem.Records()); n != 40 {
		t.Errorf("%d records, want 40", n)
	}
}

// TestAuthZENBadInput: malformed or incomplete requests are errors with custody's error JSON,
// never a decision and never a record.
func TestAuthZENBadInput(t *testing.T) {
	valid := `{"subject": ` + azAlice + `, "action": {"name": "read"}, "resource": ` + azAliceDoc + `}`
	with := func(member string) string {
		return `{"subject": ` + azAlice + `, "action": {"name": "read"}, "resource": ` + azAliceDoc + `, ` + member + `}`
	}
	var tooMany []string
	for range server.MaxBatchEvaluations + 1 {
		tooMany = append(tooMany, `{}`)
	}
	huge := with(`"context": {"pad": "` + strings.Repeat("x", server.DefaultMaxBodyBytes) + `"}`)
	tests := []struct {
		name        string
		method      string
		path        string
		contentType string
		body        string
		status      int
		code        string
		mentions    string
	}{
		{"malformed JSON", "POST", server.EndpointEvaluation, "application/json", `{"subject":`, 400, "invalid_json", "JSON"},
		{"not an object", "POST", server.EndpointEvaluation, "application/json", `[]`, 400, "invalid_request", "object"},
		{"empty body", "POST", server.EndpointEvaluation, "application/json", ``, 400, "invalid_json", "empty"},
		{"missing subject", "POST", server.EndpointEvaluation, "application/json", `{"action": {"name": "read"}, "resource": ` + azAliceDoc + `}`, 400, "invalid_request", "subject: required"},
		{"subject null", "POST", server.EndpointEvaluation, "application/json", `{"subject": null, "action": {"name": "read"}, "resource": ` + azAliceDoc + `}`, 400, "invalid_request", "subject: required"},
		{"subject type a number", "POST", server.EndpointEvaluation, "application/json", `{"subject": {"type": 1, "id": "a"}, "action": {"name": "read"}, "resource": ` + azAliceDoc + `}`, 400, "invalid_request", "subject.type: want string, got number"},
		{"subject id empty", "POST", server.EndpointEvaluation, "application/json", `{"subject": {"type": "user", "id": ""}, "action": {"name": "read"}, "resource": ` + azAliceDoc + `}`, 400, "invalid_request", "subject.id: required"},
		{"action without name", "POST", server.EndpointEvaluation, "application/json", `{"subject": ` + azAlice + `, "action": {}, "resource": ` + azAliceDoc + `}`, 400, "invalid_request", "action.name: required"},
		{"resource without id", "POST", server.EndpointEvaluation, "application/json", `{"subject": ` + azAlice + `, "action": {"name": "read"}, "resource": {"type": "doc"}}`, 400, "invalid_request", "resource.id: required"},
		{"properties an array", "POST", server.EndpointEvaluation, "application/json", `{"subject": {"type": "user", "id": "a", "properties": []}, "action": {"name": "read"}, "resource": ` + azAliceDoc + `}`, 400, "invalid_request", "subject.properties: want object, got array"},
		{"context a string", "POST", server.EndpointEvaluation, "application/json", with(`"context": "now"`), 400, "invalid_request", "context: want object, got string"},
		{"correlation_id a number", "POST", server.EndpointEvaluation, "application/json", with(`"context": {"correlation_id": 5}`), 400, "invalid_request", "context.correlation_id: want string"},
		{"agent without id", "POST", server.EndpointEvaluation, "application/json", with(`"context": {"agent": {"type": "agent"}}`), 400, "invalid_request", "context.agent.id: required"},
		{"negative task attempt", "POST", server.EndpointEvaluation, "application/json", with(`"context": {"task": {"attempt": -1}}`), 400, "invalid_request", "context.task.attempt"},
		{"id too long", "POST", server.EndpointEvaluation, "application/json", `{"subject": {"type": "user", "id": "` + strings.Repeat("a", 1025) + `"}, "action": {"name": "read"}, "resource": ` + azAliceDoc + `}`, 400, "invalid_request", "subject.id: longer than"},
		{"include option not a boolean", "POST", server.EndpointEvaluation, "application/json", with(`"options": {"custody_include_reasons": "yes"}`), 400, "invalid_request", "options.custody_include_reasons: want boolean"},
		{"form content type", "POST", server.EndpointEvaluation, "application/x-www-form-urlencoded", valid, 415, "unsupported_media_type", "application/json"},
		{"no content type", "POST", server.EndpointEvaluations, "", valid, 415, "unsupported_media_type", "none"},
		{"huge body", "POST", server.EndpointEvaluation, "application/json", huge, 413, "body_too_large", "exceeds"},
		{"wrong method", "GET", server.EndpointEvaluation, "", "", 405, "method_not_allowed", "GET"},
		{"evaluations not an array", "POST", server.EndpointEvaluations, "application/json", with(`"evaluations": {}`), 400, "invalid_request", "evaluations: want array, got object"},
		{"too many evaluations", "POST", server.EndpointEvaluations, "application/json", with(`"evaluations": [` + strings.Join(tooMany, ",") + `]`), 400, "invalid_request", "more than the 1000"},
		{"unknown semantic", "POST", server.EndpointEvaluations, "application/json", with(`"options": {"evaluations_semantic": "first_wins"}`), 400, "invalid_request", "options.evaluations_semantic"},
		{"semantic not a string", "POST", server.EndpointEvaluations, "application/json", with(`"options": {"evaluations_semantic": 1}`), 400, "invalid_request", "options.evaluations_semantic: want string"},
		{"options not an object", "POST", server.EndpointEvaluations, "application/json", with(`"options": []`), 400, "invalid_request", "options: want object"},
		{"ill-typed default", "POST", server.EndpointEvaluations, "application/json", `{"subject": "alice", "evaluations": [{"action": {"name": "read"}, "resource": ` + azAliceDoc + `}]}`, 400, "invalid_request", "subject: want object, got string"},
		{"single mode needs the entities", "POST", server.EndpointEvaluations, "application/json", `{"subject": ` + azAlice + `, "evaluations": []}`, 400, "invalid_request", "action: required"},
		{"default context with a bad correlation_id", "POST", server.EndpointEvaluations, "application/json", `{"context": {"correlation_id": ""}, "evaluations": [` + valid + `]}`, 400, "invalid_request", "context.correlation_id"},
		{"subject search without subject type", "POST", server.EndpointSearchSubject, "application/json", `{"subject": {}, "action": {"name": "read"}, "resource": ` + azAliceDoc + `}`, 400, "invalid_request", "subject.type: required"},
		{"resource search without action", "POST", server.EndpointSearchResource, "application/json", `{"subject": ` + azAlice + `, "resource": {"type": "doc"}}`, 400, "invalid_request", "action: required"},
		{"action search without resource", "POST", server.EndpointSearchAction, "application/json", `{"subject": ` + azAlice + `}`, 400, "invalid_request", "resource: required"},
		{"negative page limit", "POST", server.EndpointSearchAction, "application/json", `{"subject": ` + azAlice + `, "resource": ` + azAliceDoc + `, "page": {"limit": -1}}`, 400, "invalid_request", "page.limit: want a non-negative integer"},
		{"page limit a string", "POST", server.EndpointSearchAction, "application/json", `{"subject": ` + azAlice + `, "resource": ` + azAliceDoc + `, "page": {"limit": "5"}}`, 400, "invalid_request", "page.limit: want number"},
		{"page token a number", "POST", server.EndpointSearchAction, "application/json", `{"subject": ` + azAlice + `, "resource": ` + azAliceDoc + `, "page": {"token": 5}}`, 400, "invalid_request", "page.token: want string"},
		{"forged page token", "POST", server.EndpointSearchAction, "application/json", `{"subject": ` + azAlice + `, "resource": ` + azAliceDoc + `, "page": {"token": "bm90IGEgdG9rZW4"}}`, 400, "invalid_request", "page.token"},
		{"page not an object", "POST", server.EndpointSearchResource, "application/json", `{"subject": ` + azAlice + `, "action": {"name": "read"}, "resource": {"type": "doc"}, "page": 2}`, 400, "invalid_request", "page: want object"},
		{"metadata is GET only", "POST", server.EndpointAuthZENConfig, "application/json", `{}`, 405, "method_not_allowed", "POST"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := azMemory(t, azDocsEngine(t), &decisionlog.Memory{})
			r := f.do(t, tc.method, tc.path, tc.contentType, tc.body, "X-Request-ID", "bad-1")
			if r.Status != tc.status {
				t.Fatalf("status %d, want %d: %s", r.Status, tc.status, r.Raw)
			}
			body, _ := r.Body.(map[string]any)
			e, _ := body["error"].(map[string]any)
			if e["code"] != tc.code || !strings.Contains(fmt.Sprint(e["message"]), tc.mentions) {
				t.Fatalf("error = %v, want code %s mentioning %q", e, tc.code, tc.mentions)
			}
			if _, ok := body["decision"]; ok || strings.Contains(r.Raw, `"evaluations"`) {
				t.Fatalf("bad input answered with a decision: %s", r.Raw)
			}
			if got := r.Header.Get("X-Request-ID"); got != "bad-1" {
				t.Errorf("X-Request-ID = %q, want bad-1 echoed", got)
			}
			if ids := r.decisionIDs(); ids != nil {
				t.Errorf("decision IDs %v for an undecided request", ids)
			}
			if n := len(f.mem.Records()); n != 0 {
				t.Fatalf("%d records for a request that was never decided", n)
			}
		})
	}
}

// TestAuthZENSearch runs the three searches against a policy set that offers candidates, with
// pagination, and reads every candidate decision back from the stream.
func TestAuthZENSearch(t *testing.T) {
	doc := func(id, owner string) any {
		return map[string]any{"type": "doc", "id": id, "properties": map[string]any{"owner": owner}}
	}
	t.Run("resource search pages through the permitted resources", func(t *testing.T) {
		f := azJetStream(t, azDocsEngine(t))
		req := func(page string) string {
			return `{"subject": ` + azAlice + `, "action": {"name": "read"}, "resource": {"type": "doc", "id": "ignored"}, "page": ` + page + `}`
		}
		r1 := f.post(t, server.EndpointSearchResource, req(`{"limit": 2}`))
		if r1.Status != http.StatusOK {
			t.Fatalf("page 1: status %d: %s", r1.Status, r1.Raw)
		}
		page1 := r1.Body.(map[string]any)
		token, _ := page1["page"].(map[string]any)["next_token"].(string)
		if token == "" {
			t.Fatalf("page 1 has no next_token: %s", r1.Raw)
		}
		want1 := map[string]any{
			"page":    map[string]any{"next_token": token, "count": float64(2)},
			"results": []any{doc("d1", "alice"), doc("d3", "alice")},
		}
		if diff := cmp.Diff(want1, page1); diff != "" {
			t.Errorf("page 1 (-want +got):\n%s", diff)
		}
		r2 := f.post(t, server.EndpointSearchResource, req(`{"limit": 2, "token": "`+token+`"}`))
		want2 := map[string]any{
			"page":    map[string]any{"next_token": "", "count": float64(1)},
			"results": []any{doc("d4", "alice")},
		}
		if diff := cmp.Diff(want2, r2.Body); diff != "" {
			t.Errorf("page 2 (-want +got):\n%s", diff)
		}
		// Every candidate decided is one decision on the stream, named in the headers.
		ids := append(r1.decisionIDs(), r2.decisionIDs()...)
		recs := byDecisionID(t, f.records(t))
		if len(ids) != 5 || len(recs) != 5 {
			t.Fatalf("%d header IDs, %d records; want one per candidate, 5", len(ids), len(recs))
		}
		var decided []string
		for _, id := range ids {
			rec := recs[id]
			if rec.Endpoint != server.EndpointSearchResource || rec.Subject.ID != "alice" || rec.Action.Name != "read" {
				t.Errorf("record %+v", rec)
			}
			decided = append(decided, rec.Resource.ID)
		}
		if diff := cmp.Diff([]string{"d1", "d2", "d3", "d4", "d5"}, decided); diff != "" {
			t.Errorf("candidates decided (-want +got):\n%s", diff)
		}

		// A token is bound to its search: changing an entity or the limit mid-way is an error.
		for _, changed := range []string{
			`{"subject": {"type": "user", "id": "bob"}, "action": {"name": "read"}, "resource": {"type": "doc"}, "page": {"limit": 2, "token": "` + token + `"}}`,
			req(`{"limit": 3, "token": "` + token + `"}`),
			req(`{"token": "` + token + `"}`),
		} {
			if r := f.post(t, server.EndpointSearchResource, changed); r.Status != http.StatusBadRequest {
				t.Errorf("changed search with the old token: status %d, want 400: %s", r.Status, r.Raw)
			}
		}
		// The same token on another kind of search is not its token either.
		if r := f.post(t, server.EndpointSearchSubject, `{"subject": {"type": "user"}, "action": {"name": "read"}, "resource": `+azAliceDoc+`, "page": {"limit": 2, "token": "`+token+`"}}`); r.Status != http.StatusBadRequest {
			t.Errorf("token on another search kind: status %d, want 400", r.Status)
		}
	})
	t.Run("without a page the answer is only results", func(t *testing.T) {
		f := azJetStream(t, azDocsEngine(t))
		r := f.post(t, server.EndpointSearchResource, `{"subject": `+azAlice+`, "action": {"name": "read"}, "resource": {"type": "doc"}}`)
		want := map[string]any{"results": []any{doc("d1", "alice"), doc("d3", "alice"), doc("d4", "alice")}}
		if diff := cmp.Diff(want, r.Body); diff != "" {
			t.Errorf("answer (-want +got):\n%s", diff)
		}
	})
	t.Run("subject search decides only subjects of the asked type", func(t *testing.T) {
		f := azJetStream(t, azDocsEngine(t))
		r := f.post(t, server.EndpointSearchSubject, `{"subject": {"type": "user", "id": "ignored"}, "action": {"name": "read"}, "resource": `+azAliceDoc+`, "page": {}}`)
		want := map[string]any{
			"page":    map[string]any{"next_token": "", "count": float64(1)},
			"results": []any{map[string]any{"type": "user", "id": "alice"}},
		}
		if diff := cmp.Diff(want, r.Body); diff != "" {
			t.Errorf("answer (-want +got):\n%s", diff)
		}
		if n := len(f.records(t)); n != 3 {
			t.Errorf("%d records, want 3 (alice, bob, carol; not the group)", n)
		}
	})
	t.Run("action search", func(t *testing.T) {
		f := azJetStream(t, azDocsEngine(t))
		r := f.post(t, server.EndpointSearchAction, `{"subject": `+azAlice+`, "resource": `+azAliceDoc+`, "action": {"name": "ignored"}}`)
		want := map[string]any{"results": []any{map[string]any{"name": "read"}, map[string]any{"name": "download"}}}
		if diff := cmp.Diff(want, r.Body); diff != "" {
			t.Errorf("answer (-want +got):\n%s", diff)
		}
		if n := len(f.records(t)); n != 3 {
			t.Errorf("%d records, want 3", n)
		}
	})
	t.Run("custody_include_reasons lists every decision", func(t *testing.T) {
		f := azMemory(t, azDocsEngine(t), &decisionlog.Memory{})
		r := f.post(t, server.EndpointSearchAction, `{"subject": `+azAlice+`, "resource": `+azBobDoc+`, "options": {"custody_include_reasons": true}}`)
		ids := r.decisionIDs()
		if len(ids) != 3 {
			t.Fatalf("decision IDs %v", ids)
		}
		want := map[string]any{
			"context": map[string]any{"decisions": []any{
				map[string]any{"decision_id": ids[0], "decision": false, "reasons": []any{"not_permitted"}, "action": map[string]any{"name": "read"}},
				map[string]any{"decision_id": ids[1], "decision": false, "reasons": []any{"not_permitted"}, "action": map[string]any{"name": "download"}},
				map[string]any{"decision_id": ids[2], "decision": false, "reasons": []any{"not_permitted"}, "action": map[string]any{"name": "delete"}},
			}},
			"results": []any{},
		}
		if diff := cmp.Diff(want, r.Body); diff != "" {
			t.Errorf("answer (-want +got):\n%s", diff)
		}
	})
}

// TestAuthZENSearchIsBounded: one request decides at most MaxSearchEvaluations candidates; a
// page that reaches the bound ends early with a token to go on.
func TestAuthZENSearchIsBounded(t *testing.T) {
	set, err := bundles.FromFS(fstest.MapFS{
		"authz.rego":  {Data: []byte("package custody.authz\ndecision := input.resource.id == \"r1499\"\n")},
		"search.rego": {Data: []byte("package custody.search\nresources := [{\"type\": \"r\", \"id\": sprintf(\"r%d\", [i])} | some i in numbers.range(0, 1499)]\n")},
	}, "bounded")
	if err != nil {
		t.Fatal(err)
	}
	e, err := pdp.New(t.Context(), set)
	if err != nil {
		t.Fatal(err)
	}
	mem := &decisionlog.Memory{}
	f := azMemory(t, e, mem)
	req := func(page string) string {
		return `{"subject": ` + azAlice + `, "action": {"name": "read"}, "resource": {"type": "r"}, "page": ` + page + `}`
	}
	r1 := f.post(t, server.EndpointSearchResource, req(`{"limit": 10}`))
	p1 := r1.Body.(map[string]any)["page"].(map[string]any)
	if p1["next_token"] == "" || len(r1.Body.(map[string]any)["results"].([]any)) != 0 || len(mem.Records()) != server.MaxSearchEvaluations {
		t.Fatalf("page 1 = %s with %d records; want no results, a token and %d decisions", r1.Raw, len(mem.Records()), server.MaxSearchEvaluations)
	}
	r2 := f.post(t, server.EndpointSearchResource, req(`{"limit": 10, "token": "`+p1["next_token"].(string)+`"}`))
	want := map[string]any{
		"page":    map[string]any{"next_token": "", "count": float64(1)},
		"results": []any{map[string]any{"type": "r", "id": "r1499"}},
	}
	if diff := cmp.Diff(want, r2.Body); diff != "" {
		t.Errorf("page 2 (-want +got):\n%s", diff)
	}
	if n := len(mem.Records()); n != 1500 {
		t.Errorf("%d records, want one per candidate, 1500", n)
	}
}

// TestAuthZENSearchDefaultPolicySet: the embedded policies answer "which tools may this agent
// call for this user?" from their tool catalog, and offer no subjects or resources.
func TestAuthZENSearchDefaultPolicySet(t *testing.T) {
	f := azJetStream(t, engine(t))
	r := f.post(t, server.EndpointSearchAction, `{
	  "subject":  {"type": "user", "id": "alice@acme.example", "properties": {"scopes": ["mail.send", "mail.read", "contacts.read", "files.read"]}},
	  "resource": {"type": "mailbox", "id": "alice", "properties": {"owner": "alice@acme.example"}},
	  "context":  {"agent": {"id": "spiffe://acme.example/agents/mailer"}}
	}`)
	want := map[string]any{"results": []any{
		map[string]any{"name": "read_inbox", "properties": map[string]any{"server": "mail"}},
		map[string]any{"name": "search_contacts"},
		map[string]any{"name": "send_email", "properties": map[string]any{"server": "mail"}},
	}}
	if diff := cmp.Diff(want, r.Body); diff != "" {
		t.Errorf("action search (-want +got):\n%s", diff)
	}
	recs := f.records(t)
	if len(recs) != 9 {
		t.Fatalf("%d records, want one per catalog tool, 9", len(recs))
	}
	for _, rec := range recs {
		if rec.AgentID() != "spiffe://acme.example/agents/mailer" || rec.Endpoint != server.EndpointSearchAction {
			t.Errorf("record agent %q endpoint %s", rec.AgentID(), rec.Endpoint)
		}
	}
	r = f.post(t, server.EndpointSearchSubject, `{"subject": {"type": "user"}, "action": {"name": "send_email"}, "resource": {"type": "mailbox", "id": "alice"}}`)
	if diff := cmp.Diff(map[string]any{"results": []any{}}, r.Body); diff != "" {
		t.Errorf("subject search (-want +got):\n%s", diff)
	}
	if n := len(f.records(t)); n != 9 {
		t.Errorf("%d records after an empty search, want still 9", n)
	}
}

// TestAuthZENMetadata: the metadata document names every endpoint served, under the public URL
// or as the client reached the server.
func TestAuthZENMetadata(t *testing.T) {
	all := func(base string) map[string]any {
		return map[string]any{
			"policy_decision_point":       base,
			"access_evaluation_endpoint":  base + "/access/v1/evaluation",
			"access_evaluations_endpoint": base + "/access/v1/evaluations",
			"search_subject_endpoint":     base + "/access/v1/search/subject",
			"search_resource_endpoint":    base + "/access/v1/search/resource",
			"search_action_endpoint":      base + "/access/v1/search/action",
		}
	}
	t.Run("public URL", func(t *testing.T) {
		f := azMemory(t, engine(t), &decisionlog.Memory{}, server.WithPublicURL("https://pdp.example.com/"))
		r := f.do(t, "GET", server.EndpointAuthZENConfig, "", "", "X-Request-ID", "meta-1")
		if r.Status != http.StatusOK || r.Header.Get("Content-Type") != "application/json" {
			t.Fatalf("status %d content type %q", r.Status, r.Header.Get("Content-Type"))
		}
		if diff := cmp.Diff(all("https://pdp.example.com"), r.Body); diff != "" {
			t.Errorf("metadata (-want +got):\n%s", diff)
		}
		if r.Header.Get("X-Request-ID") != "meta-1" {
			t.Error("X-Request-ID not echoed")
		}
	})
	t.Run("as the client reached it", func(t *testing.T) {
		f := azMemory(t, engine(t), &decisionlog.Memory{})
		r := f.do(t, "GET", server.EndpointAuthZENConfig, "", "")
		if diff := cmp.Diff(all(f.url), r.Body); diff != "" {
			t.Errorf("metadata (-want +got):\n%s", diff)
		}
	})
	t.Run("a decider that cannot search offers no search", func(t *testing.T) {
		f := azMemory(t, &spyDecider{}, &decisionlog.Memory{})
		r := f.do(t, "GET", server.EndpointAuthZENConfig, "", "")
		want := map[string]any{
			"policy_decision_point":       f.url,
			"access_evaluation_endpoint":  f.url + "/access/v1/evaluation",
			"access_evaluations_endpoint": f.url + "/access/v1/evaluations",
		}
		if diff := cmp.Diff(want, r.Body); diff != "" {
			t.Errorf("metadata (-want +got):\n%s", diff)
		}
		s := f.post(t, server.EndpointSearchAction, `{"subject": `+azAlice+`, "resource": `+azAliceDoc+`}`)
		if s.Status != http.StatusNotFound {
			t.Errorf("search without a Searcher: status %d, want 404", s.Status)
		}
	})
}

// TestAuthZENUnrecordedIsA503Deny: when the decision stream refuses records, every AuthZEN
// endpoint answers 503 and no decision, for a whole batch as for one evaluation.
func TestAuthZENUnrecordedIsA503Deny(t *testing.T) {
	tests := []struct{ name, path, body string }{
		{"evaluation", server.EndpointEvaluation, `{"subject": ` + azAlice + `, "action": {"name": "read"}, "resource": ` + azAliceDoc + `}`},
		{"batch", server.EndpointEvaluations, `{"subject": ` + azAlice + `, "action": {"name": "read"}, "evaluations": [{"resource": ` + azAliceDoc + `}, {"resource": ` + azBobDoc + `}, {"resource": ` + azAliceDoc + `}]}`},
		{"short-circuit batch", server.EndpointEvaluations, `{"subject": ` + azAlice + `, "action": {"name": "read"}, "options": {"evaluations_semantic": "deny_on_first_deny"}, "evaluations": [{"resource": ` + azAliceDoc + `}, {"resource": ` + azBobDoc + `}]}`},
		{"search", server.EndpointSearchResource, `{"subject": ` + azAlice + `, "action": {"name": "read"}, "resource": {"type": "doc"}}`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			mem := &decisionlog.Memory{Err: fmt.Errorf("test: %w", decisionlog.ErrUnavailable)}
			f := azMemory(t, azDocsEngine(t), mem)
			r := f.post(t, tc.path, tc.body)
			if r.Status != http.StatusServiceUnavailable {
				t.Fatalf("status %d, want 503: %s", r.Status, r.Raw)
			}
			body := r.Body.(map[string]any)
			if e, _ := body["error"].(map[string]any); e["code"] != "decision_log_unavailable" {
				t.Errorf("error = %v", body["error"])
			}
			if strings.Contains(r.Raw, `"decision":true`) || strings.Contains(r.Raw, `"allow":true`) || body["results"] != nil {
				t.Errorf("an unrecorded decision reached the caller: %s", r.Raw)
			}
			if ids := r.decisionIDs(); ids != nil {
				t.Errorf("decision IDs %v on a 503", ids)
			}
		})
	}
}

// TestAuthZENEveryAnswerEchoesRequestID: X-Request-ID comes back on every AuthZEN response,
// answers and errors alike.
func TestAuthZENEveryAnswerEchoesRequestID(t *testing.T) {
	f := azMemory(t, azDocsEngine(t), &decisionlog.Memory{})
	for _, tc := range []struct{ method, path, body string }{
		{"POST", server.EndpointEvaluation, `{"subject": ` + azAlice + `, "action": {"name": "read"}, "resource": ` + azAliceDoc + `}`},
		{"POST", server.EndpointEvaluations, `{"subject": ` + azAlice + `, "action": {"name": "read"}, "evaluations": [{"resource": ` + azAliceDoc + `}]}`},
		{"POST", server.EndpointSearchSubject, `{"subject": {"type": "user"}, "action": {"name": "read"}, "resource": ` + azAliceDoc + `}`},
		{"POST", server.EndpointSearchResource, `{"subject": ` + azAlice + `, "action": {"name": "read"}, "resource": {"type": "doc"}}`},
		{"POST", server.EndpointSearchAction, `{"subject": ` + azAlice + `, "resource": ` + azAliceDoc + `}`},
		{"GET", server.EndpointAuthZENConfig, ``},
		{"POST", server.EndpointEvaluation, `{`},
		{"POST", server.EndpointSearchAction, `{}`},
	} {
		r := f.do(t, tc.method, tc.path, "application/json", tc.body, "X-Request-ID", "bfe9eb29-ab87-4ca3-be83-a1d5d8305716")
		if got := r.Header.Get("X-Request-ID"); got != "bfe9eb29-ab87-4ca3-be83-a1d5d8305716" {
			t.Errorf("%s %s (status %d): X-Request-ID = %q, want it echoed", tc.method, tc.path, r.Status, got)
		}
	}
}
