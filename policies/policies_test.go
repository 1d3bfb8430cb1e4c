package policies_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/open-policy-agent/opa/v1/loader"
	"github.com/open-policy-agent/opa/v1/rego"
	"github.com/open-policy-agent/opa/v1/storage"
	"github.com/open-policy-agent/opa/v1/storage/inmem"
	"github.com/open-policy-agent/opa/v1/tester"

	"github.com/custodyhq/custody/policies"
)

// load reads the embedded policy set exactly as shipped in the binary.
func load(t *testing.T) *loader.Result {
	t.Helper()
	res, err := loader.NewFileLoader().WithFS(policies.FS).All([]string{"."})
	if err != nil {
		t.Fatalf("loading embedded policies: %v", err)
	}
	if len(res.Modules) == 0 {
		t.Fatal("no Rego modules embedded")
	}
	return res
}

// TestRego runs the Rego unit tests (test_* rules) of the embedded policy set.
// Built-in errors are raised rather than treated as undefined, so a policy
// that only passes because an error was swallowed fails here.
func TestRego(t *testing.T) {
	ctx := context.Background()
	res := load(t)

	modules := res.ParsedModules()
	store := inmem.NewFromObject(res.Documents)
	txn := storage.NewTransactionOrDie(ctx, store)
	defer store.Abort(ctx, txn)

	ch, err := tester.NewRunner().
		SetStore(store).
		SetModules(modules).
		RaiseBuiltinErrors(true).
		RunTests(ctx, txn)
	if err != nil {
		t.Fatalf("running Rego tests: %v", err)
	}

	var ran int
	for r := range ch {
		ran++
		switch {
		case r.Error != nil:
			t.Errorf("%s.%s: ERROR: %v", r.Package, r.Name, r.Error)
		case r.Skip:
			t.Logf("%s.%s: SKIPPED", r.Package, r.Name)
		case r.Fail:
			msg := r.String()
			if len(r.Output) > 0 {
				msg += "\n" + string(r.Output)
			}
			t.Errorf("%s", msg)
		default:
			t.Logf("%s.%s: PASS", r.Package, r.Name)
		}
	}
	if ran == 0 {
		t.Fatal("no Rego tests ran")
	}
	t.Logf("%d Rego tests ran", ran)
}

// TestDecisionShape evaluates the decision the way a PDP would, with strict
// built-in errors, against well-formed and hostile inputs: it must always be
// {"allow": bool, "reasons": [string...], "obligations": {...}}, and a deny
// must carry at least one reason.
func TestDecisionShape(t *testing.T) {
	ctx := context.Background()
	res := load(t)
	store := inmem.NewFromObject(res.Documents)

	var opts []func(*rego.Rego)
	for _, m := range res.Modules {
		if strings.HasSuffix(m.Name, "_test.rego") {
			continue
		}
		opts = append(opts, rego.ParsedModule(m.Parsed))
	}
	opts = append(opts,
		rego.Store(store),
		rego.Query("data.custody.authz.decision"),
		rego.StrictBuiltinErrors(true),
	)
	pq, err := rego.New(opts...).PrepareForEval(ctx)
	if err != nil {
		t.Fatal(err)
	}

	cases := []struct {
		name      string
		input     string // JSON; empty means no input at all
		wantAllow bool
	}{
		{"own mailbox", `{
			"subject": {"type": "user", "id": "alice@acme.example", "properties": {"roles": ["employee"], "scopes": ["mail.send", "files.read"]}},
			"action": {"name": "send_email", "properties": {"server": "mail", "arguments": {"to": "bob@acme.example"}}},
			"resource": {"type": "mailbox", "id": "alice", "properties": {"owner": "alice@acme.example"}},
			"context": {},
			"agent": {"id": "spiffe://acme.example/agents/mailer", "type": "agent", "properties": {}},
			"delegation": {"verified": true, "chain": []},
			"task": {"id": "t1"},
			"correlation_id": "c1"
		}`, true},
		{"no input", ``, false},
		{"null", `null`, false},
		{"number", `42`, false},
		{"empty object", `{}`, false},
		{"subject a number", `{"subject": 1, "action": {"name": "send_email"}, "agent": {"id": "spiffe://acme.example/agents/mailer"}}`, false},
		{"scopes a string", `{"subject": {"id": "a", "properties": {"scopes": "mail.send"}}, "action": {"name": "send_email"}, "agent": {"id": "spiffe://acme.example/agents/mailer"}}`, false},
		{"roles null", `{"subject": {"id": "a", "properties": {"roles": null, "scopes": ["mail.send"]}}, "action": {"name": "send_email"}, "agent": {"id": "spiffe://acme.example/agents/mailer"}}`, false},
		{"everything wrong", `{"subject": [], "action": 1.5, "resource": "r", "agent": true, "context": null, "delegation": 0, "task": [], "correlation_id": {}}`, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var evalOpts []rego.EvalOption
			if tc.input != "" {
				var in any
				if err := json.Unmarshal([]byte(tc.input), &in); err != nil {
					t.Fatal(err)
				}
				evalOpts = append(evalOpts, rego.EvalInput(in))
			}
			rs, err := pq.Eval(ctx, evalOpts...)
			if err != nil {
				t.Fatalf("eval: %v", err)
			}
			if len(rs) != 1 || len(rs[0].Expressions) != 1 {
				t.Fatalf("decision undefined: %v", rs)
			}
			d, ok := rs[0].Expressions[0].Value.(map[string]any)
			if !ok || len(d) != 3 {
				t.Fatalf("decision is not a 3-key object: %#v", rs[0].Expressions[0].Value)
			}
			allow, ok := d["allow"].(bool)
			if !ok {
				t.Fatalf("allow is not a bool: %#v", d["allow"])
			}
			reasons, ok := d["reasons"].([]any)
			if !ok {
				t.Fatalf("reasons is not a list: %#v", d["reasons"])
			}
			for _, r := range reasons {
				if _, ok := r.(string); !ok {
					t.Errorf("reason is not a string: %#v", r)
				}
			}
			if _, ok := d["obligations"].(map[string]any); !ok {
				t.Fatalf("obligations is not an object: %#v", d["obligations"])
			}
			if allow != tc.wantAllow {
				t.Errorf("allow = %v, want %v (reasons %v)", allow, tc.wantAllow, reasons)
			}
			if !allow && len(reasons) == 0 {
				t.Error("deny without a reason")
			}
		})
	}
}
