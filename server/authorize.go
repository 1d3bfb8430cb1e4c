package server

import (
	"errors"
	"net/http"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/rs/zerolog"

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
	req := c.Request()
	if err := checkContentType(req); err != nil {
		return err
	}
	body, aerr := readBody(req, s.maxBody)
	if aerr != nil {
		return aerr
	}
	cl, authErr := s.authenticate(c)
	ar, aerr := decodeAuthorize(body)
	if authErr != nil {
		// Refused before deciding; record the attempt with whatever the body claimed.
		in := &pdp.Input{}
		var corr *string
		if aerr == nil {
			corr = ar.CorrelationID
		}
		meta, merr := s.meta(c, corr)
		if merr != nil {
			meta.correlationID = s.newID()
		}
		if aerr == nil {
			in = s.nativeInput(ar, meta.correlationID)
		}
		s.recordAttempt(c, EndpointAuthorize, in, meta, nil, authErr)
		return authErr
	}
	if aerr != nil {
		return aerr
	}
	meta, aerr := s.meta(c, ar.CorrelationID)
	if aerr != nil {
		return aerr
	}
	in := s.nativeInput(ar, meta.correlationID)
	if err := applyIdentity(in, cl, ar.User != nil); err != nil {
		s.recordAttempt(c, EndpointAuthorize, in, meta, cl, err)
		return err
	}
	rec, d := s.decide(c, EndpointAuthorize, in, meta)
	rec.Caller = cl.ref()
	if err := s.sealIntent(c, rec, ar.Task.intent()); err != nil {
		return err
	}
	if err := s.record(c, rec); err != nil {
		return err
	}
	return c.JSON(http.StatusOK, authorizeResponse{
		DecisionID:    rec.DecisionID,
		CorrelationID: rec.CorrelationID,
		Allow:         rec.Allow,
		Reasons:       rec.Reasons,
		Obligations:   orEmpty(d.Obligations),
		Policy:        policyBody{Revision: rec.Policy.Revision},
		Receipt:       s.receiptFor(c, rec),
	})
}

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

// nativeInput maps the agent-shaped request onto the policy input: user -> subject (the agent
// itself when it acts for nobody), tool -> action, agent -> agent.
func (s *Server) nativeInput(r *authorizeRequest, correlationID string) *pdp.Input {
	in := &pdp.Input{
		Agent:         &pdp.Agent{ID: r.Agent.ID, Type: r.Agent.Type, Properties: r.Agent.Properties},
		Context:       r.Context,
		Delegation:    pdp.Delegation{Verified: false, Chain: []any{}},
		CorrelationID: correlationID,
	}
	if in.Agent.Type == "" {
		in.Agent.Type = "agent"
	}
	if r.User != nil {
		in.Subject = pdp.Entity{Type: r.User.Type, ID: r.User.ID, Properties: r.User.Properties}
		if in.Subject.Type == "" {
			in.Subject.Type = "user"
		}
		// Asserted, not proven: the chain says who claims to act for whom.
		in.Delegation.Chain = []any{
			map[string]any{"type": in.Subject.Type, "id": in.Subject.ID},
			map[string]any{"type": in.Agent.Type, "id": in.Agent.ID},
		}
	} else {
		in.Subject = pdp.Entity{Type: in.Agent.Type, ID: in.Agent.ID, Properties: in.Agent.Properties}
	}
	actionProps := map[string]any{"arguments": orEmpty(r.Tool.Arguments)}
	if r.Tool.Server != "" {
		actionProps["server"] = r.Tool.Server
	}
	in.Action = pdp.Action{Name: r.Tool.Name, Properties: actionProps}
	if r.Resource != nil {
		in.Resource = pdp.Entity{Type: r.Resource.Type, ID: r.Resource.ID, Properties: r.Resource.Properties}
	} else {
		in.Resource = pdp.Entity{Type: "tool", ID: r.Tool.Name}
	}
	if r.Task != nil {
		in.Task = &pdp.Task{
			ID:           r.Task.ID,
			ParentID:     r.Task.ParentID,
			Attempt:      r.Task.Attempt,
			SessionID:    r.Task.SessionID,
			IntentSHA256: s.intent.Sum(r.Task.Intent),
		}
	}
	return in
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
// does.
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
		Action:        pdp.Action{Name: in.Action.Name, Properties: decisionlog.MaskMap(in.Action.Properties)},
		Resource:      maskEntity(in.Resource),
		Delegation:    in.Delegation,
		Task:          in.Task,
		Reasons:       []string{},
		PDP:           s.instance,
	}
	if in.Agent != nil {
		rec.Agent = &pdp.Agent{ID: in.Agent.ID, Type: in.Agent.Type, Properties: decisionlog.MaskMap(in.Agent.Properties)}
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
	return pdp.Entity{Type: e.Type, ID: e.ID, Properties: decisionlog.MaskMap(e.Properties)}
}

func orEmpty(m map[string]any) map[string]any {
	if m == nil {
		return map[string]any{}
	}
	return m
}
