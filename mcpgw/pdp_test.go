package mcpgw_test

import (
	"context"
	"io/fs"
	"net/http/httptest"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/google/go-cmp/cmp"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/custodyhq/custody/bundles"
	"github.com/custodyhq/custody/decisionlog"
	"github.com/custodyhq/custody/mcpgw"
	"github.com/custodyhq/custody/pdp"
	"github.com/custodyhq/custody/policies"
	"github.com/custodyhq/custody/server"
)

// TestAgainstTheRealPDP puts the gateway in front of custody's own HTTP API with the default
// policies: the same input and record as /v1/authorize, and each decision on the log before
// the upstream runs.
func TestAgainstTheRealPDP(t *testing.T) {
	api, log := realPDP(t, policies.FS)

	ev := &events{}
	up := newUpstream(ev, "read_file", "write_file", "web_search")
	var recordedFirst []bool
	up.AddTool(&mcp.Tool{Name: "read_file", InputSchema: map[string]any{"type": "object"}}, func(_ context.Context, req *mcp.CallToolRequest) (*mcp.CallToolResult, error) {
		id := req.Params.Meta[mcpgw.MetaDecisionID]
		found := false
		for _, r := range log.Records() {
			found = found || (r.DecisionID == id && r.Allow)
		}
		recordedFirst = append(recordedFirst, found)
		return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: "hello"}}}, nil
	})

	cs, _ := connect(t, &mcpgw.HTTPAuthorizer{BaseURL: api.URL}, map[string]*upstreamServer{"filesystem": up}, "2025-11-25", nil)

	// web_search is allowed to the agent but not on server "filesystem", write_file needs
	// files.write: only read_file is listed.
	if diff := cmp.Diff([]string{"read_file"}, toolNames(t, cs)); diff != "" {
		t.Errorf("tools (-want +got):\n%s", diff)
	}
	listed := len(log.Records())

	res, err := cs.CallTool(t.Context(), &mcp.CallToolParams{Name: "read_file", Arguments: map[string]any{"path": "/tmp/a"}, Meta: mcp.Meta{"traceparent": testTraceparent}})
	if err != nil || res.IsError {
		t.Fatalf("read_file: %v %v", err, res)
	}
	if diff := cmp.Diff([]bool{true}, recordedFirst); diff != "" {
		t.Errorf("decision recorded before the upstream ran (-want +got):\n%s", diff)
	}
	res, err = cs.CallTool(t.Context(), &mcp.CallToolParams{Name: "write_file", Arguments: map[string]any{"path": "/tmp/a", "content": "x"}})
	if err != nil {
		t.Fatal(err)
	}
	recs := log.Records()[listed:]
	if len(recs) != 2 {
		t.Fatalf("%d records for two calls", len(recs))
	}
	allow, deny := recs[0], recs[1]
	if !res.IsError || !strings.Contains(text(res), "user_lacks_scope") || !strings.Contains(text(res), deny.DecisionID) {
		t.Errorf("deny result %q, want the reasons and decision %s", text(res), deny.DecisionID)
	}
	if allow.CorrelationID != "4bf92f3577b34da6a3ce929d0e0e4736" || allow.TraceID != "4bf92f3577b34da6a3ce929d0e0e4736" {
		t.Errorf("correlation %q trace %q, want the traceparent's trace ID", allow.CorrelationID, allow.TraceID)
	}
	if allow.Endpoint != server.EndpointAuthorize || allow.Action.Name != "read_file" || allow.Action.Properties["server"] != "filesystem" ||
		allow.Subject.ID != "alice@acme.example" || allow.AgentID() != "spiffe://acme.example/agents/researcher" || allow.Delegation.Verified {
		t.Errorf("allow record = %+v", allow)
	}
	if deny.Allow || deny.Action.Name != "write_file" {
		t.Errorf("deny record = %+v", deny)
	}
	for i, r := range log.Records()[:listed] {
		if r.Endpoint != "/access/v1/evaluations" {
			t.Errorf("list record %d from %s, want the AuthZEN batch", i, r.Endpoint)
		}
	}
}

