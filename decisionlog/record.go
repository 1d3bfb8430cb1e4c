package decisionlog

import (
	"time"

	"github.com/custodyhq/custody/schema"
)

// SchemaDecisionV1 names the wire format of a decision record.
const SchemaDecisionV1 = "custody.decision.v1"

// Record is one authorization decision as published on the stream. Its JSON keys are the wire
// contract; add fields, never rename them.
type Record struct {
	Schema        string            `json:"schema"`
	DecisionID    string            `json:"decision_id"`
	Timestamp     time.Time         `json:"timestamp"`
	CorrelationID string            `json:"correlation_id"`
	RequestID     string            `json:"request_id,omitempty"`
	TraceID       string            `json:"trace_id,omitempty"`
	SpanID        string            `json:"span_id,omitempty"`
	Endpoint      string            `json:"endpoint"`
	Subject       schema.Entity     `json:"subject"`
	Action        schema.Action     `json:"action"`
	Resource      schema.Entity     `json:"resource"`
	Agent         *schema.Agent     `json:"agent,omitempty"`
	Delegation    schema.Delegation `json:"delegation"`
	Caller        *Caller           `json:"caller,omitempty"`
	Task          *schema.Task      `json:"task,omitempty"`
	Allow         bool              `json:"allow"`
	Reasons       []string          `json:"reasons"`
	Obligations   map[string]any    `json:"obligations,omitempty"`
	Approval      *Approval         `json:"approval,omitempty"`
	Policy        PolicyRef         `json:"policy"`
	Error         string            `json:"error,omitempty"`
	EvalNS        int64             `json:"eval_ns"`
	PDP           Instance          `json:"pdp"`
	// ExecutionID and Execution are set on custody.execution.v1 records only.
	ExecutionID string     `json:"execution_id,omitempty"`
	Execution   *Execution `json:"execution,omitempty"`
	// UnsealID and Unseal are set on custody.unseal.v1 records only.
	UnsealID string  `json:"unseal_id,omitempty"`
	Unseal   *Unseal `json:"unseal,omitempty"`
	// Refusal is set on the record of an attempt refused before any decision (a failed
	// authentication): the record is then that summary, without the body's claims.
	Refusal  *Refusal `json:"refusal,omitempty"`
	Seq      uint64   `json:"seq,omitempty"`
	PrevHash string   `json:"prev_hash,omitempty"`
	Hash     string   `json:"hash,omitempty"`
}

// Caller is who authenticated the request, when anyone did: an API key's name, a token's
// subject, or a client certificate's SPIFFE ID. Never the credential itself.
type Caller struct {
	Method   string `json:"method"`
	ID       string `json:"id"`
	Workload string `json:"workload,omitempty"`
}

// PolicyRef names the policy that made a decision.
type PolicyRef struct {
	Query    string `json:"query"`
	Revision string `json:"revision"`
}

// Instance names the custody process that made a decision.
type Instance struct {
	Instance string `json:"instance"`
	Version  string `json:"version"`
}

// Outcome is "allow" or "deny", as used in subjects and headers.
func (r *Record) Outcome() string {
	if r.Allow {
		return "allow"
	}
	return "deny"
}

// AgentID is the acting agent's ID, or "" when the call named none.
func (r *Record) AgentID() string {
	if r.Agent == nil {
		return ""
	}
	return r.Agent.ID
}
