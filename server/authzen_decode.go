package server

import (
	"encoding/json"
	"fmt"
	"strconv"

	"github.com/custodyhq/custody/agentcall"
	"github.com/custodyhq/custody/pdp"
)

// AuthZEN bodies are decoded to plain JSON values and then checked by hand rather than decoded
// into structs: keys then match exactly (encoding/json matches field names case-insensitively),
// a null counts as absent (the spec asks senders to omit nulls), unknown keys are ignored as the
// spec requires, and every error names its field by path, such as evaluations[2].subject.id.

// Evaluation semantics of POST /access/v1/evaluations (options.evaluations_semantic).
const (
	SemanticExecuteAll          = "execute_all"
	SemanticDenyOnFirstDeny     = "deny_on_first_deny"
	SemanticPermitOnFirstPermit = "permit_on_first_permit"
)

// OptionIncludeReasons is the request option (options.custody_include_reasons: true) that adds
// each decision's decision_id and reasons to the context of its answer.
const OptionIncludeReasons = "custody_include_reasons"

// MaxBatchEvaluations bounds the evaluations array of one request.
const MaxBatchEvaluations = 1000

// evalItem is one access evaluation: AuthZEN's subject, action, resource and context.
type evalItem struct {
	Subject  pdp.Entity
	Action   pdp.Action
	Resource pdp.Entity
	Context  map[string]any // as sent; nil when absent
}

// lifted is what custody takes out of an AuthZEN context: the agent envelope (docs/agents.md, AuthZEN).
type lifted struct {
	agent         *pdp.Agent
	task          *taskBody // with the intent text, to be hashed and dropped
	correlationID *string
}

type authzenOptions struct {
	semantic       string
	includeReasons bool
}

// evaluationRequest is the body of POST /access/v1/evaluation.
type evaluationRequest struct {
	item evalItem
	lift lifted
	opts authzenOptions
}

// evaluationsRequest is the body of POST /access/v1/evaluations. The top-level entities are
// defaults that each item may override, key by key, as the spec's default-value rules say.
type evaluationsRequest struct {
	subject  *pdp.Entity
	action   *pdp.Action
	resource *pdp.Entity
	context  map[string]any
	lift     lifted // of the default context
	// items are the raw evaluations; nil when the array is absent or empty, in which case the
	// request is a single evaluation of the top-level entities.
	items []any
	opts  authzenOptions
}

// single reports whether the request is a single evaluation of its top-level entities.
func (r *evaluationsRequest) single() bool { return len(r.items) == 0 }

// searchRequest is the body of a search: the searched entity carries only its type (subject and
// resource search) or is absent (action search).
type searchRequest struct {
	kind pdp.SearchKind
	item evalItem
	lift lifted
	page *pageRequest // nil when the request has no page object
	opts authzenOptions
}

type pageRequest struct {
	token string
	limit *int64 // nil when absent
}

// decodeObject decodes body, which must be one JSON object.
func decodeObject(body []byte) (map[string]any, *apiError) {
	var v any
	if err := decodeJSON(body, &v); err != nil {
		return nil, err
	}
	m, ok := v.(map[string]any)
	if !ok {
		return nil, errorf(CodeInvalidRequest, "request body must be a JSON object, got "+jsonKind(v))
	}
	return m, nil
}

// decodeEvaluation decodes and validates a single access evaluation.
func decodeEvaluation(body []byte) (*evaluationRequest, *apiError) {
	m, err := decodeObject(body)
	if err != nil {
		return nil, err
	}
	var r evaluationRequest
	if r.item, err = itemAt("", m); err != nil {
		return nil, err
	}
	if r.lift, err = liftContext("context", r.item.Context); err != nil {
		return nil, err
	}
	if r.opts, err = optionsAt(m["options"], false); err != nil {
		return nil, err
	}
	return &r, nil
}

