package server

import (
	"net/http"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/labstack/echo/v4"

	"github.com/custodyhq/custody/decisionlog"
	"github.com/custodyhq/custody/pdp"
)

// The AuthZEN Authorization API 1.0 endpoints, at the default paths of its HTTPS binding. Each
// also names its endpoint in records.
const (
	EndpointEvaluation     = "/access/v1/evaluation"
	EndpointEvaluations    = "/access/v1/evaluations"
	EndpointSearchSubject  = "/access/v1/search/subject"
	EndpointSearchResource = "/access/v1/search/resource"
	EndpointSearchAction   = "/access/v1/search/action"
	EndpointAuthZENConfig  = "/.well-known/authzen-configuration"
)

// HeaderDecisionID carries the decision IDs behind an AuthZEN answer, which by default holds only
// what the specification shows: one ID for an evaluation; for a batch, one per executed item in
// item order; for a search, one per evaluated candidate in evaluation order. IDs are separated by
// ", ".
const HeaderDecisionID = "Custody-Decision-Id"

// batchWorkers bounds how many items of one execute_all batch, or candidates of one search, are
// decided at once.
const batchWorkers = 8

// decisionBody is an AuthZEN Decision: {"decision": bool, "context": {...}}.
type decisionBody struct {
	Decision bool           `json:"decision"`
	Context  map[string]any `json:"context,omitempty"`
}

type evaluationsBody struct {
	Evaluations []decisionBody `json:"evaluations"`
}

// itemError explains, in a Decision's context, why an item was denied without a policy decision
// (status 400) or with a failed one (status 500).
type itemError struct {
	Status  int    `json:"status"`
	Code    string `json:"code"`
	Message string `json:"message"`
}

// outcome is one decided and recorded evaluation.
type outcome struct {
	rec         *decisionlog.Record
	obligations map[string]any
	err         *itemError
	// recordErr is set when rec could not be made durable: the decision must not be answered.
	recordErr *apiError
}

// body renders the outcome as the spec shows it. Its context carries obligations when the policy
// set any (dropping one would turn a conditional allow into an unconditional one), the error of
// a failed item, and, when the caller asked with options.custody_include_reasons, the decision ID
// and reasons.
func (o *outcome) body(include bool) decisionBody {
	ctx := map[string]any{}
	if len(o.obligations) > 0 {
		ctx["obligations"] = o.obligations
	}
	if o.err != nil {
		ctx["error"] = o.err
	}
	if include {
		ctx["decision_id"] = o.rec.DecisionID
		ctx["reasons"] = o.rec.Reasons
	}
	if len(ctx) == 0 {
		ctx = nil
	}
	return decisionBody{Decision: o.rec.Allow, Context: ctx}
}

// readAuthenticated checks the content type, reads the body and authenticates the caller, for the
// AuthZEN endpoints and execution reports, exactly as /v1/authorize does: a refused caller is
// recorded as a denied attempt and answered 401.
func (s *Server) readAuthenticated(c echo.Context) ([]byte, *apiError) {
	if err := checkContentType(c.Request()); err != nil {
		return nil, err
	}
	body, aerr := readBody(c.Request(), s.maxBody)
	if aerr != nil {
		return nil, aerr
	}
	cl, authErr := s.authenticate(c)
	if authErr != nil {
		meta, merr := s.meta(c, nil)
		if merr != nil {
			meta.correlationID = s.newID()
		}
		s.recordAttempt(c, c.Request().URL.Path, &pdp.Input{}, meta, nil, authErr)
		return nil, authErr
	}
	c.Set(ctxCaller, cl)
	return body, nil
}

// ctxCaller is the echo context key of the authenticated caller.
const ctxCaller = "custody.caller"

func callerOf(c echo.Context) *caller {
	cl, _ := c.Get(ctxCaller).(*caller)
	return cl
}

// evaluation serves POST /access/v1/evaluation.
func (s *Server) evaluation(c echo.Context) error {
	body, aerr := s.readAuthenticated(c)
	if aerr != nil {
		return aerr
	}
	req, aerr := decodeEvaluation(body)
	if aerr != nil {
		return aerr
	}
	meta, aerr := s.meta(c, req.lift.correlationID)
	if aerr != nil {
		return aerr
	}
	return s.answerOne(c, EndpointEvaluation, req.item, req.lift, meta, req.opts)
}

