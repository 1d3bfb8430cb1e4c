package server

import (
	"container/list"
	"context"
	"errors"
	"net/http"
	"sync"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/custodyhq/custody/decisionlog"
)

// EndpointExecutions names the execution report endpoint in records.
const EndpointExecutions = "/v1/executions"

// DefaultDecisionCacheSize bounds the decisions an instance remembers for execution reports.
// A record kept in memory is a few KiB; 100,000 of them held half a GiB under load. 2048
// cover the last second of a busy instance, when most reports arrive; older decisions are
// read from the stream (by correlation ID).
const DefaultDecisionCacheSize = 2048

// DefaultExecutionWindow is how long after its decision an execution is still explained by it
// when no receipt signer sets a shorter validity.
const DefaultExecutionWindow = 5 * time.Minute

// DecisionLookup finds a decision record on the stream by its ID. correlationID, when known,
// narrows the search to one correlation ID's subjects. It returns (nil, nil) when the decision
// is not found.
type DecisionLookup interface {
	Lookup(ctx context.Context, decisionID, correlationID string) (*decisionlog.Record, error)
}

// WithDecisionLookup sets where execution reports find decisions this instance did not make
// (or has forgotten). Without it only this instance's recent decisions are found.
func WithDecisionLookup(l DecisionLookup) Option { return func(s *Server) { s.lookup = l } }

// WithExecutionWindow sets how long after its decision an execution is explained by it; later
// executions are flagged decision_expired. With a receipt signer the default is the receipt TTL.
func WithExecutionWindow(d time.Duration) Option { return func(s *Server) { s.execWindow = d } }

// executionRequest is the body of POST /v1/executions.
type executionRequest struct {
	DecisionID    string                      `json:"decision_id"`
	CorrelationID string                      `json:"correlation_id"`
	Status        string                      `json:"status"`
	Target        decisionlog.ExecutionTarget `json:"target"`
	StartedAt     *time.Time                  `json:"started_at"`
	FinishedAt    *time.Time                  `json:"finished_at"`
	Error         string                      `json:"error"`
}

// executionResponse is the answer of POST /v1/executions.
type executionResponse struct {
	ExecutionID   string `json:"execution_id"`
	DecisionID    string `json:"decision_id"`
	CorrelationID string `json:"correlation_id"`
	Violation     string `json:"violation,omitempty"`
}

func (r *executionRequest) validate() *apiError {
	if err := checkID("decision_id", r.DecisionID, true); err != nil {
		return err
	}
	if r.CorrelationID != "" {
		if err := checkCorrelationID("correlation_id", r.CorrelationID); err != nil {
			return err
		}
	}
	switch r.Status {
	case decisionlog.ExecutionSucceeded, decisionlog.ExecutionFailed, decisionlog.ExecutionSkipped:
	case "":
		return missing("status")
	default:
		return errorf(CodeInvalidRequest, "status: want succeeded, failed or skipped, got "+quoteField(r.Status))
	}
	if r.Target.System == "" {
		return missing("target.system")
	}
	if r.StartedAt != nil && r.FinishedAt != nil && r.FinishedAt.Before(*r.StartedAt) {
		return errorf(CodeInvalidRequest, "finished_at is before started_at")
	}
	return nil
}

func quoteField(s string) string {
	if len(s) > 64 {
		s = s[:64] + "..."
	}
	return `"` + s + `"`
}

// executions records what a system did after a decision. The report is recorded whatever the
// decision was; an execution no allow explains is flagged with a violation, not refused, because
// a report is evidence and must never be lost. The answer is 200 once the record is durable.
func (s *Server) executions(c echo.Context) error {
	var er executionRequest
	x, aerr := s.begin(c, EndpointExecutions, func(body []byte) (decoded, *apiError) {
		if err := decodeJSON(body, &er); err != nil {
			return decoded{}, err
		}
		if err := er.validate(); err != nil {
			return decoded{}, err
		}
		var d decoded
		if er.CorrelationID != "" {
			d.correlationID = &er.CorrelationID
		}
		return d, nil // a report claims no call: a refused reporter is recorded without one
	})
	if aerr != nil {
		return aerr
	}
	dec, err := s.findDecision(c.Request().Context(), er.DecisionID, er.CorrelationID)
	if errors.Is(err, decisionlog.ErrUnverified) {
		// Only records that do not verify name this decision: a forgery, or damage. Recording
		// the report against it would lend the forged decision the report's weight.
		s.logger.Warn().Err(err).Str("decision_id", er.DecisionID).Msg("execution report refused: its decision does not verify")
		return errorf(CodeUnverifiedDecision, "decision "+quoteField(er.DecisionID)+" is on the stream only as a record that does not verify (not sealed, or its decision_id is not its Nats-Msg-Id): run custody verify")
	}
	if err != nil {
		s.logger.Warn().Err(err).Str("decision_id", er.DecisionID).Msg("decision lookup failed; execution recorded as unknown_decision")
	}
	meta := x.meta
	if dec != nil {
		// A report belongs to its decision's correlation, whatever the report or its headers say.
		meta.correlationID = dec.CorrelationID
		c.Response().Header().Set(HeaderCorrelationID, meta.correlationID)
	}
	rec := s.executionRecord(&er, dec, meta)
	rec.Caller = x.caller.ref()
	if err := s.record(c, rec); err != nil {
		err.denied = nil // not a decision: the report was not recorded and should be retried
		err.Message = "the execution report could not be recorded on the decision stream; retry later"
		return err
	}
	return c.JSON(http.StatusOK, executionResponse{
		ExecutionID:   rec.ExecutionID,
		DecisionID:    rec.DecisionID,
		CorrelationID: rec.CorrelationID,
		Violation:     rec.Execution.Violation,
	})
}