// decodeEvaluations decodes a batch and validates its envelope: the defaults, the options and the
// shape of the evaluations array. Items are checked one by one by item, so that one bad item is
// that item's deny rather than a failed batch.
func decodeEvaluations(body []byte) (*evaluationsRequest, *apiError) {
	m, err := decodeObject(body)
	if err != nil {
		return nil, err
	}
	var r evaluationsRequest
	switch items := m["evaluations"].(type) {
	case nil:
	case []any:
		if len(items) > MaxBatchEvaluations {
			return nil, errorf(CodeInvalidRequest, fmt.Sprintf("evaluations: %d items, more than the %d one request may carry", len(items), MaxBatchEvaluations))
		}
		if len(items) > 0 {
			r.items = items
		}
	default:
		return nil, wrongType("evaluations", "array", items)
	}
	if r.opts, err = optionsAt(m["options"], true); err != nil {
		return nil, err
	}
	if r.single() {
		it, err := itemAt("", m)
		if err != nil {
			return nil, err
		}
		r.subject, r.action, r.resource, r.context = &it.Subject, &it.Action, &it.Resource, it.Context
	} else {
		if v := m["subject"]; v != nil {
			e, err := entityAt("subject", v, true)
			if err != nil {
				return nil, err
			}
			r.subject = &e
		}
		if v := m["action"]; v != nil {
			a, err := actionAt("action", v)
			if err != nil {
				return nil, err
			}
			r.action = &a
		}
		if v := m["resource"]; v != nil {
			e, err := entityAt("resource", v, true)
			if err != nil {
				return nil, err
			}
			r.resource = &e
		}
		if r.context, err = optObjectAt("context", m["context"]); err != nil {
			return nil, err
		}
	}
	if r.lift, err = liftContext("context", r.context); err != nil {
		return nil, err
	}
	return &r, nil
}

// item resolves evaluation i against the defaults: each of subject, action, resource and context
// the item names replaces the top-level one whole; each it omits is the top-level one.
func (r *evaluationsRequest) item(i int) (evalItem, lifted, *apiError) {
	path := fmt.Sprintf("evaluations[%d]", i)
	m, ok := r.items[i].(map[string]any)
	if !ok {
		return evalItem{}, lifted{}, wrongType(path, "object", r.items[i])
	}
	var (
		it  evalItem
		l   = r.lift
		err *apiError
	)
	switch v := m["subject"]; {
	case v != nil:
		if it.Subject, err = entityAt(path+".subject", v, true); err != nil {
			return it, l, err
		}
	case r.subject != nil:
		it.Subject = *r.subject
	default:
		return it, l, errorf(CodeInvalidRequest, path+".subject: required, in the item or as a top-level default")
	}
	switch v := m["action"]; {
	case v != nil:
		if it.Action, err = actionAt(path+".action", v); err != nil {
			return it, l, err
		}
	case r.action != nil:
		it.Action = *r.action
	default:
		return it, l, errorf(CodeInvalidRequest, path+".action: required, in the item or as a top-level default")
	}
	switch v := m["resource"]; {
	case v != nil:
		if it.Resource, err = entityAt(path+".resource", v, true); err != nil {
			return it, l, err
		}
	case r.resource != nil:
		it.Resource = *r.resource
	default:
		return it, l, errorf(CodeInvalidRequest, path+".resource: required, in the item or as a top-level default")
	}
	it.Context = r.context
	if v := m["context"]; v != nil {
		if it.Context, err = optObjectAt(path+".context", v); err != nil {
			return it, l, err
		}
		if l, err = liftContext(path+".context", it.Context); err != nil {
			return it, l, err
		}
	}
	return it, l, nil
}

// claimed is the request's first call as the body claims it, for the record of a refused
// caller: the first item resolved against the defaults, or the defaults when it does not resolve.
func (r *evaluationsRequest) claimed() *agentcall.Call {
	if !r.single() {
		if it, l, err := r.item(0); err == nil {
			return authzenCall(it, l)
		}
	}
	var it evalItem
	if r.subject != nil {
		it.Subject = *r.subject
	}
	if r.action != nil {
		it.Action = *r.action
	}
	if r.resource != nil {
		it.Resource = *r.resource
	}
	it.Context = r.context
	return authzenCall(it, r.lift)
}

