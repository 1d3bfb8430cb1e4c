package mcpgw

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"strings"
	"sync"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
	"github.com/rs/zerolog"

	"github.com/custodyhq/custody/server"
)

// Keys custody sets in _meta: its own, under the reverse-DNS prefix dev.custody/.
const (
	MetaDecisionID    = "dev.custody/decision_id"
	MetaCorrelationID = "dev.custody/correlation_id"
	MetaReasons       = "dev.custody/reasons"

	metaTraceparent = "traceparent"
	// reservedMetaPrefix marks the client's protocol keys, which are not forwarded upstream.
	reservedMetaPrefix = "io.modelcontextprotocol/"
	custodyMetaPrefix  = "dev.custody/"

	// approvalInputID names custody's approval request among a result's input requests.
	approvalInputID = "custody_approval"
	// toolSeparator joins an upstream's name and its tool's name when there are several.
	toolSeparator = "__"
)

// Upstream is one MCP server behind the gateway.
type Upstream struct {
	// Name is the server's name: action.properties.server in the policy input, and the tool
	// prefix when there are several upstreams.
	Name string
	// Transport connects to it (mcp.CommandTransport, mcp.StreamableClientTransport, ...).
	Transport mcp.Transport
}

// PrincipalFunc says on whose authority a request is made; extra holds the HTTP headers of a
// request that came over HTTP, and is nil or header-less over stdio.
type PrincipalFunc func(ctx context.Context, extra *mcp.RequestExtra) (Principal, error)

// StaticPrincipal is the principal of a stdio gateway, fixed by its flags.
func StaticPrincipal(p Principal) PrincipalFunc {
	return func(context.Context, *mcp.RequestExtra) (Principal, error) { return p, nil }
}

// BearerPrincipal takes the client's bearer token from each HTTP request as the delegation
// token, for the PDP to verify; base supplies the agent (and a user when no token is sent).
func BearerPrincipal(base Principal) PrincipalFunc {
	return func(_ context.Context, extra *mcp.RequestExtra) (Principal, error) {
		p := base
		if extra == nil || extra.Header == nil {
			return p, nil
		}
		if h := extra.Header.Get("Authorization"); h != "" {
			scheme, tok, ok := strings.Cut(h, " ")
			if !ok || !strings.EqualFold(scheme, "Bearer") || strings.TrimSpace(tok) == "" {
				return Principal{}, errors.New("mcpgw: Authorization header is not a bearer token")
			}
			p.Token = strings.TrimSpace(tok)
			p.User = nil // the token names the user
			if _, actor := tokenClaims(p.Token); actor != "" {
				p.Agent = Entity{ID: actor}
			}
		}
		return p, nil
	}
}

// Option configures a Gateway.
type Option func(*Gateway)

// WithLogger sets the logger; the default discards.
func WithLogger(l zerolog.Logger) Option { return func(g *Gateway) { g.logger = l } }

// WithPrincipal sets how requests are attributed; the default is an error for every call.
func WithPrincipal(f PrincipalFunc) Option { return func(g *Gateway) { g.principal = f } }

// WithApprovalTTL sets how long an approval request stays answerable.
func WithApprovalTTL(d time.Duration) Option { return func(g *Gateway) { g.approvalTTL = d } }

// WithClock sets the clock of approval expiry.
func WithClock(now func() time.Time) Option { return func(g *Gateway) { g.now = now } }

// WithVersion sets the version the gateway reports to clients and upstreams.
func WithVersion(v string) Option { return func(g *Gateway) { g.version = v } }

// Gateway serves MCP to a client and forwards each tool call the PDP allows to its upstream.
type Gateway struct {
	auth        Authorizer
	logger      zerolog.Logger
	principal   PrincipalFunc
	approvalTTL time.Duration
	now         func() time.Time
	version     string

	server    *mcp.Server
	approvals *approvals

	mu        sync.Mutex
	upstreams []*upstream
	prefix    bool
	routes    map[string]route // exposed tool name -> where it goes
}

type upstream struct {
	name    string
	session *mcp.ClientSession
	refresh sync.Mutex // one tools/list refresh at a time
	exposed []string
}

