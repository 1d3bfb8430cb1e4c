package pdp_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"runtime/metrics"
	"sync"
	"testing"
	"testing/fstest"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/open-policy-agent/opa/v1/rego"
	"github.com/open-policy-agent/opa/v1/util"

	"github.com/custodyhq/custody/bundles"
	"github.com/custodyhq/custody/pdp"
	"github.com/custodyhq/custody/policies"
)

// policySet builds a policy set from Rego sources keyed by file name.
func policySet(t testing.TB, files map[string]string) pdp.PolicySet {
	t.Helper()
	fsys := fstest.MapFS{}
	for name, src := range files {
		fsys[name] = &fstest.MapFile{Data: []byte(src)}
	}
	set, err := bundles.FromFS(fsys, "test")
	if err != nil {
		t.Fatalf("load policy set: %v", err)
	}
	return set
}

func newEngine(t testing.TB, set pdp.PolicySet, opts ...pdp.Option) *pdp.Engine {
	t.Helper()
	e, err := pdp.New(context.Background(), set, opts...)
	if err != nil {
		t.Fatalf("pdp.New: %v", err)
	}
	return e
}

func TestDecideShapes(t *testing.T) {
	tests := []struct {
		name    string
		rego    string
		want    pdp.Decision
		wantErr bool
	}{
		{
			name: "boolean true",
			rego: "package custody.authz\ndecision := true",
			want: pdp.Decision{Allow: true, Reasons: []string{}},
		},
		{
			name: "boolean false",
			rego: "package custody.authz\ndecision := false",
			want: pdp.Decision{Reasons: []string{"denied"}},
		},
		{
			name: "object allow with obligations",
			rego: `package custody.authz
decision := {"allow": true, "reasons": ["ok"], "obligations": {"require_approval": true}}`,
			want: pdp.Decision{Allow: true, Reasons: []string{"ok"}, Obligations: map[string]any{"require_approval": true}},
		},
		{
			name: "object deny without reasons gets one",
			rego: "package custody.authz\ndecision := {\"allow\": false}",
			want: pdp.Decision{Reasons: []string{"denied"}},
		},
		{
			name: "undefined is no_decision",
			rego: "package custody.authz\ndecision if input.never",
			want: pdp.Decision{Reasons: []string{pdp.ReasonNoDecision}},
		},
		{
			name:    "allow not boolean is a policy error, never an allow",
			rego:    "package custody.authz\ndecision := {\"allow\": \"yes\"}",
			want:    pdp.Decision{Reasons: []string{pdp.ReasonPolicyError}},
			wantErr: true,
		},
		{
			name:    "string decision is a policy error",
			rego:    "package custody.authz\ndecision := \"allow\"",
			want:    pdp.Decision{Reasons: []string{pdp.ReasonPolicyError}},
			wantErr: true,
		},
		{
			name:    "reasons of the wrong type",
			rego:    "package custody.authz\ndecision := {\"allow\": true, \"reasons\": \"ok\"}",
			want:    pdp.Decision{Reasons: []string{pdp.ReasonPolicyError}},
			wantErr: true,
		},
		{
			name:    "obligations of the wrong type",
			rego:    "package custody.authz\ndecision := {\"allow\": true, \"obligations\": [1]}",
			want:    pdp.Decision{Reasons: []string{pdp.ReasonPolicyError}},
			wantErr: true,
		},
		{
			name: "conflicting complete rule is a policy error",
			rego: `package custody.authz
decision := true if input.subject.id
decision := false if input.action.name`,
			want:    pdp.Decision{Reasons: []string{pdp.ReasonPolicyError}},
			wantErr: true,
		},
		{
			name: "builtin error is a policy error, not an allow",
			rego: `package custody.authz
decision := {"allow": true} if to_number(input.subject.id) > 0`,
			// to_number("alice") fails; OPA's non-strict mode makes the rule undefined.
			want: pdp.Decision{Reasons: []string{pdp.ReasonNoDecision}},
		},
	}
	in := &pdp.Input{Subject: pdp.Entity{Type: "user", ID: "alice"}, Action: pdp.Action{Name: "read_file"}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEngine(t, policySet(t, map[string]string{"p.rego": tc.rego}))
			got := e.Decide(t.Context(), in)
			if (got.Err != nil) != tc.wantErr {
				t.Fatalf("Err = %v, want error %v", got.Err, tc.wantErr)
			}
			if diff := cmp.Diff(tc.want, got, cmpopts.IgnoreFields(pdp.Decision{}, "Policy", "Err", "Duration")); diff != "" {
				t.Errorf("Decide (-want +got):\n%s", diff)
			}
			if got.Policy.Revision == "" || got.Policy.Query != pdp.DefaultQuery {
				t.Errorf("Policy = %+v, want a revision and the default query", got.Policy)
			}
		})
	}
}

