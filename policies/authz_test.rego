package custody.authz_test

import data.custody.authz
import data.custody.search

# ---------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------

mailer := "spiffe://acme.example/agents/mailer"

researcher := "spiffe://acme.example/agents/researcher"

ops := "spiffe://acme.example/agents/ops"

# A well-formed request: the mailer agent sends email from Alice's own mailbox,
# and Alice holds every scope any agent is granted. Tests derive their inputs
# from it and change only what they are about.
base_input := {
	"subject": {
		"type": "user",
		"id": "alice@acme.example",
		"properties": {
			"roles": ["employee"],
			"scopes": [
				"mail.send", "mail.read", "contacts.read",
				"files.read", "files.write", "web.search",
				"payments.send", "tickets.write",
			],
		},
	},
	"action": {
		"name": "send_email",
		"properties": {
			"server": "mail",
			"arguments": {"to": "bob@acme.example", "subject": "Q3 numbers"},
		},
	},
	"resource": {"type": "mailbox", "id": "alice", "properties": {"owner": "alice@acme.example"}},
	"context": {},
	"agent": {"id": mailer, "type": "agent", "properties": {}},
	"delegation": {"verified": true, "chain": [{"sub": "alice@acme.example", "act": mailer}]},
	"task": {
		"id": "task-1",
		"parent_id": null,
		"attempt": 1,
		"session_id": "session-1",
		"intent_sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
	},
	"correlation_id": "corr-1",
}

# call builds a request from base_input for the given agent, tool and server.
# A null server leaves the server out of the call.
call(agent_id, tool_name, server) := object.union(base_input, {
	"agent": {"id": agent_id},
	"action": {"name": tool_name, "properties": {"server": server}},
}) if server != null

call(agent_id, tool_name, null) := json.patch(base_input, [
	{"op": "replace", "path": "/agent/id", "value": agent_id},
	{"op": "replace", "path": "/action/name", "value": tool_name},
	{"op": "remove", "path": "/action/properties/server"},
])

# with_scopes replaces the user's scopes.
with_scopes(req, scopes) := json.patch(req, [{"op": "replace", "path": "/subject/properties/scopes", "value": scopes}])

# with_owner sets the owner of the resource.
with_owner(req, owner) := json.patch(req, [{"op": "replace", "path": "/resource/properties/owner", "value": owner}])

# with_roles replaces the user's roles.
with_roles(req, roles) := json.patch(req, [{"op": "replace", "path": "/subject/properties/roles", "value": roles}])

# without removes a field (a JSON pointer) from a request.
without(req, path) := json.patch(req, [{"op": "remove", "path": path}])

# with_field sets a field (a JSON pointer) of a request to any value.
with_field(req, path, value) := json.patch(req, [{"op": "add", "path": path, "value": value}])

allowed := {"allow": true, "reasons": ["allowed"], "obligations": {}}

denied(reasons) := {"allow": false, "reasons": reasons, "obligations": {}}

# ---------------------------------------------------------------------------
# Allow
# ---------------------------------------------------------------------------

test_allow_send_email_from_own_mailbox if {
	authz.decision == allowed with input as base_input
}

test_allow_low_risk_read if {
	authz.decision == allowed with input as call(mailer, "read_inbox", "mail")
}

test_allow_tool_without_catalog_server if {
	authz.decision == allowed with input as call(mailer, "search_contacts", null)
}

# The catalog does not pin search_contacts to a server, so any server will do.
test_allow_any_server_when_catalog_names_none if {
	authz.decision == allowed with input as call(mailer, "search_contacts", "crm")
}

# Fails closed: a tool the catalog pins to a server needs the call to name that
# server. Leaving the server out is denied like naming another one (issue 16:
# the old policy skipped the check when the server was missing).
test_deny_pinned_tool_without_server[tool] if {
	some [agent_id, tool] in [[mailer, "send_email"], [mailer, "read_inbox"], [ops, "write_file"], [ops, "transfer_funds"]]
	d := authz.decision with input as call(agent_id, tool, null)
	d.allow == false
	"tool_not_on_agent_server" in d.reasons
}

test_deny_pinned_tool_with_empty_action_properties if {
	req := with_field(base_input, "/action/properties", {})
	authz.decision == denied(["tool_not_on_agent_server"]) with input as req
}

test_allow_researcher_web_search if {
	authz.decision == allowed with input as call(researcher, "web_search", null)
}

