package pdp_test

import (
	"context"
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/custodyhq/custody/bundles"
	"github.com/custodyhq/custody/pdp"
	"github.com/custodyhq/custody/policies"
)

func TestCandidates(t *testing.T) {
	const decision = "package custody.authz\ndecision := true\n"
	tests := []struct {
		name    string
		search  string // a module of package custody.search; empty for none
		kind    pdp.SearchKind
		in      pdp.Input
		want    []any
		wantErr bool
	}{
		{
			name: "array in the policy's order",
			search: `package custody.search
actions := [{"name": "b"}, {"name": "a"}]`,
			kind: pdp.SearchActions,
			want: []any{map[string]any{"name": "b"}, map[string]any{"name": "a"}},
		},
		{
			name: "a set is a sorted list",
			search: `package custody.search
resources contains {"type": "doc", "id": id} if some id in ["2", "1"]`,
			kind: pdp.SearchResources,
			want: []any{map[string]any{"type": "doc", "id": "1"}, map[string]any{"type": "doc", "id": "2"}},
		},
		{
			name: "the rule reads the search input",
			search: `package custody.search
subjects := [{"type": input.subject.type, "id": "alice"}]`,
			kind: pdp.SearchSubjects,
			in:   pdp.Input{Subject: pdp.Entity{Type: "employee"}},
			want: []any{map[string]any{"type": "employee", "id": "alice"}},
		},
		{
			name: "undefined is no candidates",
			search: `package custody.search
actions := [{"name": "a"}]`,
			kind: pdp.SearchSubjects,
			want: []any{},
		},
		{
			name: "no search package at all",
			kind: pdp.SearchResources,
			want: []any{},
		},
		{
			name: "an object is an error",
			search: `package custody.search
actions := {"name": "a"}`,
			kind:    pdp.SearchActions,
			wantErr: true,
		},
		{
			name: "a conflict is an error",
			search: `package custody.search
actions := [1] if input.context.x
actions := [2] if input.context.x`,
			kind:    pdp.SearchActions,
			in:      pdp.Input{Context: map[string]any{"x": true}},
			wantErr: true,
		},
		{
			name:    "unknown kind",
			kind:    pdp.SearchKind("tools"),
			wantErr: true,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			files := map[string]string{"authz.rego": decision}
			if tc.search != "" {
				files["search.rego"] = tc.search
			}
			e := newEngine(t, policySet(t, files))
			got, err := e.Candidates(t.Context(), tc.kind, &tc.in)
			if (err != nil) != tc.wantErr {
				t.Fatalf("Candidates error = %v, want error %v", err, tc.wantErr)
			}
			if tc.wantErr {
				return
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("candidates (-want +got):\n%s", diff)
			}
		})
	}
}

func TestCandidatesUnknownKindIsSentinel(t *testing.T) {
	e := newEngine(t, policySet(t, map[string]string{"authz.rego": "package custody.authz\ndecision := true\n"}))
	_, err := e.Candidates(t.Context(), "tools", &pdp.Input{})
	if !errors.Is(err, pdp.ErrUnknownSearchKind) {
		t.Fatalf("error = %v, want ErrUnknownSearchKind", err)
	}
}

// TestCandidatesFollowReload: a reload swaps the candidate queries with the decision query.
func TestCandidatesFollowReload(t *testing.T) {
	e := newEngine(t, policySet(t, map[string]string{
		"authz.rego":  "package custody.authz\ndecision := true\n",
		"search.rego": "package custody.search\nactions := [{\"name\": \"old\"}]\n",
	}))
	if err := e.Load(context.Background(), policySet(t, map[string]string{
		"authz.rego":  "package custody.authz\ndecision := true\n",
		"search.rego": "package custody.search\nactions := [{\"name\": \"new\"}]\n",
	})); err != nil {
		t.Fatal(err)
	}
	got, err := e.Candidates(t.Context(), pdp.SearchActions, &pdp.Input{})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]any{map[string]any{"name": "new"}}, got); diff != "" {
		t.Errorf("candidates after reload (-want +got):\n%s", diff)
	}
}

// TestDefaultPolicySetOffersTheToolCatalog: the embedded policies answer action search with
// their tool catalog and offer no subject or resource candidates.
func TestDefaultPolicySetOffersTheToolCatalog(t *testing.T) {
	set, err := bundles.FromFS(policies.FS, "embedded")
	if err != nil {
		t.Fatal(err)
	}
	e := newEngine(t, set)
	actions, err := e.Candidates(t.Context(), pdp.SearchActions, &pdp.Input{})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, a := range actions {
		names = append(names, a.(map[string]any)["name"].(string))
	}
	want := []string{"create_ticket", "delete_file", "read_file", "read_inbox", "search_contacts", "send_email", "transfer_funds", "web_search", "write_file"}
	if diff := cmp.Diff(want, names); diff != "" {
		t.Errorf("action candidates (-want +got):\n%s", diff)
	}
	for _, k := range []pdp.SearchKind{pdp.SearchSubjects, pdp.SearchResources} {
		got, err := e.Candidates(t.Context(), k, &pdp.Input{})
		if err != nil || len(got) != 0 {
			t.Errorf("%s candidates = %v, %v; want none", k, got, err)
		}
	}
}