type route struct {
	up   *upstream
	tool string
}

// New returns a gateway that asks auth about every call. Call Connect before serving Server().
func New(auth Authorizer, opts ...Option) *Gateway {
	g := &Gateway{
		auth:        auth,
		logger:      zerolog.Nop(),
		approvalTTL: DefaultApprovalTTL,
		now:         time.Now,
		version:     "devel",
		routes:      map[string]route{},
		principal: func(context.Context, *mcp.RequestExtra) (Principal, error) {
			return Principal{}, errNoPrincipal
		},
	}
	for _, o := range opts {
		o(g)
	}
	g.logger = g.logger.With().Str("component", "mcpgw").Logger()
	g.approvals = newApprovals(g.approvalTTL, g.now)
	g.server = mcp.NewServer(&mcp.Implementation{Name: "custody", Version: g.version}, &mcp.ServerOptions{HasTools: true})
	g.server.AddReceivingMiddleware(g.filterLists)
	return g
}

// Server is the MCP server to run on the client's transport.
func (g *Gateway) Server() *mcp.Server { return g.server }

// Connect connects to every upstream, lists its tools and follows its list changes. With one
// upstream tool names pass through; with several, each is prefixed NAME__.
func (g *Gateway) Connect(ctx context.Context, ups []Upstream) error {
	g.mu.Lock()
	g.prefix = len(ups) > 1
	g.mu.Unlock()
	for _, up := range ups {
		u := &upstream{name: up.Name}
		client := mcp.NewClient(&mcp.Implementation{Name: "custody", Version: g.version}, &mcp.ClientOptions{
			ToolListChangedHandler: func(context.Context, *mcp.ToolListChangedRequest) {
				// Not on the notification's goroutine: listing waits for a reply it delivers.
				go func() {
					rctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
					defer cancel()
					if err := g.refresh(rctx, u); err != nil {
						g.logger.Warn().Err(err).Str("upstream", u.name).Msg("tools list refresh failed")
					}
				}()
			},
		})
		cs, err := client.Connect(ctx, up.Transport, nil)
		if err != nil {
			g.Close()
			return fmt.Errorf("mcpgw: connect to upstream %q: %w", up.Name, err)
		}
		u.session = cs
		g.mu.Lock()
		g.upstreams = append(g.upstreams, u)
		g.mu.Unlock()
		if err := g.refresh(ctx, u); err != nil {
			g.Close()
			return err
		}
	}
	return nil
}

// Close disconnects every upstream (stopping those custody started).
func (g *Gateway) Close() error {
	g.mu.Lock()
	ups := g.upstreams
	g.upstreams = nil
	g.mu.Unlock()
	var errs []error
	for _, u := range ups {
		if err := u.session.Close(); err != nil {
			errs = append(errs, fmt.Errorf("mcpgw: close upstream %q: %w", u.name, err))
		}
	}
	return errors.Join(errs...)
}

// refresh re-lists an upstream's tools and brings the served set in line; the server tells its
// clients that the list changed.
func (g *Gateway) refresh(ctx context.Context, u *upstream) error {
	u.refresh.Lock()
	defer u.refresh.Unlock()
	var tools []*mcp.Tool
	for t, err := range u.session.Tools(ctx, nil) {
		if err != nil {
			return fmt.Errorf("mcpgw: list tools of upstream %q: %w", u.name, err)
		}
		tools = append(tools, t)
	}
	g.mu.Lock()
	prefix := g.prefix
	g.mu.Unlock()
	seen := map[string]bool{}
	var exposed []string
	for _, t := range tools {
		name := t.Name
		if prefix {
			name = u.name + toolSeparator + t.Name
		}
		served := *t
		served.Name = name
		if err := addTool(g.server, &served, g.handler(u, t.Name)); err != nil {
			g.logger.Warn().Err(err).Str("upstream", u.name).Str("tool", t.Name).Msg("upstream tool not served")
			continue
		}
		seen[name] = true
		exposed = append(exposed, name)
		g.mu.Lock()
		g.routes[name] = route{up: u, tool: t.Name}
		g.mu.Unlock()
	}
	var gone []string
	for _, name := range u.exposed {
		if !seen[name] {
			gone = append(gone, name)
		}
	}
	if len(gone) > 0 {
		g.server.RemoveTools(gone...)
		g.mu.Lock()
		for _, name := range gone {
			delete(g.routes, name)
		}
		g.mu.Unlock()
	}
	u.exposed = exposed
	return nil
}