test_allow_medium_risk_write_without_obligation if {
	req := with_field(call(ops, "write_file", "filesystem"), "/resource", {
		"type": "file",
		"id": "/home/alice/notes.txt",
		"properties": {"owner": "alice@acme.example"},
	})
	authz.decision == allowed with input as req
}

# A tool call without a resource carries {"type": "tool", "id": <tool>}, which
# the default data declares ownerless: the call is judged on scopes alone.
test_allow_write_to_unowned_resource if {
	req := with_field(call(ops, "create_ticket", null), "/resource", {"type": "tool", "id": "create_ticket"})
	authz.decision == allowed with input as req
}

# Ownership only restricts writes: reading another user's resource is a matter
# of scopes alone.
test_allow_read_of_other_users_resource if {
	req := with_owner(call(researcher, "read_file", "filesystem"), "bob@acme.example")
	authz.decision == allowed with input as req
}

# Everything else in the request is irrelevant to the default policy.
test_allow_minimal_request if {
	req := {
		"subject": {"id": "alice@acme.example", "properties": {"scopes": ["web.search"]}},
		"action": {"name": "web_search"},
		"agent": {"id": researcher},
	}
	authz.decision == allowed with input as req
}

# ---------------------------------------------------------------------------
# High risk: allowed only with an approval obligation
# ---------------------------------------------------------------------------

approval := {"require_approval": true, "approval_reason": "high_risk_tool", "approval_channels": ["approver_cli", "signed_url"]}

test_high_risk_transfer_requires_approval if {
	req := with_field(call(ops, "transfer_funds", "payments"), "/resource", {"type": "tool", "id": "transfer_funds"})
	authz.decision == {"allow": true, "reasons": ["allowed"], "obligations": approval} with input as req
}

test_high_risk_delete_requires_approval if {
	d := authz.decision with input as call(ops, "delete_file", "filesystem")
	d.allow
	d.obligations.require_approval == true
	d.obligations.approval_reason == "high_risk_tool"
}

test_low_and_medium_risk_have_no_approval_obligation if {
	authz.decision.obligations == {} with input as call(mailer, "read_inbox", "mail")
	authz.decision.obligations == {} with input as call(mailer, "send_email", "mail")
}

# A denied high-risk call carries no obligations: there is nothing to approve.
test_denied_high_risk_has_no_obligation if {
	req := with_scopes(call(ops, "transfer_funds", "payments"), ["files.read"])
	authz.decision == denied(["user_lacks_scope"]) with input as req
}

# ---------------------------------------------------------------------------
# Unknown or missing agent
# ---------------------------------------------------------------------------

test_deny_unregistered_agent if {
	req := call("spiffe://evil.example/agents/mailer", "send_email", "mail")
	authz.decision == denied(["unknown_agent"]) with input as req
}

test_deny_missing_agent if {
	authz.decision == denied(["unknown_agent"]) with input as without(base_input, "/agent")
}

test_deny_agent_without_id if {
	authz.decision == denied(["unknown_agent"]) with input as without(base_input, "/agent/id")
}

test_deny_agent_id_wrong_type if {
	authz.decision == denied(["malformed_input", "unknown_agent"]) with input as with_field(base_input, "/agent/id", 42)
}

test_deny_agent_not_an_object if {
	authz.decision == denied(["malformed_input", "unknown_agent"]) with input as with_field(base_input, "/agent", mailer)
}

# The registry is data: swapping it out changes who is known.
test_deny_agent_removed_from_registry if {
	authz.decision == denied(["unknown_agent"]) with input as base_input
		with data.custody.agents as {researcher: {"description": "x", "grants": ["web.search"]}}
}

test_deny_malformed_registry_entry if {
	authz.decision == denied(["unknown_agent"]) with input as base_input
		with data.custody.agents as {mailer: ["mail.send"]}
}

# ---------------------------------------------------------------------------
# Unknown tool
# ---------------------------------------------------------------------------

test_deny_unknown_tool if {
	authz.decision == denied(["unknown_tool"]) with input as call(mailer, "format_disk", null)
}

test_deny_missing_action_name if {
	authz.decision == denied(["unknown_tool"]) with input as without(base_input, "/action/name")
}

test_deny_action_name_wrong_type if {
	authz.decision == denied(["malformed_input", "unknown_tool"]) with input as with_field(base_input, "/action/name", ["send_email"])
}

