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

// BenchmarkInputAST converts a call like the load harness's distinct traffic.
func BenchmarkInputAST(b *testing.B) {
	in := &Input{
		Subject: Entity{Type: "user", ID: "user12@acme.example", Properties: map[string]any{
			"roles": []any{"employee"}, "scopes": []any{"contacts.read", "files.read", "mail.send", "tickets.write", "web.search", "u-1"}}},
		Action:   Action{Name: "create_ticket", Properties: map[string]any{"server": "filesystem", "arguments": map[string]any{"priority": "high", "title": "issue 0"}}},
		Resource: Entity{Type: "tool", ID: "create_ticket", Properties: map[string]any{}},
		Context:  map[string]any{"channel": "slack", "client_ip": "10.0.18.115"},
		Agent:    &Agent{ID: "spiffe://acme.example/agents/researcher", Type: "agent", Properties: map[string]any{"deployment": "prod-1", "model": "gpt-x"}},
		Delegation: Delegation{Chain: []any{
			map[string]any{"type": "user", "id": "user12@acme.example"},
			map[string]any{"type": "agent", "id": "spiffe://acme.example/agents/researcher"},
		}},
		Task:          &Task{ID: "t-1-00000", Attempt: 1, SessionID: "s-36", IntentSHA256: "3303dc3e295433e09e3f160d95c4bb19af81cff76412dc38979c8271f96d0dd6"},
		CorrelationID: "load-1-00000",
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := in.AST(); err != nil {
			b.Fatal(err)
		}
	}
}
