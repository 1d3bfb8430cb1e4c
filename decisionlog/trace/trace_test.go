package trace_test

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/custodyhq/custody/decisionlog"
	"github.com/custodyhq/custody/decisionlog/trace"
	"github.com/custodyhq/custody/pdp"
)

var t0 = time.Date(2026, 11, 27, 6, 0, 0, 0, time.UTC)

func decision(id string, sec int, task, parent string, attempt int, agent, action, resID string, allow bool) decisionlog.Record {
	r := decisionlog.Record{
		Schema: decisionlog.SchemaDecisionV1, DecisionID: id, CorrelationID: "c-1", Timestamp: t0.Add(time.Duration(sec) * time.Second),
		Subject: pdp.Entity{Type: "user", ID: "alice"}, Agent: &pdp.Agent{ID: agent}, Action: pdp.Action{Name: action},
		Resource: pdp.Entity{Type: "file", ID: resID}, Allow: allow, Reasons: []string{"allowed"},
		Task: &pdp.Task{ID: task, ParentID: parent, Attempt: int64(attempt)},
	}
	if !allow {
		r.Reasons = []string{"user_lacks_scope"}
	}
	return r
}

func execution(id, decisionID string, sec int, status, violation string) decisionlog.Record {
	f := t0.Add(time.Duration(sec) * time.Second)
	return decisionlog.Record{
		Schema: decisionlog.SchemaExecutionV1, ExecutionID: id, DecisionID: decisionID, CorrelationID: "c-1", Timestamp: f,
		Execution: &decisionlog.Execution{Status: status, Target: decisionlog.ExecutionTarget{System: "fs", RequestID: "r-" + id}, FinishedAt: &f, Violation: violation},
	}
}

func fixture() []decisionlog.Record {
	return []decisionlog.Record{
		execution("e-2", "d-2b", 6, "succeeded", ""),
		decision("d-1", 1, "t-1", "t-0", 1, "researcher", "read_file", "a.txt", true),
		decision("d-2a", 2, "t-2", "t-0", 1, "ops", "write_file", "b.txt", true),
		decision("d-2b", 4, "t-2", "t-0", 2, "ops", "write_file", "b.txt", true),
		decision("d-3", 3, "t-3", "t-0", 1, "ops", "delete_file", "c.txt", false),
		execution("e-1", "d-1", 2, "succeeded", ""),
		execution("e-2a", "d-2a", 3, "failed", ""),
		execution("e-3", "d-3", 5, "succeeded", decisionlog.ViolationExecutedAfterDeny),
		{Schema: decisionlog.SchemaDecisionV1, DecisionID: "other", CorrelationID: "c-2"},
	}
}

func TestBuildGraph(t *testing.T) {
	g := trace.Build("c-1", fixture())
	var edges []string
	for _, e := range g.Edges {
		edges = append(edges, e.From+" -"+e.Kind+"-> "+e.To)
	}
	want := []string{
		"request:c-1 -spawned-> task:t-0",
		"task:t-0 -spawned-> task:t-1",
		"task:t-1 -ran-> agent:t-1/researcher",
		"agent:t-1/researcher -decided-> decision:d-1",
		"task:t-0 -spawned-> task:t-2",
		"task:t-2 -ran-> agent:t-2/ops",
		"agent:t-2/ops -decided-> decision:d-2a",
		"task:t-0 -spawned-> task:t-3",
		"task:t-3 -ran-> agent:t-3/ops",
		"agent:t-3/ops -decided-> decision:d-3",
		"agent:t-2/ops -decided-> decision:d-2b",
		"decision:d-1 -executed-> execution:e-1",
		"decision:d-2a -executed-> execution:e-2a",
		"decision:d-3 -executed-> execution:e-3",
		"decision:d-2b -executed-> execution:e-2",
	}
	if diff := cmp.Diff(want, edges); diff != "" {
		t.Errorf("edges (-want +got):\n%s", diff)
	}
	if n := g.Node("decision:d-2b"); n == nil || n.Detail["attempt"] != int64(2) || n.Outcome != "allow" {
		t.Errorf("retry node: %+v", n)
	}
	if n := g.Node("execution:e-3"); n == nil || n.Detail["violation"] != decisionlog.ViolationExecutedAfterDeny {
		t.Errorf("violation node: %+v", n)
	}
	if n := g.Node("request:c-1"); n.Label != "request c-1 by alice" || n.Detail["denies"] != 1 || n.Detail["executions"] != 4 {
		t.Errorf("root: %+v", n)
	}
	var text bytes.Buffer
	if err := g.WriteText(&text); err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"└─ task t-0", "   ├─ task t-1", "DENY delete_file on file/c.txt", "(attempt 2)", "VIOLATION=executed_after_deny"} {
		if !strings.Contains(text.String(), s) {
			t.Errorf("text lacks %q:\n%s", s, text.String())
		}
	}
	var js bytes.Buffer
	if err := g.WriteJSON(&js); err != nil {
		t.Fatal(err)
	}
	var back struct {
		CorrelationID string       `json:"correlation_id"`
		Nodes         []trace.Node `json:"nodes"`
		Edges         []trace.Edge `json:"edges"`
	}
	if err := json.Unmarshal(js.Bytes(), &back); err != nil || back.CorrelationID != "c-1" || len(back.Nodes) != 16 || len(back.Edges) != 15 {
		t.Errorf("json: %v %d nodes %d edges", err, len(back.Nodes), len(back.Edges))
	}
	var dot, mer bytes.Buffer
	if err := g.WriteDOT(&dot); err != nil || !strings.Contains(dot.String(), `"decision:d-3" -> "execution:e-3"`) {
		t.Errorf("dot: %v\n%s", err, dot.String())
	}
	if err := g.WriteMermaid(&mer); err != nil || !strings.HasPrefix(mer.String(), "flowchart TD\n") || !strings.Contains(mer.String(), "-->|executed|") {
		t.Errorf("mermaid: %v\n%s", err, mer.String())
	}
}