// executionRecord builds the custody.execution.v1 record of a report, linked to dec (nil when
// the decision is unknown): correlation ID, subject, agent, action, resource and task are the
// decision's.
func (s *Server) executionRecord(er *executionRequest, dec *decisionlog.Record, m requestMeta) *decisionlog.Record {
	now := s.now().UTC()
	rec := &decisionlog.Record{
		Schema:        decisionlog.SchemaExecutionV1,
		DecisionID:    er.DecisionID,
		ExecutionID:   s.newID(),
		Timestamp:     now,
		CorrelationID: m.correlationID,
		RequestID:     m.requestID,
		TraceID:       m.trace.TraceID,
		SpanID:        m.trace.SpanID,
		Endpoint:      EndpointExecutions,
		Reasons:       []string{},
		PDP:           s.instance,
		Execution: &decisionlog.Execution{
			Status:     er.Status,
			Target:     er.Target,
			StartedAt:  utc(er.StartedAt),
			FinishedAt: utc(er.FinishedAt),
			Error:      truncate(er.Error, maxExecutionError),
		},
	}
	if dec == nil {
		rec.Execution.Violation = decisionlog.ViolationUnknownDecision
		return rec
	}
	rec.Subject, rec.Action, rec.Resource = dec.Subject, dec.Action, dec.Resource
	rec.Agent, rec.Delegation, rec.Task = dec.Agent, dec.Delegation, dec.Task
	rec.Allow, rec.Policy = dec.Allow, dec.Policy
	allow := dec.Allow
	rec.Execution.DecisionAllow = &allow
	at := now
	switch {
	case rec.Execution.FinishedAt != nil:
		at = *rec.Execution.FinishedAt
	case rec.Execution.StartedAt != nil:
		at = *rec.Execution.StartedAt
	}
	switch {
	case !dec.Allow:
		rec.Execution.Violation = decisionlog.ViolationExecutedAfterDeny
	case at.After(dec.Timestamp.Add(s.executionWindow())):
		rec.Execution.Violation = decisionlog.ViolationDecisionExpired
	}
	return rec
}

// maxExecutionError bounds the error text an execution record keeps.
const maxExecutionError = 1024

func utc(t *time.Time) *time.Time {
	if t == nil {
		return nil
	}
	u := t.UTC()
	return &u
}

// executionWindow is how long a decision explains an execution: the receipt TTL when receipts
// are signed, else the configured window.
func (s *Server) executionWindow() time.Duration {
	if s.execWindow > 0 {
		return s.execWindow
	}
	if s.receipts != nil {
		return s.receipts.TTL()
	}
	return DefaultExecutionWindow
}

// findDecision looks for the decision among this instance's recent ones, then on the stream.
func (s *Server) findDecision(ctx context.Context, decisionID, correlationID string) (*decisionlog.Record, error) {
	if r := s.recent.get(decisionID); r != nil {
		return r, nil
	}
	if s.lookup == nil {
		return nil, nil
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	return s.lookup.Lookup(ctx, decisionID, correlationID)
}

// decisionCache is a bounded LRU of decision records, by decision ID.
type decisionCache struct {
	mu    sync.Mutex
	max   int
	order *list.List // front is most recent; values are *decisionlog.Record
	byID  map[string]*list.Element
}

func newDecisionCache(max int) *decisionCache {
	return &decisionCache{max: max, order: list.New(), byID: map[string]*list.Element{}}
}

func (c *decisionCache) put(r *decisionlog.Record) {
	if c == nil || c.max <= 0 || r.Schema != decisionlog.SchemaDecisionV1 {
		return
	}
	kept := *r
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.byID[r.DecisionID]; ok {
		e.Value = &kept
		c.order.MoveToFront(e)
		return
	}
	c.byID[r.DecisionID] = c.order.PushFront(&kept)
	for c.order.Len() > c.max {
		last := c.order.Back()
		c.order.Remove(last)
		delete(c.byID, last.Value.(*decisionlog.Record).DecisionID)
	}
}

func (c *decisionCache) get(id string) *decisionlog.Record {
	if c == nil {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.byID[id]
	if !ok {
		return nil
	}
	c.order.MoveToFront(e)
	r := *e.Value.(*decisionlog.Record)
	return &r
}