func TestNewRefusesBrokenPolicy(t *testing.T) {
	_, err := bundles.FromFS(fstest.MapFS{"p.rego": {Data: []byte("package custody.authz\ndecision := {")}}, "broken")
	if err == nil {
		t.Fatal("loading a syntactically broken policy succeeded")
	}
	typeErr := policySet(t, map[string]string{"p.rego": "package custody.authz\ndecision := x if { x := 1 + \"a\" }"})
	if _, err := pdp.New(t.Context(), typeErr); !errors.Is(err, pdp.ErrInvalidPolicySet) {
		t.Fatalf("New(type error) = %v, want ErrInvalidPolicySet", err)
	}
	if _, err := pdp.New(t.Context(), pdp.PolicySet{}); !errors.Is(err, pdp.ErrInvalidPolicySet) {
		t.Fatalf("New(empty) = %v, want ErrInvalidPolicySet", err)
	}
}

func TestLoadSwapsAndKeepsOldOnError(t *testing.T) {
	allow := policySet(t, map[string]string{"p.rego": "package custody.authz\ndecision := true"})
	deny := policySet(t, map[string]string{"p.rego": "package custody.authz\ndecision := false"})
	e := newEngine(t, allow)
	in := &pdp.Input{}
	if !e.Decide(t.Context(), in).Allow {
		t.Fatal("first policy set should allow")
	}
	if err := e.Load(t.Context(), deny); err != nil {
		t.Fatalf("Load: %v", err)
	}
	if d := e.Decide(t.Context(), in); d.Allow || d.Policy.Revision != deny.Revision {
		t.Fatalf("after Load: %+v, want deny under revision %s", d, deny.Revision)
	}
	broken := policySet(t, map[string]string{"p.rego": "package custody.authz\ndecision := x if { x := 1 + \"a\" }"})
	if err := e.Load(t.Context(), broken); err == nil {
		t.Fatal("Load(broken) succeeded")
	}
	if got := e.Policy().Revision; got != deny.Revision {
		t.Fatalf("after failed Load, revision = %s, want %s still serving", got, deny.Revision)
	}
}

// TestConcurrentDecideDuringLoad runs under -race: decisions and reloads interleave freely and
// every decision comes from exactly one of the two policy sets.
func TestConcurrentDecideDuringLoad(t *testing.T) {
	allow := policySet(t, map[string]string{"p.rego": "package custody.authz\ndecision := true"})
	deny := policySet(t, map[string]string{"p.rego": "package custody.authz\ndecision := false"})
	e := newEngine(t, allow)
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range 200 {
				d := e.Decide(context.Background(), &pdp.Input{})
				if d.Allow != (d.Policy.Revision == allow.Revision) {
					t.Errorf("decision %v does not match revision %s", d.Allow, d.Policy.Revision)
				}
			}
		})
	}
	for i := range 20 {
		set := allow
		if i%2 == 0 {
			set = deny
		}
		if err := e.Load(context.Background(), set); err != nil {
			t.Error(err)
		}
	}
	wg.Wait()
}

func TestDecideCancelledContextDenies(t *testing.T) {
	e := newEngine(t, policySet(t, map[string]string{"p.rego": "package custody.authz\ndecision := true"}))
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	d := e.Decide(ctx, &pdp.Input{})
	if d.Allow || d.Err == nil {
		t.Fatalf("Decide(cancelled) = %+v, want a policy_error deny", d)
	}
}

// nativeInput is the example request of docs/agents.md as the policy sees it.
func nativeInput() *pdp.Input {
	return &pdp.Input{
		Subject: pdp.Entity{Type: "user", ID: "alice@acme.example", Properties: map[string]any{
			"roles": []any{"employee"}, "scopes": []any{"mail.send"},
		}},
		Action: pdp.Action{Name: "send_email", Properties: map[string]any{
			"server": "mail", "arguments": map[string]any{"to": "bob@acme.example"},
		}},
		Resource:      pdp.Entity{Type: "mailbox", ID: "alice", Properties: map[string]any{"owner": "alice@acme.example"}},
		Agent:         &pdp.Agent{ID: "spiffe://acme.example/agents/mailer", Type: "agent"},
		Delegation:    pdp.Delegation{Chain: []any{}},
		Task:          &pdp.Task{ID: "t-42", ParentID: "t-41", Attempt: 1, SessionID: "s-7"},
		CorrelationID: "c-1",
	}
}

