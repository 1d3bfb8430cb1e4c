package test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// azClient is an AuthZEN PEP as a gateway would run one: it discovers the endpoints from the
// metadata document, sends only what the specification defines, and compares answers strictly.
type azClient struct {
	t        *testing.T
	http     *http.Client
	base     string
	metadata map[string]string
	n        int
	// decided collects the decision IDs of every answer, from the Custody-Decision-Id header.
	decided []string
	// requestIDs are the X-Request-IDs sent, by decision ID.
	requestIDs map[string]string
}

type azAnswer struct {
	Status int
	Header http.Header
	Body   any
	Raw    string
}

func newAZClient(t *testing.T, base string) *azClient {
	t.Helper()
	return &azClient{t: t, http: &http.Client{Timeout: 30 * time.Second}, base: base, requestIDs: map[string]string{}}
}

// discover reads the metadata document and checks it as the spec tells a PEP to: the PDP
// identifier must be the one the well-known URL was built from.
func (c *azClient) discover(wantBase string) {
	c.t.Helper()
	resp, err := c.http.Get(c.base + "/.well-known/authzen-configuration")
	if err != nil {
		c.t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/json" {
		c.t.Fatalf("metadata: status %d, content type %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	if err := json.NewDecoder(resp.Body).Decode(&c.metadata); err != nil {
		c.t.Fatalf("metadata is not an object of strings: %v", err)
	}
	want := map[string]string{
		"policy_decision_point":       wantBase,
		"access_evaluation_endpoint":  wantBase + "/access/v1/evaluation",
		"access_evaluations_endpoint": wantBase + "/access/v1/evaluations",
		"search_subject_endpoint":     wantBase + "/access/v1/search/subject",
		"search_resource_endpoint":    wantBase + "/access/v1/search/resource",
		"search_action_endpoint":      wantBase + "/access/v1/search/action",
	}
	if diff := cmp.Diff(want, c.metadata); diff != "" {
		c.t.Fatalf("metadata (-want +got):\n%s", diff)
	}
}

// call posts body to the endpoint the metadata names, rebased on the address the test reaches,
// with a fresh X-Request-ID that must come back.
func (c *azClient) call(endpoint, body string, headers ...string) azAnswer {
	c.t.Helper()
	url := c.metadata[endpoint]
	if url == "" {
		c.t.Fatalf("metadata names no %s", endpoint)
	}
	url = c.base + strings.TrimPrefix(url, c.metadata["policy_decision_point"])
	c.n++
	reqID := fmt.Sprintf("az-%d-%d", time.Now().UnixNano(), c.n)
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		c.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Request-ID", reqID)
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := c.http.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		c.t.Fatal(err)
	}
	a := azAnswer{Status: resp.StatusCode, Header: resp.Header, Raw: string(raw)}
	if err := json.Unmarshal(raw, &a.Body); err != nil {
		c.t.Fatalf("%s: answer is not JSON: %q", endpoint, raw)
	}
	if got := resp.Header.Get("X-Request-ID"); got != reqID {
		c.t.Errorf("%s: X-Request-ID = %q, want %q echoed", endpoint, got, reqID)
	}
	if h := resp.Header.Get("Custody-Decision-Id"); h != "" {
		for _, id := range strings.Split(h, ", ") {
			c.decided = append(c.decided, id)
			c.requestIDs[id] = reqID
		}
	}
	return a
}

// expect calls and compares the answer strictly with want, a JSON document.
func (c *azClient) expect(name, endpoint, body, want string) azAnswer {
	c.t.Helper()
	a := c.call(endpoint, body)
	if a.Status != http.StatusOK {
		c.t.Fatalf("%s: status %d: %s", name, a.Status, a.Raw)
	}
	var w any
	if err := json.Unmarshal([]byte(want), &w); err != nil {
		c.t.Fatalf("%s: bad expectation: %v", name, err)
	}
	if diff := cmp.Diff(w, a.Body); diff != "" {
		c.t.Errorf("%s (-want +got):\n%s", name, diff)
	}
	return a
}

