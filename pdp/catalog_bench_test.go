package pdp_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"testing"
	"testing/fstest"
	"time"

	"github.com/open-policy-agent/opa/v1/rego"

	"github.com/custodyhq/custody/bundles"
	"github.com/custodyhq/custody/pdp"
	"github.com/custodyhq/custody/policies"
)

// BenchmarkDecideCatalog shows how a decision's cost grows with the tool catalog: the default
// policy set with its catalog (data.custody.tools) extended to 10, 1,000 and 100,000 entries.
// known decides a call to a catalogued tool (allowed), unknown one to a tool the catalog lacks
// (denied unknown_tool), and search_actions lists the candidates of an AuthZEN action search
// (data.custody.search.actions), which reads the whole catalog by design. prepare-ms is the time
// to compile the set into an engine, paid once per policy load.
//
//	go test ./pdp -run '^$' -bench DecideCatalog -benchtime 1s
func BenchmarkDecideCatalog(b *testing.B) {
	for _, n := range []int{10, 1000, 100000} {
		b.Run(fmt.Sprintf("tools=%d", n), func(b *testing.B) {
			set, target := catalogSet(b, n)
			start := time.Now()
			e, err := pdp.New(context.Background(), set)
			if err != nil {
				b.Fatalf("pdp.New: %v", err)
			}
			prepare := time.Since(start)
			ctx := context.Background()
			bench := func(name, tool string, allow bool) {
				b.Run(name, func(b *testing.B) {
					in := catalogInput(tool)
					b.ReportAllocs()
					for b.Loop() {
						if d := e.Decide(ctx, in); d.Allow != allow || d.Err != nil {
							b.Fatalf("Decide(%s) = %+v, want allow=%v", tool, d, allow)
						}
					}
					b.ReportMetric(float64(prepare.Milliseconds()), "prepare-ms")
				})
			}
			bench("known", target, true)
			bench("unknown", "no_such_tool", false)
			b.Run("search_actions", func(b *testing.B) {
				in := catalogInput("")
				b.ReportAllocs()
				for b.Loop() {
					got, err := e.Candidates(ctx, pdp.SearchActions, in)
					if err != nil || len(got) != n {
						b.Fatalf("Candidates = %d actions, %v; want %d", len(got), err, n)
					}
				}
			})
		})
	}
}

// catalogSet is the default policy set with n tools in its catalog: the real ones and synthetic
// ones of the same shape. It returns the name of a synthetic tool from the middle of the catalog
// that the mailer agent may call for the user of catalogInput.
func catalogSet(b testing.TB, n int) (pdp.PolicySet, string) {
	b.Helper()
	fsys := fstest.MapFS{}
	err := fs.WalkDir(policies.FS, ".", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		raw, err := fs.ReadFile(policies.FS, path)
		fsys[path] = &fstest.MapFile{Data: raw}
		return err
	})
	if err != nil {
		b.Fatal(err)
	}
	var data map[string]map[string]any
	if err := json.Unmarshal(fsys["data.json"].Data, &data); err != nil {
		b.Fatalf("data.json: %v", err)
	}
	tools, ok := data["custody"]["tools"].(map[string]any)
	if !ok {
		b.Fatal("data.json: custody.tools is not an object")
	}
	scopes := []string{"mail.read", "mail.send", "contacts.read"} // the mailer agent's grants
	var target string
	for i := 0; len(tools) < n; i++ {
		name := fmt.Sprintf("synthetic_tool_%06d", i)
		t := map[string]any{
			"description": fmt.Sprintf("Synthetic tool %d of a large catalog.", i),
			"scope":       scopes[i%len(scopes)],
			"access":      []string{"read", "write"}[i%2],
			"risk":        []string{"low", "medium"}[i%2],
		}
		if i%4 != 3 {
			t["server"] = "mail"
		}
		tools[name] = t
		if target == "" || i <= (n-9)/2 {
			target = name
		}
	}
	if len(tools) != n {
		b.Fatalf("catalog has %d tools, want %d", len(tools), n)
	}
	raw, err := json.Marshal(data)
	if err != nil {
		b.Fatal(err)
	}
	fsys["data.json"] = &fstest.MapFile{Data: raw}
	set, err := bundles.FromFS(fsys, fmt.Sprintf("catalog-%d", n))
	if err != nil {
		b.Fatalf("load policy set: %v", err)
	}
	return set, target
}

// catalogInput is a call of tool by the mailer agent for a user holding all of its grants.
func catalogInput(tool string) *pdp.Input {
	return &pdp.Input{
		Subject: pdp.Entity{Type: "user", ID: "alice@acme.example", Properties: map[string]any{
			"roles": []any{"employee"}, "scopes": []any{"mail.read", "mail.send", "contacts.read"},
		}},
		Action:     pdp.Action{Name: tool, Properties: map[string]any{"arguments": map[string]any{"to": "bob@acme.example"}}},
		Resource:   pdp.Entity{Type: "tool", ID: tool},
		Agent:      &pdp.Agent{ID: "spiffe://acme.example/agents/mailer", Type: "agent"},
		Delegation: pdp.Delegation{Chain: []any{}},
	}
}

// BenchmarkLoadCatalog is the cost of a policy load (pdp.New with the memo on: the decision
// query, the three search queries and the memo's analysis) against one compile of the same set
// (one rego.PrepareForEval of the decision query), at 100,000 tools.
//
//	go test ./pdp -run '^$' -bench LoadCatalog -benchtime 3x
func BenchmarkLoadCatalog(b *testing.B) {
	set, _ := catalogSet(b, 100000)
	ctx := context.Background()
	b.Run("one_compile", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := oneCompile(ctx, set); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("load", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := pdp.New(ctx, set, pdp.WithMemo(100)); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// oneCompile compiles and prepares set once, the floor of what a load can cost.
func oneCompile(ctx context.Context, set pdp.PolicySet) (rego.PreparedEvalQuery, error) {
	return rego.New(rego.Query(pdp.DefaultQuery), rego.StoreReadAST(true), rego.ParsedBundle("custody", set.Bundle)).PrepareForEval(ctx)
}
