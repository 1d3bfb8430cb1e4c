# What Acme offers to AuthZEN search: custody reads the candidates of each
# search kind from data.custody.search and decides each with the decision rule.
package custody.search

subjects := [{"type": "user", "id": id} | some id, _ in data.acme.users]

resources := [{"type": "document", "id": id} | some id, _ in data.acme.documents]

actions := [{"name": name} | some name in ["can_read", "can_edit", "can_share"]]
