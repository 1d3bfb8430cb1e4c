package pdp

import (
	"testing"

	"github.com/open-policy-agent/opa/v1/ast"
)

// AST must build exactly the value OPA's generic conversion of Value gives: policies see one
// input shape whichever way it was made.
func TestInputASTMatchesValue(t *testing.T) {
	for name, in := range map[string]*Input{
		"empty": {},
		"full": {
			Subject:  Entity{Type: "user", ID: "alice", Properties: map[string]any{"scopes": []any{"a", "b"}, "n": 1.5, "nil": nil}},
			Action:   Action{Name: "send_email", Properties: map[string]any{"server": "mail", "arguments": map[string]any{"to": "bob"}}},
			Resource: Entity{Type: "mailbox", ID: "m", Properties: map[string]any{"owner": "alice"}},
			Context:  map[string]any{"ip": "10.0.0.1", "deep": map[string]any{"x": []any{true, false}}},
			Agent:    &Agent{ID: "spiffe://a", Type: "agent", Properties: map[string]any{"v": "1"}},
			Delegation: Delegation{Verified: true, Chain: []any{
				map[string]any{"type": "user", "id": "alice"},
				map[string]any{"type": "agent", "id": "spiffe://a", "issuer": "https://idp"},
			}},
			Task:          &Task{ID: "t", ParentID: "p", Attempt: 3, SessionID: "s", IntentSHA256: "h"},
			CorrelationID: "c-1",
		},
		"agent without properties, unverified": {
			Subject: Entity{Type: "agent", ID: "x"},
			Action:  Action{Name: "a"},
			Agent:   &Agent{ID: "x"},
			Task:    &Task{},
		},
	} {
		got, err := in.AST()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		want, err := ast.InterfaceToValue(in.Value())
		if err != nil {
			t.Fatal(err)
		}
		if got.Compare(want) != 0 {
			t.Errorf("%s:\n AST   %v\n Value %v", name, got, want)
		}
	}
}
