package server_test

import (
	"net/http"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/custodyhq/custody/decisionlog"
	"github.com/custodyhq/custody/server"
)

// strictAnswer is what a client relies on in the answer to a body the strict decoder judges.
type strictAnswer struct {
	Status int
	Code   string // "" for a 200
	Field  string // the field the error names
}

func strictAnswerOf(r response) strictAnswer {
	a := strictAnswer{Status: r.Status}
	if e, ok := r.Body["error"].(map[string]any); ok {
		a.Code, _ = e["code"].(string)
		a.Field, _ = e["field"].(string)
	}
	return a
}

const (
	nativeOK = `"agent": {"id": "spiffe://acme.example/agents/reader"}, "tool": {"name": "read_file"}`
	azOK     = `"subject": {"type": "user", "id": "alice"}, "action": {"name": "read_file"}, "resource": {"type": "tool", "id": "read_file"}`
)

// TestStrictBodies: one body, parsed one way. Seen on POST /v1/authorize: a duplicate key's last
// value won, "TOOL" overrode "tool" field by field, and a typo ("resources") was dropped, so that
// an ownership deny became an allow; a gateway parsing the body another way then ran another
// call. Native bodies now refuse all three with a code naming the field; AuthZEN keeps ignoring
// unknown members (its spec says so) but refuses duplicates and case variants; every endpoint
// bounds nesting and refuses numbers that are not a finite float64.
func TestStrictBodies(t *testing.T) {
	deep := strings.Repeat(`{"a":`, 64) + "1" + strings.Repeat("}", 64) // 65 levels with the body
	tests := []struct {
		name, path, body string
		want             strictAnswer
	}{
		{"native duplicate key", server.EndpointAuthorize,
			`{` + nativeOK + `, "tool": {"name": "delete_file"}}`, strictAnswer{400, server.CodeDuplicateField, "tool"}},
		{"native case-variant key", server.EndpointAuthorize,
			`{` + nativeOK + `, "TOOL": {"server": "evil"}}`, strictAnswer{400, server.CodeUnknownField, "TOOL"}},
		{"native case-variant nested key", server.EndpointAuthorize,
			`{"agent": {"id": "a"}, "tool": {"Name": "read_file"}}`, strictAnswer{400, server.CodeUnknownField, "tool.Name"}},
		{"native unknown top-level field", server.EndpointAuthorize,
			`{` + nativeOK + `, "resources": {"type": "file", "id": "f", "properties": {"owner": "bob"}}}`, strictAnswer{400, server.CodeUnknownField, "resources"}},
		{"native duplicate in arguments", server.EndpointAuthorize,
			`{"agent": {"id": "a"}, "tool": {"name": "t", "arguments": {"to": "a", "to": "b"}}}`, strictAnswer{400, server.CodeDuplicateField, "tool.arguments.to"}},
		{"native case-variant duplicate in arguments", server.EndpointAuthorize,
			`{"agent": {"id": "a"}, "tool": {"name": "t", "arguments": {"to": "a", "To": "b"}}}`, strictAnswer{400, server.CodeDuplicateField, "tool.arguments.To"}},
		{"native too deep", server.EndpointAuthorize,
			`{` + nativeOK + `, "context": ` + deep + `}`, strictAnswer{400, server.CodeNestingTooDeep, "context" + strings.Repeat(".a", 63)}},
		{"native 64 levels", server.EndpointAuthorize,
			`{` + nativeOK + `, "context": ` + strings.Repeat(`{"a":`, 63) + "1" + strings.Repeat("}", 63) + `}`, strictAnswer{Status: 200}},
		{"native 1e400", server.EndpointAuthorize,
			`{` + nativeOK + `, "context": {"n": 1e400}}`, strictAnswer{400, server.CodeNumberOutOfRange, "context.n"}},
		{"native -1e400 in an array", server.EndpointAuthorize,
			`{` + nativeOK + `, "context": {"n": [0, -1e400]}}`, strictAnswer{400, server.CodeNumberOutOfRange, "context.n[1]"}},
		{"native exact", server.EndpointAuthorize, `{` + nativeOK + `}`, strictAnswer{Status: 200}},

		{"executions unknown field", server.EndpointExecutions,
			`{"decision_id": "d", "status": "succeeded", "target": {"system": "s"}, "statuz": "failed"}`, strictAnswer{400, server.CodeUnknownField, "statuz"}},
		{"executions case variant", server.EndpointExecutions,
			`{"decision_id": "d", "status": "succeeded", "Status": "failed", "target": {"system": "s"}}`, strictAnswer{400, server.CodeUnknownField, "Status"}},
		{"executions duplicate", server.EndpointExecutions,
			`{"decision_id": "d", "status": "succeeded", "status": "failed", "target": {"system": "s"}}`, strictAnswer{400, server.CodeDuplicateField, "status"}},

		{"authzen unknown field ignored", server.EndpointEvaluation,
			`{` + azOK + `, "resources": {}}`, strictAnswer{Status: 200}},
		{"authzen duplicate", server.EndpointEvaluation,
			`{` + azOK + `, "subject": {"type": "user", "id": "bob"}}`, strictAnswer{400, server.CodeDuplicateField, "subject"}},
		{"authzen case-variant duplicate", server.EndpointEvaluation,
			`{` + azOK + `, "Subject": {"type": "user", "id": "bob"}}`, strictAnswer{400, server.CodeDuplicateField, "Subject"}},
		{"authzen batch duplicate in item", server.EndpointEvaluations,
			`{"evaluations": [{` + azOK + `, "action": {"name": "delete_file"}}]}`, strictAnswer{400, server.CodeDuplicateField, "evaluations[0].action"}},
		{"authzen too deep", server.EndpointEvaluation,
			`{` + azOK + `, "context": ` + deep + `}`, strictAnswer{400, server.CodeNestingTooDeep, "context" + strings.Repeat(".a", 63)}},
		{"authzen 1e400", server.EndpointEvaluations,
			`{` + azOK + `, "context": {"n": 1e400}}`, strictAnswer{400, server.CodeNumberOutOfRange, "context.n"}},
		{"search 1e400", server.EndpointSearchAction,
			`{"subject": {"type": "user", "id": "alice"}, "resource": {"type": "tool", "id": "t"}, "context": {"n": 1e400}}`, strictAnswer{400, server.CodeNumberOutOfRange, "context.n"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			mem := &decisionlog.Memory{}
			srv := newServer(t, mem)
			r := do(t, srv.Handler(), http.MethodPost, tc.path, "application/json", tc.body)
			got := strictAnswerOf(r)
			if tc.want.Status == 200 {
				got.Code, got.Field = "", "" // only the status matters
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("answer (-want +got):\n%s\n%s", diff, r.Raw)
			}
			if tc.want.Status != 200 {
				if r.Body["allow"] == true {
					t.Errorf("a refused body answered allow: %s", r.Raw)
				}
				for _, rec := range mem.Records() {
					if rec.Allow {
						t.Errorf("a refused body recorded an allow: %+v", rec)
					}
				}
			}
		})
	}
}