// TestAuthZENGatewayWithForeignPolicySet runs custody as an AuthZEN PDP for a policy set written
// by someone else (test/testdata/authzen: package acme.docs, boolean decisions, its own data),
// loaded with --policies and --decision, and drives it as an AuthZEN gateway would. Every decision
// answered, each batch item and each search candidate, is read back from the stream.
func TestAuthZENGatewayWithForeignPolicySet(t *testing.T) {
	c := startCustody(t, "", "--policies", "testdata/authzen", "--decision", "data.acme.docs.decision")
	pep := newAZClient(t, c.HTTP)
	pep.discover(c.HTTP)

	user := func(id string) string { return `{"type": "user", "id": "` + id + `"}` }
	doc := func(id string) string { return `{"type": "document", "id": "` + id + `"}` }
	action := func(name string) string { return `{"name": "` + name + `"}` }
	eval := func(s, a, r, ctx string) string {
		b := `{"subject": ` + s + `, "action": ` + a + `, "resource": ` + r
		if ctx != "" {
			b += `, "context": ` + ctx
		}
		return b + `}`
	}

	// Access Evaluation API.
	pep.expect("owner reads", "access_evaluation_endpoint", eval(user("alice"), action("can_read"), doc("roadmap"), ""), `{"decision": true}`)
	pep.expect("other department", "access_evaluation_endpoint", eval(user("carol"), action("can_read"), doc("roadmap"), ""), `{"decision": false}`)
	pep.expect("editor edits", "access_evaluation_endpoint", eval(user("bob"), action("can_edit"), doc("roadmap"), `{"time": "2026-11-27T06:00:00Z"}`), `{"decision": true}`)
	pep.expect("context counts", "access_evaluation_endpoint", eval(user("bob"), action("can_edit"), doc("roadmap"), `{"read_only": true}`), `{"decision": false}`)
	pep.expect("unknown subject type", "access_evaluation_endpoint", eval(`{"type": "service", "id": "alice"}`, action("can_read"), doc("pricing"), ""), `{"decision": false}`)

	// Access Evaluations API: defaults, and the three semantics.
	docs := `[{"resource": ` + doc("handbook") + `}, {"resource": ` + doc("pricing") + `}, {"resource": ` + doc("roadmap") + `}, {"resource": ` + doc("salaries") + `}]`
	pep.expect("execute_all", "access_evaluations_endpoint",
		`{"subject": `+user("bob")+`, "action": `+action("can_read")+`, "evaluations": `+docs+`}`,
		`{"evaluations": [{"decision": true}, {"decision": false}, {"decision": true}, {"decision": false}]}`)
	pep.expect("deny_on_first_deny", "access_evaluations_endpoint",
		`{"subject": `+user("bob")+`, "action": `+action("can_read")+`, "options": {"evaluations_semantic": "deny_on_first_deny"}, "evaluations": `+docs+`}`,
		`{"evaluations": [{"decision": true}, {"decision": false}]}`)
	pep.expect("permit_on_first_permit", "access_evaluations_endpoint",
		`{"subject": `+user("carol")+`, "action": `+action("can_edit")+`, "options": {"evaluations_semantic": "permit_on_first_permit"}, "evaluations": [{"resource": `+doc("handbook")+`}, {"resource": `+doc("roadmap")+`}, {"resource": `+doc("pricing")+`}, {"resource": `+doc("salaries")+`}]}`,
		`{"evaluations": [{"decision": false}, {"decision": false}, {"decision": true}]}`)
	pep.expect("items override defaults", "access_evaluations_endpoint",
		`{"subject": `+user("alice")+`, "action": `+action("can_read")+`, "context": {"read_only": true}, "evaluations": [
		  {"resource": `+doc("handbook")+`},
		  {"action": `+action("can_share")+`, "resource": `+doc("pricing")+`},
		  {"subject": `+user("carol")+`, "resource": `+doc("salaries")+`},
		  {"action": `+action("can_edit")+`, "resource": `+doc("roadmap")+`},
		  {"action": `+action("can_edit")+`, "resource": `+doc("roadmap")+`, "context": {}}]}`,
		`{"evaluations": [{"decision": true}, {"decision": false}, {"decision": true}, {"decision": false}, {"decision": true}]}`)
	pep.expect("no evaluations array is one evaluation", "access_evaluations_endpoint",
		eval(user("carol"), action("can_share"), doc("salaries"), ""), `{"decision": true}`)

	// Search APIs.
	pep.expect("who can read the roadmap", "search_subject_endpoint",
		`{"subject": {"type": "user"}, "action": `+action("can_read")+`, "resource": `+doc("roadmap")+`}`,
		`{"results": [{"type": "user", "id": "alice"}, {"type": "user", "id": "bob"}]}`)
	pep.expect("what may alice do to pricing", "search_action_endpoint",
		`{"subject": `+user("alice")+`, "resource": `+doc("pricing")+`}`,
		`{"results": [{"name": "can_read"}, {"name": "can_edit"}]}`)
	// Which documents can carol read, one per page, following next_token to its empty end.
	var got []any
	token, pages := "", 0
	for {
		page := `{"limit": 1}`
		if token != "" {
			page = `{"limit": 1, "token": "` + token + `"}`
		}
		a := pep.call("search_resource_endpoint", `{"subject": `+user("carol")+`, "action": `+action("can_read")+`, "resource": {"type": "document"}, "page": `+page+`}`)
		if a.Status != http.StatusOK {
			t.Fatalf("resource search page %d: status %d: %s", pages, a.Status, a.Raw)
		}
		body := a.Body.(map[string]any)
		p := body["page"].(map[string]any)
		results := body["results"].([]any)
		if len(body) != 2 || len(results) > 1 || p["count"] != float64(len(results)) {
			t.Fatalf("resource search page %d: %s", pages, a.Raw)
		}
		got = append(got, results...)
		pages++
		if token = p["next_token"].(string); token == "" || pages > 10 {
			break
		}
	}
	want := []any{
		map[string]any{"type": "document", "id": "handbook"},
		map[string]any{"type": "document", "id": "pricing"},
		map[string]any{"type": "document", "id": "salaries"},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("carol's documents over %d pages (-want +got):\n%s", pages, diff)
	}

	// Bad input is an error with custody's error JSON, never a decision, never a record.
	for _, bad := range []struct {
		body   string
		status int
		code   string
	}{
		{`{"subject": ` + user("alice") + `, "action": ` + action("can_read") + `}`, 400, "invalid_request"},
		{`{"subject": {"type": "user", "id": 7}, "action": ` + action("can_read") + `, "resource": ` + doc("roadmap") + `}`, 400, "invalid_request"},
		{`{"subject":`, 400, "invalid_json"},
	} {
		a := pep.call("access_evaluation_endpoint", bad.body)
		e, _ := a.Body.(map[string]any)["error"].(map[string]any)
		if a.Status != bad.status || e["code"] != bad.code || strings.Contains(a.Raw, "decision") {
			t.Errorf("bad input %s: status %d %s", bad.body, a.Status, a.Raw)
		}
	}
	resp, err := http.Post(c.HTTP+"/access/v1/evaluations", "text/plain", strings.NewReader(eval(user("alice"), action("can_read"), doc("roadmap"), "")))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnsupportedMediaType {
		t.Errorf("text/plain: status %d, want 415", resp.StatusCode)
	}

	// 5 evaluations, 4+2+3+5+1 batch items, 3+3 subject and action candidates and 4 resource
	// candidates over the pages: each one decision, answered only after it was recorded.
	const wantDecisions = 5 + 4 + 2 + 3 + 5 + 1 + 3 + 3 + 4
	if len(pep.decided) != wantDecisions {
		t.Errorf("%d decision IDs in headers, want %d", len(pep.decided), wantDecisions)
	}
	msgs := readStream(t, c.NATS)
	if len(msgs) != len(pep.decided) {
		t.Fatalf("stream holds %d records, %d decisions were answered", len(msgs), len(pep.decided))
	}
	onStream := map[string]streamMsg{}
	for _, m := range msgs {
		if _, dup := onStream[m.Record.DecisionID]; dup {
			t.Fatalf("decision %s recorded twice", m.Record.DecisionID)
		}
		onStream[m.Record.DecisionID] = m
	}
	for _, id := range pep.decided {
		m, ok := onStream[id]
		if !ok {
			t.Fatalf("answered decision %s is not on the stream", id)
		}
		r := m.Record
		if r.Policy.Query != "data.acme.docs.decision" || !strings.HasPrefix(r.Endpoint, "/access/v1/") || r.RequestID != pep.requestIDs[id] {
			t.Errorf("record %s: query %q endpoint %q request %q", id, r.Policy.Query, r.Endpoint, r.RequestID)
		}
		if !strings.HasPrefix(m.Subject, "custody.decision."+r.Outcome()+"._.") {
			t.Errorf("record %s on subject %s", id, m.Subject)
		}
	}
	c.Stop(t)
}

