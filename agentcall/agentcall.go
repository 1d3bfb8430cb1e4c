package agentcall

import "github.com/custodyhq/custody/pdp"

// DefaultAgentType and DefaultSubjectType are the types of an agent and of a subject that name
// none: an agent acts, a user delegates.
const (
	DefaultAgentType   = "agent"
	DefaultSubjectType = "user"
)

// Call is one call an agent asks custody about, as its body claims it: no credential has been
// applied yet (the server applies proven identity to the Input afterwards).
type Call struct {
	// Agent is the acting agent; nil when the request names none, as a plain AuthZEN evaluation.
	Agent *pdp.Agent
	// Subject is on whose behalf the agent acts; nil when it acts for nobody, in which case the
	// subject is the agent itself.
	Subject *pdp.Entity
	// Action is what is asked; ToolAction builds it for a tool call.
	Action pdp.Action
	// Resource is what the action is on; ToolResource is a tool call's default.
	Resource pdp.Entity
	// Context is the policy's input.context, without the agent envelope (agent, task,
	// correlation ID), which the input carries in its own fields.
	Context map[string]any
	// Task is the unit of work the call belongs to; nil when none.
	Task *Task
	// CorrelationID ties the call to others of the same work.
	CorrelationID string
}

// Task is a call's task as the caller sends it, with the prompt text behind it. Input hashes
// the intent and drops it: no policy and no record ever sees it.
type Task struct {
	ID        string
	ParentID  string
	Attempt   int64
	SessionID string
	Intent    string
}

// IntentHasher makes the keyed hash of a task's intent. *decisionlog.IntentHasher implements it.
type IntentHasher interface {
	Sum(intent string) string
}

// ToolAction is the action of calling tool name on MCP server srv ("" when unknown) with args:
// action.name is the tool and action.properties holds the server and the arguments, {} when none.
func ToolAction(name, srv string, args map[string]any) pdp.Action {
	if args == nil {
		args = map[string]any{}
	}
	props := map[string]any{"arguments": args}
	if srv != "" {
		props["server"] = srv
	}
	return pdp.Action{Name: name, Properties: props}
}

// ToolResource is the resource of a tool call that names no other: the tool itself.
func ToolResource(name string) pdp.Entity { return pdp.Entity{Type: "tool", ID: name} }

// Input is the policy input of c. The delegation chain is asserted, not proven: it names who
// claims to act for whom, [subject, agent], and is empty when no agent acts or when the agent
// acts for nobody (the subject is the agent itself). intent may be nil when c has no task.
func Input(c *Call, intent IntentHasher) *pdp.Input {
	in := &pdp.Input{
		Action:        c.Action,
		Resource:      c.Resource,
		Context:       c.Context,
		Delegation:    pdp.Delegation{Verified: false, Chain: []any{}},
		CorrelationID: c.CorrelationID,
	}
	if c.Agent != nil {
		a := *c.Agent
		if a.Type == "" {
			a.Type = DefaultAgentType
		}
		in.Agent = &a
	}
	switch {
	case c.Subject != nil:
		in.Subject = *c.Subject
		if in.Subject.Type == "" {
			in.Subject.Type = DefaultSubjectType
		}
	case in.Agent != nil:
		in.Subject = pdp.Entity{Type: in.Agent.Type, ID: in.Agent.ID, Properties: in.Agent.Properties}
	}
	if in.Agent != nil && !(in.Subject.Type == in.Agent.Type && in.Subject.ID == in.Agent.ID) {
		in.Delegation.Chain = []any{
			map[string]any{"type": in.Subject.Type, "id": in.Subject.ID},
			map[string]any{"type": in.Agent.Type, "id": in.Agent.ID},
		}
	}
	if c.Task != nil {
		in.Task = &pdp.Task{ID: c.Task.ID, ParentID: c.Task.ParentID, Attempt: c.Task.Attempt, SessionID: c.Task.SessionID}
		if intent != nil {
			in.Task.IntentSHA256 = intent.Sum(c.Task.Intent)
		}
	}
	return in
}
