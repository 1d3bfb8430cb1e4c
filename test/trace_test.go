package test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v3/jwk"
	"github.com/lestrrat-go/jwx/v3/jwt"
)

// workflowCorr is the one human request every call of TestTraceAndCorrelate belongs to.
const workflowCorr = "req-trace-7"

// call is one agent tool call of the workflow.
type call struct {
	task, parent string
	attempt      int
	agent, tool  string
	resource     string // mailbox or file ID
}

func (c call) body() string {
	typ, server := "file", "filesystem" // the default catalog pins each tool to its server
	switch c.tool {
	case "send_email":
		typ, server = "mailbox", "mail"
	case "transfer_funds":
		typ, server = "account", "payments"
	}
	return fmt.Sprintf(`{"correlation_id":%q,
	  "agent":{"id":"spiffe://acme.example/agents/%s"},
	  "user":{"id":"alice@acme.example","properties":{"roles":["employee"],"scopes":["mail.send","files.read","files.write","payments.send"]}},
	  "tool":{"name":%q,"server":%q,"arguments":{}},
	  "resource":{"type":%q,"id":%q,"properties":{"owner":"alice@acme.example"}},
	  "task":{"id":%q,"parent_id":%q,"attempt":%d,"session_id":"s-1","intent":"close the quarter"}}`,
		workflowCorr, c.agent, c.tool, server, typ, c.resource, c.task, c.parent, c.attempt)
}

// receiptAnswer is an answer of /v1/authorize with its receipt.
type receiptAnswer struct {
	DecisionID    string `json:"decision_id"`
	CorrelationID string `json:"correlation_id"`
	Allow         bool   `json:"allow"`
	Receipt       string `json:"receipt"`
	header        string
}

