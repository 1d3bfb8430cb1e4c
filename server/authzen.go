package server

import (
	"net/http"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/labstack/echo/v4"

	"github.com/custodyhq/custody/agentcall"
	"github.com/custodyhq/custody/decisionlog"
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
	// refused is set when no policy decided the call: the refusal rec records.
	refused *apiError
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

// evaluation serves POST /access/v1/evaluation.
func (s *Server) evaluation(c echo.Context) error {
	var req *evaluationRequest
	x, aerr := s.begin(c, EndpointEvaluation, func(body []byte) (decoded, *apiError) {
		var err *apiError
		if req, err = decodeEvaluation(body); err != nil {
			return decoded{}, err
		}
		return decoded{correlationID: req.lift.correlationID, claimed: authzenCall(req.item, req.lift)}, nil
	})
	if aerr != nil {
		return aerr
	}
	return x.answerOne(req.item, req.lift, req.opts)
}

// answerOne decides one evaluation, records it and answers with its Decision.
func (x *exchange) answerOne(it evalItem, l lifted, opts authzenOptions) error {
	o := x.decideCall(authzenCall(it, l), true)
	if err := o.answerError(); err != nil {
		return err
	}
	x.c.Response().Header().Set(HeaderDecisionID, o.rec.DecisionID)
	return x.c.JSON(http.StatusOK, o.body(opts.includeReasons))
}

// evaluations serves POST /access/v1/evaluations.
func (s *Server) evaluations(c echo.Context) error {
	var req *evaluationsRequest
	x, aerr := s.begin(c, EndpointEvaluations, func(body []byte) (decoded, *apiError) {
		var err *apiError
		if req, err = decodeEvaluations(body); err != nil {
			return decoded{}, err
		}
		return decoded{correlationID: req.lift.correlationID, claimed: req.claimed()}, nil
	})
	if aerr != nil {
		return aerr
	}
	if req.single() { // "behaves in a backwards-compatible manner" with a single evaluation
		it := evalItem{Subject: *req.subject, Action: *req.action, Resource: *req.resource, Context: req.context}
		return x.answerOne(it, req.lift, req.opts)
	}

	if o := x.refuseBatchIdentity(len(req.items), func(i int) *agentcall.Call {
		it, l, ierr := req.item(i)
		if ierr != nil {
			return nil
		}
		return authzenCall(it, l)
	}); o != nil {
		return o.answerError()
	}
	run := func(i int) *outcome {
		it, l, ierr := req.item(i)
		if ierr != nil {
			return x.refuse(emptyInput(), ierr, x.meta)
		}
		return x.decideCall(authzenCall(it, l), true)
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

// authzenCall is the call of an AuthZEN evaluation: the entities as sent, the agent, task and
// correlation ID lifted from the context, and the rest of the context. The envelope is moved out
// of the context, not copied: the policy sees a call's agent and task where the native endpoint
// puts them, and a context without them, whichever endpoint asked.
func authzenCall(it evalItem, l lifted) *agentcall.Call {
	subject := it.Subject
	call := &agentcall.Call{
		Agent:    l.agent,
		Subject:  &subject,
		Action:   it.Action,
		Resource: it.Resource,
		Context:  withoutEnvelope(it.Context, l),
	}
	if l.task != nil {
		call.Task = l.task.call()
	}
	if l.correlationID != nil {
		call.CorrelationID = *l.correlationID
	}
	return call
}

// withoutEnvelope returns ctx without the keys lifted into l (nil when nothing else is left).
// A context.agent or context.task that was not lifted (not an object) is someone else's and
// stays.
func withoutEnvelope(ctx map[string]any, l lifted) map[string]any {
	if ctx == nil {
		return nil
	}
	out := make(map[string]any, len(ctx))
	for k, v := range ctx {
		switch {
		case k == "agent" && l.agent != nil, k == "task" && l.task != nil, k == "correlation_id" && l.correlationID != nil:
			continue
		}
		out[k] = v
	}
	if len(out) == 0 {
		return nil
	}
	return out
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
