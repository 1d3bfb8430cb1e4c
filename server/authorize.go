package server

import (
	"errors"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/rs/zerolog"

	"github.com/custodyhq/custody/agentcall"
	"github.com/custodyhq/custody/decisionlog"
	"github.com/custodyhq/custody/pdp"
)

// EndpointAuthorize names the native endpoint in records.
const EndpointAuthorize = "/v1/authorize"

// authorizeResponse is the answer of POST /v1/authorize.
type authorizeResponse struct {
	DecisionID    string         `json:"decision_id"`
	CorrelationID string         `json:"correlation_id"`
	Allow         bool           `json:"allow"`
	Reasons       []string       `json:"reasons"`
	Obligations   map[string]any `json:"obligations"`
	Policy        policyBody     `json:"policy"`
	// Receipt is the signed receipt of an allow, also in the Custody-Receipt header.
	Receipt string `json:"receipt,omitempty"`
	// Approval is the approval a require_approval allow opened (its ID, to retry with in
	// Custody-Approval-ID once approved), or the approval the call carried.
	Approval *decisionlog.Approval `json:"approval,omitempty"`
}

type policyBody struct {
	Revision string `json:"revision"`
}

// requestMeta is what every decision takes from the HTTP request rather than its body.
type requestMeta struct {
	requestID     string
	correlationID string
	trace         traceContext
}

func (s *Server) authorize(c echo.Context) error {
	var ar *authorizeRequest
	var call *agentcall.Call
	x, aerr := s.begin(c, EndpointAuthorize, func(body []byte) (decoded, *apiError) {
		var err *apiError
		if ar, err = decodeAuthorize(body); err != nil {
			return decoded{}, err
		}
		call = nativeCall(ar) // mapped once: the claim of a refused caller, else the call decided
		return decoded{correlationID: ar.CorrelationID, claimed: call}, nil
	})
	if aerr != nil {
		return aerr
	}
	aud, aerr := receiptAudience(c)
	if aerr != nil {
		return aerr
	}
	o := x.decideCall(call, ar.User != nil)
	if err := o.answerError(); err != nil {
		return err
	}
	resp := &authorizeResponse{
		DecisionID:    o.rec.DecisionID,
		CorrelationID: o.rec.CorrelationID,
		Allow:         o.rec.Allow,
		Reasons:       o.rec.Reasons,
		Obligations:   orEmpty(o.obligations),
		Policy:        policyBody{Revision: o.rec.Policy.Revision},
		Receipt:       s.receiptFor(c, o.rec, receiptCall{server: ar.Tool.Server, args: ar.Tool.Arguments, audience: aud}),
		Approval:      o.rec.Approval,
	}
	return s.answerJSON(c, http.StatusOK, resp, resp.appendJSON)
}

// appendJSON appends r as encoding/json spells it (the members in order, omitempty as tagged),
// without reflection: see answerJSON.
func (r *authorizeResponse) appendJSON(b []byte) ([]byte, error) {
	b = append(b, `{"decision_id":`...)
	b = decisionlog.AppendJSONString(b, r.DecisionID)
	b = append(b, `,"correlation_id":`...)
	b = decisionlog.AppendJSONString(b, r.CorrelationID)
	b = append(b, `,"allow":`...)
	b = strconv.AppendBool(b, r.Allow)
	b = append(b, `,"reasons":`...)
	b = decisionlog.AppendJSONStrings(b, r.Reasons)
	b = append(b, `,"obligations":`...)
	b, err := decisionlog.AppendJSON(b, r.Obligations)
	if err != nil {
		return nil, err
	}
	b = append(b, `,"policy":{"revision":`...)
	b = decisionlog.AppendJSONString(b, r.Policy.Revision)
	b = append(b, '}')
	if r.Receipt != "" {
		b = append(b, `,"receipt":`...)
		b = decisionlog.AppendJSONString(b, r.Receipt)
	}
	if r.Approval != nil {
		b = append(b, `,"approval":`...)
		if b, err = decisionlog.AppendJSON(b, r.Approval); err != nil {
			return nil, err
		}
	}
	return append(b, '}'), nil
}