// addTool adds t, turning the SDK's panic on a tool it cannot serve into an error.
func addTool(s *mcp.Server, t *mcp.Tool, h mcp.ToolHandler) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%v", r)
		}
	}()
	s.AddTool(t, h)
	return nil
}

// filterLists keeps, in a tools/list result, only the tools the policy allows the principal:
// one batched evaluation with the same input as a call without arguments. The call-time check
// stays authoritative.
func (g *Gateway) filterLists(next mcp.MethodHandler) mcp.MethodHandler {
	return func(ctx context.Context, method string, req mcp.Request) (mcp.Result, error) {
		res, err := next(ctx, method, req)
		if err != nil || method != "tools/list" {
			return res, err
		}
		lr, ok := res.(*mcp.ListToolsResult)
		if !ok || len(lr.Tools) == 0 {
			return res, nil
		}
		p, err := g.principal(ctx, req.GetExtra())
		if err != nil {
			return nil, err
		}
		calls := make([]Call, 0, len(lr.Tools))
		keep := make([]*mcp.Tool, 0, len(lr.Tools))
		g.mu.Lock()
		for _, t := range lr.Tools {
			if r, ok := g.routes[t.Name]; ok {
				calls = append(calls, Call{Server: r.up.name, Tool: r.tool, Arguments: map[string]any{}})
				keep = append(keep, t)
			}
		}
		g.mu.Unlock()
		allowed, err := g.auth.Allowed(ctx, p, calls)
		if err != nil {
			g.logger.Error().Err(err).Msg("tools list not filtered; answering an error")
			return nil, fmt.Errorf("custody could not decide which tools are allowed: %w", err)
		}
		tools := make([]*mcp.Tool, 0, len(keep))
		for i, t := range keep {
			if allowed[i] {
				tools = append(tools, t)
			}
		}
		out := *lr
		out.Tools = tools
		return &out, nil
	}
}

func (g *Gateway) handler(u *upstream, tool string) mcp.ToolHandler {
	return func(ctx context.Context, req *mcp.CallToolRequest) (*mcp.CallToolResult, error) {
		return g.call(ctx, u, tool, req)
	}
}