// TestAuthZENForAgents: the default policy set over AuthZEN. An agent gateway asks which tools an
// agent may call for a user, then asks for one call with the agent envelope in the context; the
// records carry the agent, task and correlation ID, and never the prompt.
func TestAuthZENForAgents(t *testing.T) {
	c := startCustody(t, "", "--public-url", "https://pdp.example.com")
	pep := newAZClient(t, c.HTTP)
	pep.discover("https://pdp.example.com")

	alice := `{"type": "user", "id": "alice@acme.example", "properties": {"roles": ["employee"], "scopes": ["mail.send", "mail.read"]}}`
	mailbox := `{"type": "mailbox", "id": "alice", "properties": {"owner": "alice@acme.example"}}`
	agentCtx := `{"agent": {"id": "` + mailer + `"}, "task": {"id": "t-42", "session_id": "s-7", "intent": ` + jsonString(intentText) + `}, "correlation_id": "corr-az-1"}`

	tools := pep.expect("tools the mailer may call for alice", "search_action_endpoint",
		`{"subject": `+alice+`, "resource": `+mailbox+`, "context": `+agentCtx+`}`,
		`{"results": [{"name": "read_inbox", "properties": {"server": "mail"}}, {"name": "send_email", "properties": {"server": "mail"}}]}`)
	if n := len(strings.Split(tools.Header.Get("Custody-Decision-Id"), ", ")); n != 9 {
		t.Errorf("action search decided %d tools, want the 9 of the catalog", n)
	}
	if got := tools.Header.Get("X-Correlation-ID"); got != "corr-az-1" {
		t.Errorf("X-Correlation-ID = %q, want the context's", got)
	}
	call := pep.call("access_evaluation_endpoint",
		`{"subject": `+alice+`, "action": {"name": "send_email", "properties": {"server": "mail", "arguments": {"api_key": "`+secret+`"}}}, "resource": `+mailbox+`, "context": `+agentCtx+`, "options": {"custody_include_reasons": true}}`)
	wantCall := map[string]any{"decision": true, "context": map[string]any{"decision_id": call.Header.Get("Custody-Decision-Id"), "reasons": []any{"allowed"}}}
	if diff := cmp.Diff(wantCall, call.Body); call.Status != http.StatusOK || diff != "" {
		t.Errorf("send_email with reasons: status %d (-want +got):\n%s", call.Status, diff)
	}
	pep.expect("no agent is an unknown agent", "access_evaluation_endpoint",
		`{"subject": `+alice+`, "action": {"name": "send_email"}, "resource": `+mailbox+`}`,
		`{"decision": false}`)

	msgs := readStream(t, c.NATS)
	if len(msgs) != len(pep.decided) || len(msgs) != 11 {
		t.Fatalf("stream holds %d records, %d decisions were answered, want 11", len(msgs), len(pep.decided))
	}
	for _, m := range msgs[:10] {
		r := m.Record
		if r.AgentID() != mailer || r.CorrelationID != "corr-az-1" || r.Task == nil || r.Task.ID != "t-42" || len(r.Task.IntentSHA256) != 64 {
			t.Errorf("record %s: agent %q correlation %q task %+v", r.DecisionID, r.AgentID(), r.CorrelationID, r.Task)
		}
		if len(r.Delegation.Chain) != 2 {
			t.Errorf("record %s: delegation %+v, want alice -> mailer", r.DecisionID, r.Delegation)
		}
		for _, leak := range []string{intentText, "Q3 numbers", secret} {
			if bytes.Contains(m.Data, []byte(leak)) {
				t.Fatalf("record %s leaks %q", r.DecisionID, leak)
			}
		}
	}
	if last := msgs[9]; !strings.HasPrefix(last.Subject, "custody.decision.allow.spiffe___acme_example_agents_mailer.send_email.corr-az-1") {
		t.Errorf("the call's record is on %s", last.Subject)
	}
	for _, leak := range []string{intentText, "Q3 numbers", secret} {
		if strings.Contains(c.Logs(), leak) {
			t.Fatalf("custody's log leaks %q", leak)
		}
	}
	c.Stop(t)
}

func jsonString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}
