// Command mcpupstream is a tiny MCP server over stdio for custody's end-to-end tests: read_file
// write_file and delete_file, each answering with the traceparent it received in _meta.
package main

import (
	"context"
	"log"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

func main() {
	s := mcp.NewServer(&mcp.Implementation{Name: "mcpupstream", Version: "1"}, nil)
	for _, name := range []string{"read_file", "write_file", "delete_file"} {
		s.AddTool(&mcp.Tool{Name: name, Description: name + " (test)", InputSchema: map[string]any{"type": "object"}},
			func(_ context.Context, req *mcp.CallToolRequest) (*mcp.CallToolResult, error) {
				tp, _ := req.Params.Meta["traceparent"].(string)
				return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: name + " ran; traceparent=" + tp}}}, nil
			})
	}
	if err := s.Run(context.Background(), &mcp.StdioTransport{}); err != nil {
		log.Fatal(err)
	}
}