// call decides one tools/call and, if allowed (and approved when the policy says so), forwards it.
func (g *Gateway) call(ctx context.Context, u *upstream, tool string, req *mcp.CallToolRequest) (*mcp.CallToolResult, error) {
	params := req.Params
	args := map[string]any{}
	if len(params.Arguments) > 0 && string(params.Arguments) != "null" {
		if err := json.Unmarshal(params.Arguments, &args); err != nil {
			return errorResult("custody: the arguments of " + params.Name + " must be a JSON object"), nil
		}
	}
	p, err := g.principal(ctx, req.Extra)
	if err != nil {
		return nil, err
	}
	c := Call{Server: u.name, Tool: tool, Arguments: args}
	if tp, ok := params.Meta[metaTraceparent].(string); ok {
		c.Traceparent = tp
	}
	log := g.logger.With().Str("upstream", u.name).Str("tool", tool).Logger()

	if params.RequestState != "" || len(params.InputResponses) > 0 {
		return g.approved(ctx, u, tool, p, c, params, log)
	}
	// A call an out-of-band approver may have approved since it was last asked carries that
	// approval; one the PDP no longer takes (used, declined, expired) is asked afresh.
	key := pendingKey(p, u.name, tool, args)
	c.ApprovalID = g.approvals.pending(key)
	d, err := g.auth.Authorize(ctx, p, c)
	if pe := (*PDPError)(nil); c.ApprovalID != "" && errors.As(err, &pe) && pe.Code == server.CodeApprovalInvalid {
		g.approvals.forget(key)
		c.ApprovalID = ""
		d, err = g.auth.Authorize(ctx, p, c)
	}
	if err != nil {
		log.Warn().Err(err).Msg("no decision; not forwarded")
		return errorResult("denied by custody: no decision could be made (" + err.Error() + ")"), nil
	}
	log = log.With().Str("decision_id", d.DecisionID).Str("correlation_id", d.CorrelationID).Logger()
	if !d.Allow {
		log.Debug().Strs("reasons", d.Reasons).Msg("denied")
		return denyResult("denied by custody", d), nil
	}
	if d.RequiresApproval() {
		if d.Approval == nil || d.Approval.Status != "pending" || d.Approval.ID == "" {
			return denyResult("denied by custody: approval required, and the PDP opened no approval to answer", d), nil
		}
		if !d.AcceptsElicitation() {
			g.approvals.remember(key, d.Approval.ID, d.Approval.ExpiresAt)
			log.Info().Str("approval_id", d.Approval.ID).Msg("approval required out of band")
			return outOfBandResult(d), nil
		}
		state := g.approvals.issue(approvalState{
			Tool: u.name + "/" + tool, ArgsSHA256: argsHash(args), Principal: principalKey(p),
			DecisionID: d.DecisionID, CorrelationID: d.CorrelationID, ApprovalID: d.Approval.ID,
		})
		log.Debug().Msg("asking for approval")
		return &mcp.CallToolResult{
			InputRequests: mcp.InputRequestMap{approvalInputID: approvalRequest(u.name, tool, args, d)},
			RequestState:  state,
		}, nil
	}
	g.approvals.forget(key)
	return g.forward(ctx, u, tool, args, params.Meta, d)
}

// approved handles the retry of a call that carries an answer to an approval request. The
// answer counts only with a state the gateway signed for this very call, principal and
// arguments, not expired and not used before. It is relayed to the PDP as an mcp_elicitation
// answer to the approval the PDP opened (a record of its own), and the call is decided again
// carrying that approval: the policy decides whether an elicitation answer counts (the default
// policy: never for a high-risk tool).
func (g *Gateway) approved(ctx context.Context, u *upstream, tool string, p Principal, c Call, params *mcp.CallToolParamsRaw, log zerolog.Logger) (*mcp.CallToolResult, error) {
	action, approve := "", false
	if r, ok := params.InputResponses[approvalInputID].(*mcp.ElicitResult); ok {
		action = r.Action
		approve, _ = r.Content["approve"].(bool)
		approve = approve && r.Action == "accept"
	}
	st, rerr := g.approvals.redeem(params.RequestState, approvalState{
		Tool: u.name + "/" + tool, ArgsSHA256: argsHash(c.Arguments), Principal: principalKey(p),
	})
	if rerr != nil {
		log.Warn().Err(rerr).Msg("approval refused")
		return errorResult("denied by custody: " + rerr.Error()), nil
	}
	relay, ok := g.auth.(ElicitationRelay)
	if !ok {
		return errorResult("denied by custody: this PDP takes no elicitation answers"), nil
	}
	if err := relay.RelayElicitation(ctx, p, st.ApprovalID, approve); err != nil {
		log.Warn().Err(err).Msg("approval answer not recorded; not forwarded")
		return errorResult("denied by custody: the approval could not be recorded (" + err.Error() + ")"), nil
	}
	if !approve {
		log.Info().Str("action", action).Msg("approval declined")
		return errorResult("not approved: the user answered " + orNone(action) + " (approval " + st.ApprovalID + ")"), nil
	}
	c.CorrelationID, c.ApprovalID = st.CorrelationID, st.ApprovalID
	d, err := g.auth.Authorize(ctx, p, c)
	if err != nil {
		log.Warn().Err(err).Msg("approved call not decided; not forwarded")
		return errorResult("denied by custody: no decision could be made (" + err.Error() + ")"), nil
	}
	log = log.With().Str("decision_id", d.DecisionID).Str("correlation_id", d.CorrelationID).Logger()
	switch {
	case !d.Allow:
		return denyResult("denied by custody", d), nil
	case d.RequiresApproval():
		return outOfBandResult(d), nil
	}
	log.Info().Msg("approved")
	return g.forward(ctx, u, tool, c.Arguments, params.Meta, d)
}

