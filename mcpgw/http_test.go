package mcpgw_test

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/custodyhq/custody/mcpgw"
)

type bearer struct {
	token string
	next  http.RoundTripper
}

func (b bearer) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+b.token)
	return b.next.RoundTrip(r)
}

// TestStreamableHTTPBearerGoesToThePDPOnly: over HTTP the client's bearer token is the
// principal's delegation token, handed to the PDP, and never to the upstream.
func TestStreamableHTTPBearerGoesToThePDPOnly(t *testing.T) {
	ev := &events{}
	pdp := &fakePDP{ev: ev}
	up := newUpstream(ev, "read_file")
	ct, st := mcp.NewInMemoryTransports()
	ss, err := up.Connect(t.Context(), st, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ss.Close() })
	g := mcpgw.New(pdp, mcpgw.WithPrincipal(mcpgw.BearerPrincipal(mcpgw.Principal{Agent: mcpgw.Entity{ID: "agent-1"}})))
	if err := g.Connect(t.Context(), []mcpgw.Upstream{{Name: "filesystem", Transport: ct}}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close() })
	srv := httptest.NewServer(mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return g.Server() }, nil))
	t.Cleanup(srv.Close)

	// A JWT-shaped token whose act.sub names the agent: {"sub":"alice","act":{"sub":"agent-2"}}.
	token := "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhbGljZSIsImFjdCI6eyJzdWIiOiJhZ2VudC0yIn19.c2ln"
	cs, err := mcp.NewClient(&mcp.Implementation{Name: "http-client"}, nil).Connect(t.Context(), &mcp.StreamableClientTransport{
		Endpoint: srv.URL, HTTPClient: &http.Client{Transport: bearer{token, http.DefaultTransport}},
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cs.Close() })
	res, err := cs.CallTool(t.Context(), &mcp.CallToolParams{Name: "read_file"})
	if err != nil || res.IsError {
		t.Fatalf("read_file: %v %+v", err, res)
	}
	pdp.mu.Lock()
	p := pdp.principals[0]
	pdp.mu.Unlock()
	if p.Token != token || p.User != nil || p.Agent.ID != "agent-2" {
		t.Errorf("PDP got principal %+v, want the bearer token, its actor as agent and no asserted user", p)
	}
	for k, v := range up.lastMeta() {
		if s, ok := v.(string); ok && s == token {
			t.Errorf("token reached the upstream in _meta[%q]", k)
		}
	}
}
