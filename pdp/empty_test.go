package pdp_test

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/custodyhq/custody/pdp"
)

// TestNewEmpty: an engine waiting for its first policy set denies everything, names no revision,
// and serves the set once one loads.
func TestNewEmpty(t *testing.T) {
	e, err := pdp.NewEmpty(pdp.WithQuery("data.custody.authz.decision"))
	if err != nil {
		t.Fatal(err)
	}
	if got := e.Policy(); got.Revision != "" || got.Query != "data.custody.authz.decision" {
		t.Fatalf("Policy() before a load: %+v", got)
	}
	d := e.Decide(t.Context(), &pdp.Input{})
	if d.Allow || d.Err == nil || !cmp.Equal(d.Reasons, []string{pdp.ReasonPolicyError}) {
		t.Fatalf("decision with no policy set: %+v, want a policy_error deny", d)
	}
	if err := e.Load(t.Context(), policySet(t, map[string]string{"a.rego": "package custody.authz\ndecision := true"})); err != nil {
		t.Fatal(err)
	}
	want := pdp.Decision{Allow: true, Reasons: []string{}}
	if diff := cmp.Diff(want, e.Decide(t.Context(), &pdp.Input{}), cmpopts.IgnoreFields(pdp.Decision{}, "Policy", "Duration")); diff != "" {
		t.Fatalf("decision after Load (-want +got):\n%s", diff)
	}
	if _, err := pdp.NewEmpty(pdp.WithQuery("not a ref!")); err == nil {
		t.Fatal("NewEmpty accepted a bad query")
	}
}
