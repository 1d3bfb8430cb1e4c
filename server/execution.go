package server

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/lestrrat-go/jwx/v3/jwk"

	"github.com/custodyhq/custody/decisionlog"
	"github.com/custodyhq/custody/receipt"
)

// EndpointExecutions names the execution report endpoint in records.
const EndpointExecutions = "/v1/executions"

// DefaultDecisionCacheSize bounds the decisions an instance remembers for execution reports.
// A record kept in memory is a few KiB; 100,000 of them held half a GiB under load. 2048
// cover the last second of a busy instance, when most reports arrive; older decisions are
// read from the stream (by correlation ID).
const DefaultDecisionCacheSize = 2048

// executionClockSkew is how far a reported time may lie after the report's arrival, or before
// its decision, and still be a clock difference rather than a claim.
const executionClockSkew = 5 * time.Second

// maxReceiptLen bounds a receipt a report carries: custody's are well under 2 KiB.
const maxReceiptLen = 8 << 10

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
	// Receipt is the decision's receipt, proof that the reporter was given the decision when it
	// is not the caller that asked for it. The Custody-Receipt header works as well.
	Receipt string `json:"receipt"`
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
	if len(r.Receipt) > maxReceiptLen {
		return errorf(CodeInvalidRequest, fmt.Sprintf("receipt: longer than %d bytes", maxReceiptLen))
	}
	return nil
}

// checkTimes bounds the reported times by what custody knows: nothing happened after the
// report arrived, nor before the decision that allowed it (nil when unknown).
func checkTimes(r *executionRequest, dec *decisionlog.Record, arrival time.Time) *apiError {
	for _, f := range []struct {
		name string
		t    *time.Time
	}{{"started_at", r.StartedAt}, {"finished_at", r.FinishedAt}} {
		switch {
		case f.t == nil:
		case f.t.After(arrival.Add(executionClockSkew)):
			return errorf(CodeInvalidRequest, f.name+" is after the report's arrival: an execution cannot be reported before it happens")
		case dec != nil && f.t.Before(dec.Timestamp.Add(-executionClockSkew)):
			return errorf(CodeInvalidRequest, f.name+" is before the decision "+quoteField(dec.DecisionID)+" was made")
		}
	}
	return nil
}

// mayReport says whether the reporter may file a report on dec: it holds dec's receipt (in the
// body or the Custody-Receipt header, signed by this custody, naming dec, expired or not), or it
// is the caller that asked for dec (same method and ID; two anonymous callers are alike, as
// nothing tells them apart), or a client certificate proves it is dec's agent. Anyone else
// would be framing dec's caller with an execution it never reported.
func (s *Server) mayReport(c echo.Context, er *executionRequest, dec *decisionlog.Record, cl *caller) bool {
	tok := er.Receipt
	if tok == "" {
		tok = c.Request().Header.Get(HeaderReceipt)
	}
	if tok != "" && len(tok) <= maxReceiptLen {
		if keys := s.receiptKeys(); keys != nil {
			if claims, err := receipt.VerifySignature(tok, keys); err == nil && claims.DecisionID == dec.DecisionID {
				return true
			}
		}
	}
	ref := cl.ref()
	switch {
	case ref == nil || dec.Caller == nil:
		return ref == nil && dec.Caller == nil
	case ref.Method == dec.Caller.Method && ref.ID == dec.Caller.ID:
		return true
	}
	return cl.workload != "" && dec.Agent != nil && cl.workload == dec.Agent.ID
}

// receiptKeys is the signer's public key set, parsed once; nil without receipts.
func (s *Server) receiptKeys() jwk.Set {
	if s.receipts == nil {
		return nil
	}
	s.rkeys.once.Do(func() {
		raw, err := s.receipts.JWKS()
		if err == nil {
			s.rkeys.set, err = jwk.Parse(raw)
		}
		if err != nil {
			s.logger.Error().Err(err).Msg("receipt keys unreadable: execution reports need their decision's caller")
		}
	})
	return s.rkeys.set
}