test_deny_missing_action if {
	authz.decision == denied(["unknown_tool"]) with input as without(base_input, "/action")
}

# A catalog entry the policy cannot classify is as good as no entry.
test_deny_malformed_catalog_entries[note] if {
	some note, entry in {
		"no scope": {"access": "read", "risk": "low"},
		"scope not a string": {"scope": ["mail.send"], "access": "read", "risk": "low"},
		"unknown access": {"scope": "mail.send", "access": "admin", "risk": "low"},
		"unknown risk": {"scope": "mail.send", "access": "write", "risk": "none"},
		"server not a string": {"scope": "mail.send", "access": "write", "risk": "low", "server": 7},
		"not an object": "mail.send",
	}
	authz.decision == denied(["unknown_tool"]) with input as base_input
		with data.custody.tools as {"send_email": entry}
}

# ---------------------------------------------------------------------------
# Server pinning
# ---------------------------------------------------------------------------

test_deny_tool_on_other_server if {
	req := call(mailer, "send_email", "evil-mail")
	authz.decision == denied(["tool_not_on_agent_server"]) with input as req
}

test_deny_tool_server_wrong_type if {
	authz.decision == denied(["malformed_input", "tool_not_on_agent_server"]) with input as call(mailer, "send_email", 1)
	authz.decision == denied(["malformed_input", "tool_not_on_agent_server"]) with input as with_field(base_input, "/action/properties/server", null)
}

# A wrongly typed server is malformed even where the catalog pins none.
test_deny_server_wrong_type_for_unpinned_tool if {
	authz.decision == denied(["malformed_input"]) with input as call(mailer, "search_contacts", false)
}

# ---------------------------------------------------------------------------
# Delegation: agent grants ∩ user scopes
# ---------------------------------------------------------------------------

# The user holds mail.send, but the researcher was never granted it.
test_deny_agent_not_granted_scope if {
	req := call(researcher, "send_email", "mail")
	authz.decision == denied(["agent_not_granted_scope"]) with input as req
}

# The mailer is granted mail.send, but the user does not hold it.
test_deny_user_lacks_scope if {
	req := with_scopes(base_input, ["mail.read"])
	authz.decision == denied(["user_lacks_scope"]) with input as req
}

test_deny_both_sides_lack_scope if {
	req := with_scopes(call(researcher, "send_email", "mail"), ["files.read"])
	authz.decision == denied(["agent_not_granted_scope", "user_lacks_scope"]) with input as req
}

# Exhaustively over the catalog: a tool is allowed for an agent and user exactly
# when its scope is in both the agent's grants and the user's scopes.
intersection_cases[sprintf("%s %s user=%v", [agent_name, tool_name, scopes])] := {
	"input": with_scopes(call(agent_id, tool_name, object.get(tool, "server", null)), scopes),
	"expect_reasons": expect_reasons,
} if {
	some agent_name, agent_id in {"mailer": mailer, "researcher": researcher, "ops": ops}
	some tool_name, tool in data.custody.tools
	some scopes in [[], [tool.scope]]
	grants := data.custody.agents[agent_id].grants
	expect_reasons := {r | r := "agent_not_granted_scope"; not tool.scope in grants} | {r |
		r := "user_lacks_scope"
		not tool.scope in scopes
	}
}

# no_reasons is a named helper because `opa fmt` drops the parentheses in
# `x == (count(s) == 0)`, which changes its meaning.
no_reasons(s) if {
	count(s) == 0
} else := false

test_intersection_table[note] if {
	some note, case in intersection_cases
	d := authz.decision with input as case.input
	d.allow == no_reasons(case.expect_reasons)
	{r | some r in d.reasons} - {"allowed"} == case.expect_reasons
}

test_intersection_table_is_populated if {
	count(intersection_cases) == (3 * count(data.custody.tools)) * 2
}

test_effective_scopes_is_intersection if {
	req := with_scopes(base_input, ["mail.send", "files.write", "calendar.read"])
	authz.effective_scopes == {"mail.send"} with input as req
}

test_effective_scopes_empty_for_unknown_agent if {
	authz.effective_scopes == set() with input as without(base_input, "/agent")
}

# ---------------------------------------------------------------------------
# Ownership: writes to another user's resource
# ---------------------------------------------------------------------------