// answerOne decides one evaluation, records it and answers with its Decision.
func (s *Server) answerOne(c echo.Context, endpoint string, it evalItem, l lifted, meta requestMeta, opts authzenOptions) error {
	o := s.evaluate(c, endpoint, it, l, meta)
	if o.recordErr != nil {
		return o.recordErr
	}
	if o.err != nil && o.err.Code == CodeIdentityMismatch {
		e := errorf(CodeIdentityMismatch, o.err.Message)
		e.denied = &deniedDecision{decisionID: o.rec.DecisionID, correlationID: o.rec.CorrelationID}
		return e
	}
	c.Response().Header().Set(HeaderDecisionID, o.rec.DecisionID)
	return c.JSON(http.StatusOK, o.body(opts.includeReasons))
}

// evaluations serves POST /access/v1/evaluations.
func (s *Server) evaluations(c echo.Context) error {
	body, aerr := s.readAuthenticated(c)
	if aerr != nil {
		return aerr
	}
	req, aerr := decodeEvaluations(body)
	if aerr != nil {
		return aerr
	}
	meta, aerr := s.meta(c, req.lift.correlationID)
	if aerr != nil {
		return aerr
	}
	if req.single() { // "behaves in a backwards-compatible manner" with a single evaluation
		it := evalItem{Subject: *req.subject, Action: *req.action, Resource: *req.resource, Context: req.context}
		return s.answerOne(c, EndpointEvaluations, it, req.lift, meta, req.opts)
	}

	run := func(i int) *outcome {
		it, l, ierr := req.item(i)
		if ierr != nil {
			return s.refuse(c, EndpointEvaluations, ierr, meta)
		}
		return s.evaluate(c, EndpointEvaluations, it, l, meta)
	}
	var outs []*outcome
	if req.opts.semantic == SemanticExecuteAll {
		outs = runBounded(len(req.items), run)
	} else {
		// Short-circuit semantics decide in order and stop at the deciding item, which is the
		// last one answered.
		stopOn := req.opts.semantic == SemanticPermitOnFirstPermit
		for i := range req.items {
			o := run(i)
			outs = append(outs, o)
			if o.recordErr != nil || o.rec.Allow == stopOn {
				break
			}
		}
	}
	if err := unrecorded(outs); err != nil {
		return err
	}
	res := evaluationsBody{Evaluations: make([]decisionBody, len(outs))}
	ids := make([]string, len(outs))
	for i, o := range outs {
		res.Evaluations[i] = o.body(req.opts.includeReasons)
		ids[i] = o.rec.DecisionID
	}
	c.Response().Header().Set(HeaderDecisionID, strings.Join(ids, ", "))
	return c.JSON(http.StatusOK, res)
}

// runBounded runs f for 0..n-1 on at most batchWorkers goroutines and returns the outcomes in
// index order. Once a record fails, no further index is started: the answer is then a 503, and
// each further attempt would only wait out the publish timeout. Indexes not started stay nil.
func runBounded(n int, f func(i int) *outcome) []*outcome {
	outs := make([]*outcome, n)
	var (
		next   atomic.Int64
		failed atomic.Bool
		wg     sync.WaitGroup
	)
	for range min(batchWorkers, n) {
		wg.Go(func() {
			for !failed.Load() {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				outs[i] = f(i)
				if outs[i].recordErr != nil {
					failed.Store(true)
				}
			}
		})
	}
	wg.Wait()
	return outs
}

// unrecorded returns the 503 that answers a batch any of whose decisions could not be recorded:
// an unrecorded allow must never reach the caller, and answering the rest of the batch would
// misstate which items were decided.
func unrecorded(outs []*outcome) *apiError {
	failed, decided := 0, 0
	var first *apiError
	for _, o := range outs {
		if o == nil {
			continue
		}
		decided++
		if o.recordErr != nil {
			failed++
			if first == nil {
				first = o.recordErr
			}
		}
	}
	if failed == 0 {
		return nil
	}
	if decided == 1 {
		return first
	}
	return errorf(CodeDecisionLogUnavailable, "decisions of this request could not be recorded on the decision stream, so the whole request is a deny; retry later")
}

// evaluate decides one evaluation and records it.
func (s *Server) evaluate(c echo.Context, endpoint string, it evalItem, l lifted, meta requestMeta) *outcome {
	if l.correlationID != nil {
		meta.correlationID = *l.correlationID
	}
	in := s.authzenInput(it, l, meta.correlationID)
	cl := callerOf(c)
	if err := applyIdentity(in, cl, true); err != nil {
		return s.refuse(c, endpoint, err, meta) // recorded as a denied identity_mismatch attempt
	}
	rec, d := s.decide(c, endpoint, in, meta)
	rec.Caller = cl.ref()
	o := &outcome{rec: rec, obligations: d.Obligations}
	if d.Err != nil {
		o.err = &itemError{Status: http.StatusInternalServerError, Code: pdp.ReasonPolicyError, Message: "the policy could not be evaluated, so the decision is a deny"}
	}
	o.recordErr = s.record(c, rec)
	return o
}

