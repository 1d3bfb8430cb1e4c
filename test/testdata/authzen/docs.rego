# Acme document sharing: who may read, edit or share which document.
#
# Written for any PDP that evaluates Rego behind an AuthZEN API; nothing in it
# is specific to custody. The decision is a plain boolean, for a subject of
# type "user", an action can_read, can_edit or can_share, and a resource of
# type "document", as an AuthZEN PEP sends them.
package acme.docs

default decision := false

decision if {
	input.action.name == "can_read"
	can_read
}

decision if {
	input.action.name == "can_edit"
	can_edit
}

decision if {
	input.action.name == "can_share"
	is_owner
}

doc := data.acme.documents[input.resource.id] if input.resource.type == "document"

# Only users hold documents; any other subject type is nobody here.
user_id := input.subject.id if input.subject.type == "user"

user := data.acme.users[user_id]

is_owner if doc.owner == user_id

# A PEP in read-only mode (context.read_only) gets no edits, owners included.
can_edit if {
	not input.context.read_only
	is_owner
}

can_edit if {
	not input.context.read_only
	user_id in doc.editors
}

can_read if is_owner

can_read if user_id in doc.editors

can_read if doc.visibility == "public"

can_read if {
	doc.visibility == "internal"
	user.department == doc.department
}
