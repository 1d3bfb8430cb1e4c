# Support for AuthZEN action search: which actions exist at all.
#
# actions lists every tool in the catalog as an AuthZEN action. It does not say
# what any particular agent or user may do; the action-search endpoint is
# expected to evaluate data.custody.authz.decision for each candidate.
package custody.search

import data.custody.authz

# The catalog, or an empty one when it is missing or malformed.
tools := data.custody.tools if {
	is_object(data.custody.tools)
} else := {}

# Sorted by tool name so the list is stable. Malformed catalog entries are
# left out: authz treats them as unknown tools, so they could never be allowed.
actions := [action |
	some name in sort(object.keys(tools))
	tool := tools[name]
	authz.well_formed_tool(tool)
	action := {"name": name, "properties": action_properties(tool)}
]

# The MCP server is the only property an action carries, and only when the
# catalog names one.
action_properties(tool) := {"server": tool.server} if {
	tool.server
} else := {}
