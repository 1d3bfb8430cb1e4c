package custody.approval_test

# Tests of the approval rules (authz.rego, "Approvals"): which approval evidence
# lifts the require_approval obligation of a high-risk tool. Only the PDP sets
# input.approval, after verifying it; these tests also try the fields a caller
# could send itself.

import data.custody.authz

ops := "spiffe://acme.example/agents/ops"

# transfer_funds by the ops agent for Alice, with verified delegation: allowed,
# with the approval obligation unless approved.
transfer := {
	"subject": {"type": "user", "id": "alice@acme.example", "properties": {"scopes": ["payments.send", "files.write"]}},
	"action": {"name": "transfer_funds", "properties": {"server": "payments", "arguments": {"amount": 100}}},
	"resource": {"type": "account", "id": "acct-1", "properties": {"owner": "alice@acme.example"}},
	"context": {},
	"agent": {"id": ops, "type": "agent", "properties": {}},
	"delegation": {"verified": true, "chain": []},
}

delete := object.union(transfer, {"action": {"name": "delete_file", "properties": {"server": "filesystem", "arguments": {"path": "/a"}}}})

evidence(via) := {"approved": true, "approver": "carol", "approved_via": via, "approval_id": "ap-1"}

required := {
	"require_approval": true,
	"approval_reason": "high_risk_tool",
	"approval_channels": ["approver_cli", "signed_url"],
}

test_unapproved_high_risk_requires_out_of_band_approval if {
	every req in [transfer, delete] {
		obligations_of(req) == required
		allowed(req)
	}
}

# obligations_of and allowed read the decision of req; comparing through a
# function keeps the type checker from matching the policy's inferred types
# against the fixtures.
obligations_of(req) := d.obligations if d := authz.decision with input as req

allowed(req) if {
	d := authz.decision with input as req
	d.allow == true
	d.reasons == ["allowed"]
}

test_out_of_band_approval_lifts_the_obligation if {
	every via in ["approver_cli", "signed_url"] {
		every req in [transfer, delete] {
			approved := object.union(req, {"approval": evidence(via)})
			obligations_of(approved) == {}
			allowed(approved)
		}
	}
}

# The agent's own MCP client saying yes proves no human: not enough for a
# high-risk tool.
test_elicitation_does_not_approve_high_risk_tools if {
	every req in [transfer, delete] {
		obligations_of(object.union(req, {"approval": evidence("mcp_elicitation")})) == required
	}
}

# What a caller could send itself never counts: the server refuses these
# fields, and the policy ignores them besides.
test_caller_sent_evidence_is_ignored if {
	forged := evidence("approver_cli")
	every req in [
		object.union(transfer, {"resource": {"properties": {"approval": forged}}}),
		object.union(transfer, {"context": {"approval": forged}}),
		object.union(transfer, {"action": {"properties": {"approval": forged}}}),
	] {
		obligations_of(req) == required
	}
}

test_evidence_must_be_exactly_approved if {
	every bad in [
		{"approved": "true", "approved_via": "approver_cli"},
		{"approved": false, "approved_via": "approver_cli"},
		{"approved": true},
		{"approved": true, "approved_via": "email"},
		{"approved": true, "approved_via": ["approver_cli"]},
		"approved",
		null,
	] {
		obligations_of(object.union(transfer, {"approval": bad})) == required
	}
}

# An approval never turns a deny into an allow: it only lifts the obligation
# of a call the policy allows.
test_approval_does_not_allow_a_denied_call if {
	req := object.union(transfer, {"subject": {"properties": {"scopes": ["files.read"]}}, "approval": evidence("approver_cli")})
	d := authz.decision with input as req
	not d.allow
	"user_lacks_scope" in d.reasons
	d.obligations == {}
}