bobs_mailbox := with_field(base_input, "/resource", {"type": "mailbox", "id": "bob", "properties": {"owner": "bob@acme.example"}})

test_deny_write_to_other_users_resource if {
	authz.decision == denied(["resource_owned_by_other_user"]) with input as bobs_mailbox
}

test_admin_may_write_to_other_users_resource if {
	authz.decision == allowed with input as with_roles(bobs_mailbox, ["employee", "admin"])
}

# Being admin lifts the ownership rule only; scopes still apply.
test_admin_still_needs_scope if {
	req := with_scopes(with_roles(bobs_mailbox, ["admin"]), ["mail.read"])
	authz.decision == denied(["user_lacks_scope"]) with input as req
}

# An owner that cannot be matched to the user counts as somebody else's (and,
# if it is not a string, makes the request malformed too).
test_deny_write_when_owner_unmatchable[note] if {
	some note, [owner, want] in {
		"empty": ["", ["resource_owned_by_other_user"]],
		"null": [null, ["malformed_input", "resource_owned_by_other_user"]],
		"number": [42, ["malformed_input", "resource_owned_by_other_user"]],
		"list": [["alice@acme.example"], ["malformed_input", "resource_owned_by_other_user"]],
	}
	authz.decision == denied(want) with input as with_owner(base_input, owner)
}

# Only an "admin" element of a roles list counts, even for the admin override.
test_admin_role_must_be_in_a_list[note] if {
	some note, roles in {"string": "admin", "null": null, "object": {"admin": true}, "other roles": ["employee"]}
	d := authz.decision with input as with_roles(bobs_mailbox, roles)
	d.allow == false
	"resource_owned_by_other_user" in d.reasons
}

# No roles at all is fine: the user is simply not an admin.
test_missing_roles_is_not_admin if {
	authz.decision == allowed with input as without(base_input, "/subject/properties/roles")
	authz.decision == denied(["resource_owned_by_other_user"]) with input as without(bobs_mailbox, "/subject/properties/roles")
}

# ---------------------------------------------------------------------------
# Subject
# ---------------------------------------------------------------------------

test_deny_missing_subject if {
	# Without a user there are no scopes, and Alice's mailbox is not the
	# (absent) user's.
	authz.decision == denied(["missing_subject", "resource_owned_by_other_user", "user_lacks_scope"]) with input as without(base_input, "/subject")
}

test_deny_subject_without_id[note] if {
	some note, subject in {
		"no id": {"type": "user", "properties": base_input.subject.properties},
		"id a number": {"id": 7, "properties": base_input.subject.properties},
		"id empty": {"id": "", "properties": base_input.subject.properties},
	}
	d := authz.decision with input as with_field(base_input, "/subject", subject)
	d.allow == false
	"missing_subject" in d.reasons
}

# ---------------------------------------------------------------------------
# Hostile and malformed input: never an error, always a deny with reasons
# ---------------------------------------------------------------------------

hostile_inputs := {
	"scopes a string": with_scopes(base_input, "mail.send"),
	"scopes an object": with_scopes(base_input, {"mail.send": true}),
	"scopes null": with_scopes(base_input, null),
	"scopes of numbers": with_scopes(base_input, [1, 2]),
	"roles null": with_roles(base_input, null),
	"roles a string": with_roles(base_input, "employee"),
	"roles null on a foreign write": with_roles(bobs_mailbox, null),
	"owner null": with_owner(base_input, null),
	"resource null": with_field(base_input, "/resource", null),
	"resource properties a string": with_field(base_input, "/resource/properties", "alice@acme.example"),
	"agent properties a string": with_field(base_input, "/agent/properties", "x"),
	"server a number": with_field(base_input, "/action/properties/server", 25),
	"subject a number": with_field(base_input, "/subject", 42),
	"subject a string": with_field(base_input, "/subject", "alice@acme.example"),
	"subject properties a list": with_field(base_input, "/subject/properties", ["mail.send"]),
	"agent a list": with_field(base_input, "/agent", [mailer]),
	"agent null": with_field(base_input, "/agent", null),
	"action a string": with_field(base_input, "/action", "send_email"),
	"action null": with_field(base_input, "/action", null),
	"action name an object": with_field(base_input, "/action/name", {"send_email": true}),
	"action properties a string": with_field(base_input, "/action/properties", "mail"),
	"input a number": 42,
	"input a string": "allow",
	"input null": null,
	"input a list": [base_input],
	"input empty": {},
}

