// Package mcpgw is an MCP gateway that puts every upstream tool call through custody's PDP: it
// serves MCP to a client, forwards allowed calls to upstream MCP servers, and answers denied ones
// with the policy's reasons, asking a human through elicitation when the policy obliges it to.
package mcpgw