// receiptKeyCache holds the signer's public keys, parsed on first use.
type receiptKeyCache struct {
	once sync.Once
	set  jwk.Set
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
	arrival := s.now().UTC()
	if aerr := checkTimes(&er, dec, arrival); aerr != nil {
		return aerr
	}
	if dec != nil && !s.mayReport(c, &er, dec, x.caller) {
		s.logger.Warn().Str("decision_id", er.DecisionID).Str("caller", x.caller.id).Msg("execution report refused: not the decision's caller, and no receipt for it")
		return errorf(CodeReportNotAuthorized, "an execution report on decision "+quoteField(er.DecisionID)+" needs its receipt (\"receipt\" or the Custody-Receipt header) or the credentials that asked for it")
	}
	meta := x.meta
	if dec != nil {
		// A report belongs to its decision's correlation, whatever the report or its headers say.
		meta.correlationID = dec.CorrelationID
		c.Response().Header().Set(HeaderCorrelationID, meta.correlationID)
	}
	rec := s.executionRecord(&er, dec, meta, arrival)
	rec.Caller = x.caller.ref()
	if err := s.record(c, rec); err != nil {
		err.denied = nil // not a decision: the report was not recorded and should be retried
		err.Message = "the execution report could not be recorded on the decision stream; retry later"
		return err
	}
	resp := &executionResponse{
		ExecutionID:   rec.ExecutionID,
		DecisionID:    rec.DecisionID,
		CorrelationID: rec.CorrelationID,
		Violation:     rec.Execution.Violation,
	}
	return s.answerJSON(c, http.StatusOK, resp, resp.appendJSON)
}

// appendJSON appends r as encoding/json spells it: see answerJSON.
func (r *executionResponse) appendJSON(b []byte) ([]byte, error) {
	b = append(b, `{"execution_id":`...)
	b = decisionlog.AppendJSONString(b, r.ExecutionID)
	b = append(b, `,"decision_id":`...)
	b = decisionlog.AppendJSONString(b, r.DecisionID)
	b = append(b, `,"correlation_id":`...)
	b = decisionlog.AppendJSONString(b, r.CorrelationID)
	if r.Violation != "" {
		b = append(b, `,"violation":`...)
		b = decisionlog.AppendJSONString(b, r.Violation)
	}
	return append(b, '}'), nil
}

// executionRecord builds the custody.execution.v1 record of a report, linked to dec (nil when
// the decision is unknown): correlation ID, subject, agent, action, resource and task are the
// decision's. Whether the decision had expired is judged by arrival, custody's clock: the times
// a report claims are kept as reported, but cannot move a late execution into the window.
func (s *Server) executionRecord(er *executionRequest, dec *decisionlog.Record, m requestMeta, arrival time.Time) *decisionlog.Record {
	now := arrival
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
	switch {
	case !dec.Allow:
		rec.Execution.Violation = decisionlog.ViolationExecutedAfterDeny
	case arrival.After(dec.Timestamp.Add(s.executionWindow())):
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

// decisionCache is a bounded LRU of decision records, by decision ID. The records are kept by
// value in slots that are reused once the cache is full, linked most recent first: a put copies
// the record into a slot and allocates nothing (a list element and a copy of the record on the
// heap cost three allocations on every decision). get hands out copies, never a slot.
type decisionCache struct {
	mu    sync.Mutex
	max   int
	slots []cacheSlot // grows to max, then reused
	byID  map[string]int32
	// head and tail are the most and the least recent slot, -1 when the cache is empty.
	head, tail int32
}

// cacheSlot is one kept record and its neighbours in recency order (-1: none).
type cacheSlot struct {
	rec        decisionlog.Record
	prev, next int32
}

func newDecisionCache(max int) *decisionCache {
	return &decisionCache{max: max, byID: map[string]int32{}, head: -1, tail: -1}
}

func (c *decisionCache) put(r *decisionlog.Record) {
	if c == nil || c.max <= 0 || r.Schema != decisionlog.SchemaDecisionV1 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if i, ok := c.byID[r.DecisionID]; ok {
		c.slots[i].rec = *r
		c.unlink(i)
		c.pushFront(i)
		return
	}
	var i int32
	if len(c.slots) < c.max {
		c.slots = append(c.slots, cacheSlot{rec: *r})
		i = int32(len(c.slots) - 1)
	} else {
		i = c.tail
		c.unlink(i)
		delete(c.byID, c.slots[i].rec.DecisionID)
		c.slots[i].rec = *r
	}
	c.pushFront(i)
	c.byID[r.DecisionID] = i
}

func (c *decisionCache) get(id string) *decisionlog.Record {
	if c == nil {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	i, ok := c.byID[id]
	if !ok {
		return nil
	}
	c.unlink(i)
	c.pushFront(i)
	r := c.slots[i].rec
	return &r
}

// unlink takes slot i out of the recency order.
func (c *decisionCache) unlink(i int32) {
	s := &c.slots[i]
	if s.prev >= 0 {
		c.slots[s.prev].next = s.next
	} else {
		c.head = s.next
	}
	if s.next >= 0 {
		c.slots[s.next].prev = s.prev
	} else {
		c.tail = s.prev
	}
	s.prev, s.next = -1, -1
}

// pushFront makes slot i, unlinked, the most recent.
func (c *decisionCache) pushFront(i int32) {
	s := &c.slots[i]
	s.prev, s.next = -1, c.head
	if c.head >= 0 {
		c.slots[c.head].prev = i
	} else {
		c.tail = i
	}
	c.head = i
}
