package ocsf_test

import (
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/custodyhq/custody/decisionlog"
	"github.com/custodyhq/custody/decisionlog/ocsf"
	"github.com/custodyhq/custody/decisionlog/ocsf/ocsftest"
	"github.com/custodyhq/custody/pdp"
	"golang.org/x/mod/sumdb/note"
)

var when = time.Date(2026, 11, 27, 6, 0, 0, 0, time.UTC)

func baseRecord(id string) *decisionlog.Record {
	return &decisionlog.Record{
		Schema: decisionlog.SchemaDecisionV1, DecisionID: id, Timestamp: when, CorrelationID: "corr-1",
		RequestID: "req-1", TraceID: "4bf92f3577b34da6a3ce929d0e0e4736", SpanID: "00f067aa0ba902b7",
		Endpoint: "authorize",
		Subject:  pdp.Entity{Type: "user", ID: "alice@acme.example"},
		Action:   pdp.Action{Name: "send_email", Properties: map[string]any{"server": "mail", "arguments": map[string]any{"to": "bob@acme.example"}}},
		Resource: pdp.Entity{Type: "tool", ID: "send_email"},
		Agent:    &pdp.Agent{ID: "spiffe://acme.example/agent/mailer", Type: "agent"},
		Delegation: pdp.Delegation{Verified: true, Chain: []any{
			map[string]any{"type": "user", "id": "alice@acme.example", "issuer": "https://idp.acme.example", "verified_by": "jwt"},
			map[string]any{"type": "agent", "id": "spiffe://acme.example/agent/mailer", "verified_by": "mtls"},
		}},
		Caller:  &decisionlog.Caller{Method: "mtls", ID: "gateway", Workload: "spiffe://acme.example/gateway"},
		Task:    &pdp.Task{ID: "task-1", SessionID: "sess-1", IntentSHA256: strings.Repeat("ab", 32)},
		Allow:   true,
		Reasons: []string{"tool allowed for role"},
		Policy:  decisionlog.PolicyRef{Query: "data.custody.authz.decision", Revision: "rev-42"},
		EvalNS:  12345,
		PDP:     decisionlog.Instance{Instance: "inst-a", Version: "1.4.0"},
	}
}

func sealed(t testing.TB, r *decisionlog.Record, seq uint64) ocsf.Msg {
	t.Helper()
	decisionlog.ChainHead{Seq: seq - 1, Hash: strings.Repeat("0", 64)}.Link(r)
	body, err := decisionlog.Seal(r)
	if err != nil {
		t.Fatal(err)
	}
	return ocsf.Msg{Seq: seq * 10, Subject: decisionlog.RecordSubject(r), MsgID: r.MsgID(), Data: body, Time: when}
}

