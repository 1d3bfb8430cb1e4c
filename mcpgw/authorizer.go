package mcpgw

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/custodyhq/custody/identity"
	"github.com/custodyhq/custody/server"
)

// Principal is on whose authority the gateway's client calls tools.
type Principal struct {
	// User is the delegating human, asserted by the gateway's flags; nil when a token names the
	// user or the agent acts for nobody.
	User *Entity
	// Agent is the acting workload.
	Agent Entity
	// Token is a delegation token (JWT) the PDP verifies. It is sent to the PDP as a bearer
	// token and never to an upstream server.
	Token string
}

// Entity is a subject or agent: an ID, an optional type and free-form properties.
type Entity struct {
	Type       string         `json:"type,omitempty"`
	ID         string         `json:"id"`
	Properties map[string]any `json:"properties,omitempty"`
}

// Call is one tool call as the PDP sees it.
type Call struct {
	// Server is the upstream server's name (action.properties.server).
	Server string
	// Tool is the upstream tool name (action.name).
	Tool string
	// Arguments are the call's arguments (action.properties.arguments).
	Arguments map[string]any
	// CorrelationID, when set, is the correlation ID of the decision.
	CorrelationID string
	// Traceparent is the W3C trace context of the call, if the client sent one.
	Traceparent string
	// Context is the policy's input.context.
	Context map[string]any
	// ApprovalID, when set, names the approval the call carries (the Custody-Approval-ID
	// header): the PDP verifies it was granted for this very call and puts the evidence in
	// input.approval. A caller never sends approval evidence itself.
	ApprovalID string
}

// Decision is the PDP's answer to one call.
type Decision struct {
	DecisionID    string         `json:"decision_id"`
	CorrelationID string         `json:"correlation_id"`
	Allow         bool           `json:"allow"`
	Reasons       []string       `json:"reasons"`
	Obligations   map[string]any `json:"obligations"`
	// Approval is the approval a require_approval decision opened, or the one the call carried.
	Approval *ApprovalRef `json:"approval,omitempty"`
}

// ApprovalRef is the PDP's approval part of a decision.
type ApprovalRef struct {
	ID          string    `json:"approval_id"`
	Status      string    `json:"status"`
	ApprovedVia string    `json:"approved_via,omitempty"`
	ExpiresAt   time.Time `json:"expires_at"`
}

// AcceptsElicitation reports whether the policy names mcp_elicitation among the approval
// channels that count; a policy that names none judges input.approval itself.
func (d Decision) AcceptsElicitation() bool {
	channels, ok := d.Obligations["approval_channels"].([]any)
	if !ok {
		return true
	}
	for _, c := range channels {
		if c == server.ApprovedViaElicitation {
			return true
		}
	}
	return false
}

// ElicitationRelay relays an MCP client's answer to a pending approval to the PDP, as the caller
// that asked. *HTTPAuthorizer implements it.
type ElicitationRelay interface {
	RelayElicitation(ctx context.Context, p Principal, approvalID string, approve bool) error
}

// RequiresApproval reports whether the policy obliges the gateway to ask a human first.
func (d Decision) RequiresApproval() bool {
	v, _ := d.Obligations["require_approval"].(bool)
	return v
}

// Authorizer is the PDP as the gateway needs it.
type Authorizer interface {
	// Authorize decides one call; the decision is recorded before it returns.
	Authorize(ctx context.Context, p Principal, c Call) (Decision, error)
	// Allowed decides, in one batch, which of calls the principal may make; it filters lists
	// and is never the call-time check.
	Allowed(ctx context.Context, p Principal, calls []Call) ([]bool, error)
}

// HTTPAuthorizer asks a running `custody serve`: POST /v1/authorize for a call, and one AuthZEN
// POST /access/v1/evaluations for a list. The record, hash chain and identity rules are thus
// exactly the API's.
type HTTPAuthorizer struct {
	// BaseURL is the PDP's base URL, such as http://127.0.0.1:8181.
	BaseURL string
	// Client defaults to a client with a 30s timeout.
	Client *http.Client
	// APIKey, when set, authenticates the gateway itself when no delegation token does.
	APIKey string
}

var _ Authorizer = (*HTTPAuthorizer)(nil)

type nativeRequest struct {
	CorrelationID *string        `json:"correlation_id,omitempty"`
	Agent         Entity         `json:"agent"`
	User          *Entity        `json:"user,omitempty"`
	Tool          toolBody       `json:"tool"`
	Resource      *Entity        `json:"resource,omitempty"`
	Context       map[string]any `json:"context,omitempty"`
}

type toolBody struct {
	Name      string         `json:"name"`
	Server    string         `json:"server,omitempty"`
	Arguments map[string]any `json:"arguments"`
}

// Authorize posts the native request built from c.
func (a *HTTPAuthorizer) Authorize(ctx context.Context, p Principal, c Call) (Decision, error) {
	body := nativeRequest{Agent: p.Agent, User: p.User, Tool: toolBody{Name: c.Tool, Server: c.Server, Arguments: orEmpty(c.Arguments)}, Context: c.Context}
	if c.CorrelationID != "" {
		body.CorrelationID = &c.CorrelationID
	}
	var d Decision
	if err := a.post(ctx, "/v1/authorize", p, c.Traceparent, c.ApprovalID, body, &d); err != nil {
		return Decision{}, err
	}
	return d, nil
}

