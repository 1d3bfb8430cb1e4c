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
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/custodyhq/custody/decisionlog"
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
// token, so the high-risk delete_file is allowed with the obligation to ask the human; the
// approval goes through elicitation and is recorded under the same correlation ID.
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
	for _, transport := range []string{"stdio", "http"} {
		t.Run(transport, func(t *testing.T) {
			c := startCustody(t, "", "--issuer", idp, "--jwks", jwks, "--audience", audience, "--require-auth")
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
			res, err := cs.CallTool(t.Context(), &mcp.CallToolParams{Name: "delete_file", Arguments: map[string]any{"path": "/tmp/x/a"},
				Meta: mcp.Meta{"traceparent": "00-" + mcpTraceID + "-b7ad6b7169203331-01"}})
			if err != nil || res.IsError {
				t.Fatalf("delete_file: %v %+v", err, res)
			}
			if len(asked) != 1 {
				t.Errorf("asked %d times, want once", len(asked))
			}
			var calls []decisionlog.Record
			for _, m := range readStream(t, c.NATS) {
				if m.Record.Endpoint == "/v1/authorize" {
					calls = append(calls, m.Record)
				}
			}
			if len(calls) != 2 {
				t.Fatalf("%d /v1/authorize records, want the request and the answer", len(calls))
			}
			for _, r := range calls {
				if !r.Allow || r.CorrelationID != mcpTraceID || !r.Delegation.Verified || r.Subject.ID != "alice@acme.example" || r.AgentID() != ops {
					t.Errorf("record %+v, want a verified allow of alice via ops under the trace ID", r)
				}
			}
			if a, _ := calls[1].Resource.Properties["approval"].(map[string]any); a["approved"] != true || a["request_decision_id"] != calls[0].DecisionID {
				t.Errorf("answer record resource %+v", calls[1].Resource)
			}
		})
	}
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
