// Package agentcall maps an agent's tool call onto the policy input. It is the one mapping:
// custody's native endpoint, its AuthZEN endpoints (whose context carries the agent envelope)
// and the load harness all build pdp.Input here, so that a policy sees the same input for the
// same call whichever way it was asked, and the MCP gateway's list filter and call check agree.
//
// It depends on pdp's input types only, so anything may import it without a cycle.
package agentcall
