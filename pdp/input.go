package pdp

import (
	"github.com/open-policy-agent/opa/v1/ast"

	"github.com/custodyhq/custody/schema"
)

// The entity types are the record's wire types, defined in the leaf package schema so that the
// record's readers build without OPA; the engine uses them under its own names.
type (
	// Entity is an AuthZEN subject or resource (schema.Entity).
	Entity = schema.Entity
	// Action is an AuthZEN action (schema.Action).
	Action = schema.Action
	// Agent is the acting workload (schema.Agent).
	Agent = schema.Agent
	// Delegation says who delegated to whom (schema.Delegation).
	Delegation = schema.Delegation
	// Task identifies the unit of agent work a call belongs to (schema.Task).
	Task = schema.Task
	// SealedIntent points at a task's intent in the intent vault (schema.SealedIntent).
	SealedIntent = schema.SealedIntent
)

// Caller is who called custody, as authentication proved it (input.caller): Kind is one of
// CallerAnonymous, CallerAPIKey, CallerMTLS or CallerToken, and ID the API key's name, the
// SPIFFE ID or the token's subject ("" when anonymous). A body can never set it.
type Caller struct {
	Kind string `json:"kind"`
	ID   string `json:"id"`
}

// Kinds of Caller.
const (
	CallerAnonymous = "anonymous"
	CallerAPIKey    = "api_key"
	CallerMTLS      = "mtls"
	CallerToken     = "token"
)

// Input is what a policy sees as `input`: AuthZEN's four entities plus the agent envelope.
// Every endpoint builds this same shape.
type Input struct {
	Subject       Entity         `json:"subject"`
	Action        Action         `json:"action"`
	Resource      Entity         `json:"resource"`
	Context       map[string]any `json:"context,omitempty"`
	Agent         *Agent         `json:"agent,omitempty"`
	Delegation    Delegation     `json:"delegation"`
	Task          *Task          `json:"task,omitempty"`
	CorrelationID string         `json:"correlation_id,omitempty"`
	// Approval is approval evidence the server verified (server/approval.go): a caller cannot
	// send it, so a policy may trust input.approval. Nil when the call carries none.
	Approval map[string]any `json:"approval,omitempty"`
	Caller   *Caller        `json:"caller,omitempty"`
}

// Value returns the input as plain JSON-shaped Go values, the form OPA converts without a
// JSON round trip.
func (in *Input) Value() map[string]any {
	v := map[string]any{
		"subject":    entityValue(in.Subject),
		"action":     map[string]any{"name": in.Action.Name, "properties": orEmpty(in.Action.Properties)},
		"resource":   entityValue(in.Resource),
		"context":    orEmpty(in.Context),
		"delegation": map[string]any{"verified": in.Delegation.Verified, "chain": orEmptyList(in.Delegation.Chain)},
	}
	if in.Agent != nil {
		v["agent"] = map[string]any{"id": in.Agent.ID, "type": in.Agent.Type, "properties": orEmpty(in.Agent.Properties)}
	}
	if in.Task != nil {
		v["task"] = map[string]any{
			"id":            in.Task.ID,
			"parent_id":     in.Task.ParentID,
			"attempt":       in.Task.Attempt,
			"session_id":    in.Task.SessionID,
			"intent_sha256": in.Task.IntentSHA256,
		}
	}
	if in.CorrelationID != "" {
		v["correlation_id"] = in.CorrelationID
	}
	if in.Approval != nil {
		v["approval"] = in.Approval
	}
	if in.Caller != nil {
		v["caller"] = map[string]any{"kind": in.Caller.Kind, "id": in.Caller.ID}
	}
	return v
}

func entityValue(e Entity) map[string]any {
	return map[string]any{"type": e.Type, "id": e.ID, "properties": orEmpty(e.Properties)}
}

func orEmpty(m map[string]any) map[string]any {
	if m == nil {
		return map[string]any{}
	}
	return m
}

func orEmptyList(l []any) []any {
	if l == nil {
		return []any{}
	}
	return l
}