// refuse records and returns the deny of an item that is not a valid evaluation. No policy sees
// it; the record names the fault, so that every answered item has its decision on the stream.
func (s *Server) refuse(c echo.Context, endpoint string, e *apiError, m requestMeta) *outcome {
	rec := s.baseRecord(endpoint, &pdp.Input{Delegation: pdp.Delegation{Chain: []any{}}}, m)
	rec.Reasons = []string{e.Code}
	rec.Error = e.Message
	o := &outcome{rec: rec, err: &itemError{Status: statusCode(e.Code), Code: e.Code, Message: e.Message}}
	o.recordErr = s.record(c, rec)
	return o
}

// authzenInput builds the policy input of an AuthZEN evaluation: the entities as sent, the
// agent and task lifted from the context, and the context as sent except for a task's intent,
// which no policy and no record ever sees; its keyed hash is input.task.intent_sha256.
func (s *Server) authzenInput(it evalItem, l lifted, correlationID string) *pdp.Input {
	in := &pdp.Input{
		Subject:       it.Subject,
		Action:        it.Action,
		Resource:      it.Resource,
		Context:       withoutIntent(it.Context),
		Agent:         l.agent,
		Delegation:    pdp.Delegation{Verified: false, Chain: []any{}},
		CorrelationID: correlationID,
	}
	if l.agent != nil {
		// Asserted, not proven: the chain says who claims to act for whom.
		in.Delegation.Chain = []any{
			map[string]any{"type": it.Subject.Type, "id": it.Subject.ID},
			map[string]any{"type": l.agent.Type, "id": l.agent.ID},
		}
	}
	if l.task != nil {
		in.Task = &pdp.Task{
			ID:           l.task.ID,
			ParentID:     l.task.ParentID,
			Attempt:      l.task.Attempt,
			SessionID:    l.task.SessionID,
			IntentSHA256: s.intent.Sum(l.task.Intent),
		}
	}
	return in
}

// withoutIntent returns ctx, or a copy of it without context.task.intent if it has one.
func withoutIntent(ctx map[string]any) map[string]any {
	task, ok := ctx["task"].(map[string]any)
	if !ok {
		return ctx
	}
	if _, ok := task["intent"]; !ok {
		return ctx
	}
	t := make(map[string]any, len(task))
	for k, v := range task {
		if k != "intent" {
			t[k] = v
		}
	}
	out := make(map[string]any, len(ctx))
	for k, v := range ctx {
		out[k] = v
	}
	out["task"] = t
	return out
}

// metadataBody is the AuthZEN Policy Decision Point metadata document.
type metadataBody struct {
	PolicyDecisionPoint       string `json:"policy_decision_point"`
	AccessEvaluationEndpoint  string `json:"access_evaluation_endpoint"`
	AccessEvaluationsEndpoint string `json:"access_evaluations_endpoint"`
	SearchSubjectEndpoint     string `json:"search_subject_endpoint,omitempty"`
	SearchResourceEndpoint    string `json:"search_resource_endpoint,omitempty"`
	SearchActionEndpoint      string `json:"search_action_endpoint,omitempty"`
}

// authzenConfiguration serves GET /.well-known/authzen-configuration. The PDP identifier is the
// public URL when one is configured, else the scheme and host the client reached.
func (s *Server) authzenConfiguration(c echo.Context) error {
	base := s.publicURL
	if base == "" {
		r := c.Request()
		scheme := "http"
		if r.TLS != nil {
			scheme = "https"
		}
		base = scheme + "://" + r.Host
	}
	md := metadataBody{
		PolicyDecisionPoint:       base,
		AccessEvaluationEndpoint:  base + EndpointEvaluation,
		AccessEvaluationsEndpoint: base + EndpointEvaluations,
	}
	if _, ok := s.decider.(Searcher); ok {
		md.SearchSubjectEndpoint = base + EndpointSearchSubject
		md.SearchResourceEndpoint = base + EndpointSearchResource
		md.SearchActionEndpoint = base + EndpointSearchAction
	}
	c.Response().Header().Set("Cache-Control", "max-age=300")
	return c.JSON(http.StatusOK, md)
}