// decodeSearch decodes and validates a search of kind.
func decodeSearch(kind pdp.SearchKind, body []byte) (*searchRequest, *apiError) {
	m, err := decodeObject(body)
	if err != nil {
		return nil, err
	}
	r := searchRequest{kind: kind}
	// The searched entity's id "SHOULD be omitted, and if present, MUST be ignored".
	if r.item.Subject, err = entityAt("subject", m["subject"], kind != pdp.SearchSubjects); err != nil {
		return nil, err
	}
	if kind != pdp.SearchActions { // action search has no action key: any sent is ignored
		if r.item.Action, err = actionAt("action", m["action"]); err != nil {
			return nil, err
		}
	}
	if r.item.Resource, err = entityAt("resource", m["resource"], kind != pdp.SearchResources); err != nil {
		return nil, err
	}
	if r.item.Context, err = optObjectAt("context", m["context"]); err != nil {
		return nil, err
	}
	if r.lift, err = liftContext("context", r.item.Context); err != nil {
		return nil, err
	}
	if r.page, err = pageAt(m["page"]); err != nil {
		return nil, err
	}
	if r.opts, err = optionsAt(m["options"], false); err != nil {
		return nil, err
	}
	return &r, nil
}

// itemAt reads the required subject, action and resource and the optional context of m.
func itemAt(prefix string, m map[string]any) (evalItem, *apiError) {
	var (
		it  evalItem
		err *apiError
	)
	if it.Subject, err = entityAt(prefix+"subject", m["subject"], true); err != nil {
		return it, err
	}
	if it.Action, err = actionAt(prefix+"action", m["action"]); err != nil {
		return it, err
	}
	if it.Resource, err = entityAt(prefix+"resource", m["resource"], true); err != nil {
		return it, err
	}
	if it.Context, err = optObjectAt(prefix+"context", m["context"]); err != nil {
		return it, err
	}
	return it, nil
}

// entityAt reads a Subject or Resource: type and (when withID) id are required strings,
// properties an optional object. Without withID, any id is ignored.
func entityAt(path string, v any, withID bool) (pdp.Entity, *apiError) {
	var e pdp.Entity
	m, err := objectAt(path, v)
	if err != nil {
		return e, err
	}
	if e.Type, err = stringAt(path+".type", m["type"], true); err != nil {
		return e, err
	}
	if withID {
		if e.ID, err = stringAt(path+".id", m["id"], true); err != nil {
			return e, err
		}
	}
	if e.Properties, err = optObjectAt(path+".properties", m["properties"]); err != nil {
		return e, err
	}
	return e, nil
}

// actionAt reads an Action: name is a required string, properties an optional object.
func actionAt(path string, v any) (pdp.Action, *apiError) {
	var a pdp.Action
	m, err := objectAt(path, v)
	if err != nil {
		return a, err
	}
	if a.Name, err = stringAt(path+".name", m["name"], true); err != nil {
		return a, err
	}
	if a.Properties, err = optObjectAt(path+".properties", m["properties"]); err != nil {
		return a, err
	}
	return a, nil
}

// liftContext takes custody's agent envelope out of an AuthZEN context (path names it in
// errors): an object context.agent is the acting agent, an object context.task the task, and
// context.correlation_id the correlation ID. A context.agent or context.task that is not an
// object is someone else's key and is left alone; one that is an object is checked like the
// native request's, and so is any correlation_id.
func liftContext(path string, ctx map[string]any) (lifted, *apiError) {
	var l lifted
	if ctx == nil {
		return l, nil
	}
	if a, ok := ctx["agent"].(map[string]any); ok {
		var (
			agent pdp.Agent
			err   *apiError
		)
		if agent.ID, err = stringAt(path+".agent.id", a["id"], true); err != nil {
			return l, err
		}
		if agent.Type, err = stringAt(path+".agent.type", a["type"], false); err != nil {
			return l, err
		}
		if agent.Properties, err = optObjectAt(path+".agent.properties", a["properties"]); err != nil {
			return l, err
		}
		if agent.Type == "" {
			agent.Type = "agent"
		}
		l.agent = &agent
	}
	if t, ok := ctx["task"].(map[string]any); ok {
		var (
			task taskBody
			err  *apiError
		)
		for _, f := range []struct {
			key string
			dst *string
		}{{"id", &task.ID}, {"parent_id", &task.ParentID}, {"session_id", &task.SessionID}} {
			if *f.dst, err = stringAt(path+".task."+f.key, t[f.key], false); err != nil {
				return l, err
			}
		}
		switch v := t["intent"].(type) {
		case nil:
		case string:
			task.Intent = v
		default:
			return l, wrongType(path+".task.intent", "string", v)
		}
		if v := t["attempt"]; v != nil {
			n, ok := v.(json.Number)
			if !ok {
				return l, wrongType(path+".task.attempt", "number", v)
			}
			attempt, perr := strconv.ParseInt(string(n), 10, 64)
			if perr != nil || attempt < 0 {
				return l, errorf(CodeInvalidRequest, path+".task.attempt: want a non-negative integer, got "+string(n))
			}
			task.Attempt = attempt
		}
		l.task = &task
	}
	if v := ctx["correlation_id"]; v != nil {
		cid, ok := v.(string)
		if !ok {
			return l, wrongType(path+".correlation_id", "string", v)
		}
		if err := checkCorrelationID(path+".correlation_id", cid); err != nil {
			return l, err
		}
		l.correlationID = &cid
	}
	return l, nil
}