func TestCorrelate(t *testing.T) {
	recs := fixture()
	c := trace.NewCorrelator(recs, trace.DefaultFields, 5*time.Minute)
	lines := []struct{ line, status string }{
		{`{"decision_id":"d-1","action":"read_file","resource":"a.txt","time":"2026-11-27T06:00:02Z"}`, trace.Attributed},
		{`{"receipt":"x.eyJkZWNpc2lvbl9pZCI6ImQtMmIifQ.y","action":"write_file"}`, trace.Attributed}, // {"decision_id":"d-2b"}
		{`{"correlation_id":"c-1","action":"write_file","time":"2026-11-27T06:00:05Z"}`, trace.Attributed},
		{`{"user":"svc-agent","action":"drop_table"}`, trace.Unattributed},
		{`{"decision_id":"nope"}`, trace.Unattributed},
		{`{"correlation_id":"c-1","action":"send_email"}`, trace.Unattributed},
		{`not json`, trace.Unattributed},
		{`{"decision_id":"d-3","action":"delete_file"}`, trace.Contradicted},
		{`{"correlation_id":"c-1","action":"delete_file","time":"2026-11-27T06:00:09Z"}`, trace.Contradicted},
		{`{"decision_id":"d-1","action":"delete_file"}`, trace.Contradicted},
		{`{"decision_id":"d-1","resource":"file/zzz"}`, trace.Contradicted},
		{`{"decision_id":"d-1","time":"2026-11-27T07:00:00Z"}`, trace.Contradicted},
	}
	for i, l := range lines {
		c.Add("log:"+string(rune('a'+i)), []byte(l.line))
	}
	res := c.Result()
	for i, l := range lines {
		if got := res.Lines[i]; got.Status != l.status {
			t.Errorf("%s: status %s (%s), want %s", l.line, got.Status, got.Reason, l.status)
		}
	}
	if diff := cmp.Diff(trace.Summary{Lines: 12, Attributed: 3, Unattributed: 4, Contradicted: 5}, res.Summary); diff != "" {
		t.Errorf("summary (-want +got):\n%s", diff)
	}
	if res.Lines[0].Subject != "alice" || res.Lines[0].Agent != "researcher" || res.Lines[0].Task != "t-1" {
		t.Errorf("attribution: %+v", res.Lines[0])
	}
	if res.Clean() {
		t.Error("Clean with bad lines")
	}
}

// TestWriteTextCounts: the summary line says "1 decision", not "1 decisions".
func TestWriteTextCounts(t *testing.T) {
	one := []decisionlog.Record{decision("d-1", 1, "t-1", "", 1, "researcher", "read_file", "a.txt", true)}
	tests := []struct {
		name    string
		records []decisionlog.Record
		want    string
	}{
		{"one of each", append(one, execution("e-1", "d-1", 2, "succeeded", decisionlog.ViolationExecutedAfterDeny)), "  1 decision (1 allow, 0 deny), 1 execution, 1 flagged as violation\n"},
		{"one decision", one, "  1 decision (1 allow, 0 deny), 0 executions, 0 flagged as violations\n"},
		{"several", fixture(), "  4 decisions (3 allow, 1 deny), 4 executions, 1 flagged as violation\n"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var text bytes.Buffer
			if err := trace.Build("c-1", tc.records).WriteText(&text); err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(text.String(), tc.want) {
				t.Errorf("text lacks %q:\n%s", tc.want, text.String())
			}
		})
	}
}