// AST returns the input as the value OPA evaluates. It builds the fixed envelope directly and
// converts only the free-form parts (properties, context, chain): it is the same value as
// ast.InterfaceToValue(in.Value()), without the intermediate maps and their reflective walk,
// which was about a tenth of a decision's time with the default policy set.
func (in *Input) AST() (ast.Value, error) {
	props := func(m map[string]any) (*ast.Term, error) {
		if len(m) == 0 {
			return ast.ObjectTerm(), nil
		}
		v, err := ast.InterfaceToValue(m)
		if err != nil {
			return nil, err
		}
		return ast.NewTerm(v), nil
	}
	entity := func(e Entity) (*ast.Term, error) {
		p, err := props(e.Properties)
		if err != nil {
			return nil, err
		}
		return ast.ObjectTerm(
			ast.Item(ast.InternedTerm("type"), ast.StringTerm(e.Type)),
			ast.Item(ast.InternedTerm("id"), ast.StringTerm(e.ID)),
			ast.Item(ast.InternedTerm("properties"), p),
		), nil
	}
	subject, err := entity(in.Subject)
	if err != nil {
		return nil, err
	}
	resource, err := entity(in.Resource)
	if err != nil {
		return nil, err
	}
	actionProps, err := props(in.Action.Properties)
	if err != nil {
		return nil, err
	}
	context, err := props(in.Context)
	if err != nil {
		return nil, err
	}
	chain := ast.ArrayTerm()
	if len(in.Delegation.Chain) > 0 {
		v, err := ast.InterfaceToValue(in.Delegation.Chain)
		if err != nil {
			return nil, err
		}
		chain = ast.NewTerm(v)
	}
	obj := ast.NewObject(
		ast.Item(ast.InternedTerm("subject"), subject),
		ast.Item(ast.InternedTerm("action"), ast.ObjectTerm(
			ast.Item(ast.InternedTerm("name"), ast.StringTerm(in.Action.Name)),
			ast.Item(ast.InternedTerm("properties"), actionProps),
		)),
		ast.Item(ast.InternedTerm("resource"), resource),
		ast.Item(ast.InternedTerm("context"), context),
		ast.Item(ast.InternedTerm("delegation"), ast.ObjectTerm(
			ast.Item(ast.InternedTerm("verified"), ast.InternedTerm(in.Delegation.Verified)),
			ast.Item(ast.InternedTerm("chain"), chain),
		)),
	)
	if in.Agent != nil {
		p, err := props(in.Agent.Properties)
		if err != nil {
			return nil, err
		}
		obj.Insert(ast.InternedTerm("agent"), ast.ObjectTerm(
			ast.Item(ast.InternedTerm("id"), ast.StringTerm(in.Agent.ID)),
			ast.Item(ast.InternedTerm("type"), ast.StringTerm(in.Agent.Type)),
			ast.Item(ast.InternedTerm("properties"), p),
		))
	}
	if in.Task != nil {
		obj.Insert(ast.InternedTerm("task"), ast.ObjectTerm(
			ast.Item(ast.InternedTerm("id"), ast.StringTerm(in.Task.ID)),
			ast.Item(ast.InternedTerm("parent_id"), ast.StringTerm(in.Task.ParentID)),
			ast.Item(ast.InternedTerm("attempt"), ast.IntNumberTerm(int(in.Task.Attempt))),
			ast.Item(ast.InternedTerm("session_id"), ast.StringTerm(in.Task.SessionID)),
			ast.Item(ast.InternedTerm("intent_sha256"), ast.StringTerm(in.Task.IntentSHA256)),
		))
	}
	if in.CorrelationID != "" {
		obj.Insert(ast.InternedTerm("correlation_id"), ast.StringTerm(in.CorrelationID))
	}
	if in.Approval != nil {
		v, err := ast.InterfaceToValue(in.Approval)
		if err != nil {
			return nil, err
		}
		obj.Insert(ast.InternedTerm("approval"), ast.NewTerm(v))
	}
	if in.Caller != nil {
		obj.Insert(ast.InternedTerm("caller"), ast.ObjectTerm(
			ast.Item(ast.InternedTerm("kind"), ast.StringTerm(in.Caller.Kind)),
			ast.Item(ast.InternedTerm("id"), ast.StringTerm(in.Caller.ID)),
		))
	}
	return obj, nil
}
