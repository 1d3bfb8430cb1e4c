package main

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/custodyhq/custody/internal/natstest"
)

// syncBuffer is a strings.Builder that a test reads while runMCP writes to it.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// upstreamMCP serves, over Streamable HTTP, an MCP server with a harmless and a dangerous tool.
func upstreamMCP(t *testing.T) string {
	t.Helper()
	s := mcp.NewServer(&mcp.Implementation{Name: "upstream", Version: "1"}, nil)
	for _, name := range []string{"read_file", "delete_file"} {
		s.AddTool(&mcp.Tool{Name: name, InputSchema: map[string]any{"type": "object"}},
			func(context.Context, *mcp.CallToolRequest) (*mcp.CallToolResult, error) {
				return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: name + " ran"}}}, nil
			})
	}
	hs := httptest.NewServer(mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return s }, nil))
	t.Cleanup(hs.Close)
	return hs.URL
}

// freeAddr returns a loopback address that was free a moment ago: custody mcp --listen logs
// its address only in the format the test is about, so the test picks it.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// TestMCPInProcessNeedsNoLog: `custody mcp` without --pdp-url runs the PDP in-process and asks
// it, whatever the log says. It used to find the PDP by parsing its JSON log for "custody
// serving", so it forced the PDP's log to JSON: with --log-format console the PDP's lines came
// out as JSON beside the gateway's console lines. Now the gateway takes the App's address, and
// the PDP logs through the gateway's logger, in its format and at its level.
func TestMCPInProcessNeedsNoLog(t *testing.T) {
	up := upstreamMCP(t)
	for _, tc := range []struct {
		name  string
		flags []string
		// serving says whether the PDP's "custody serving" line must be in the log.
		serving bool
	}{
		{name: "console", flags: []string{"--log-format", "console", "--log-level", "info"}, serving: true},
		{name: "errors only", flags: []string{"--log-level", "error"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			listen := freeAddr(t)
			args := append([]string{
				"--data-dir", t.TempDir(), "--nats-listen", "none", "--listen", listen,
				"--upstream", "filesystem=" + up, "--agent", "spiffe://acme.example/agents/researcher",
				"--user", "alice@acme.example", "--user-properties", `{"scopes":["files.read"]}`,
			}, tc.flags...)
			ctx := t.Context()
			cs, stderr := startMCPListen(t, args, listen)
			// The PDP decides the list: the user may read files, not delete them.
			var names []string
			for tool, err := range cs.Tools(ctx, nil) {
				if err != nil {
					t.Fatal(err)
				}
				names = append(names, tool.Name)
			}
			if !slices.Equal(names, []string{"read_file"}) {
				t.Errorf("tools = %v, want only read_file:\n%s", names, stderr.String())
			}
			res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "read_file", Arguments: map[string]any{"path": "/tmp/a"}})
			if err != nil || res.IsError {
				t.Fatalf("read_file: %v %+v", err, res)
			}

			logs := stderr.String()
			if got := strings.Contains(logs, "custody serving"); got != tc.serving {
				t.Errorf("\"custody serving\" in the log: %v, want %v:\n%s", got, tc.serving, logs)
			}
			for line := range strings.Lines(logs) {
				var v map[string]any
				if tc.name == "console" && json.Unmarshal([]byte(line), &v) == nil {
					t.Errorf("a JSON line in a console log: %s", line)
				}
			}
		})
	}
}

// TestMCPInProcessStartFailure: an in-process PDP that cannot start fails `custody mcp` at once
// with its reason, instead of a wait for a log line that never comes.
func TestMCPInProcessStartFailure(t *testing.T) {
	dir := t.TempDir()
	held, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	start := time.Now()
	err = runMCP(t.Context(), []string{"--data-dir", dir, "--nats-listen", "none", "--addr", held.Addr().String(),
		"--upstream", "files=http://127.0.0.1:1/mcp", "--agent", "a", "--log-level", "error"}, nil, &strings.Builder{})
	if err == nil || !strings.Contains(err.Error(), "mcp: in-process PDP: app: listen on") {
		t.Fatalf("runMCP: %v; want the PDP's listen error", err)
	}
	if errors.Is(err, errUsage) || time.Since(start) > 30*time.Second {
		t.Fatalf("runMCP: %v after %s", err, time.Since(start))
	}
}

// startMCPListen runs `custody mcp` with args, serving MCP over HTTP on listen, until the test
// ends, and returns a client session to it and the gateway's log.
func startMCPListen(t *testing.T, args []string, listen string) (*mcp.ClientSession, *syncBuffer) {
	t.Helper()
	stderr := &syncBuffer{}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- runMCP(ctx, args, nil, stderr) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("runMCP: %v", err)
		}
	})
	var cs *mcp.ClientSession
	natstest.CheckFor(t, 30*time.Second, 20*time.Millisecond, func() error {
		select {
		case err := <-done:
			done <- err
			t.Fatalf("runMCP returned early: %v\n%s", err, stderr.String())
		default:
		}
		var err error
		cs, err = mcp.NewClient(&mcp.Implementation{Name: "test", Version: "1"}, nil).
			Connect(ctx, &mcp.StreamableClientTransport{Endpoint: "http://" + listen + "/mcp"}, nil)
		return err
	})
	t.Cleanup(func() { cs.Close() })
	return cs, stderr
}
