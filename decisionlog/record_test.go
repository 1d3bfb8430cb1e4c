package decisionlog

import (
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/custodyhq/custody/schema"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata")

// fullRecord is a record with every field set, down to the entities' fields, so that the golden
// file below names every key of custody.decision.v1 (and of the execution fields it shares).
func fullRecord() *Record {
	ts := time.Date(2025, 6, 1, 12, 0, 0, 123456789, time.UTC)
	started, finished, expires := ts.Add(time.Second), ts.Add(2*time.Second), ts.Add(time.Hour)
	allow := true
	return &Record{
		Schema:        SchemaDecisionV1,
		DecisionID:    "01JXDECISION",
		Timestamp:     ts,
		CorrelationID: "corr-1",
		RequestID:     "req-1",
		TraceID:       "4bf92f3577b34da6a3ce929d0e0e4736",
		SpanID:        "00f067aa0ba902b7",
		Endpoint:      "/v1/authorize",
		Subject:       schema.Entity{Type: "user", ID: "alice@acme.example", Properties: map[string]any{"roles": []any{"employee"}}},
		Action:        schema.Action{Name: "send_email", Properties: map[string]any{"server": "mail"}},
		Resource:      schema.Entity{Type: "tool", ID: "send_email", Properties: map[string]any{"risk": "medium"}},
		Agent:         &schema.Agent{ID: "spiffe://acme.example/agents/mailer", Type: "agent", Properties: map[string]any{"model": "m"}},
		Delegation:    schema.Delegation{Verified: true, Chain: []any{map[string]any{"sub": "alice@acme.example"}}},
		Caller:        &Caller{Method: "jwt", ID: "alice@acme.example", Workload: "spiffe://acme.example/agents/mailer"},
		Task: &schema.Task{ID: "task-1", ParentID: "task-0", Attempt: 2, SessionID: "sess-1", IntentSHA256: "ab12",
			IntentSealed: &schema.SealedIntent{Stream: "CUSTODY_INTENTS", Subject: "custody.intent.pdp-1", Seq: 3, SHA256: "cd34"}},
		Allow:       true,
		Reasons:     []string{"scope_granted"},
		Obligations: map[string]any{"redact": []any{"body"}},
		Approval: &Approval{ID: "01JXAPPROVAL", Status: "approved", Approver: "carol", ApprovedVia: "approver_cli",
			ExpiresAt: &expires, RequestDecisionID: "01JXREQUEST"},
		Policy:      PolicyRef{Query: "data.custody.authz.decision", Revision: "rev-1"},
		Error:       "none",
		EvalNS:      12345,
		PDP:         Instance{Instance: "pdp-1", Version: "v1.2.3"},
		ExecutionID: "01JXEXECUTION",
		Execution: &Execution{
			Status:        ExecutionSucceeded,
			Target:        ExecutionTarget{System: "smtp", RequestID: "smtp-1", Resource: "mailbox"},
			StartedAt:     &started,
			FinishedAt:    &finished,
			Error:         "none",
			Violation:     ViolationDecisionExpired,
			DecisionAllow: &allow,
		},
		UnsealID: "01JXUNSEAL",
		Unseal:   &Unseal{Reason: "incident 42", Sealed: &schema.SealedIntent{Stream: "CUSTODY_INTENTS", Subject: "custody.intent.pdp-1", Seq: 3, SHA256: "cd34"}},
		Refusal: &Refusal{Code: "invalid_token", CallerKind: "token", Source: "10.0.0.0/24",
			Claimed: &ClaimedIDs{Subject: "s1", Agent: "a1", Action: "x1"}, Count: 5, Sources: 2, Since: &started},
		Seq:      7,
		PrevHash: "prev",
		Hash:     "hash",
	}
}

// zeroFields lists the struct fields under v that are zero, by path.
func zeroFields(v reflect.Value, path string) []string {
	switch v.Kind() {
	case reflect.Pointer:
		if v.IsNil() {
			return []string{path}
		}
		return zeroFields(v.Elem(), path)
	case reflect.Struct:
		if v.Type() == reflect.TypeOf(time.Time{}) {
			if v.IsZero() {
				return []string{path}
			}
			return nil
		}
		var out []string
		for i := range v.NumField() {
			out = append(out, zeroFields(v.Field(i), path+"."+v.Type().Field(i).Name)...)
		}
		return out
	default:
		if v.IsZero() {
			return []string{path}
		}
		return nil
	}
}

// TestRecordGolden: the JSON of a full record is the wire contract, custody.decision.v1. A field
// added to the record or to a schema type, or a renamed key, fails here (the full-record check
// makes a new field show up even when it is omitempty); run with -update only for an intended
// addition, never a rename.
func TestRecordGolden(t *testing.T) {
	r := fullRecord()
	if zero := zeroFields(reflect.ValueOf(r), "Record"); len(zero) > 0 {
		t.Fatalf("fullRecord leaves fields unset, so the golden file cannot show them: %v", zero)
	}
	got, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	got = append(got, '\n')
	golden := filepath.Join("testdata", "record.golden.json")
	if *update {
		if err := os.WriteFile(golden, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(string(want), string(got)); diff != "" {
		t.Errorf("record JSON changed (-golden +got):\n%s", diff)
	}
	var back Record
	if err := json.Unmarshal(want, &back); err != nil {
		t.Fatalf("golden does not decode: %v", err)
	}
	if diff := cmp.Diff(r, &back); diff != "" {
		t.Errorf("golden does not decode to the record (-want +got):\n%s", diff)
	}
}
