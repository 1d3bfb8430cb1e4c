package server

import (
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"html/template"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/custodyhq/custody/decisionlog"
	"github.com/custodyhq/custody/identity"
	"github.com/custodyhq/custody/pdp"
)

// Approvals that an agent cannot give itself. A require_approval allow of /v1/authorize opens a
// pending approval bound to the exact call (subject, agent, delegation, tool, server, arguments,
// resource and caller) with an expiry; its ID is in the answer and the record. Someone other than
// the requester answers it out of band: an approver key holder (POST /v1/approvals/{id}, which
// `custody approve` calls), or whoever holds a single-use signed link an approver minted. The
// retried call names the approval in the Custody-Approval-ID header; the pipeline verifies that
// it was granted for this very call and not used, and only then puts the evidence in
// input.approval, where the policy decides which channels count. Every answer, granted or not,
// is a record on the stream. Approval evidence is the server's: a body that carries it
// (resource.properties.approval, context.approval) is refused with server_controlled_field.
//
// Refused, not stripped: a stripped field would let a confused gateway believe its evidence
// counted, and hide the attempt; a refusal is a recorded deny that says what to fix.
//
// Pending approvals live in this process's memory: a restart forgets them, which fails closed
// (the call is asked again and a new approval opened).

// EndpointApprovals names the approval endpoints in records.
const EndpointApprovals = "/v1/approvals"

// HeaderApprovalID names, on a retried /v1/authorize, the approval the call carries.
const HeaderApprovalID = "Custody-Approval-ID"

// Approval channels, as recorded in approved_via and seen by the policy in input.approval.
const (
	// ApprovedViaCLI: an approver authenticated with an approver key (`custody approve`).
	ApprovedViaCLI = "approver_cli"
	// ApprovedViaSignedURL: whoever held a signed link that an approver minted.
	ApprovedViaSignedURL = "signed_url"
	// ApprovedViaElicitation: the requesting caller relayed its MCP client's answer. No human is
	// proven: the default policy does not accept it for high-risk tools.
	ApprovedViaElicitation = "mcp_elicitation"
)

// Defaults of ApprovalConfig.
const (
	DefaultApprovalTTL         = 10 * time.Minute
	DefaultApprovalLinkTTL     = 5 * time.Minute
	DefaultMaxPendingApprovals = 10_000
)

// Reasons of approval records.
const (
	ReasonApproved         = "approved"
	ReasonApprovalDeclined = "approval_declined"
	ReasonApprovalExpired  = "approval_expired"
	ReasonApprovalAnswered = "approval_already_answered"
)

// maxRecordedRefusals bounds the refused answers recorded per approval: past it, refusals are
// still answered but no longer recorded, so that whoever learnt an ID cannot flood the stream.
const maxRecordedRefusals = 8

// ApprovalConfig configures approvals.
type ApprovalConfig struct {
	// Approvers are the approver keys, in the API key format; nil disables approver_cli and
	// signed links (mcp_elicitation still works, and the default policy refuses it for
	// high-risk tools).
	Approvers APIKeyLookup
	// TTL is how long a pending approval can be answered and then used; LinkTTL bounds a signed
	// link. Zero picks the defaults.
	TTL, LinkTTL time.Duration
	// MaxPending bounds the approvals held; zero picks DefaultMaxPendingApprovals.
	MaxPending int
}

// WithApprovals configures approvals. Without it there are no approvers.
func WithApprovals(cfg ApprovalConfig) Option { return func(s *Server) { s.approvalCfg = cfg } }

// Values of pendingApproval.status beyond decisionlog's: an answer being recorded.
const statusAnswering = "answering"

type pendingApproval struct {
	id        string
	binding   [sha256.Size]byte
	in        *pdp.Input // the call as decided, identity applied
	requester *decisionlog.Caller
	corr      string
	requestID string // decision that opened it
	expires   time.Time
	status    string
	approver  string
	via       string
	refusals  int
}

type approvalStore struct {
	cfg ApprovalConfig
	key []byte // signs links; per process, like the approvals themselves

	mu    sync.Mutex
	byID  map[string]*pendingApproval
	links map[string]time.Time // used link nonces, until their expiry
}

