# custody's default authorization policy: may this AI agent, acting for this
# user, call this tool on this resource?
#
# The PDP evaluates data.custody.authz.decision, which is always an object
#
#   {"allow": bool, "reasons": [string, ...], "obligations": {...}}
#
# Design:
#   * Default deny. Every requirement is written as a positive rule ("the agent
#     is registered", "the tool is in the catalog") and its deny reason fires on
#     `not requirement`. A missing or wrongly typed input field therefore leaves
#     the requirement undefined, which denies with a reason. Nothing here can
#     allow by accident because a field was absent.
#   * Never error on hostile input. Input is only read through plain
#     references (undefined on a type mismatch, never an error), and every
#     value is type-checked before it reaches a built-in function.
#   * The request is allowed exactly when the set of deny reasons is empty, so
#     every deny carries at least one stable snake_case reason code.
package custody.authz

# ---------------------------------------------------------------------------
# The decision
# ---------------------------------------------------------------------------

# Safety net: if evaluation of the rule below were ever undefined, still
# answer with a well-formed deny rather than nothing.
default decision := {"allow": false, "reasons": ["policy_error"], "obligations": {}}

decision := {
	"allow": allow,
	"reasons": reasons,
	"obligations": obligations,
}

default allow := false

allow if count(deny_reasons) == 0

# Deny reasons are sorted so the same request always yields the same answer.
reasons := ["allowed"] if {
	allow
} else := sort(deny_reasons)

default obligations := {}

# High-risk tools are never allowed outright: the PDP hands the enforcement
# point an obligation to get a human's approval before the call goes through,
# and names the approval channels that count. Once an approval that counts is
# in the input, the retried call is allowed without the obligation.
obligations := {
	"require_approval": true,
	"approval_reason": "high_risk_tool",
	"approval_channels": approval_channels,
} if {
	allow
	tool.risk == "high"
	not approved
}

# ---------------------------------------------------------------------------
# Approvals
# ---------------------------------------------------------------------------

# The approval channels that lift a high-risk tool's obligation: an approver
# with an approver key (`custody approve`) or a signed approval link. Not
# mcp_elicitation: that is the agent's own MCP client saying yes, which proves
# no human, so it never approves transfer_funds, delete_file or any other
# high-risk tool.
approval_channels := ["approver_cli", "signed_url"]

# The call carries approval evidence that counts. Only the PDP sets
# input.approval, and only after verifying that an approval was granted for
# this very call (subject, agent, tool, server, arguments, resource) and not
# used before: what a caller sends (resource.properties.approval,
# context.approval) is refused by the server and never read here.
approved if {
	input.approval.approved == true
	via := input.approval.approved_via
	is_string(via)
	via in approval_channels
}

# ---------------------------------------------------------------------------
# Deny reasons, one per failed requirement
# ---------------------------------------------------------------------------

# A field the policy reads is present but of the wrong type (see
# malformed_fields): a confused or hostile caller. Deny the whole request
# rather than guess what it meant.
deny_reasons contains "malformed_input" if count(malformed_fields) > 0

# Someone has to be on whose behalf the agent acts.
deny_reasons contains "missing_subject" if not subject_id

# Only registered agents may act; an absent agent (e.g. a plain AuthZEN call
# with no agent) is treated the same as an unregistered one.
deny_reasons contains "unknown_agent" if not agent

# Only catalogued tools may be called: we cannot judge scope, access or risk of
# a tool we know nothing about.
deny_reasons contains "unknown_tool" if not tool

# The catalog pins the tool to an MCP server, and the call names a different
# one: the agent is calling a look-alike tool on some other server.
deny_reasons contains "tool_not_on_agent_server" if {
	catalog_server := tool.server
	not input.action.properties.server == catalog_server
}

# The reason above fires, failing closed, when the call names no server at all:
# a pinned tool is only allowed on the server the catalog pins it to, and a call
# that does not say where it runs could run anywhere.

