package test

import (
	"bufio"
	"encoding/json"
	"io"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
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
		args := append([]string{"mcp", "--data-dir", t.TempDir(), "--nats-listen", "127.0.0.1:0", "--log-level", "info"}, gatewayFlags...)
		exercise(t, args, func(logs *strings.Builder) string {
			for line := range strings.Lines(logs.String()) {
				var e map[string]any
				if json.Unmarshal([]byte(line), &e) == nil && e["message"] == "custody serving" {
					return e["nats_url"].(string)
				}
			}
			t.Fatalf("no serving line in:\n%s", logs)
			return ""
		})
	})
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
	deadline := time.Now().Add(10 * time.Second)
	for len(calls) < 2 && time.Now().Before(deadline) {
		calls = calls[:0]
		for _, m := range readStream(t, url) {
			if m.Record.Endpoint == "/v1/authorize" {
				calls = append(calls, m)
			}
		}
	}
	if len(calls) != 2 {
		t.Fatalf("%d /v1/authorize records, want 2", len(calls))
	}
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
