package test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/custodyhq/custody/decisionlog"
	"github.com/custodyhq/custody/identity"
	"github.com/custodyhq/custody/internal/natstest"
	"github.com/custodyhq/custody/internal/tokentest"
)

var (
	upstreamOnce sync.Once
	upstreamBin  string
	upstreamErr  error
)

// mcpUpstream builds the test's upstream MCP server once.
func mcpUpstream(t *testing.T) string {
	t.Helper()
	upstreamOnce.Do(func() {
		upstreamBin = filepath.Join(filepath.Dir(binary), "mcpupstream")
		out, err := exec.Command("go", "build", "-o", upstreamBin, "./testdata/mcpupstream").CombinedOutput()
		if err != nil {
			upstreamErr = err
			t.Logf("%s", out)
		}
	})
	if upstreamErr != nil {
		t.Fatalf("build mcpupstream: %v", upstreamErr)
	}
	return upstreamBin
}

const mcpTraceID = "0af7651916cd43dd8448eb211c80319c"

// TestMCPGateway drives `custody mcp` as an MCP client would, over stdio, with the policy of a
// researcher acting for a user who may only read files: against a running `custody serve`,
// and with the PDP in-process.
func TestMCPGateway(t *testing.T) {
	up := mcpUpstream(t)
	gatewayFlags := []string{
		"--upstream", "filesystem=" + up,
		"--agent", "spiffe://acme.example/agents/researcher",
		"--user", "alice@acme.example", "--user-properties", `{"scopes":["files.read"]}`,
	}
	t.Run("pdp-url", func(t *testing.T) {
		c := startCustody(t, "")
		args := append([]string{"mcp", "--pdp-url", c.HTTP}, gatewayFlags...)
		exercise(t, args, func(*strings.Builder) string { return c.NATS })
	})
	t.Run("in-process", func(t *testing.T) {
		dataDir := t.TempDir()
		args := append([]string{"mcp", "--data-dir", dataDir, "--nats-listen", "127.0.0.1:0", "--log-level", "info"}, gatewayFlags...)
		exercise(t, args, func(logs *strings.Builder) string {
			for line := range strings.Lines(logs.String()) {
				var e map[string]any
				if json.Unmarshal([]byte(line), &e) == nil && e["message"] == "custody serving" {
					url := e["nats_url"].(string)
					rememberReaderCreds(t, url, filepath.Join(dataDir, "nats", "reader.creds"))
					return url
				}
			}
			t.Fatalf("no serving line in:\n%s", logs)
			return ""
		})
	})
}