test_hostile_inputs_deny_with_reasons[note] if {
	some note, req in hostile_inputs
	d := authz.decision with input as req
	is_object(d)
	object.keys(d) == {"allow", "reasons", "obligations"}
	d.allow == false
	count(d.reasons) > 0
	every r in d.reasons {
		is_string(r)
		regex.match(`^[a-z]+(_[a-z]+)*$`, r)
	}
	d.obligations == {}
}

# Resource properties that are not an object hide the owner: malformed, so
# the ownership rule cannot be sidestepped that way.
test_resource_properties_not_object_is_malformed if {
	authz.decision == denied(["malformed_input", "resource_owner_unknown"]) with input as with_field(bobs_mailbox, "/resource/properties", 5)
}

test_malformed_fields_names_the_fields if {
	req := json.patch(base_input, [
		{"op": "replace", "path": "/subject/properties/scopes", "value": ["mail.send", 7]},
		{"op": "replace", "path": "/subject/properties/roles", "value": null},
		{"op": "replace", "path": "/agent/properties", "value": []},
		{"op": "replace", "path": "/resource/properties/owner", "value": {"id": "alice@acme.example"}},
	])
	authz.malformed_fields == {
		"subject.properties.scopes",
		"subject.properties.roles",
		"agent.properties",
		"resource.properties.owner",
	} with input as req
}

test_malformed_fields_empty_for_well_formed_input if {
	authz.malformed_fields == set() with input as base_input
}

test_malformed_fields_input_not_an_object if {
	authz.malformed_fields == {"input"} with input as [base_input]
}

# Fields the default policy does not read are not its business.
test_unread_fields_are_not_checked if {
	req := json.patch(base_input, [
		{"op": "replace", "path": "/context", "value": null},
		{"op": "replace", "path": "/delegation", "value": "yes"},
		{"op": "replace", "path": "/task", "value": 3},
		{"op": "replace", "path": "/correlation_id", "value": []},
	])
	authz.decision == allowed with input as req
}

test_no_input_at_all if {
	authz.decision == denied(["malformed_input", "missing_subject", "unknown_agent", "unknown_tool"])
}

# Registry and catalog replaced by garbage (as if the data failed to load).
test_missing_data_denies if {
	authz.decision == denied(["unknown_agent", "unknown_tool"]) with input as base_input
		with data.custody.agents as null
		with data.custody.tools as null
}

# The safety-net default: if the main rule were ever undefined (here forced by
# making sort undefined), the decision is still a reasoned deny.
never(_) := [] if false

test_default_decision_when_evaluation_is_undefined if {
	authz.decision == denied(["policy_error"]) with input as bobs_mailbox with sort as never
}

# ---------------------------------------------------------------------------
# Action search
# ---------------------------------------------------------------------------

test_search_actions_lists_catalog if {
	search.actions == [
		{"name": "create_ticket", "properties": {}},
		{"name": "delete_file", "properties": {"server": "filesystem"}},
		{"name": "read_file", "properties": {"server": "filesystem"}},
		{"name": "read_inbox", "properties": {"server": "mail"}},
		{"name": "search_contacts", "properties": {}},
		{"name": "send_email", "properties": {"server": "mail"}},
		{"name": "transfer_funds", "properties": {"server": "payments"}},
		{"name": "web_search", "properties": {}},
		{"name": "write_file", "properties": {"server": "filesystem"}},
	]
}

test_search_actions_skips_malformed_entries if {
	search.actions == [{"name": "ok", "properties": {"server": "s"}}] with data.custody.tools as {
		"ok": {"scope": "a", "access": "read", "risk": "low", "server": "s"},
		"bad": {"scope": "a", "access": "delete", "risk": "low"},
	}
}

test_search_actions_empty_without_catalog if {
	search.actions == [] with data.custody.tools as null
	search.actions == [] with data.custody.tools as ["send_email"]
}

# Every listed action names a tool authz knows, on the server the catalog pins.
test_search_actions_are_known_tools[name] if {
	some action in search.actions
	name := action.name
	req := object.union(call(mailer, name, null), {"action": {"properties": action.properties}})
	d := authz.decision with input as req
	not "unknown_tool" in d.reasons
	not "tool_not_on_agent_server" in d.reasons
}