func newApprovalStore(cfg ApprovalConfig) *approvalStore {
	if cfg.TTL <= 0 {
		cfg.TTL = DefaultApprovalTTL
	}
	if cfg.LinkTTL <= 0 {
		cfg.LinkTTL = DefaultApprovalLinkTTL
	}
	if cfg.MaxPending <= 0 {
		cfg.MaxPending = DefaultMaxPendingApprovals
	}
	key := make([]byte, 32)
	_, _ = rand.Read(key) // crypto/rand.Read never fails on supported platforms
	return &approvalStore{cfg: cfg, key: key, byID: map[string]*pendingApproval{}, links: map[string]time.Time{}}
}

// callBinding is what an approval is bound to: every part of the call the policy decides on
// except the subject's properties (which come from the same token or body as the subject).
func callBinding(in *pdp.Input, cl *decisionlog.Caller) [sha256.Size]byte {
	agent := ""
	if in.Agent != nil {
		agent = in.Agent.Type + "\x00" + in.Agent.ID
	}
	raw, _ := json.Marshal(struct {
		Subject    [2]string           `json:"subject"`
		Agent      string              `json:"agent"`
		Delegation pdp.Delegation      `json:"delegation"`
		Action     pdp.Action          `json:"action"`
		Resource   pdp.Entity          `json:"resource"`
		Caller     *decisionlog.Caller `json:"caller"`
	}{[2]string{in.Subject.Type, in.Subject.ID}, agent, in.Delegation, in.Action, in.Resource, cl})
	return sha256.Sum256(raw)
}

// argumentsSHA256 names the arguments an approver is shown (encoding/json sorts map keys).
func argumentsSHA256(in *pdp.Input) string {
	raw, _ := json.Marshal(in.Action.Properties["arguments"])
	sum := sha256.Sum256(raw)
	return hex.EncodeToString(sum[:])
}

// serverControlledField names a field of in that only the server may set, or "".
func serverControlledField(in *pdp.Input) string {
	if _, ok := in.Resource.Properties["approval"]; ok {
		return "resource.properties.approval"
	}
	if _, ok := in.Context["approval"]; ok {
		return "context.approval"
	}
	if in.Approval != nil {
		return "approval"
	}
	return ""
}

// approvalEvidence is the pipeline's approval step, for a call whose identity is applied: it
// refuses caller-sent evidence and, when the request names an approval, verifies it against the
// call. A granted approval is used up and its evidence put in in.Approval; a pending one for the
// same call is returned, so that the answer names it again rather than opening another.
func (x *exchange) approvalEvidence(in *pdp.Input) (*pendingApproval, *apiError) {
	if f := serverControlledField(in); f != "" {
		return nil, errorf(CodeServerControlledField, f+" is set by custody, never by a caller: approvals are given out of band (see "+EndpointApprovals+")")
	}
	id := x.c.Request().Header.Get(HeaderApprovalID)
	if id == "" {
		return nil, nil
	}
	if x.endpoint != EndpointAuthorize {
		return nil, errorf(CodeApprovalInvalid, HeaderApprovalID+" is read by "+EndpointAuthorize+" only")
	}
	st := x.s.approvals
	want := callBinding(in, x.caller.ref())
	now := x.s.now()
	st.mu.Lock()
	defer st.mu.Unlock()
	p := st.byID[id]
	switch {
	case p == nil:
		return nil, errorf(CodeApprovalInvalid, "approval "+printableID(id)+" is unknown (never opened, or forgotten after expiry or a restart)")
	case !hmac.Equal(p.binding[:], want[:]):
		return nil, errorf(CodeApprovalInvalid, "approval "+id+" was opened for another call (subject, agent, tool, server, arguments, resource or caller differ)")
	case now.After(p.expires):
		return nil, errorf(CodeApprovalInvalid, "approval "+id+" expired")
	case p.status == decisionlog.ApprovalPending || p.status == statusAnswering:
		return p, nil
	case p.status == decisionlog.ApprovalDeclined:
		return nil, errorf(CodeApprovalInvalid, "approval "+id+" was declined by "+p.approver)
	case p.status != decisionlog.ApprovalApproved:
		return nil, errorf(CodeApprovalInvalid, "approval "+id+" was already used")
	}
	p.status = decisionlog.ApprovalUsed
	in.Approval = map[string]any{"approved": true, "approver": p.approver, "approved_via": p.via, "approval_id": p.id}
	return p, nil
}