// optionsAt reads the options object. evaluations_semantic is read only for a batch
// (withSemantic); elsewhere, like any unknown option, it is ignored.
func optionsAt(v any, withSemantic bool) (authzenOptions, *apiError) {
	o := authzenOptions{semantic: SemanticExecuteAll}
	m, err := optObjectAt("options", v)
	if err != nil || m == nil {
		return o, err
	}
	if withSemantic {
		switch s := m["evaluations_semantic"].(type) {
		case nil:
		case string:
			if s != SemanticExecuteAll && s != SemanticDenyOnFirstDeny && s != SemanticPermitOnFirstPermit {
				return o, errorf(CodeInvalidRequest, fmt.Sprintf("options.evaluations_semantic: want %s, %s or %s, got %q",
					SemanticExecuteAll, SemanticDenyOnFirstDeny, SemanticPermitOnFirstPermit, truncate(s, 64)))
			}
			o.semantic = s
		default:
			return o, wrongType("options.evaluations_semantic", "string", s)
		}
	}
	switch b := m[OptionIncludeReasons].(type) {
	case nil:
	case bool:
		o.includeReasons = b
	default:
		return o, wrongType("options."+OptionIncludeReasons, "boolean", b)
	}
	return o, nil
}

// pageAt reads a search request's page object: an optional string token, an optional
// non-negative integer limit, and optional properties, which custody ignores.
func pageAt(v any) (*pageRequest, *apiError) {
	m, err := optObjectAt("page", v)
	if err != nil || m == nil {
		return nil, err
	}
	var p pageRequest
	switch t := m["token"].(type) {
	case nil:
	case string:
		p.token = t
	default:
		return nil, wrongType("page.token", "string", t)
	}
	if l := m["limit"]; l != nil {
		n, ok := l.(json.Number)
		if !ok {
			return nil, wrongType("page.limit", "number", l)
		}
		limit, perr := strconv.ParseInt(string(n), 10, 64)
		if perr != nil || limit < 0 {
			return nil, errorf(CodeInvalidRequest, "page.limit: want a non-negative integer, got "+truncate(string(n), 64))
		}
		p.limit = &limit
	}
	if _, err := optObjectAt("page.properties", m["properties"]); err != nil {
		return nil, err
	}
	return &p, nil
}

func objectAt(path string, v any) (map[string]any, *apiError) {
	if v == nil {
		return nil, missing(path)
	}
	m, ok := v.(map[string]any)
	if !ok {
		return nil, wrongType(path, "object", v)
	}
	return m, nil
}

// optObjectAt reads an optional object; absent and null are nil.
func optObjectAt(path string, v any) (map[string]any, *apiError) {
	if v == nil {
		return nil, nil
	}
	return objectAt(path, v)
}

// stringAt reads a string of 1 to maxIDLen bytes; an absent optional one is "".
func stringAt(path string, v any, required bool) (string, *apiError) {
	if v == nil {
		if required {
			return "", missing(path)
		}
		return "", nil
	}
	s, ok := v.(string)
	if !ok {
		return "", wrongType(path, "string", v)
	}
	if err := checkID(path, s, required); err != nil {
		return "", err
	}
	return s, nil
}

func wrongType(path, want string, got any) *apiError {
	return errorf(CodeInvalidRequest, fmt.Sprintf("%s: want %s, got %s", path, want, jsonKind(got)))
}

// jsonKind names the JSON type of a decoded value.
func jsonKind(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case bool:
		return "boolean"
	case string:
		return "string"
	case json.Number, float64:
		return "number"
	case []any:
		return "array"
	case map[string]any:
		return "object"
	default:
		return fmt.Sprintf("%T", v)
	}
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