// TestMapEveryKind maps one message of every kind the stream holds and checks each event
// against the OCSF schema snapshot and against what the mapping promises field by field.
func TestMapEveryKind(t *testing.T) {
	schema := ocsftest.Load(t)

	deny := baseRecord("dec-deny")
	deny.Allow, deny.Reasons = false, []string{"tool not allowed", "outside working hours"}
	deny.Subject = pdp.Entity{Type: "agent", ID: "spiffe://acme.example/agent/mailer"}
	deny.Delegation = pdp.Delegation{Chain: []any{}}
	deny.Caller, deny.Task, deny.TraceID, deny.SpanID = nil, nil, "", ""

	refused := baseRecord("dec-refused")
	refused.Allow, refused.Reasons, refused.Error = false, []string{"authentication_failed"}, "bad token"
	refused.Agent, refused.Subject, refused.Resource = nil, pdp.Entity{}, pdp.Entity{}
	refused.Action = pdp.Action{}

	exec := func(id, status, violation string) *decisionlog.Record {
		r := baseRecord("dec-allow")
		r.Schema, r.ExecutionID = decisionlog.SchemaExecutionV1, id
		start := when.Add(time.Second)
		r.Execution = &decisionlog.Execution{Status: status, Violation: violation, StartedAt: &start,
			Target: decisionlog.ExecutionTarget{System: "smtp-relay", RequestID: "smtp-9", Resource: "mailbox/bob"}}
		if status == decisionlog.ExecutionFailed {
			r.Execution.Error = "relay refused"
		}
		return r
	}

	head := decisionlog.ChainHead{Seq: 7, Hash: strings.Repeat("ab", 32)}
	skey, _, err := decisionlog.GenerateSigningKey(decisionlog.SigningKeyName("inst-a"))
	if err != nil {
		t.Fatal(err)
	}
	signer, err := noteSigner(skey)
	if err != nil {
		t.Fatal(err)
	}
	cp, err := decisionlog.NewCheckpoint("inst-a", head, when, signer)
	if err != nil {
		t.Fatal(err)
	}
	cpBody, _ := json.Marshal(cp)

	unsealed := baseRecord("dec-forged")
	unsealedBody, _ := json.Marshal(unsealed)

	type want struct {
		class, action, disposition, status, severity int
		uid, activity                                string
		alert, verified                              bool
	}
	cases := []struct {
		name string
		msg  ocsf.Msg
		want want
	}{
		{"allow", sealed(t, baseRecord("dec-allow"), 1), want{6003, 1, 1, 1, 1, "dec-allow", "Authorize", false, true}},
		{"deny", sealed(t, deny, 2), want{6003, 2, 2, 2, 2, "dec-deny", "Authorize", false, true}},
		{"refused attempt", sealed(t, refused, 3), want{6003, 2, 2, 2, 2, "dec-refused", "Authorize", false, true}},
		{"execution succeeded", sealed(t, exec("ex-1", decisionlog.ExecutionSucceeded, ""), 4), want{6003, 3, 17, 1, 1, "ex-1", "Execute", false, true}},
		{"execution failed", sealed(t, exec("ex-2", decisionlog.ExecutionFailed, ""), 5), want{6003, 3, 17, 2, 1, "ex-2", "Execute", false, true}},
		{"execution skipped", sealed(t, exec("ex-3", decisionlog.ExecutionSkipped, ""), 6), want{6003, 3, 17, 99, 1, "ex-3", "Execute", false, true}},
		{"execution after deny", sealed(t, exec("ex-4", decisionlog.ExecutionSucceeded, decisionlog.ViolationExecutedAfterDeny), 7), want{6003, 3, 19, 1, 4, "ex-4", "Execute", true, true}},
		{"checkpoint", ocsf.Msg{Seq: 80, Subject: decisionlog.CheckpointSubject("inst-a"), Data: cpBody}, want{0, -1, -1, 0, 1, "checkpoint/inst-a/7", "Checkpoint", false, false}},
		{"unsealed decision", ocsf.Msg{Seq: 90, Subject: "custody.decision.allow._._._", MsgID: "dec-forged", Data: unsealedBody}, want{6003, 1, 1, 1, 3, "dec-forged", "Authorize", false, false}},
		{"unknown schema", ocsf.Msg{Seq: 91, Subject: "custody.other", MsgID: "x", Data: []byte(`{"schema":"custody.future.v9"}`), Time: when}, want{0, -1, -1, 99, 3, "x", "Unreadable", false, false}},
		{"not JSON", ocsf.Msg{Seq: 92, Subject: "custody.decision.allow", Data: []byte("\xff\x00garbage"), Time: when}, want{0, -1, -1, 99, 3, "", "Unreadable", false, false}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			b, err := ocsf.MapJSON(tc.msg)
			if err != nil {
				t.Fatal(err)
			}
			schema.Check(t, b)
			var e ocsf.Event
			if err := json.Unmarshal(b, &e); err != nil {
				t.Fatal(err)
			}
			w := tc.want
			if e.ClassUID != w.class || e.StatusID != w.status || e.SeverityID != w.severity || e.Metadata.UID != w.uid || e.ActivityName != w.activity {
				t.Errorf("class %d status %d severity %d uid %q activity %q, want %+v", e.ClassUID, e.StatusID, e.SeverityID, e.Metadata.UID, e.ActivityName, w)
			}
			if got := deref(e.ActionID); got != w.action {
				t.Errorf("action_id %d, want %d", got, w.action)
			}
			if got := deref(e.DispositionID); got != w.disposition {
				t.Errorf("disposition_id %d, want %d", got, w.disposition)
			}
			if e.IsAlert != nil && *e.IsAlert != w.alert {
				t.Errorf("is_alert %v, want %v", *e.IsAlert, w.alert)
			}
			if got, _ := e.Unmapped.Custody["verified"].(bool); got != w.verified {
				t.Errorf("unmapped.custody.verified %v, want %v", got, w.verified)
			}
			if e.Metadata.Sequence == nil || *e.Metadata.Sequence != tc.msg.Seq {
				t.Errorf("metadata.sequence %v, want the stream seq %d", e.Metadata.Sequence, tc.msg.Seq)
			}
			if e.Metadata.Version != ocsf.SchemaVersion || e.Metadata.LogVersion != ocsf.MappingVersion || e.Metadata.Product.Name != "custody" {
				t.Errorf("metadata %+v", e.Metadata)
			}
		})
	}

	// The fields the issue names, on the richest decision.
	var e map[string]any
	b, _ := ocsf.MapJSON(cases[0].msg)
	_ = json.Unmarshal(b, &e)
	for path, want := range map[string]any{
		"actor.user.uid":                       "alice@acme.example",
		"actor.app_name":                       "gateway",
		"actor.session.uid":                    "sess-1",
		"ai_agent.uid":                         "spiffe://acme.example/agent/mailer",
		"ai_agent.instance_uid":                "sess-1",
		"api.operation":                        "send_email",
		"api.service.name":                     "mail",
		"api.request.uid":                      "req-1",
		"api.request.data.mcp_method":          "tools/call",
		"policy.name":                          "data.custody.authz.decision",
		"policy.version":                       "rev-42",
		"metadata.uid":                         "dec-allow",
		"metadata.correlation_uid":             "corr-1",
		"metadata.product.version":             "1.4.0",
		"trace.uid":                            "4bf92f3577b34da6a3ce929d0e0e4736",
		"trace.span.uid":                       "00f067aa0ba902b7",
		"status_detail":                        "tool allowed for role",
		"unmapped.custody.delegation.verified": true,
		"unmapped.custody.instance":            "inst-a",
		"unmapped.custody.task.intent_sha256":  strings.Repeat("ab", 32),
		"time":                                 float64(when.UnixMilli()),
	} {
		if got := lookup(e, path); got != want {
			t.Errorf("%s = %v, want %v", path, got, want)
		}
	}
	if res := lookup(e, "resources").([]any); len(res) != 1 || lookup(res[0].(map[string]any), "uid") != "send_email" {
		t.Errorf("resources %v", res)
	}
	if chain := lookup(e, "unmapped.custody.delegation.chain").([]any); len(chain) != 2 {
		t.Errorf("delegation chain %v", chain)
	}
	// The deny names both reasons.
	b, _ = ocsf.MapJSON(cases[1].msg)
	_ = json.Unmarshal(b, &e)
	if got := lookup(e, "status_detail"); got != "tool not allowed; outside working hours" {
		t.Errorf("deny status_detail %v", got)
	}
	if os.Getenv("OCSF_SCHEMA_FILES") != "" {
		t.Logf("schema files read: %v", schema.Files())
	}
}

