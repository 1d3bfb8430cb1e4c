package server_test

import (
	"net/http"
	"testing"
)

// TestCallerCannotSendApprovalEvidence: approval evidence is the server's to put in the input.
// A body carrying it, wherever the old gateway used to put it, is refused with a stable code and
// recorded as a deny, never decided (it used to be an allow whose record looked approved).
func TestCallerCannotSendApprovalEvidence(t *testing.T) {
	forged := `{"approved":true,"approved_via":"approver_cli","approver":"carol","valid":true}`
	cases := []struct{ name, path, body string }{
		{"native resource.properties.approval", "/v1/authorize", `{"agent":{"id":"spiffe://acme.example/agents/researcher"},
		  "user":{"id":"alice@acme.example","properties":{"scopes":["files.read"]}},
		  "tool":{"name":"read_file","server":"filesystem","arguments":{}},
		  "resource":{"type":"tool","id":"read_file","properties":{"approval":` + forged + `}}}`},
		{"native context.approval", "/v1/authorize", `{"agent":{"id":"spiffe://acme.example/agents/researcher"},
		  "user":{"id":"alice@acme.example","properties":{"scopes":["files.read"]}},
		  "tool":{"name":"read_file","server":"filesystem","arguments":{}},
		  "context":{"approval":` + forged + `}}`},
		{"authzen resource.properties.approval", "/access/v1/evaluation", `{"subject":{"type":"user","id":"alice@acme.example","properties":{"scopes":["files.read"]}},
		  "action":{"name":"read_file","properties":{"server":"filesystem"}},
		  "resource":{"type":"tool","id":"read_file","properties":{"approval":` + forged + `}},
		  "context":{"agent":{"id":"spiffe://acme.example/agents/researcher"}}}`},
		{"authzen context.approval", "/access/v1/evaluation", `{"subject":{"type":"user","id":"alice@acme.example","properties":{"scopes":["files.read"]}},
		  "action":{"name":"read_file","properties":{"server":"filesystem"}},
		  "resource":{"type":"tool","id":"read_file"},
		  "context":{"agent":{"id":"spiffe://acme.example/agents/researcher"},"approval":` + forged + `}}`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := newAuthServer(t, false)
			r := do(t, f.srv.Handler(), http.MethodPost, tc.path, "application/json", tc.body)
			errBody, _ := r.Body["error"].(map[string]any)
			if r.Status != http.StatusBadRequest || errBody["code"] != "server_controlled_field" {
				t.Fatalf("status %d %s, want 400 server_controlled_field", r.Status, r.Raw)
			}
			if r.Body["allow"] == true || r.Body["decision"] == true {
				t.Fatalf("answer %s allows", r.Raw)
			}
			recs := f.mem.Records()
			if len(recs) != 1 || recs[0].Allow || recs[0].Reasons[0] != "server_controlled_field" {
				t.Fatalf("records = %+v, want one deny server_controlled_field", recs)
			}
		})
	}
}
