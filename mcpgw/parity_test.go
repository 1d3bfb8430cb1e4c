package mcpgw_test

import (
	"context"
	"net/http/httptest"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/custodyhq/custody/bundles"
	"github.com/custodyhq/custody/decisionlog"
	"github.com/custodyhq/custody/mcpgw"
	"github.com/custodyhq/custody/pdp"
	"github.com/custodyhq/custody/policies"
	"github.com/custodyhq/custody/server"
)

// seeingEngine decides with the real engine and keeps the input of every decision.
type seeingEngine struct {
	*pdp.Engine
	mu     sync.Mutex
	inputs []pdp.Input
}

func (e *seeingEngine) Decide(ctx context.Context, in *pdp.Input) pdp.Decision {
	e.mu.Lock()
	e.inputs = append(e.inputs, *in)
	e.mu.Unlock()
	return e.Engine.Decide(ctx, in)
}

func (e *seeingEngine) seen() []pdp.Input {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]pdp.Input(nil), e.inputs...)
}

// TestListAndCallGiveThePolicyTheSameInput: for the same principal and tool, the tools/list
// filter and the tools/call check of a call without arguments give the policy the same input,
// so that no policy lists a tool it then denies, or the reverse. Once the list filter's input
// had the agent in its context and a [agent, agent] chain for an agent acting for nobody.
func TestListAndCallGiveThePolicyTheSameInput(t *testing.T) {
	const agent = "spiffe://acme.example/agents/researcher"
	principals := []struct {
		name string
		p    mcpgw.Principal
	}{
		{"user and agent", mcpgw.Principal{
			Agent: mcpgw.Entity{ID: agent, Properties: map[string]any{"model": "m-1"}},
			User:  &mcpgw.Entity{ID: "alice@acme.example", Properties: map[string]any{"scopes": []any{"files.read"}}},
		}},
		{"typed user", mcpgw.Principal{
			Agent: mcpgw.Entity{ID: agent, Type: "agent"},
			User:  &mcpgw.Entity{Type: "service", ID: "billing"},
		}},
		{"agent for nobody", mcpgw.Principal{Agent: mcpgw.Entity{ID: agent, Properties: map[string]any{"model": "m-1"}}}},
	}
	set, err := bundles.FromFS(policies.FS, "test")
	if err != nil {
		t.Fatal(err)
	}
	for _, pr := range principals {
		t.Run(pr.name, func(t *testing.T) {
			base, err := pdp.New(context.Background(), set)
			if err != nil {
				t.Fatal(err)
			}
			eng := &seeingEngine{Engine: base}
			api := httptest.NewServer(server.New(eng, &decisionlog.Memory{}, decisionlog.NewIntentHasher([]byte("0123456789abcdef0123456789abcdef"))).Handler())
			t.Cleanup(api.Close)

			ctx := t.Context()
			up := newUpstream(&events{}, "read_file")
			ct, st := mcp.NewInMemoryTransports()
			ss, err := up.Connect(ctx, st, nil)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { ss.Close() })
			g := mcpgw.New(&mcpgw.HTTPAuthorizer{BaseURL: api.URL}, mcpgw.WithPrincipal(mcpgw.StaticPrincipal(pr.p)))
			if err := g.Connect(ctx, []mcpgw.Upstream{{Name: "filesystem", Transport: ct}}); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { g.Close() })
			cct, cst := mcp.NewInMemoryTransports()
			gs, err := g.Server().Connect(ctx, cst, nil)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { gs.Close() })
			cs, err := mcp.NewClient(&mcp.Implementation{Name: "client", Version: "1"}, nil).Connect(ctx, cct, nil)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { cs.Close() })

			if _, err := cs.ListTools(ctx, nil); err != nil {
				t.Fatal(err)
			}
			if _, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "read_file"}); err != nil {
				t.Fatal(err)
			}
			seen := eng.seen()
			if len(seen) != 2 {
				t.Fatalf("%d decisions, want the list's and the call's", len(seen))
			}
			list, call := seen[0], seen[1]
			// Each request has its own correlation ID; everything else must be the same.
			list.CorrelationID, call.CorrelationID = "", ""
			if diff := cmp.Diff(list.Value(), call.Value()); diff != "" {
				t.Errorf("policy input of tools/list (-) and tools/call (+):\n%s", diff)
			}
		})
	}
}
