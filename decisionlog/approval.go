package decisionlog

import "time"

// Values of Approval.Status.
const (
	ApprovalPending  = "pending"  // a require_approval decision opened it; nobody answered yet
	ApprovalApproved = "approved" // an approver granted it
	ApprovalDeclined = "declined" // an approver refused it
	ApprovalRefused  = "refused"  // an answer custody did not accept (bad approver, expired, ...)
	ApprovalUsed     = "used"     // a retried call carried it and the PDP verified it
)

// Approval is the approval part of a record. On the decision that opened it, Status is pending
// and ExpiresAt when it lapses; on the record of an answer (endpoint /v1/approvals), who answered
// and how; on the retried call that carried it, the verified evidence the policy saw.
type Approval struct {
	ID     string `json:"approval_id"`
	Status string `json:"status"`
	// Approver names who approved: an approver key's name, or for mcp_elicitation the caller
	// whose client said yes.
	Approver string `json:"approver,omitempty"`
	// ApprovedVia is the channel: approver_cli, signed_url or mcp_elicitation.
	ApprovedVia string     `json:"approved_via,omitempty"`
	ExpiresAt   *time.Time `json:"expires_at,omitempty"`
	// RequestDecisionID is the decision that opened the approval.
	RequestDecisionID string `json:"request_decision_id,omitempty"`
}