// TestMCPGatewayTokenAndApproval: over stdio with --token-file, the PDP verifies the delegation
// token, so the high-risk delete_file is allowed with the obligation of an out-of-band approval.
// The client's own elicitation answer does not count: the call is not forwarded until an
// approver runs `custody approve`, after which the same call goes through; every step is a
// record under the same correlation ID.
func TestMCPGatewayTokenAndApproval(t *testing.T) {
	up := mcpUpstream(t)
	issuer := tokentest.NewIssuer(t, idp)
	dir := t.TempDir()
	jwks := filepath.Join(dir, "jwks.json")
	issuer.WriteJWKS(t, jwks)
	ops := "spiffe://acme.example/agents/ops"
	tokenFile := filepath.Join(dir, "token")
	tok := issuer.Token(t, tokentest.Claims{"sub": "alice@acme.example", "aud": audience, "scope": "files.read files.write", "act": map[string]any{"sub": ops}})
	if err := os.WriteFile(tokenFile, []byte(tok), 0o600); err != nil {
		t.Fatal(err)
	}
	approverKey, line, err := identity.NewAPIKey("carol")
	if err != nil {
		t.Fatal(err)
	}
	approvers, keyFile := filepath.Join(dir, "approvers.txt"), filepath.Join(dir, "carol.key")
	if err := os.WriteFile(approvers, []byte(line+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, []byte(approverKey), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, transport := range []string{"stdio", "http"} {
		t.Run(transport, func(t *testing.T) {
			c := startCustody(t, "", "--issuer", idp, "--jwks", jwks, "--audience", audience, "--require-auth", "--approver-keys-file", approvers)
			var asked []string
			client := mcp.NewClient(&mcp.Implementation{Name: "e2e", Version: "1"}, &mcp.ClientOptions{
				ElicitationHandler: func(_ context.Context, req *mcp.ElicitRequest) (*mcp.ElicitResult, error) {
					asked = append(asked, req.Params.Message)
					return &mcp.ElicitResult{Action: "accept", Content: map[string]any{"approve": true}}, nil
				},
			})
			var t2 mcp.Transport
			if transport == "stdio" {
				t2 = &mcp.CommandTransport{Command: exec.Command(binary, "mcp", "--pdp-url", c.HTTP, "--token-file", tokenFile, "--upstream", "filesystem="+up)}
			} else {
				// Over HTTP the client's own bearer token is the delegation token.
				t2 = &mcp.StreamableClientTransport{Endpoint: startMCPHTTP(t, "--pdp-url", c.HTTP, "--upstream", "filesystem="+up),
					HTTPClient: &http.Client{Transport: bearerTransport{tok}}}
			}
			cs, err := client.Connect(t.Context(), t2, nil)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { cs.Close() })
			var names []string
			for tool, err := range cs.Tools(t.Context(), nil) {
				if err != nil {
					t.Fatal(err)
				}
				names = append(names, tool.Name)
			}
			if !slices.Equal(names, []string{"delete_file", "read_file", "write_file"}) {
				t.Errorf("tools = %v", names)
			}
			call := func() *mcp.CallToolResult {
				res, err := cs.CallTool(t.Context(), &mcp.CallToolParams{Name: "delete_file", Arguments: map[string]any{"path": "/tmp/x/a"},
					Meta: mcp.Meta{"traceparent": "00-" + mcpTraceID + "-b7ad6b7169203331-01"}})
				if err != nil {
					t.Fatal(err)
				}
				return res
			}
			res := call()
			id := regexp.MustCompile(`custody approve (ap_[0-9a-f]+)`).FindStringSubmatch(mcpText(res))
			if !res.IsError || id == nil {
				t.Fatalf("unapproved delete_file: %+v, want the out-of-band instructions", res)
			}
			if len(asked) != 0 {
				t.Errorf("the client was asked %d times; its answer does not count for delete_file", len(asked))
			}
			var out strings.Builder
			cmd := exec.Command(binary, "approve", id[1], "--pdp-url", c.HTTP, "--approver-key-file", keyFile)
			cmd.Stdout, cmd.Stderr = &out, &out
			if err := cmd.Run(); err != nil || !strings.Contains(out.String(), "delete_file") || !strings.Contains(out.String(), "approved by carol") {
				t.Fatalf("custody approve: %v\n%s", err, out.String())
			}
			if res := call(); res.IsError {
				t.Fatalf("approved delete_file: %+v", res)
			}
			var recs []decisionlog.Record
			for _, m := range readStream(t, c.NATS) {
				if m.Record.Endpoint == "/v1/authorize" || m.Record.Endpoint == "/v1/approvals" {
					recs = append(recs, m.Record)
				}
			}
			if len(recs) != 3 {
				t.Fatalf("%d records, want the request, the approval and the approved call", len(recs))
			}
			for _, r := range recs {
				if !r.Allow || r.CorrelationID != mcpTraceID || !r.Delegation.Verified || r.Subject.ID != "alice@acme.example" || r.AgentID() != ops || r.Approval == nil || r.Approval.ID != id[1] {
					t.Errorf("record %+v, want a verified allow of alice via ops under the trace ID with approval %s", r, id[1])
				}
			}
			if a := recs[1].Approval; recs[1].Endpoint != "/v1/approvals" || a.Approver != "carol" || a.ApprovedVia != "approver_cli" {
				t.Errorf("approval record %+v", a)
			}
			if a := recs[2].Approval; a.Status != "used" || a.ApprovedVia != "approver_cli" || len(recs[2].Obligations) != 0 {
				t.Errorf("approved call record %+v %+v", a, recs[2].Obligations)
			}
		})
	}
}

func mcpText(res *mcp.CallToolResult) string {
	var b strings.Builder
	for _, c := range res.Content {
		if tc, ok := c.(*mcp.TextContent); ok {
			b.WriteString(tc.Text)
		}
	}
	return b.String()
}

type bearerTransport struct{ token string }

func (b bearerTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+b.token)
	return http.DefaultTransport.RoundTrip(r)
}