// openApproval sets rec's approval part after the decision: the evidence a retried call carried,
// else, for a require_approval allow of /v1/authorize, a pending approval (the same one when
// the call named it while still pending).
func (x *exchange) openApproval(rec *decisionlog.Record, obligations map[string]any, in *pdp.Input, p *pendingApproval) {
	st := x.s.approvals
	if p != nil && p.status == decisionlog.ApprovalUsed {
		rec.Approval = &decisionlog.Approval{ID: p.id, Status: decisionlog.ApprovalUsed, Approver: p.approver, ApprovedVia: p.via, RequestDecisionID: p.requestID}
		return
	}
	if required, _ := obligations["require_approval"].(bool); !required || !rec.Allow || x.endpoint != EndpointAuthorize {
		return
	}
	if p == nil {
		p = st.open(in, x.caller.ref(), rec, x.s.now())
		if p == nil {
			x.s.logger.Warn().Str("decision_id", rec.DecisionID).Msg("too many pending approvals; this one opens none")
			return
		}
	}
	exp := p.expires.UTC()
	rec.Approval = &decisionlog.Approval{ID: p.id, Status: decisionlog.ApprovalPending, ExpiresAt: &exp, RequestDecisionID: p.requestID}
}

// forgetApproval drops the approval rec opened when rec could not be recorded.
func (s *Server) forgetApproval(rec *decisionlog.Record) {
	if rec.Approval == nil || rec.Approval.Status != decisionlog.ApprovalPending || rec.Approval.RequestDecisionID != rec.DecisionID {
		return
	}
	s.approvals.mu.Lock()
	delete(s.approvals.byID, rec.Approval.ID)
	s.approvals.mu.Unlock()
}

func (st *approvalStore) open(in *pdp.Input, cl *decisionlog.Caller, rec *decisionlog.Record, now time.Time) *pendingApproval {
	cp := *in
	p := &pendingApproval{
		id: randomID(), binding: callBinding(in, cl), in: &cp, requester: cl, corr: rec.CorrelationID,
		requestID: rec.DecisionID, expires: now.Add(st.cfg.TTL), status: decisionlog.ApprovalPending,
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	if len(st.byID) >= st.cfg.MaxPending {
		for id, q := range st.byID {
			if now.After(q.expires) {
				delete(st.byID, id)
			}
		}
		if len(st.byID) >= st.cfg.MaxPending {
			return nil
		}
	}
	st.byID[p.id] = p
	return p
}

func randomID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return "ap_" + hex.EncodeToString(b)
}

// printableID quotes an ID a caller sent, bounded, for a message.
func printableID(id string) string {
	if len(id) > 64 {
		id = id[:64] + "..."
	}
	return strconv.Quote(id)
}

func (s *Server) routeApprovals(e *echo.Echo) {
	e.GET(EndpointApprovals+"/:id", s.getApproval)
	e.POST(EndpointApprovals+"/:id", s.answerApproval)
	e.POST(EndpointApprovals+"/:id/link", s.approvalLink)
	e.GET(EndpointApprovals+"/:id/signed", s.signedApprovalPage)
	e.POST(EndpointApprovals+"/:id/signed", s.answerSignedApproval)
}

// approverName authenticates an approver by an approver key, in X-API-Key or as a bearer token.
func (s *Server) approverName(c echo.Context) (string, *apiError) {
	req := c.Request()
	key := req.Header.Get(HeaderAPIKey)
	if h := req.Header.Get("Authorization"); key == "" && h != "" {
		scheme, value, ok := strings.Cut(h, " ")
		if !ok || !strings.EqualFold(scheme, "Bearer") || strings.TrimSpace(value) == "" {
			return "", errorf(CodeInvalidToken, "Authorization header: want \"Bearer <approver key>\"")
		}
		key = strings.TrimSpace(value)
	}
	switch {
	case key == "":
		return "", errorf(CodeUnauthenticated, "an approver key is required (X-API-Key or Authorization: Bearer)")
	case identity.LooksLikeJWT(key):
		return "", errorf(CodeInvalidCredentials, "approvers authenticate with an approver key, not a token")
	case s.approvals.cfg.Approvers == nil:
		return "", errorf(CodeInvalidCredentials, "no approver keys are configured (--approver-keys-file)")
	}
	name, ok := s.approvals.cfg.Approvers.Lookup(key)
	if !ok {
		return "", errorf(CodeInvalidCredentials, "not an approver key")
	}
	return name, nil
}