// answerJSON answers v as c.JSON(code, v) does, byte for byte and header for header, from
// appendJSON's encoding of it: echo's c.JSON encodes through encoding/json's reflection, about
// 1.5% of a decision's CPU. echo's serializer is a json.Encoder (HTML characters escaped, a
// newline after the value) written in one Write, as Blob writes. Pretty answers (?pretty, or
// echo's Debug), and a value appendJSON cannot encode, go to c.JSON itself.
// TestAnswersMatchEcho and FuzzAuthorizeAnswer hold the two to each other.
func (s *Server) answerJSON(c echo.Context, code int, v any, appendJSON func([]byte) ([]byte, error)) error {
	if s.echoJSON || c.Echo().Debug || (c.Request().URL.RawQuery != "" && c.QueryParams().Has("pretty")) {
		return c.JSON(code, v)
	}
	buf := answerBufs.Get().(*[]byte)
	defer func() {
		if cap(*buf) <= maxPooledAnswer {
			answerBufs.Put(buf)
		}
	}()
	b, err := appendJSON((*buf)[:0])
	if err != nil {
		return c.JSON(code, v)
	}
	*buf = append(b, '\n')
	// The response writer does not keep what it is given (io.Writer), so the buffer is free
	// again once Blob returns.
	return c.Blob(code, echo.MIMEApplicationJSON, *buf)
}

// answerBufs holds the buffers answers are encoded in; an answer with its receipt is ~1.5 KiB.
var answerBufs = sync.Pool{New: func() any { b := make([]byte, 0, 2048); return &b }}

// maxPooledAnswer bounds the buffers kept for reuse: a rare large answer is not kept.
const maxPooledAnswer = 64 << 10

// meta settles the request's IDs. The correlation ID comes from the body, else X-Correlation-ID,
// else the traceparent trace ID, else is minted; it is echoed in X-Correlation-ID.
func (s *Server) meta(c echo.Context, bodyCorrelationID *string) (requestMeta, *apiError) {
	h := c.Request().Header
	m := requestMeta{requestID: c.Get(HeaderRequestID).(string)}
	m.trace, _ = parseTraceparent(h.Get(HeaderTraceparent))
	switch hc := h.Get(HeaderCorrelationID); {
	case bodyCorrelationID != nil:
		m.correlationID = *bodyCorrelationID
	case hc != "":
		if err := checkCorrelationID(HeaderCorrelationID+" header", hc); err != nil {
			return m, err
		}
		m.correlationID = hc
	case m.trace.TraceID != "":
		m.correlationID = m.trace.TraceID
	default:
		m.correlationID = s.newID()
	}
	c.Response().Header().Set(HeaderCorrelationID, m.correlationID)
	return m, nil
}

// nativeCall is the call of a native request: user -> subject (the agent itself when it acts
// for nobody), tool -> action, agent -> agent.
func nativeCall(r *authorizeRequest) *agentcall.Call {
	call := &agentcall.Call{
		Agent:    &pdp.Agent{ID: r.Agent.ID, Type: r.Agent.Type, Properties: r.Agent.Properties},
		Action:   agentcall.ToolAction(r.Tool.Name, r.Tool.Server, r.Tool.Arguments),
		Resource: agentcall.ToolResource(r.Tool.Name),
		Context:  r.Context,
	}
	if r.User != nil {
		call.Subject = &pdp.Entity{Type: r.User.Type, ID: r.User.ID, Properties: r.User.Properties}
	}
	if r.Resource != nil {
		call.Resource = pdp.Entity{Type: r.Resource.Type, ID: r.Resource.ID, Properties: r.Resource.Properties}
	}
	if r.Task != nil {
		call.Task = r.Task.call()
	}
	if r.CorrelationID != nil {
		call.CorrelationID = *r.CorrelationID
	}
	return call
}

// decide evaluates in and builds its record.
func (s *Server) decide(c echo.Context, endpoint string, in *pdp.Input, m requestMeta) (*decisionlog.Record, pdp.Decision) {
	rec := s.baseRecord(endpoint, in, m)
	d := s.decider.Decide(c.Request().Context(), in)
	s.metrics.evalDuration.Observe(d.Duration.Seconds())
	rec.Allow = d.Allow
	rec.Reasons = d.Reasons
	rec.Obligations = d.Obligations
	rec.Policy = decisionlog.PolicyRef{Query: d.Policy.Query, Revision: d.Policy.Revision}
	rec.EvalNS = d.Duration.Nanoseconds()
	if rec.Reasons == nil {
		rec.Reasons = []string{}
	}
	if d.Err != nil {
		rec.Error = d.Err.Error()
		s.metrics.policyErrors.Inc()
	}
	return rec, d
}