// startMCPHTTP runs `custody mcp --listen 127.0.0.1:0` and returns its endpoint URL.
func startMCPHTTP(t *testing.T, args ...string) string {
	t.Helper()
	cmd := exec.Command(binary, append([]string{"mcp", "--listen", "127.0.0.1:0", "--log-level", "info"}, args...)...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Signal(syscall.SIGTERM); _ = cmd.Wait() })
	found := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			var e map[string]any
			if json.Unmarshal(sc.Bytes(), &e) == nil && e["message"] == "custody mcp serving" {
				found <- e["url"].(string)
			}
		}
	}()
	select {
	case u := <-found:
		return u
	case <-time.After(30 * time.Second):
		t.Fatal("custody mcp did not start serving HTTP")
		return ""
	}
}

func exercise(t *testing.T, args []string, natsURL func(*strings.Builder) string) {
	t.Helper()
	ctx := t.Context()
	cmd := exec.Command(binary, args...)
	pr, pw := io.Pipe()
	cmd.Stderr = pw
	var mu sync.Mutex
	var logs strings.Builder
	go func() {
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			mu.Lock()
			logs.WriteString(sc.Text() + "\n")
			mu.Unlock()
		}
	}()
	cs, err := mcp.NewClient(&mcp.Implementation{Name: "e2e", Version: "1"}, nil).Connect(ctx, &mcp.CommandTransport{Command: cmd}, nil)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { cs.Close(); pw.Close() })

	var names []string
	for tool, err := range cs.Tools(ctx, nil) {
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, tool.Name)
	}
	if !slices.Equal(names, []string{"read_file"}) {
		t.Errorf("tools = %v, want only read_file", names)
	}
	read, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "read_file", Arguments: map[string]any{"path": "/tmp/x/notes.txt"},
		Meta: mcp.Meta{"traceparent": "00-" + mcpTraceID + "-b7ad6b7169203331-01"}})
	if err != nil || read.IsError {
		t.Fatalf("read_file: %v %+v", err, read)
	}
	if txt := read.Content[0].(*mcp.TextContent).Text; !strings.Contains(txt, mcpTraceID) {
		t.Errorf("upstream saw %q, want the traceparent", txt)
	}
	write, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "write_file", Arguments: map[string]any{"path": "/tmp/x/a", "content": "x"}})
	if err != nil {
		t.Fatal(err)
	}
	wtxt := write.Content[0].(*mcp.TextContent).Text
	if !write.IsError || !strings.Contains(wtxt, "user_lacks_scope") {
		t.Errorf("write_file = isError %v %q, want a deny with its reasons", write.IsError, wtxt)
	}

	mu.Lock()
	url := natsURL(&logs)
	mu.Unlock()
	var calls []streamMsg
	natstest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		calls = calls[:0]
		for _, m := range readStream(t, url) {
			if m.Record.Endpoint == "/v1/authorize" {
				calls = append(calls, m)
			}
		}
		if len(calls) != 2 {
			return fmt.Errorf("%d /v1/authorize records, want 2", len(calls))
		}
		return nil
	})
	r, w := calls[0].Record, calls[1].Record
	if !r.Allow || r.DecisionID != read.Meta["dev.custody/decision_id"] || r.CorrelationID != mcpTraceID || r.Action.Name != "read_file" || r.Action.Properties["server"] != "filesystem" {
		t.Errorf("read record = %+v, result _meta %v", r, read.Meta)
	}
	if w.Allow || w.DecisionID != write.Meta["dev.custody/decision_id"] || !strings.Contains(wtxt, w.DecisionID) {
		t.Errorf("write record = %+v, result %q", w, wtxt)
	}
	if r.Delegation.Verified || r.Subject.ID != "alice@acme.example" {
		t.Errorf("asserted user recorded as %+v %+v", r.Subject, r.Delegation)
	}
}
