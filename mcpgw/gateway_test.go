package mcpgw_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/custodyhq/custody/mcpgw"
)

const testTraceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

// events is the one ordered log of what the PDP decided and what the upstream ran.
type events struct {
	mu  sync.Mutex
	log []string
}

func (e *events) add(s string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.log = append(e.log, s)
}

func (e *events) all() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.log)
}

// fakePDP allows read_file, denies write_file, and allows delete_file only with approval: the
// first ask opens approval ap-1, which an elicitation answer relayed to it approves. With
// outOfBand, its obligations name only out-of-band channels.
type fakePDP struct {
	ev        *events
	outOfBand bool

	mu         sync.Mutex
	approved   map[string]bool
	n          int
	calls      []mcpgw.Call
	principals []mcpgw.Principal
}

func (f *fakePDP) decide(c mcpgw.Call) mcpgw.Decision {
	switch c.Tool {
	case "read_file", "late_tool":
		return mcpgw.Decision{Allow: true, Reasons: []string{"allowed"}, Obligations: map[string]any{}}
	case "delete_file":
		if c.ApprovalID != "" && f.approved[c.ApprovalID] {
			return mcpgw.Decision{Allow: true, Reasons: []string{"allowed"}, Obligations: map[string]any{}, Approval: &mcpgw.ApprovalRef{ID: c.ApprovalID, Status: "used"}}
		}
		ob := map[string]any{"require_approval": true, "approval_reason": "high_risk_tool"}
		if f.outOfBand {
			ob["approval_channels"] = []any{"approver_cli", "signed_url"}
		}
		return mcpgw.Decision{Allow: true, Reasons: []string{"allowed"}, Obligations: ob, Approval: &mcpgw.ApprovalRef{ID: "ap-1", Status: "pending", ExpiresAt: time.Now().Add(time.Minute)}}
	default:
		return mcpgw.Decision{Allow: false, Reasons: []string{"agent_not_granted_scope", "user_lacks_scope"}, Obligations: map[string]any{}}
	}
}

func (f *fakePDP) Authorize(_ context.Context, p mcpgw.Principal, c mcpgw.Call) (mcpgw.Decision, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.n++
	f.principals = append(f.principals, p)
	d := f.decide(c)
	d.DecisionID = fmt.Sprintf("dec-%d", f.n)
	switch parts := strings.Split(c.Traceparent, "-"); {
	case c.CorrelationID != "":
		d.CorrelationID = c.CorrelationID
	case len(parts) == 4:
		d.CorrelationID = parts[1]
	default:
		d.CorrelationID = fmt.Sprintf("corr-%d", f.n)
	}
	f.calls = append(f.calls, c)
	f.ev.add("decide " + c.Tool + " " + d.DecisionID)
	return d, nil
}

func (f *fakePDP) RelayElicitation(_ context.Context, _ mcpgw.Principal, id string, approve bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.approved == nil {
		f.approved = map[string]bool{}
	}
	f.approved[id] = approve
	f.ev.add(fmt.Sprintf("relay %s %v", id, approve))
	return nil
}

// approve stands for an out-of-band approver's answer.
func (f *fakePDP) approve(id string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.approved == nil {
		f.approved = map[string]bool{}
	}
	f.approved[id] = true
}

func (f *fakePDP) Allowed(_ context.Context, _ mcpgw.Principal, calls []mcpgw.Call) ([]bool, error) {
	out := make([]bool, len(calls))
	f.mu.Lock()
	defer f.mu.Unlock()
	for i, c := range calls {
		out[i] = f.decide(c).Allow
	}
	return out, nil
}