// selfApproval says why approver may not answer p, or "": an approver is never the requesting
// subject, agent or caller.
func selfApproval(p *pendingApproval, approver string) string {
	switch {
	case approver == p.in.Subject.ID:
		return "the approver is the call's subject"
	case p.in.Agent != nil && approver == p.in.Agent.ID:
		return "the approver is the call's agent"
	case p.requester != nil && approver == p.requester.ID:
		return "the approver is the caller that asked"
	}
	return ""
}

type approvalView struct {
	ID                string         `json:"approval_id"`
	Status            string         `json:"status"`
	ExpiresAt         time.Time      `json:"expires_at"`
	CorrelationID     string         `json:"correlation_id"`
	RequestDecisionID string         `json:"request_decision_id"`
	Subject           pdp.Entity     `json:"subject"`
	Agent             *pdp.Agent     `json:"agent,omitempty"`
	Tool              string         `json:"tool"`
	Server            any            `json:"server,omitempty"`
	Arguments         map[string]any `json:"arguments"`
	ArgumentsSHA256   string         `json:"arguments_sha256"`
	Resource          pdp.Entity     `json:"resource"`
	Verified          bool           `json:"delegation_verified"`
	Approver          string         `json:"approver,omitempty"`
	ApprovedVia       string         `json:"approved_via,omitempty"`
	DecisionID        string         `json:"decision_id,omitempty"` // the answer's record
}

// view is what an approver is shown: the call with secrets masked, as the stream has it.
func (p *pendingApproval) view() approvalView {
	args, _ := p.in.Action.Properties["arguments"].(map[string]any)
	v := approvalView{
		ID: p.id, Status: p.status, ExpiresAt: p.expires.UTC(), CorrelationID: p.corr, RequestDecisionID: p.requestID,
		Subject: pdp.Entity{Type: p.in.Subject.Type, ID: p.in.Subject.ID}, Tool: p.in.Action.Name,
		Server: p.in.Action.Properties["server"], Arguments: decisionlog.MaskMap(args), ArgumentsSHA256: argumentsSHA256(p.in),
		Resource: maskEntity(p.in.Resource), Verified: p.in.Delegation.Verified, Approver: p.approver, ApprovedVia: p.via,
	}
	if v.Status == statusAnswering {
		v.Status = decisionlog.ApprovalPending
	}
	if p.in.Agent != nil {
		v.Agent = &pdp.Agent{ID: p.in.Agent.ID, Type: p.in.Agent.Type}
	}
	if v.Arguments == nil {
		v.Arguments = map[string]any{}
	}
	return v
}

func (s *Server) lookupApproval(c echo.Context) (*pendingApproval, *apiError) {
	id := c.Param("id")
	s.approvals.mu.Lock()
	p := s.approvals.byID[id]
	s.approvals.mu.Unlock()
	if p == nil {
		return nil, errorf(CodeNotFound, "approval "+printableID(id)+" is unknown (never opened, or forgotten after expiry or a restart)")
	}
	return p, nil
}

// getApproval serves GET /v1/approvals/{id} to an approver: what the call is.
func (s *Server) getApproval(c echo.Context) error {
	if _, aerr := s.approverName(c); aerr != nil {
		return aerr
	}
	p, aerr := s.lookupApproval(c)
	if aerr != nil {
		return aerr
	}
	s.approvals.mu.Lock()
	v := p.view()
	s.approvals.mu.Unlock()
	return c.JSON(http.StatusOK, v)
}

type answerBody struct {
	Decision string `json:"decision"` // approve or deny
	Via      string `json:"via,omitempty"`
}