// Allowed asks the AuthZEN batch endpoint with the same input the native endpoint builds:
// subject, action {name, properties {server, arguments}}, resource {type tool, id name} and
// context.agent.
func (a *HTTPAuthorizer) Allowed(ctx context.Context, p Principal, calls []Call) ([]bool, error) {
	if len(calls) == 0 {
		return nil, nil
	}
	subject := p.User
	if subject == nil && p.Token != "" {
		// The PDP verifies the token and insists that the subject is its sub; the claim is
		// read here only to name it.
		if sub, _ := tokenClaims(p.Token); sub != "" {
			subject = &Entity{Type: "user", ID: sub}
		}
	}
	if subject == nil {
		subject = &Entity{Type: "agent", ID: p.Agent.ID, Properties: p.Agent.Properties}
	}
	if subject.Type == "" {
		subject = &Entity{Type: "user", ID: subject.ID, Properties: subject.Properties}
	}
	agent := p.Agent
	if agent.Type == "" {
		agent.Type = "agent"
	}
	type item struct {
		Action   map[string]any `json:"action"`
		Resource Entity         `json:"resource"`
	}
	items := make([]item, len(calls))
	for i, c := range calls {
		props := map[string]any{"arguments": orEmpty(c.Arguments)}
		if c.Server != "" {
			props["server"] = c.Server
		}
		items[i] = item{Action: map[string]any{"name": c.Tool, "properties": props}, Resource: Entity{Type: "tool", ID: c.Tool}}
	}
	body := map[string]any{
		"subject":     subject,
		"context":     map[string]any{"agent": agent},
		"evaluations": items,
		"options":     map[string]any{"evaluations_semantic": "execute_all"},
	}
	var out struct {
		Evaluations []struct {
			Decision bool `json:"decision"`
		} `json:"evaluations"`
	}
	if err := a.post(ctx, "/access/v1/evaluations", p, calls[0].Traceparent, "", body, &out); err != nil {
		return nil, err
	}
	if len(out.Evaluations) != len(calls) {
		return nil, fmt.Errorf("mcpgw: evaluations: %d answers for %d tools", len(out.Evaluations), len(calls))
	}
	allowed := make([]bool, len(calls))
	for i, e := range out.Evaluations {
		allowed[i] = e.Decision
	}
	return allowed, nil
}

// RelayElicitation answers approval approvalID with the MCP client's answer, via
// mcp_elicitation, authenticated as the caller that asked.
func (a *HTTPAuthorizer) RelayElicitation(ctx context.Context, p Principal, approvalID string, approve bool) error {
	decision := "deny"
	if approve {
		decision = "approve"
	}
	var out map[string]any
	return a.post(ctx, server.EndpointApprovals+"/"+url.PathEscape(approvalID), p, "", "",
		map[string]string{"decision": decision, "via": server.ApprovedViaElicitation}, &out)
}

func (a *HTTPAuthorizer) post(ctx context.Context, path string, p Principal, traceparent, approvalID string, body, out any) error {
	raw, err := json.Marshal(body)
	if err != nil {
		return fmt.Errorf("mcpgw: encode %s request: %w", path, err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimSuffix(a.BaseURL, "/")+path, bytes.NewReader(raw))
	if err != nil {
		return fmt.Errorf("mcpgw: %s: %w", path, err)
	}
	req.Header.Set("Content-Type", "application/json")
	if traceparent != "" {
		req.Header.Set("traceparent", traceparent)
	}
	if approvalID != "" {
		req.Header.Set(server.HeaderApprovalID, approvalID)
	}
	switch {
	case p.Token != "":
		req.Header.Set("Authorization", "Bearer "+p.Token)
	case a.APIKey != "":
		req.Header.Set("Authorization", "Bearer "+a.APIKey)
	}
	client := a.Client
	if client == nil {
		client = &http.Client{Timeout: 30 * time.Second}
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("mcpgw: ask the PDP: %w", err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return fmt.Errorf("mcpgw: read the PDP's answer: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		var e struct {
			Error struct {
				Code    string `json:"code"`
				Message string `json:"message"`
			} `json:"error"`
		}
		_ = json.Unmarshal(data, &e)
		return &PDPError{Status: resp.StatusCode, Code: e.Error.Code, Message: e.Error.Message}
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("mcpgw: decode the PDP's answer: %w", err)
	}
	return nil
}

// PDPError is a refusal by the PDP (401, 400, 503, ...): the call is not allowed.
type PDPError struct {
	Status  int
	Code    string
	Message string
}

func (e *PDPError) Error() string {
	return fmt.Sprintf("PDP answered %d %s: %s", e.Status, e.Code, e.Message)
}

// tokenClaims reads, without verifying, the sub and act.sub claims of a JWT: only to name, in a
// request, whom the PDP will find the token proves.
func tokenClaims(token string) (sub, actor string) {
	claims, err := identity.UnverifiedClaims(token)
	if err != nil {
		return "", ""
	}
	sub, _ = claims["sub"].(string)
	if act, ok := claims["act"].(map[string]any); ok {
		actor, _ = act["sub"].(string)
	}
	return sub, actor
}

func orEmpty(m map[string]any) map[string]any {
	if m == nil {
		return map[string]any{}
	}
	return m
}

var errNoPrincipal = errors.New("mcpgw: no principal: set an agent, a user or a token")