func (f *fakePDP) recorded() []mcpgw.Call {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

// upstreamServer is an MCP server built in the test: each tool logs its call and echoes the
// _meta it received.
type upstreamServer struct {
	*mcp.Server
	ev *events

	mu   sync.Mutex
	meta []mcp.Meta
}

func newUpstream(ev *events, tools ...string) *upstreamServer {
	u := &upstreamServer{Server: mcp.NewServer(&mcp.Implementation{Name: "fs-test", Version: "1"}, nil), ev: ev}
	for _, name := range tools {
		u.add(name)
	}
	return u
}

func (u *upstreamServer) add(name string) {
	u.AddTool(&mcp.Tool{Name: name, Description: "test tool " + name, InputSchema: map[string]any{"type": "object"}},
		func(_ context.Context, req *mcp.CallToolRequest) (*mcp.CallToolResult, error) {
			u.mu.Lock()
			u.meta = append(u.meta, req.Params.Meta)
			u.mu.Unlock()
			id, _ := req.Params.Meta[mcpgw.MetaDecisionID].(string)
			u.ev.add("call " + name + " " + id)
			return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: name + " ran with " + string(req.Params.Arguments)}}}, nil
		})
}

func (u *upstreamServer) lastMeta() mcp.Meta {
	u.mu.Lock()
	defer u.mu.Unlock()
	if len(u.meta) == 0 {
		return nil
	}
	return u.meta[len(u.meta)-1]
}

// connect runs the gateway in front of the upstreams over in-memory transports and returns a
// client session that negotiated version.
func connect(t *testing.T, auth mcpgw.Authorizer, ups map[string]*upstreamServer, version string, opts *mcp.ClientOptions) (*mcp.ClientSession, *mcpgw.Gateway) {
	t.Helper()
	return connectAs(t, auth, ups, version, opts, mcpgw.Principal{
		Agent: mcpgw.Entity{ID: "spiffe://acme.example/agents/researcher"},
		User:  &mcpgw.Entity{ID: "alice@acme.example", Properties: map[string]any{"scopes": []string{"files.read"}}},
	})
}

// connectAs is connect with the gateway acting for p.
func connectAs(t *testing.T, auth mcpgw.Authorizer, ups map[string]*upstreamServer, version string, opts *mcp.ClientOptions, p mcpgw.Principal) (*mcp.ClientSession, *mcpgw.Gateway) {
	t.Helper()
	ctx := t.Context()
	var list []mcpgw.Upstream
	names := make([]string, 0, len(ups))
	for name := range ups {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		ct, st := mcp.NewInMemoryTransports()
		ss, err := ups[name].Connect(ctx, st, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ss.Close() })
		list = append(list, mcpgw.Upstream{Name: name, Transport: ct})
	}
	g := mcpgw.New(auth, mcpgw.WithPrincipal(mcpgw.StaticPrincipal(p)))
	if err := g.Connect(ctx, list); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close() })
	ct, st := mcp.NewInMemoryTransports()
	ss, err := g.Server().Connect(ctx, st, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ss.Close() })
	cs, err := mcp.NewClient(&mcp.Implementation{Name: "test-client", Version: "1"}, opts).Connect(ctx, ct, &mcp.ClientSessionOptions{ProtocolVersion: version})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cs.Close() })
	if got := cs.InitializeResult().ProtocolVersion; got != version {
		t.Fatalf("negotiated %s, want %s", got, version)
	}
	return cs, g
}

func toolNames(t *testing.T, cs *mcp.ClientSession) []string {
	t.Helper()
	var names []string
	for tool, err := range cs.Tools(t.Context(), nil) {
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, tool.Name)
	}
	slices.Sort(names)
	return names
}

func text(res *mcp.CallToolResult) string {
	var b strings.Builder
	for _, c := range res.Content {
		if tc, ok := c.(*mcp.TextContent); ok {
			b.WriteString(tc.Text)
		}
	}
	return b.String()
}

// elicitationSupported reports whether a protocol version has elicitation (2025-06-18 on).
func elicitationSupported(version string) bool { return version >= "2025-06-18" }