func postJSON(t *testing.T, url, body string, out any) int {
	t.Helper()
	resp, err := http.Post(url, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if err := json.Unmarshal(raw, out); err != nil {
		t.Fatalf("%s: status %d, body %q", url, resp.StatusCode, raw)
	}
	if d, ok := out.(*receiptAnswer); ok {
		d.header = resp.Header.Get("Custody-Receipt")
	}
	return resp.StatusCode
}

// TestTraceAndCorrelate plays one human request that fans out into parallel agent tasks, with a
// retry and a denied call; posts what the systems then did; checks `custody trace` node by node;
// verifies the receipts with a JOSE library; and feeds `custody correlate` a system log.
func TestTraceAndCorrelate(t *testing.T) {
	c := startCustody(t, "")

	// Fan-out: the orchestrator's task t-plan spawns three tasks that run in parallel.
	first := map[string]call{
		"mail":  {task: "t-mail", parent: "t-plan", attempt: 1, agent: "mailer", tool: "send_email", resource: "alice"},
		"files": {task: "t-files", parent: "t-plan", attempt: 1, agent: "ops", tool: "write_file", resource: "q3.xlsx"},
		"pay":   {task: "t-pay", parent: "t-plan", attempt: 1, agent: "ops", tool: "transfer_funds", resource: "acct-9"},
	}
	got := map[string]receiptAnswer{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for name, cl := range first {
		wg.Go(func() {
			var d receiptAnswer
			if st := postJSON(t, c.HTTP+"/v1/authorize", cl.body(), &d); st != 200 {
				t.Errorf("%s: status %d", name, st)
			}
			mu.Lock()
			got[name] = d
			mu.Unlock()
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	// The file write fails downstream and is retried: attempt 2 of the same task.
	var retry receiptAnswer
	postJSON(t, c.HTTP+"/v1/authorize", call{task: "t-files", parent: "t-plan", attempt: 2, agent: "ops", tool: "write_file", resource: "q3.xlsx"}.body(), &retry)
	got["retry"] = retry
	for name, want := range map[string]bool{"mail": true, "files": true, "pay": false, "retry": true} {
		d := got[name]
		if d.Allow != want || d.CorrelationID != workflowCorr {
			t.Fatalf("%s: allow %v correlation %q, want allow %v", name, d.Allow, d.CorrelationID, want)
		}
		if want != (d.Receipt != "") || d.Receipt != d.header {
			t.Fatalf("%s: receipt %q, header %q", name, d.Receipt, d.header)
		}
	}

	// Receipts verify with the published keys, and a tampered or expired one does not.
	resp, err := http.Get(c.HTTP + "/.well-known/jwks.json")
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	keys, err := jwk.Parse(raw)
	if err != nil {
		t.Fatalf("jwks: %v: %s", err, raw)
	}
	tok, err := jwt.Parse([]byte(got["mail"].Receipt), jwt.WithKeySet(keys), jwt.WithValidate(true))
	if err != nil {
		t.Fatalf("receipt does not verify: %v", err)
	}
	var claimDecision, claimCorr, claimAction string
	_ = tok.Get("decision_id", &claimDecision)
	_ = tok.Get("correlation_id", &claimCorr)
	_ = tok.Get("action", &claimAction)
	sub, _ := tok.Subject()
	if claimDecision != got["mail"].DecisionID || claimCorr != workflowCorr || claimAction != "send_email" || sub != "alice@acme.example" {
		t.Errorf("receipt claims: decision %q correlation %q action %q sub %q", claimDecision, claimCorr, claimAction, sub)
	}
	parts := strings.Split(got["mail"].Receipt, ".")
	forged := strings.Replace(parts[1], parts[1][4:8], "AAAA", 1)
	if _, err := jwt.Parse([]byte(parts[0]+"."+forged+"."+parts[2]), jwt.WithKeySet(keys)); err == nil {
		t.Error("a tampered receipt verified")
	}
	later := jwt.ClockFunc(func() time.Time { return time.Now().Add(6 * time.Minute) })
	if _, err := jwt.Parse([]byte(got["mail"].Receipt), jwt.WithKeySet(keys), jwt.WithClock(later)); err == nil {
		t.Error("a receipt verified after its expiry")
	}

	// What the systems did.
	now := time.Now().UTC()
	execs := []struct {
		decision, status, system, violation string
	}{
		{got["mail"].DecisionID, "succeeded", "mail", ""},
		{got["files"].DecisionID, "failed", "files", ""},
		{got["retry"].DecisionID, "succeeded", "files", ""},
		{got["pay"].DecisionID, "succeeded", "payments", "executed_after_deny"},
	}
	execIDs := map[string]string{}
	for i, e := range execs {
		body := fmt.Sprintf(`{"decision_id":%q,"correlation_id":%q,"status":%q,"target":{"system":%q,"request_id":"sys-%d"},"started_at":%q,"finished_at":%q}`,
			e.decision, workflowCorr, e.status, e.system, i, now.Format(time.RFC3339Nano), now.Add(time.Second).Format(time.RFC3339Nano))
		var out struct {
			ExecutionID string `json:"execution_id"`
			Violation   string `json:"violation"`
		}
		if st := postJSON(t, c.HTTP+"/v1/executions", body, &out); st != 200 || out.Violation != e.violation {
			t.Fatalf("execution %d: status %d violation %q, want %q", i, st, out.Violation, e.violation)
		}
		execIDs[e.decision] = out.ExecutionID
	}
	// A report for a decision custody never made is kept, and flagged.
	var unknown struct{ Violation string }
	if st := postJSON(t, c.HTTP+"/v1/executions", `{"decision_id":"made-up","correlation_id":"`+workflowCorr+`","status":"succeeded","target":{"system":"db"}}`, &unknown); st != 200 || unknown.Violation != "unknown_decision" {
		t.Fatalf("unknown decision: %d %+v", st, unknown)
	}

	// The graph, node by node.
	out, err := runCustody(t, "trace", workflowCorr, "--nats-url", c.NATS, "--nats-creds", c.Creds, "--format", "json")
	if err != nil {
		t.Fatalf("trace: %v\n%s", err, out)
	}
	var g struct {
		CorrelationID string `json:"correlation_id"`
		Nodes         []struct {
			ID, Kind, Label, Outcome string
			Detail                   map[string]any
		} `json:"nodes"`
		Edges []struct{ From, To, Kind string } `json:"edges"`
	}
	if err := json.Unmarshal([]byte(out), &g); err != nil {
		t.Fatalf("trace json: %v\n%s", err, out)
	}
	parent := map[string]string{}
	for _, e := range g.Edges {
		parent[e.To] = e.From
	}
	kinds := map[string]string{}
	outcome := map[string]string{}
	for _, n := range g.Nodes {
		kinds[n.ID], outcome[n.ID] = n.Kind, n.Outcome
	}
	root := "request:" + workflowCorr
	agent := func(task, name string) string { return "agent:" + task + "/spiffe://acme.example/agents/" + name }
	wantTree := []struct{ node, kind, parent, outcome string }{
		{root, "request", "", ""},
		{"task:t-plan", "task", root, ""},
		{"task:t-mail", "task", "task:t-plan", ""},
		{"task:t-files", "task", "task:t-plan", ""},
		{"task:t-pay", "task", "task:t-plan", ""},
		{agent("t-mail", "mailer"), "agent", "task:t-mail", ""},
		{agent("t-files", "ops"), "agent", "task:t-files", ""},
		{agent("t-pay", "ops"), "agent", "task:t-pay", ""},
		{"decision:" + got["mail"].DecisionID, "decision", agent("t-mail", "mailer"), "allow"},
		{"decision:" + got["files"].DecisionID, "decision", agent("t-files", "ops"), "allow"},
		{"decision:" + got["retry"].DecisionID, "decision", agent("t-files", "ops"), "allow"},
		{"decision:" + got["pay"].DecisionID, "decision", agent("t-pay", "ops"), "deny"},
		{"execution:" + execIDs[got["mail"].DecisionID], "execution", "decision:" + got["mail"].DecisionID, "succeeded"},
		{"execution:" + execIDs[got["files"].DecisionID], "execution", "decision:" + got["files"].DecisionID, "failed"},
		{"execution:" + execIDs[got["retry"].DecisionID], "execution", "decision:" + got["retry"].DecisionID, "succeeded"},
		{"execution:" + execIDs[got["pay"].DecisionID], "execution", "decision:" + got["pay"].DecisionID, "succeeded"},
	}
	for _, w := range wantTree {
		if kinds[w.node] != w.kind || parent[w.node] != w.parent || outcome[w.node] != w.outcome {
			t.Errorf("node %s: kind %q parent %q outcome %q, want %q %q %q", w.node, kinds[w.node], parent[w.node], outcome[w.node], w.kind, w.parent, w.outcome)
		}
	}
	// The unknown decision's execution hangs off the request itself.
	if len(g.Nodes) != len(wantTree)+1 || len(g.Edges) != len(g.Nodes)-1 {
		t.Errorf("%d nodes, %d edges, want %d and %d:\n%s", len(g.Nodes), len(g.Edges), len(wantTree)+1, len(wantTree), out)
	}
	for _, n := range g.Nodes {
		if n.ID == "decision:"+got["retry"].DecisionID && n.Detail["attempt"] != float64(2) {
			t.Errorf("retry node has attempt %v", n.Detail["attempt"])
		}
		if n.ID == "execution:"+execIDs[got["pay"].DecisionID] && n.Detail["violation"] != "executed_after_deny" {
			t.Errorf("execution after deny not flagged: %v", n.Detail)
		}
	}
	for _, format := range []string{"text", "dot", "mermaid"} {
		out, err := runCustody(t, "trace", "--nats-url", c.NATS, "--nats-creds", c.Creds, "--format", format, workflowCorr)
		if err != nil || !strings.Contains(out, got["pay"].DecisionID) {
			t.Errorf("trace --format %s: %v\n%s", format, err, out)
		}
		if format == "text" {
			t.Logf("custody trace %s:\n%s", workflowCorr, out)
		}
	}

	// correlate: a system log mixing attributed lines, the shared account's unexplained actions
	// and actions after a deny.
	ts := now.Format(time.RFC3339)
	lines := []struct{ line, status string }{
		{fmt.Sprintf(`{"time":%q,"user":"svc-agents","receipt":%q,"action":"send_email","resource":"alice"}`, ts, got["mail"].Receipt), "attributed"},
		{fmt.Sprintf(`{"time":%q,"user":"svc-agents","decision_id":%q,"action":"write_file","resource":"file/q3.xlsx"}`, ts, got["retry"].DecisionID), "attributed"},
		{fmt.Sprintf(`{"time":%q,"user":"svc-agents","correlation_id":%q,"action":"write_file"}`, ts, workflowCorr), "attributed"},
		{fmt.Sprintf(`{"time":%q,"user":"svc-agents","action":"drop_table","resource":"customers"}`, ts), "unattributed"},
		{fmt.Sprintf(`{"time":%q,"user":"svc-agents","correlation_id":%q,"action":"export_contacts"}`, ts, workflowCorr), "unattributed"},
		{fmt.Sprintf(`{"time":%q,"user":"svc-agents","decision_id":%q,"action":"transfer_funds"}`, ts, got["pay"].DecisionID), "contradicted"},
		{fmt.Sprintf(`{"time":%q,"user":"svc-agents","correlation_id":%q,"action":"transfer_funds"}`, ts, workflowCorr), "contradicted"},
		{fmt.Sprintf(`{"time":%q,"user":"svc-agents","receipt":%q,"action":"delete_mailbox","resource":"alice"}`, ts, got["mail"].Receipt), "contradicted"},
		{fmt.Sprintf(`{"time":%q,"user":"svc-agents","receipt":%q,"action":"send_email","resource":"bob"}`, ts, got["mail"].Receipt), "contradicted"},
		{fmt.Sprintf(`{"time":%q,"user":"svc-agents","receipt":%q,"action":"send_email"}`, now.Add(time.Hour).Format(time.RFC3339), got["mail"].Receipt), "contradicted"},
	}
	var log bytes.Buffer
	for _, l := range lines {
		log.WriteString(l.line + "\n")
	}
	logFile := filepath.Join(t.TempDir(), "system.jsonl")
	if err := os.WriteFile(logFile, log.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(binary, "correlate", "--nats-url", c.NATS, "--nats-creds", c.Creds, "--system-log", logFile, "--json")
	var stdout bytes.Buffer
	cmd.Stdout = &stdout
	err = cmd.Run()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 {
		t.Errorf("correlate exit: %v, want status 1", err)
	}
	var res struct {
		Lines []struct {
			Line, Status, Reason string
			DecisionID           string `json:"decision_id"`
			CorrelationID        string `json:"correlation_id"`
		} `json:"lines"`
		Summary struct{ Lines, Attributed, Unattributed, Contradicted int } `json:"summary"`
	}
	if err := json.Unmarshal(stdout.Bytes(), &res); err != nil {
		t.Fatalf("correlate --json: %v\n%s", err, stdout.String())
	}
	if len(res.Lines) != len(lines) {
		t.Fatalf("correlate judged %d lines, want %d", len(res.Lines), len(lines))
	}
	for i, l := range lines {
		r := res.Lines[i]
		if r.Status != l.status || r.Line != fmt.Sprintf("%s:%d", logFile, i+1) {
			t.Errorf("line %d %s: %s (%s), want %s", i+1, l.line[:min(len(l.line), 120)], r.Status, r.Reason, l.status)
		}
	}
	if res.Lines[0].DecisionID != got["mail"].DecisionID || res.Lines[0].CorrelationID != workflowCorr {
		t.Errorf("line 1 joined to %q/%q", res.Lines[0].DecisionID, res.Lines[0].CorrelationID)
	}
	if s := res.Summary; s.Lines != 10 || s.Attributed != 3 || s.Unattributed != 2 || s.Contradicted != 5 {
		t.Errorf("summary %+v", s)
	}
	text, _ := runCustody(t, "correlate", "--nats-url", c.NATS, "--nats-creds", c.Creds, "--system-log", logFile)
	t.Logf("custody correlate:\n%s", text)

	// Executions are chained with the decisions: the stream still verifies.
	if out, err := runCustody(t, "verify", "--nats-url", c.NATS, "--nats-creds", c.Creds); err != nil {
		t.Errorf("verify with executions on the stream: %v\n%s", err, out)
	}
}