// baseRecord is the record of a request before its outcome, with a fresh decision ID. It holds
// masked copies of free-form properties: the policy sees secrets the caller sent, the stream never
// does. A map with nothing to mask is shared rather than copied (decisionlog.MaskMapShared): the
// input is decoded for this request alone (or, for a token's claims, built once and only read),
// and neither the policy, nor applyIdentity (which replaces maps, never writes to them), nor the
// record's readers write to it.
func (s *Server) baseRecord(endpoint string, in *pdp.Input, m requestMeta) *decisionlog.Record {
	rec := &decisionlog.Record{
		Schema:        decisionlog.SchemaDecisionV1,
		DecisionID:    s.newID(),
		Timestamp:     s.now().UTC(),
		CorrelationID: m.correlationID,
		RequestID:     m.requestID,
		TraceID:       m.trace.TraceID,
		SpanID:        m.trace.SpanID,
		Endpoint:      endpoint,
		Subject:       maskEntity(in.Subject),
		Action:        pdp.Action{Name: in.Action.Name, Properties: decisionlog.MaskMapShared(in.Action.Properties)},
		Resource:      maskEntity(in.Resource),
		Delegation:    in.Delegation,
		Task:          in.Task,
		Reasons:       []string{},
		PDP:           s.instance,
	}
	if in.Agent != nil {
		rec.Agent = &pdp.Agent{ID: in.Agent.ID, Type: in.Agent.Type, Properties: decisionlog.MaskMapShared(in.Agent.Properties)}
	}
	return rec
}

// record makes rec durable. If it cannot, it returns the error that answers the call as a
// 503 deny.
func (s *Server) record(c echo.Context, rec *decisionlog.Record) *apiError {
	start := time.Now()
	err := s.publisher.Publish(c.Request().Context(), rec)
	s.metrics.recordDuration.Observe(time.Since(start).Seconds())
	if err != nil {
		s.metrics.logFailures.Inc()
		recordIDs(s.logger.Error(), rec).Err(err).Bool("policy_allow", rec.Allow).Msg("decision not recorded; answering deny")
		e := errorf(CodeDecisionLogUnavailable, "the decision could not be recorded on the decision stream, so it is a deny; retry later")
		if errors.Is(err, decisionlog.ErrTooLarge) {
			s.metrics.tooLarge.Inc()
			e = errorf(CodeDecisionRecordTooLarge, "the decision's record is larger than the decision stream takes in one message, so it is a deny; send a smaller request")
		}
		e.denied = &deniedDecision{decisionID: rec.DecisionID, correlationID: rec.CorrelationID}
		return e
	}
	s.recent.put(rec) // no-op for executions
	s.metrics.decisions.WithLabelValues(rec.Endpoint, rec.Outcome()).Inc()
	if e := s.logger.Debug(); e.Enabled() {
		recordIDs(e, rec).Str("endpoint", rec.Endpoint).Str("agent", rec.AgentID()).Str("action", rec.Action.Name).
			Bool("allow", rec.Allow).Strs("reasons", rec.Reasons).Str("revision", rec.Policy.Revision).Msg("decision")
	}
	if rec.Error != "" {
		recordIDs(s.logger.Warn(), rec).Str("policy_error", rec.Error).Msg("policy evaluation failed; denied")
	}
	return nil
}

// recordIDs adds the IDs that tie a log line to its record. Only lines that are written pay for
// them: a child logger built for every request cost an allocation on every decision.
func recordIDs(e *zerolog.Event, rec *decisionlog.Record) *zerolog.Event {
	return e.Str("request_id", rec.RequestID).Str("correlation_id", rec.CorrelationID).Str("decision_id", rec.DecisionID)
}

func maskEntity(e pdp.Entity) pdp.Entity {
	return pdp.Entity{Type: e.Type, ID: e.ID, Properties: decisionlog.MaskMapShared(e.Properties)}
}

func orEmpty(m map[string]any) map[string]any {
	if m == nil {
		return map[string]any{}
	}
	return m
}