func TestGatewayPerProtocolVersion(t *testing.T) {
	for _, version := range mcp.SupportedProtocolVersions() {
		t.Run(version, func(t *testing.T) {
			t.Run("list shows only allowed tools", func(t *testing.T) {
				ev := &events{}
				cs, _ := connect(t, &fakePDP{ev: ev}, map[string]*upstreamServer{"filesystem": newUpstream(ev, "read_file", "write_file", "delete_file")}, version, nil)
				if diff := cmp.Diff([]string{"delete_file", "read_file"}, toolNames(t, cs)); diff != "" {
					t.Errorf("tools (-want +got):\n%s", diff)
				}
			})

			t.Run("allow is decided then forwarded with traceparent", func(t *testing.T) {
				ev := &events{}
				pdp := &fakePDP{ev: ev}
				up := newUpstream(ev, "read_file", "write_file")
				cs, _ := connect(t, pdp, map[string]*upstreamServer{"filesystem": up}, version, nil)
				res, err := cs.CallTool(t.Context(), &mcp.CallToolParams{
					Name: "read_file", Arguments: map[string]any{"path": "/tmp/a"},
					Meta: mcp.Meta{"traceparent": testTraceparent, "io.modelcontextprotocol/related-task": "x", "dev.custody/decision_id": "forged", "other": "kept"},
				})
				if err != nil {
					t.Fatal(err)
				}
				if res.IsError {
					t.Fatalf("allowed call answered an error: %s", text(res))
				}
				if diff := cmp.Diff([]string{"decide read_file dec-1", "call read_file dec-1"}, ev.all()); diff != "" {
					t.Errorf("order of decision and forward (-want +got):\n%s", diff)
				}
				meta := up.lastMeta()
				if meta["traceparent"] != testTraceparent || meta["other"] != "kept" {
					t.Errorf("upstream _meta = %v, want the client's traceparent and keys", meta)
				}
				if meta[mcpgw.MetaDecisionID] != "dec-1" || meta[mcpgw.MetaCorrelationID] != "4bf92f3577b34da6a3ce929d0e0e4736" {
					t.Errorf("upstream _meta = %v, want custody's decision and the trace ID as correlation ID", meta)
				}
				if _, ok := meta["io.modelcontextprotocol/related-task"]; ok {
					t.Errorf("reserved key forwarded upstream: %v", meta)
				}
				if got := res.Meta[mcpgw.MetaDecisionID]; got != "dec-1" {
					t.Errorf("result _meta decision = %v, want dec-1", got)
				}
				c := pdp.recorded()[0]
				if c.Server != "filesystem" || c.Tool != "read_file" || c.Arguments["path"] != "/tmp/a" || c.Traceparent != testTraceparent {
					t.Errorf("PDP asked %+v", c)
				}
			})

			t.Run("deny is a tool error with reasons and decision; upstream not called", func(t *testing.T) {
				ev := &events{}
				cs, _ := connect(t, &fakePDP{ev: ev}, map[string]*upstreamServer{"filesystem": newUpstream(ev, "read_file", "write_file")}, version, nil)
				res, err := cs.CallTool(t.Context(), &mcp.CallToolParams{Name: "write_file", Arguments: map[string]any{"path": "/tmp/a", "content": "x"}})
				if err != nil {
					t.Fatal(err)
				}
				want := "denied by custody: agent_not_granted_scope, user_lacks_scope (decision dec-1, correlation corr-1)"
				if !res.IsError || text(res) != want {
					t.Errorf("result = isError %v %q, want isError and %q", res.IsError, text(res), want)
				}
				if res.Meta[mcpgw.MetaDecisionID] != "dec-1" {
					t.Errorf("result _meta = %v", res.Meta)
				}
				if diff := cmp.Diff([]string{"decide write_file dec-1"}, ev.all()); diff != "" {
					t.Errorf("events (-want +got):\n%s", diff)
				}
			})

			for _, tc := range []struct {
				name    string
				answer  *mcp.ElicitResult
				forward bool
				want    string
			}{
				{"approval accepted", &mcp.ElicitResult{Action: "accept", Content: map[string]any{"approve": true}}, true, "delete_file ran"},
				{"approval declined", &mcp.ElicitResult{Action: "decline"}, false, "not approved: the user answered decline"},
				{"approval accepted but not approved", &mcp.ElicitResult{Action: "accept", Content: map[string]any{"approve": false}}, false, "not approved: the user answered accept"},
			} {
				t.Run(tc.name, func(t *testing.T) {
					if !elicitationSupported(version) {
						t.Skip("no elicitation before 2025-06-18")
					}
					ev := &events{}
					pdp := &fakePDP{ev: ev}
					var asked []string
					cs, _ := connect(t, pdp, map[string]*upstreamServer{"filesystem": newUpstream(ev, "delete_file")}, version, &mcp.ClientOptions{
						ElicitationHandler: func(_ context.Context, req *mcp.ElicitRequest) (*mcp.ElicitResult, error) {
							asked = append(asked, req.Params.Message)
							return tc.answer, nil
						},
					})
					res, err := cs.CallTool(t.Context(), &mcp.CallToolParams{Name: "delete_file", Arguments: map[string]any{"path": "/tmp/a"}, Meta: mcp.Meta{"traceparent": testTraceparent}})
					if err != nil {
						t.Fatal(err)
					}
					if len(asked) != 1 || !strings.Contains(asked[0], "delete_file") || !strings.Contains(asked[0], "dec-1") {
						t.Errorf("elicitation messages = %q", asked)
					}
					if !strings.Contains(text(res), tc.want) || res.IsError == tc.forward {
						t.Errorf("result = isError %v %q, want %q", res.IsError, text(res), tc.want)
					}
					want := []string{"decide delete_file dec-1", fmt.Sprintf("relay ap-1 %v", tc.forward)}
					if tc.forward {
						want = append(want, "decide delete_file dec-2", "call delete_file dec-2")
					}
					if diff := cmp.Diff(want, ev.all()); diff != "" {
						t.Errorf("events (-want +got):\n%s", diff)
					}
					calls := pdp.recorded()
					if tc.forward && (calls[1].CorrelationID != "4bf92f3577b34da6a3ce929d0e0e4736" || calls[1].ApprovalID != "ap-1") {
						t.Errorf("approved call asked as %+v, want the approval and the request's correlation ID", calls[1])
					}
				})
			}

			t.Run("approval forged by the client", func(t *testing.T) {
				ev := &events{}
				pdp := &fakePDP{ev: ev}
				cs, _ := connect(t, pdp, map[string]*upstreamServer{"filesystem": newUpstream(ev, "delete_file")}, version, nil)
				res, err := cs.CallTool(t.Context(), &mcp.CallToolParams{
					Name: "delete_file", Arguments: map[string]any{"path": "/tmp/a"},
					InputResponses: mcp.InputResponseMap{"custody_approval": &mcp.ElicitResult{Action: "accept", Content: map[string]any{"approve": true}}},
					RequestState:   "eyJ0b29sIjoiZmlsZXN5c3RlbS9kZWxldGVfZmlsZSJ9.c2lnbmVk",
				})
				if err != nil {
					t.Fatal(err)
				}
				if !res.IsError || !strings.Contains(text(res), "approval state was not issued by custody") {
					t.Errorf("result = isError %v %q", res.IsError, text(res))
				}
				// Nothing is relayed or decided on a forged state: no approval is claimed.
				if diff := cmp.Diff([]string(nil), ev.all()); diff != "" {
					t.Errorf("events (-want +got):\n%s", diff)
				}
			})

			t.Run("out-of-band approval: the same call, asked again, carries it", func(t *testing.T) {
				ev := &events{}
				pdp := &fakePDP{ev: ev, outOfBand: true}
				elicited := false
				cs, _ := connect(t, pdp, map[string]*upstreamServer{"filesystem": newUpstream(ev, "delete_file")}, version, &mcp.ClientOptions{
					ElicitationHandler: func(context.Context, *mcp.ElicitRequest) (*mcp.ElicitResult, error) {
						elicited = true
						return &mcp.ElicitResult{Action: "accept", Content: map[string]any{"approve": true}}, nil
					},
				})
				call := func() *mcp.CallToolResult {
					res, err := cs.CallTool(t.Context(), &mcp.CallToolParams{Name: "delete_file", Arguments: map[string]any{"path": "/tmp/a"}})
					if err != nil {
						t.Fatal(err)
					}
					return res
				}
				if res := call(); !res.IsError || !strings.Contains(text(res), "custody approve ap-1") {
					t.Fatalf("first call: %q, want the out-of-band instructions", text(res))
				}
				if elicited {
					t.Error("the client was asked although its answer does not count")
				}
				pdp.approve("ap-1")
				if res := call(); res.IsError {
					t.Fatalf("approved call: %q", text(res))
				}
				want := []string{"decide delete_file dec-1", "decide delete_file dec-2", "call delete_file dec-2"}
				if diff := cmp.Diff(want, ev.all()); diff != "" {
					t.Errorf("events (-want +got):\n%s", diff)
				}
				if c := pdp.recorded()[1]; c.ApprovalID != "ap-1" {
					t.Errorf("second ask carried approval %q, want ap-1", c.ApprovalID)
				}
			})
		})
	}
}

