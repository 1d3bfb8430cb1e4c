package test

import (
	"fmt"
	"testing"
)

// TestExecutionFindsDecisionAfterRestart: a restarted instance has forgotten its decisions, and
// finds them on the stream by the report's correlation ID. Without one the report is still
// recorded, as unknown_decision.
func TestExecutionFindsDecisionAfterRestart(t *testing.T) {
	dir := t.TempDir()
	c := startCustody(t, dir)
	var d receiptAnswer
	body := call{task: "t-1", parent: "", attempt: 1, agent: "mailer", tool: "send_email", resource: "alice"}.body()
	if st := postJSON(t, c.HTTP+"/v1/authorize", body, &d); st != 200 || !d.Allow {
		t.Fatalf("authorize: %d %+v", st, d)
	}
	c.Stop(t)
	c = startCustody(t, dir)
	for _, tc := range []struct{ corr, violation string }{{workflowCorr, ""}, {"", "unknown_decision"}} {
		var out struct{ Violation string }
		report := fmt.Sprintf(`{"decision_id":%q,"correlation_id":%q,"status":"succeeded","target":{"system":"mail"}}`, d.DecisionID, tc.corr)
		if tc.corr == "" {
			report = fmt.Sprintf(`{"decision_id":%q,"status":"succeeded","target":{"system":"mail"}}`, d.DecisionID)
		}
		if st := postJSON(t, c.HTTP+"/v1/executions", report, &out); st != 200 || out.Violation != tc.violation {
			t.Errorf("correlation %q: status %d violation %q, want %q", tc.corr, st, out.Violation, tc.violation)
		}
	}
	if out, err := runCustody(t, "verify", "--nats-url", c.NATS, "--nats-creds", c.Creds); err != nil {
		t.Errorf("verify across the restart: %v\n%s", err, out)
	}
}
