package main

import (
	"strings"
	"testing"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// TestMCPListenWithoutToken: a client of `custody mcp --listen` that sends no bearer token, to a
// gateway with no --agent to fall back on, is told what to pass, not "subject.id: required".
func TestMCPListenWithoutToken(t *testing.T) {
	up := upstreamMCP(t)
	listen := freeAddr(t)
	args := []string{"--data-dir", t.TempDir(), "--nats-listen", "none", "--listen", listen, "--upstream", "filesystem=" + up, "--log-level", "error"}
	ctx := t.Context()
	cs, _ := startMCPListen(t, args, listen)

	_, listErr := cs.ListTools(ctx, nil)
	res, callErr := cs.CallTool(ctx, &mcp.CallToolParams{Name: "read_file", Arguments: map[string]any{"path": "/tmp/a"}})
	var said []string
	for _, err := range []error{listErr, callErr} {
		if err != nil {
			said = append(said, err.Error())
		}
	}
	if res != nil {
		if !res.IsError {
			t.Fatalf("read_file without a token ran: %+v", res)
		}
		for _, c := range res.Content {
			if tc, ok := c.(*mcp.TextContent); ok {
				said = append(said, tc.Text)
			}
		}
	}
	if len(said) != 2 {
		t.Fatalf("want an error for tools/list and for tools/call, got %q", said)
	}
	for _, s := range said {
		if strings.Contains(s, "subject.id: required") || !strings.Contains(s, "Authorization: Bearer") || !strings.Contains(s, "--agent") {
			t.Errorf("said %q; want what to pass: an Authorization: Bearer token, or --agent", s)
		}
	}
}