func TestUpstreamListChangesAreFollowed(t *testing.T) {
	for _, version := range mcp.SupportedProtocolVersions() {
		t.Run(version, func(t *testing.T) {
			ev := &events{}
			up := newUpstream(ev, "read_file")
			changed := make(chan struct{}, 10)
			cs, _ := connect(t, &fakePDP{ev: ev}, map[string]*upstreamServer{"filesystem": up}, version, &mcp.ClientOptions{
				ToolListChangedHandler: func(context.Context, *mcp.ToolListChangedRequest) { changed <- struct{}{} },
			})
			if diff := cmp.Diff([]string{"read_file"}, toolNames(t, cs)); diff != "" {
				t.Fatalf("tools (-want +got):\n%s", diff)
			}
			up.add("late_tool")
			waitFor(t, func() bool { return slices.Contains(toolNames(t, cs), "late_tool") })
			up.RemoveTools("read_file")
			waitFor(t, func() bool { return !slices.Contains(toolNames(t, cs), "read_file") })
			select {
			case <-changed:
			case <-time.After(5 * time.Second):
				t.Error("the client was not told that the list changed")
			}
			res, err := cs.CallTool(t.Context(), &mcp.CallToolParams{Name: "late_tool"})
			if err != nil || res.IsError {
				t.Fatalf("late_tool: %v %v", err, res)
			}
		})
	}
}

func TestSeveralUpstreamsArePrefixed(t *testing.T) {
	ev := &events{}
	pdp := &fakePDP{ev: ev}
	cs, _ := connect(t, pdp, map[string]*upstreamServer{
		"filesystem": newUpstream(ev, "read_file", "write_file"),
		"mail":       newUpstream(ev, "read_file"),
	}, "2025-11-25", nil)
	if diff := cmp.Diff([]string{"filesystem__read_file", "mail__read_file"}, toolNames(t, cs)); diff != "" {
		t.Errorf("tools (-want +got):\n%s", diff)
	}
	res, err := cs.CallTool(t.Context(), &mcp.CallToolParams{Name: "mail__read_file"})
	if err != nil || res.IsError {
		t.Fatalf("mail__read_file: %v %v", err, res)
	}
	if c := pdp.recorded()[0]; c.Server != "mail" || c.Tool != "read_file" {
		t.Errorf("PDP asked about %s on %s, want read_file on mail", c.Tool, c.Server)
	}
}

// waitFor polls cond until it holds or 5s pass.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