# Delegation: the agent can use at most the intersection of what the user has
# and what the agent was granted (see effective_scopes). Each side is checked
# on its own so the reason says which side is missing; both may fire at once.
deny_reasons contains "agent_not_granted_scope" if {
	agent # an unknown agent or tool is already reported as such
	tool
	not tool.scope in agent_grants
}

deny_reasons contains "user_lacks_scope" if {
	tool # an unknown tool is already reported as unknown_tool
	not tool.scope in user_scopes
}

# High-risk tools act only on delegation that a trusted issuer proved (a verified
# token chain): an asserted "I act for alice" is not enough to move money or
# delete files. Low- and medium-risk tools still work for asserted identities,
# and every record says which it was.
deny_reasons contains "unverified_delegation" if {
	tool.risk == "high"
	not delegation_verified
}

delegation_verified if input.delegation.verified == true

# An agent may not modify another user's resource just because its user holds
# the scope; only admins may.
deny_reasons contains "resource_owned_by_other_user" if {
	tool.access == "write"
	resource_owned_by_other_user
	not user_is_admin
}

# A write must say whose resource it changes: a resource without an owner is
# only written to when its type is declared ownerless in
# data.custody.ownerless_resource_types. Leaving the owner out therefore denies
# rather than skipping the ownership check.
deny_reasons contains "resource_owner_unknown" if {
	tool.access == "write"
	not input.resource.properties.owner
	not ownerless_resource
	not user_is_admin
}

# A verified subject carries the issuer that proved it in
# subject.properties.iss (custody sets it from the token and strips it from
# asserted subjects). Where data.custody.subject_issuers binds the subject's
# email domain to issuers, the subject must come from one of them: another
# trusted issuer cannot speak for alice@acme.example.
deny_reasons contains "subject_issuer_not_trusted" if {
	iss := input.subject.properties.iss
	trusted := data.custody.subject_issuers[subject_domain]
	not iss in trusted
}

# ---------------------------------------------------------------------------
# Input shape
# ---------------------------------------------------------------------------

# The malformed fields of the input, as dotted paths, for explaining a
# malformed_input deny. Each field the policy reads must have its type, if
# present. A missing optional field is fine (no roles means not an admin), but
# a present field of the wrong type, null included, is malformed. Fields the
# default policy does not read (context, delegation, task, correlation_id) are
# left alone.
#
# One rule per field, each a plain reference and a type test: a reference is
# undefined when the field (or its parent) is absent, so nothing fires for it,
# and type_name is total, so nothing errors. This is what OPA evaluates fastest;
# walking a table of paths with object.get cost more than the rest of the
# decision together.
malformed_fields contains "input" if not input_is_object

# A helper rather than `not is_object(input)` inline: when there is no input at
# all, OPA evaluates that inline negation as false, while `not` of an
# undefined rule is true.
input_is_object if is_object(input)

malformed_fields contains "subject" if type_name(input.subject) != "object"

malformed_fields contains "subject.id" if type_name(input.subject.id) != "string"

malformed_fields contains "subject.properties" if type_name(input.subject.properties) != "object"

malformed_fields contains "subject.properties.scopes" if type_name(input.subject.properties.scopes) != "array"

malformed_fields contains "subject.properties.roles" if type_name(input.subject.properties.roles) != "array"

malformed_fields contains "agent" if type_name(input.agent) != "object"

malformed_fields contains "agent.id" if type_name(input.agent.id) != "string"

malformed_fields contains "agent.properties" if type_name(input.agent.properties) != "object"

malformed_fields contains "action" if type_name(input.action) != "object"

malformed_fields contains "action.name" if type_name(input.action.name) != "string"

malformed_fields contains "action.properties" if type_name(input.action.properties) != "object"

malformed_fields contains "action.properties.server" if type_name(input.action.properties.server) != "string"

malformed_fields contains "resource" if type_name(input.resource) != "object"

malformed_fields contains "resource.properties" if type_name(input.resource.properties) != "object"

malformed_fields contains "resource.properties.owner" if type_name(input.resource.properties.owner) != "string"