func TestDefaultPolicies(t *testing.T) {
	set, err := bundles.FromFS(policies.FS, "embedded")
	if err != nil {
		t.Fatal(err)
	}
	e := newEngine(t, set)
	d := e.Decide(t.Context(), nativeInput())
	if !d.Allow || d.Err != nil {
		t.Fatalf("docs example = %+v, want allow", d)
	}
	in := nativeInput()
	in.Agent.ID = "spiffe://acme.example/agents/unknown"
	if d := e.Decide(t.Context(), in); d.Allow || len(d.Reasons) == 0 {
		t.Fatalf("unknown agent = %+v, want a deny with reasons", d)
	}
}

func BenchmarkDecide(b *testing.B) {
	set, err := bundles.FromFS(policies.FS, "embedded")
	if err != nil {
		b.Fatal(err)
	}
	e := newEngine(b, set)
	in := nativeInput()
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if d := e.Decide(ctx, in); !d.Allow {
			b.Fatalf("unexpected deny: %+v", d)
		}
	}
}

// BenchmarkOPABaseline is the same evaluation done the way OPA's own server does it: input as a
// Go value converted per call, no custody code in the path. Compare BenchmarkDecide against it.
func BenchmarkOPABaseline(b *testing.B) {
	set, err := bundles.FromFS(policies.FS, "embedded")
	if err != nil {
		b.Fatal(err)
	}
	pq, err := rego.New(rego.Query(pdp.DefaultQuery), rego.ParsedBundle("custody", set.Bundle)).PrepareForEval(context.Background())
	if err != nil {
		b.Fatal(err)
	}
	raw, err := json.Marshal(nativeInput())
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		var in any
		if err := util.UnmarshalJSON(raw, &in); err != nil {
			b.Fatal(err)
		}
		rs, err := pq.Eval(ctx, rego.EvalInput(in))
		if err != nil || len(rs) != 1 {
			b.Fatalf("eval: %v %v", rs, err)
		}
	}
}

// A decision reads the policy set's data as OPA values the store already holds. The store kept
// Go values before and OPA converted what a decision read, on every decision: the default
// policy's catalog lookups were about a twentieth of a decision's allocations, and a rule that
// walks a catalog entry (or a search that walks the catalog) converted all of it each time.
func TestDecisionReadsDataWithoutConverting(t *testing.T) {
	ctx := context.Background()
	allocsFor := func(fields int) float64 {
		entry := map[string]any{}
		for i := range fields {
			entry[fmt.Sprintf("f%04d", i)] = []any{"x", i}
		}
		data, err := json.Marshal(map[string]any{"custody": map[string]any{"tools": map[string]any{"t": entry}}})
		if err != nil {
			t.Fatal(err)
		}
		e := newEngine(t, policySet(t, map[string]string{
			"p.rego":    "package custody.authz\n\ndecision := {\"allow\": count([k | some k, _ in data.custody.tools[input.action.name]]) > 0}\n",
			"data.json": string(data),
		}))
		in := &pdp.Input{Action: pdp.Action{Name: "t"}, Delegation: pdp.Delegation{Chain: []any{}}}
		if d := e.Decide(ctx, in); !d.Allow {
			t.Fatalf("decision %+v", d)
		}
		return testing.AllocsPerRun(20, func() { e.Decide(ctx, in) })
	}
	// Walking the entry costs about one allocation a field (the comprehension's bindings);
	// converting it cost eight more.
	small, large := allocsFor(1), allocsFor(1000)
	if large > small+3*1000 {
		t.Fatalf("a decision walking a catalog entry of 1,000 fields allocates %.0f times, one of 1 field %.0f: the data is converted per decision", large, small)
	}
}

// TestDecideStartsNoGoroutine: an evaluation under a cancellable context (every request's)
// starts no goroutine. rego's own cancellation started one per evaluation, and woke it again
// when the evaluation was over: two more scheduling events on every decision.
func TestDecideStartsNoGoroutine(t *testing.T) {
	e := newEngine(t, embeddedSet(t))
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	e.Decide(ctx, nativeInput()) // warm
	created := func() uint64 {
		s := []metrics.Sample{{Name: "/sched/goroutines-created:goroutines"}}
		metrics.Read(s)
		return s[0].Value.Uint64()
	}
	const n = 200
	before := created()
	for range n {
		if d := e.Decide(ctx, nativeInput()); !d.Allow {
			t.Fatalf("not an allow: %v", d.Reasons)
		}
	}
	if started := created() - before; started >= n/2 {
		t.Fatalf("%d decisions started %d goroutines", n, started)
	}
}