// answerApproval serves POST /v1/approvals/{id}: {"decision":"approve"|"deny"} by an approver
// key holder, or with "via":"mcp_elicitation" by the very caller that asked, relaying its MCP
// client's answer.
func (s *Server) answerApproval(c echo.Context) error {
	p, aerr := s.lookupApproval(c)
	if aerr != nil {
		return aerr
	}
	var b answerBody
	if aerr := s.readAnswer(c, &b); aerr != nil {
		return aerr
	}
	var who string
	var ref *decisionlog.Caller
	switch b.Via {
	case ApprovedViaElicitation:
		cl, aerr := s.authenticate(c)
		if aerr != nil {
			return s.refuseAnswer(c, p, nil, aerr)
		}
		ref = cl.ref()
		if !sameCaller(ref, p.requester) {
			return s.refuseAnswer(c, p, ref, errorf(CodeNotApprover, "only the caller that asked may relay its MCP client's answer"))
		}
		who = p.in.Subject.ID
		if ref != nil {
			who = ref.ID
		}
	case "", ApprovedViaCLI:
		b.Via = ApprovedViaCLI
		name, aerr := s.approverName(c)
		if aerr != nil {
			return s.refuseAnswer(c, p, nil, aerr)
		}
		ref = &decisionlog.Caller{Method: "approver_key", ID: name}
		if why := selfApproval(p, name); why != "" {
			return s.refuseAnswer(c, p, ref, errorf(CodeSelfApproval, "an agent cannot approve its own call: "+why))
		}
		who = name
	default:
		return errorf(CodeInvalidRequest, "via: want \""+ApprovedViaCLI+"\" or \""+ApprovedViaElicitation+"\"; signed links use "+EndpointApprovals+"/{id}/signed")
	}
	return s.answer(c, p, ref, who, b.Via, b.Decision == "approve")
}

func (s *Server) readAnswer(c echo.Context, b *answerBody) *apiError {
	if err := checkContentType(c.Request()); err != nil {
		return err
	}
	body, aerr := readBody(c.Request(), s.maxBody)
	if aerr != nil {
		return aerr
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(b); err != nil {
		return errorf(CodeInvalidJSON, "approval answer: want {\"decision\":\"approve\"|\"deny\"}: "+err.Error())
	}
	if dec.More() {
		return errorf(CodeInvalidJSON, "unexpected data after the JSON object")
	}
	if b.Decision != "approve" && b.Decision != "deny" {
		return errorf(CodeInvalidRequest, "decision: want \"approve\" or \"deny\"")
	}
	return nil
}

func sameCaller(a, b *decisionlog.Caller) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	return a.Method == b.Method && a.ID == b.ID
}

// answer records approver's answer to p and, once recorded, applies it.
func (s *Server) answer(c echo.Context, p *pendingApproval, ref *decisionlog.Caller, approver, via string, approve bool) error {
	st := s.approvals
	st.mu.Lock()
	switch {
	case s.now().After(p.expires):
		st.mu.Unlock()
		return s.refuseAnswer(c, p, ref, errorf(CodeApprovalClosed, "approval "+p.id+" expired"))
	case p.status != decisionlog.ApprovalPending:
		st.mu.Unlock()
		return s.refuseAnswer(c, p, ref, errorf(CodeApprovalClosed, "approval "+p.id+" was already answered"))
	}
	p.status = statusAnswering
	st.mu.Unlock()

	status, reason := decisionlog.ApprovalApproved, ReasonApproved
	if !approve {
		status, reason = decisionlog.ApprovalDeclined, ReasonApprovalDeclined
	}
	rec := s.approvalRecord(c, p, ref, approve, reason, "")
	rec.Approval = &decisionlog.Approval{ID: p.id, Status: status, Approver: approver, ApprovedVia: via, RequestDecisionID: p.requestID}
	aerr := s.record(c, rec)
	st.mu.Lock()
	if aerr != nil {
		p.status = decisionlog.ApprovalPending
		st.mu.Unlock()
		return aerr
	}
	p.status, p.approver, p.via = status, approver, via
	v := p.view()
	st.mu.Unlock()
	v.DecisionID = rec.DecisionID
	return c.JSON(http.StatusOK, v)
}