// realPDP serves custody's HTTP API with the policy set in fsys, recording into memory.
func realPDP(t *testing.T, fsys fs.FS) (*httptest.Server, *decisionlog.Memory) {
	t.Helper()
	set, err := bundles.FromFS(fsys, "test")
	if err != nil {
		t.Fatal(err)
	}
	engine, err := pdp.New(context.Background(), set)
	if err != nil {
		t.Fatal(err)
	}
	log := &decisionlog.Memory{}
	api := httptest.NewServer(server.New(engine, log, decisionlog.NewIntentHasher([]byte("0123456789abcdef0123456789abcdef"))).Handler())
	t.Cleanup(api.Close)
	return api, log
}

// approvalPolicy allows everything, and delete_file only with an approval, which for this
// policy may be an MCP client's elicitation answer (the convenience a policy may offer for
// tools it deems low-risk; the default policy does not).
const approvalPolicy = `package custody.authz

decision := {"allow": true, "reasons": ["allowed"], "obligations": {"require_approval": true, "approval_reason": "needs_a_yes"}} if {
	input.action.name == "delete_file"
	not input.approval.approved == true
}

decision := {"allow": true, "reasons": ["allowed"], "obligations": {}} if {
	input.action.name == "delete_file"
	input.approval.approved == true
}

decision := {"allow": true, "reasons": ["allowed"], "obligations": {}} if input.action.name != "delete_file"
`

// TestApprovalOnTheRealPDP: the client's answer is relayed to the approval the PDP opened (a
// record of its own, approved_via mcp_elicitation), and the retried call carries it; all three
// records under the request's correlation ID, before the upstream runs.
func TestApprovalOnTheRealPDP(t *testing.T) {
	for _, version := range []string{"2025-11-25", "2026-07-28"} {
		t.Run(version, func(t *testing.T) {
			api, log := realPDP(t, fstest.MapFS{"authz.rego": {Data: []byte(approvalPolicy)}})
			up := newUpstream(&events{})
			var recordsBefore int
			up.AddTool(&mcp.Tool{Name: "delete_file", InputSchema: map[string]any{"type": "object"}}, func(context.Context, *mcp.CallToolRequest) (*mcp.CallToolResult, error) {
				recordsBefore = len(log.Records())
				return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: "deleted"}}}, nil
			})
			cs, _ := connect(t, &mcpgw.HTTPAuthorizer{BaseURL: api.URL}, map[string]*upstreamServer{"filesystem": up}, version, &mcp.ClientOptions{
				ElicitationHandler: func(context.Context, *mcp.ElicitRequest) (*mcp.ElicitResult, error) {
					return &mcp.ElicitResult{Action: "accept", Content: map[string]any{"approve": true}}, nil
				},
			})
			listed := len(log.Records())
			res, err := cs.CallTool(t.Context(), &mcp.CallToolParams{Name: "delete_file", Arguments: map[string]any{"path": "/tmp/a"}, Meta: mcp.Meta{"traceparent": testTraceparent}})
			if err != nil || res.IsError {
				t.Fatalf("delete_file: %v %+v", err, res)
			}
			recs := log.Records()[listed:]
			if len(recs) != 3 || recordsBefore != listed+3 {
				t.Fatalf("%d records, %d before the upstream ran; want all three before", len(recs), recordsBefore-listed)
			}
			ask, answer, retry := recs[0], recs[1], recs[2]
			for _, r := range recs {
				if r.CorrelationID != "4bf92f3577b34da6a3ce929d0e0e4736" {
					t.Errorf("%s record correlation %q, want the trace ID", r.Endpoint, r.CorrelationID)
				}
			}
			id := ask.Approval.ID
			if ask.Approval.Status != "pending" || answer.Endpoint != server.EndpointApprovals || !answer.Allow ||
				answer.Approval.ApprovedVia != "mcp_elicitation" || answer.Approval.ID != id || answer.Approval.RequestDecisionID != ask.DecisionID {
				t.Errorf("ask %+v, answer %+v", ask.Approval, answer.Approval)
			}
			if retry.Approval == nil || retry.Approval.ID != id || retry.Approval.Status != "used" || retry.Approval.ApprovedVia != "mcp_elicitation" || len(retry.Obligations) != 0 {
				t.Errorf("retried call record = %+v %+v", retry.Approval, retry.Obligations)
			}
			if _, ok := retry.Resource.Properties["approval"]; ok {
				t.Errorf("the gateway sent approval evidence itself: %+v", retry.Resource)
			}
			if res.Meta[mcpgw.MetaDecisionID] != retry.DecisionID {
				t.Errorf("result decision %v, want the retry's %s", res.Meta[mcpgw.MetaDecisionID], retry.DecisionID)
			}
		})
	}
}