malformed_fields contains "subject.properties.iss" if type_name(input.subject.properties.iss) != "string"

# Scopes and roles, if present, must be arrays of strings.
malformed_fields contains "subject.properties.scopes" if {
	is_array(input.subject.properties.scopes)
	some element in input.subject.properties.scopes
	not is_string(element)
}

malformed_fields contains "subject.properties.roles" if {
	is_array(input.subject.properties.roles)
	some element in input.subject.properties.roles
	not is_string(element)
}

# ---------------------------------------------------------------------------
# Who is asking: the user (subject)
# ---------------------------------------------------------------------------

# The delegating user's id; undefined unless it is a non-empty string.
subject_id := input.subject.id if {
	is_string(input.subject.id)
	input.subject.id != ""
}

# The user's scopes. Anything but an array of strings counts as no scopes:
# malformed input never widens access (and is denied as malformed_input anyway).
user_scopes := {s |
	is_array(input.subject.properties.scopes)
	some s in input.subject.properties.scopes
	is_string(s)
}

# Roles must be an array; "admin" as a bare string, null, etc. do not count.
user_is_admin if {
	is_array(input.subject.properties.roles)
	"admin" in input.subject.properties.roles
}

# ---------------------------------------------------------------------------
# Who is acting: the agent
# ---------------------------------------------------------------------------

# The registry entry of the calling agent; undefined when the agent is absent,
# has no string id, or is not registered.
agent := entry if {
	is_string(input.agent.id)
	entry := data.custody.agents[input.agent.id]
	is_object(entry)
}

# The scopes the agent may ever use, whoever it acts for. Malformed grants
# count as none.
agent_grants := {g |
	is_array(agent.grants)
	some g in agent.grants
	is_string(g)
}

# What the agent may actually do for this user: never more than either side.
# Not needed for the decision itself (the two scope deny reasons above are
# equivalent); exposed so callers can explain a decision.
effective_scopes := user_scopes & agent_grants

# ---------------------------------------------------------------------------
# What is being done: the tool and the resource
# ---------------------------------------------------------------------------

# The catalog entry of the requested tool; undefined when the action has no
# string name, the tool is not in the catalog, or its entry is malformed. A
# tool we cannot fully classify is treated as unknown, so it is never allowed.
tool := entry if {
	is_string(input.action.name)
	entry := data.custody.tools[input.action.name]
	well_formed_tool(entry)
}

# A usable catalog entry has a scope, a known access kind and risk level, and
# (optionally) a server name.
well_formed_tool(t) if {
	is_object(t)
	is_string(t.scope)
	t.access in {"read", "write"}
	t.risk in {"low", "medium", "high"}
	is_string(object.get(t, "server", ""))
}

# The resource names an owner and it is not the user. Any owner value we cannot
# positively match to the user (another id, null, a number, or a missing
# subject) counts as someone else's: for writes we fail closed. A resource
# without an owner field (e.g. {"type": "tool"}) is nobody's.
resource_owned_by_other_user if {
	owner := input.resource.properties.owner
	not is_subject(owner)
}

is_subject(id) if id == subject_id

# The resource has no owner by declaration: its type is listed in
# data.custody.ownerless_resource_types. A "tool" resource is the tool itself
# (what a call that names no other resource carries), so it must name the tool
# being called: {"type": "tool", "id": "/home/bob/notes.txt"} is not ownerless.
ownerless_resource if {
	is_string(input.resource.type)
	input.resource.type != "tool"
	input.resource.type in ownerless_resource_types
}

ownerless_resource if {
	input.resource.type == "tool"
	"tool" in ownerless_resource_types
	input.resource.id == input.action.name
}

ownerless_resource_types := {t |
	is_array(data.custody.ownerless_resource_types)
	some t in data.custody.ownerless_resource_types
	is_string(t)
}

# The lower-cased domain of an email-shaped subject id, alice@acme.example.
subject_domain := lower(parts[count(parts) - 1]) if {
	parts := split(subject_id, "@")
	count(parts) > 1
}