// forward calls the upstream tool with the client's _meta (traceparent included) less the
// client's reserved protocol keys, plus custody's decision.
func (g *Gateway) forward(ctx context.Context, u *upstream, tool string, args map[string]any, meta mcp.Meta, d Decision) (*mcp.CallToolResult, error) {
	fwd := mcp.Meta{}
	for k, v := range meta {
		if strings.HasPrefix(k, reservedMetaPrefix) || strings.HasPrefix(k, custodyMetaPrefix) || k == "progressToken" {
			continue
		}
		fwd[k] = v
	}
	fwd[MetaDecisionID] = d.DecisionID
	fwd[MetaCorrelationID] = d.CorrelationID
	res, err := u.session.CallTool(ctx, &mcp.CallToolParams{Name: tool, Arguments: args, Meta: fwd})
	if err != nil {
		return nil, fmt.Errorf("upstream %s: %w", u.name, err)
	}
	out := *res
	out.Meta = maps.Clone(res.Meta)
	if out.Meta == nil {
		out.Meta = mcp.Meta{}
	}
	out.Meta[MetaDecisionID] = d.DecisionID
	out.Meta[MetaCorrelationID] = d.CorrelationID
	return &out, nil
}

// outOfBandResult tells the model that the call waits for an approver, and how one answers.
func outOfBandResult(d Decision) *mcp.CallToolResult {
	reason, _ := d.Obligations["approval_reason"].(string)
	msg := "approval required (" + orNone(reason) + "): this call needs an approver's out-of-band approval"
	if d.Approval != nil && d.Approval.Status == "pending" {
		msg += fmt.Sprintf(": ask an approver to run `custody approve %s` (or to send you a signed approval link), then call the tool again with the same arguments before %s",
			d.Approval.ID, d.Approval.ExpiresAt.Format(time.RFC3339))
	} else {
		msg += "; the answer given through this MCP client does not count for this tool: call the tool again to open an approval for an approver (`custody approve <approval-id>`)"
	}
	return errorResult(fmt.Sprintf("%s (decision %s, correlation %s)", msg, d.DecisionID, d.CorrelationID))
}

func approvalRequest(server, tool string, args map[string]any, d Decision) *mcp.ElicitParams {
	raw, _ := json.Marshal(args)
	reason, _ := d.Obligations["approval_reason"].(string)
	msg := fmt.Sprintf("custody: the agent wants to call %s on %s with %s", tool, server, raw)
	if reason != "" {
		msg += " (" + reason + ")"
	}
	msg += fmt.Sprintf(". Approve? (decision %s)", d.DecisionID)
	return &mcp.ElicitParams{
		Message: msg,
		RequestedSchema: map[string]any{
			"type": "object",
			"properties": map[string]any{
				"approve": map[string]any{"type": "boolean", "title": "Approve this call", "default": false},
			},
			"required": []string{"approve"},
		},
	}
}

// denyResult is a tool result the model can read: why, and which decision.
func denyResult(prefix string, d Decision) *mcp.CallToolResult {
	reasons := d.Reasons
	if reasons == nil {
		reasons = []string{}
	}
	text := fmt.Sprintf("%s: %s (decision %s, correlation %s)", prefix, strings.Join(reasons, ", "), d.DecisionID, d.CorrelationID)
	return &mcp.CallToolResult{
		IsError: true,
		Content: []mcp.Content{&mcp.TextContent{Text: text}},
		Meta:    mcp.Meta{MetaDecisionID: d.DecisionID, MetaCorrelationID: d.CorrelationID, MetaReasons: reasons},
	}
}

func errorResult(text string) *mcp.CallToolResult {
	return &mcp.CallToolResult{IsError: true, Content: []mcp.Content{&mcp.TextContent{Text: text}}}
}

func orNone(s string) string {
	if s == "" {
		return "nothing"
	}
	return s
}