// refuseAnswer records a refused answer to p (up to maxRecordedRefusals) and returns cause.
func (s *Server) refuseAnswer(c echo.Context, p *pendingApproval, ref *decisionlog.Caller, cause *apiError) error {
	s.approvals.mu.Lock()
	p.refusals++
	recordIt := p.refusals <= maxRecordedRefusals
	s.approvals.mu.Unlock()
	if recordIt {
		reason := refusalReason(cause.Code)
		if cause.Code == CodeApprovalClosed && strings.HasSuffix(cause.Message, "expired") {
			reason = ReasonApprovalExpired
		} else if cause.Code == CodeApprovalClosed {
			reason = ReasonApprovalAnswered
		}
		rec := s.approvalRecord(c, p, ref, false, reason, cause.Message)
		rec.Approval = &decisionlog.Approval{ID: p.id, Status: decisionlog.ApprovalRefused, RequestDecisionID: p.requestID}
		if ref != nil {
			rec.Approval.Approver = ref.ID
		}
		if err := s.record(c, rec); err != nil {
			return err
		}
	}
	return cause
}

// approvalRecord is the record of an answer to p: the call it is about, under the call's
// correlation ID, with the answering caller. Allow says the approval was granted.
func (s *Server) approvalRecord(c echo.Context, p *pendingApproval, ref *decisionlog.Caller, granted bool, reason, msg string) *decisionlog.Record {
	rid, _ := c.Get(HeaderRequestID).(string)
	rec := s.baseRecord(EndpointApprovals, p.in, requestMeta{requestID: rid, correlationID: p.corr})
	rec.Allow, rec.Reasons, rec.Error, rec.Caller = granted, []string{reason}, msg, ref
	return rec
}

// Signed links. An approver mints one for a pending approval and hands it to a human who holds
// no key (a chat message, an email); the link is the credential: HMAC-signed with a per-process
// key, bound to the approval and the approver who minted it, single use, expiring within
// LinkTTL and never after the approval.