// TestValidatorCatches proves the validator fails events that break the schema, so that the
// passing events above mean something.
func TestValidatorCatches(t *testing.T) {
	schema := ocsftest.Load(t)
	good, _ := ocsf.MapJSON(sealed(t, baseRecord("dec-1"), 1))
	cases := []struct {
		name, want string
		edit       func(map[string]any)
	}{
		{"unknown attribute", "not an attribute", func(e map[string]any) { e["decision"] = "allow" }},
		{"wrong type", "want an integer", func(e map[string]any) { e["time"] = "yesterday" }},
		{"missing required", "required", func(e map[string]any) { delete(e, "metadata") }},
		{"missing nested required", "api.operation: required", func(e map[string]any) { delete(e["api"].(map[string]any), "operation") }},
		{"bad enum", "enum", func(e map[string]any) { e["action_id"] = 7 }},
		{"caption mismatch", "caption", func(e map[string]any) { e["action"] = "Denied" }},
		{"undeclared profile", "profile", func(e map[string]any) {
			md := e["metadata"].(map[string]any)
			md["profiles"] = []any{"security_control"}
		}},
		{"object constraint", "at least one", func(e map[string]any) { e["actor"] = map[string]any{} }},
		{"nested unknown", "not an attribute of ai_agent", func(e map[string]any) { e["ai_agent"].(map[string]any)["spiffe"] = "x" }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var e map[string]any
			_ = json.Unmarshal(good, &e)
			tc.edit(e)
			b, _ := json.Marshal(e)
			probs := schema.Validate(t, b)
			if !strings.Contains(strings.Join(probs, "\n"), tc.want) {
				t.Errorf("problems %q, want one with %q", probs, tc.want)
			}
		})
	}
}

func deref(p *int) int {
	if p == nil {
		return -1
	}
	return *p
}

func lookup(v map[string]any, path string) any {
	var cur any = v
	for _, k := range strings.Split(path, ".") {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil
		}
		cur = m[k]
	}
	return cur
}

func noteSigner(skey string) (note.Signer, error) { return note.NewSigner(skey) }
