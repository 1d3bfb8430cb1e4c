package decisionlog

import "time"

// SchemaExecutionV1 names the wire format of an execution record: what a system did after a
// decision. It shares Record's fields (and so the chain, the spool and the sinks) and fills
// ExecutionID and Execution; DecisionID is then the decision it reports on.
const SchemaExecutionV1 = "custody.execution.v1"

// ExecutionPrefix starts the subject of every execution record.
const ExecutionPrefix = "custody.execution"

// Execution statuses.
const (
	ExecutionSucceeded = "succeeded"
	ExecutionFailed    = "failed"
	ExecutionSkipped   = "skipped"
)

// Violations flag an execution that no allow explains.
const (
	ViolationUnknownDecision   = "unknown_decision"
	ViolationExecutedAfterDeny = "executed_after_deny"
	ViolationDecisionExpired   = "decision_expired"
)

// Execution is what a system did after a decision, as reported to POST /v1/executions.
type Execution struct {
	Status     string          `json:"status"`
	Target     ExecutionTarget `json:"target"`
	StartedAt  *time.Time      `json:"started_at,omitempty"`
	FinishedAt *time.Time      `json:"finished_at,omitempty"`
	Error      string          `json:"error,omitempty"`
	// Violation is set when the decision does not explain the execution: it is unknown, a deny,
	// or expired (see the Violation constants).
	Violation string `json:"violation,omitempty"`
	// DecisionAllow is the linked decision's outcome; nil when the decision was not found.
	DecisionAllow *bool `json:"decision_allow,omitempty"`
}

// ExecutionTarget names the downstream system and what it acted on.
type ExecutionTarget struct {
	System    string `json:"system"`
	RequestID string `json:"request_id,omitempty"`
	Resource  string `json:"resource,omitempty"`
}

// IsExecution reports whether r is an execution record.
func (r *Record) IsExecution() bool { return r.Schema == SchemaExecutionV1 }

// MsgID is the record's Nats-Msg-Id: the decision ID, or the execution ID for an execution.
func (r *Record) MsgID() string {
	switch {
	case r.IsExecution():
		return r.ExecutionID
	case r.IsUnseal():
		return r.UnsealID
	}
	return r.DecisionID
}

// RecordSubject is where r is published: DecisionSubject for a decision, ExecutionSubject for an
// execution.
func RecordSubject(r *Record) string {
	switch {
	case r.IsExecution():
		return ExecutionSubject(r)
	case r.IsUnseal():
		return UnsealSubject(r)
	}
	return DecisionSubject(r)
}

// ExecutionSubject is where an execution is published:
// custody.execution.<status>.<agent>.<action>.<correlation_id>.
func ExecutionSubject(r *Record) string {
	status := ""
	if r.Execution != nil {
		status = r.Execution.Status
	}
	return ExecutionPrefix + "." + Token(status) + "." + Token(r.AgentID()) + "." + Token(r.Action.Name) + "." + Token(r.CorrelationID)
}

// CorrelationFilters are the subject filters of every decision, execution and unseal record of
// one correlation ID.
func CorrelationFilters(correlationID string) []string {
	t := Token(correlationID)
	return []string{DecisionPrefix + ".*.*.*." + t, ExecutionPrefix + ".*.*.*." + t, UnsealPrefix + ".*.*." + t}
}