func (st *approvalStore) linkMAC(id, by string, exp int64, nonce string) string {
	m := hmac.New(sha256.New, st.key)
	m.Write([]byte("custody.approval.link.v1\n" + id + "\n" + by + "\n" + strconv.FormatInt(exp, 10) + "\n" + nonce))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// approvalLink serves POST /v1/approvals/{id}/link to an approver: a signed link to answer it.
func (s *Server) approvalLink(c echo.Context) error {
	p, aerr := s.lookupApproval(c)
	if aerr != nil {
		return aerr
	}
	name, aerr := s.approverName(c)
	if aerr != nil {
		return aerr
	}
	if why := selfApproval(p, name); why != "" {
		return errorf(CodeSelfApproval, "an agent cannot approve its own call: "+why)
	}
	st := s.approvals
	now := s.now()
	exp := now.Add(st.cfg.LinkTTL)
	if p.expires.Before(exp) {
		exp = p.expires
	}
	if !now.Before(exp) {
		return errorf(CodeApprovalClosed, "approval "+p.id+" expired")
	}
	nonce := strings.TrimPrefix(randomID(), "ap_")
	q := url.Values{"by": {name}, "exp": {strconv.FormatInt(exp.Unix(), 10)}, "nonce": {nonce}}
	q.Set("sig", st.linkMAC(p.id, name, exp.Unix(), nonce))
	return c.JSON(http.StatusOK, map[string]any{
		"approval_id": p.id,
		"url":         s.baseURL(c) + EndpointApprovals + "/" + url.PathEscape(p.id) + "/signed?" + q.Encode(),
		"expires_at":  exp.UTC(),
	})
}

// checkLink verifies the signed link of the request; it does not use it up.
func (s *Server) checkLink(c echo.Context, p *pendingApproval) (by, nonce string, exp time.Time, aerr *apiError) {
	q := c.Request().URL.Query()
	by, nonce = q.Get("by"), q.Get("nonce")
	n, err := strconv.ParseInt(q.Get("exp"), 10, 64)
	if err != nil || by == "" || nonce == "" || !hmac.Equal([]byte(q.Get("sig")), []byte(s.approvals.linkMAC(p.id, by, n, nonce))) {
		return "", "", time.Time{}, errorf(CodeApprovalLinkInvalid, "the approval link is not one custody signed for this approval")
	}
	exp = time.Unix(n, 0)
	if !s.now().Before(exp) {
		return "", "", time.Time{}, errorf(CodeApprovalLinkInvalid, "the approval link expired")
	}
	return by, nonce, exp, nil
}

var linkPage = template.Must(template.New("approval").Parse(`<!doctype html>
<html><head><meta charset="utf-8"><title>custody approval {{.V.ID}}</title></head><body>
<h1>Approve this call?</h1>
<p>Agent <code>{{if .V.Agent}}{{.V.Agent.ID}}{{end}}</code> acting for <code>{{.V.Subject.ID}}</code>
(delegation verified: {{.V.Verified}}) wants to call <code>{{.V.Tool}}</code>{{if .V.Server}} on <code>{{.V.Server}}</code>{{end}}
with arguments <code>{{.Args}}</code> (sha256 {{.V.ArgumentsSHA256}}) on <code>{{.V.Resource.Type}} {{.V.Resource.ID}}</code>.</p>
<p>Status: {{.V.Status}}, until {{.V.ExpiresAt}}.</p>
<form method="post" action="{{.Action}}"><input type="hidden" name="decision" value="approve"><button>Approve</button></form>
<form method="post" action="{{.Action}}"><input type="hidden" name="decision" value="deny"><button>Deny</button></form>
</body></html>`))

// signedApprovalPage serves GET /v1/approvals/{id}/signed: the call and two buttons. A GET
// never answers, so that a link previewer cannot use the link up.
func (s *Server) signedApprovalPage(c echo.Context) error {
	p, aerr := s.lookupApproval(c)
	if aerr != nil {
		return aerr
	}
	if _, _, _, aerr := s.checkLink(c, p); aerr != nil {
		return aerr
	}
	s.approvals.mu.Lock()
	v := p.view()
	s.approvals.mu.Unlock()
	args, _ := json.Marshal(v.Arguments)
	var buf bytes.Buffer
	if err := linkPage.Execute(&buf, map[string]any{"V": v, "Args": string(args), "Action": c.Request().URL.RequestURI()}); err != nil {
		return errorf(CodeInternal, "render approval page")
	}
	c.Response().Header().Set("Cache-Control", "no-store")
	c.Response().Header().Set("Content-Security-Policy", "default-src 'none'; form-action 'self'")
	return c.HTMLBlob(http.StatusOK, buf.Bytes())
}

// answerSignedApproval serves POST /v1/approvals/{id}/signed?…&decision=approve|deny (or the
// decision as a form field): the link's holder answers, as the approver who minted it.
func (s *Server) answerSignedApproval(c echo.Context) error {
	p, aerr := s.lookupApproval(c)
	if aerr != nil {
		return aerr
	}
	by, nonce, exp, aerr := s.checkLink(c, p)
	ref := &decisionlog.Caller{Method: "signed_url", ID: by}
	if aerr != nil {
		return s.refuseAnswer(c, p, nil, aerr)
	}
	decision := c.QueryParam("decision")
	if decision == "" {
		decision = c.FormValue("decision")
	}
	if decision != "approve" && decision != "deny" {
		return errorf(CodeInvalidRequest, "decision: want \"approve\" or \"deny\"")
	}
	st := s.approvals
	st.mu.Lock()
	now := s.now()
	for n, e := range st.links {
		if now.After(e) {
			delete(st.links, n)
		}
	}
	_, used := st.links[nonce]
	if !used {
		st.links[nonce] = exp
	}
	st.mu.Unlock()
	if used {
		return s.refuseAnswer(c, p, ref, errorf(CodeApprovalLinkInvalid, "the approval link was already used"))
	}
	return s.answer(c, p, ref, by, ApprovedViaSignedURL, decision == "approve")
}

// baseURL is the public URL when configured, else the scheme and host the client reached.
func (s *Server) baseURL(c echo.Context) string {
	if s.publicURL != "" {
		return s.publicURL
	}
	r := c.Request()
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	return scheme + "://" + r.Host
}