test_high_risk_needs_verified_delegation if {
	req := with_field(call(ops, "delete_file", "filesystem"), "/delegation", {"verified": false, "chain": []})
	d := authz.decision with input as req
	not d.allow
	d.reasons == ["unverified_delegation"]
	d.obligations == {}
}

test_high_risk_delegation_must_be_exactly_true if {
	req := with_field(call(ops, "delete_file", "filesystem"), "/delegation", {"verified": "true"})
	d := authz.decision with input as req
	not d.allow
	"unverified_delegation" in d.reasons
}

test_low_risk_allowed_for_asserted_delegation if {
	req := with_field(call(ops, "read_file", "filesystem"), "/delegation", {"verified": false, "chain": []})
	d := authz.decision with input as req
	d.allow
}

# ---------------------------------------------------------------------------
# Fail closed on ownership: a write names its owner or an ownerless type
# ---------------------------------------------------------------------------

# Issue 16: a write whose resource names no owner skipped the ownership check.
test_deny_write_without_owner[note] if {
	some note, resource in {
		"no owner": {"type": "mailbox", "id": "bob"},
		"empty properties": {"type": "mailbox", "id": "bob", "properties": {}},
		"other fields only": {"type": "file", "id": "/home/bob/notes.txt", "properties": {"path": "/home/bob"}},
		"tool resource naming a file": {"type": "tool", "id": "/home/bob/notes.txt"},
	}
	req := with_field(base_input, "/resource", resource)
	authz.decision == denied(["resource_owner_unknown"]) with input as req
}

test_deny_write_without_owner_when_tool_not_declared if {
	req := with_field(call(ops, "create_ticket", null), "/resource", {"type": "tool", "id": "create_ticket"})
	authz.decision == denied(["resource_owner_unknown"]) with input as req with data.custody.ownerless_resource_types as []
}

test_allow_write_to_declared_ownerless_type if {
	req := with_field(base_input, "/resource", {"type": "mailbox", "id": "shared"})
	authz.decision == allowed with input as req with data.custody.ownerless_resource_types as ["mailbox"]
}

# Malformed declarations declare nothing.
test_ownerless_declaration_must_be_a_list_of_strings[note] if {
	some note, declared in {"string": "mailbox", "object": {"mailbox": true}, "numbers": [1, 2], "null": null}
	req := with_field(base_input, "/resource", {"type": "mailbox", "id": "shared"})
	authz.decision == denied(["resource_owner_unknown"]) with input as req with data.custody.ownerless_resource_types as declared
}

# Reads need no owner.
test_allow_read_without_owner if {
	req := with_field(call(researcher, "read_file", "filesystem"), "/resource", {"type": "file", "id": "/srv/readme"})
	authz.decision == allowed with input as req
}

test_admin_may_write_without_owner if {
	req := with_roles(with_field(base_input, "/resource", {"type": "mailbox", "id": "bob"}), ["admin"])
	authz.decision == allowed with input as req
}

# ---------------------------------------------------------------------------
# Issuer-bound subjects
# ---------------------------------------------------------------------------

with_iss(req, iss) := json.patch(req, [{"op": "add", "path": "/subject/properties/iss", "value": iss}])

# Issue 16: with two trusted issuers, a token from the second naming
# alice@acme.example was alice for the policy.
test_deny_subject_from_other_issuer[note] if {
	some note, req in {
		"other issuer": with_iss(base_input, "https://idp.partner.example"),
		"domain case": with_iss(with_owner(with_field(base_input, "/subject/id", "alice@ACME.example"), "alice@ACME.example"), "https://idp.partner.example"),
		"issuer case": with_iss(base_input, "https://IDP.acme.example"),
	}
	authz.decision == denied(["subject_issuer_not_trusted"]) with input as req
}

test_allow_subject_from_trusted_issuer if {
	authz.decision == allowed with input as with_iss(base_input, "https://idp.acme.example")
}

# A domain the data binds to no issuer is not restricted by it.
test_allow_unbound_domain_from_any_issuer if {
	req := with_owner(with_field(with_iss(base_input, "https://idp.partner.example"), "/subject/id", "carol@partner.example"), "carol@partner.example")
	authz.decision == allowed with input as req
}

test_deny_issuer_wrong_type[note] if {
	some note, iss in {"number": 1, "null": null, "list": ["https://idp.acme.example"]}
	d := authz.decision with input as with_iss(base_input, iss)
	d.allow == false
	"malformed_input" in d.reasons
}
