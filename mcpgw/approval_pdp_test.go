package mcpgw_test

import (
	"context"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/custodyhq/custody/bundles"
	"github.com/custodyhq/custody/decisionlog"
	"github.com/custodyhq/custody/identity"
	"github.com/custodyhq/custody/internal/tokentest"
	"github.com/custodyhq/custody/mcpgw"
	"github.com/custodyhq/custody/pdp"
	"github.com/custodyhq/custody/policies"
	"github.com/custodyhq/custody/server"
)

const opsAgent = "spiffe://acme.example/agents/ops"

// highRiskPDP serves the default policies with a trusted issuer, and returns a verified
// delegation token of the ops agent acting for alice (who may delete files).
func highRiskPDP(t *testing.T, opts ...server.Option) (*httptest.Server, *decisionlog.Memory, string) {
	t.Helper()
	idp := tokentest.NewIssuer(t, "https://idp.acme.example")
	path := filepath.Join(t.TempDir(), "jwks.json")
	idp.WriteJWKS(t, path)
	v, err := identity.NewVerifier(identity.Config{Issuers: []identity.Issuer{{Issuer: "https://idp.acme.example", JWKS: path}}, Audience: "custody"})
	if err != nil {
		t.Fatal(err)
	}
	set, err := bundles.FromFS(policies.FS, "test")
	if err != nil {
		t.Fatal(err)
	}
	engine, err := pdp.New(context.Background(), set)
	if err != nil {
		t.Fatal(err)
	}
	log := &decisionlog.Memory{}
	api := httptest.NewServer(server.New(engine, log, decisionlog.NewIntentHasher([]byte("0123456789abcdef0123456789abcdef")),
		append([]server.Option{server.WithTokenVerifier(v)}, opts...)...).Handler())
	t.Cleanup(api.Close)
	tok := idp.Token(t, tokentest.Claims{"sub": "alice@acme.example", "aud": "custody", "scope": "files.write", "act": map[string]any{"sub": opsAgent}})
	return api, log, tok
}

// TestElicitationDoesNotApproveHighRiskTools: the MCP client's elicitation answer is the agent's
// own client saying yes. With the default policy it never lets delete_file through (it used to:
// the gateway forwarded the call on the client's "accept").
func TestElicitationDoesNotApproveHighRiskTools(t *testing.T) {
	for _, version := range []string{"2025-11-25", "2026-07-28"} {
		t.Run(version, func(t *testing.T) {
			api, _, tok := highRiskPDP(t)
			up := newUpstream(&events{})
			ran := false
			up.AddTool(&mcp.Tool{Name: "delete_file", InputSchema: map[string]any{"type": "object"}}, func(context.Context, *mcp.CallToolRequest) (*mcp.CallToolResult, error) {
				ran = true
				return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: "deleted"}}}, nil
			})
			cs, _ := connectAs(t, &mcpgw.HTTPAuthorizer{BaseURL: api.URL}, map[string]*upstreamServer{"filesystem": up}, version, &mcp.ClientOptions{
				ElicitationHandler: func(context.Context, *mcp.ElicitRequest) (*mcp.ElicitResult, error) {
					return &mcp.ElicitResult{Action: "accept", Content: map[string]any{"approve": true}}, nil
				},
			}, mcpgw.Principal{Agent: mcpgw.Entity{ID: opsAgent}, Token: tok})
			res, err := cs.CallTool(t.Context(), &mcp.CallToolParams{Name: "delete_file", Arguments: map[string]any{"path": "/tmp/a"}})
			if err != nil {
				t.Fatal(err)
			}
			if ran || !res.IsError {
				t.Fatalf("delete_file ran on the client's own yes (result %q)", text(res))
			}
			if !strings.Contains(text(res), "custody approve") {
				t.Errorf("result %q, want it to name the out-of-band channel", text(res))
			}
		})
	}
}
