package pdp_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/custodyhq/custody/pdp"
)

// memoCase is a policy set, a decision query and a sequence of inputs: each input is decided
// with the memo and without it, and the two must agree, in order, so that an earlier input's
// remembered decision is offered to every later one.
type memoCase struct {
	name   string
	files  map[string]string
	query  string // empty: pdp.DefaultQuery
	inputs []*pdp.Input
	// wantAllow is what plain evaluation decides for each input, so that a case whose policy
	// stopped deciding what it was written to decide fails instead of passing vacuously.
	wantAllow []bool
	// wantMemo is a prefix of the memo state the policy set must get ("on", "off: ").
	wantMemo string
}

func who(id, tool string, props map[string]any) *pdp.Input {
	return &pdp.Input{
		Subject: pdp.Entity{Type: "user", ID: id, Properties: props},
		Action:  pdp.Action{Name: tool},
	}
}

var (
	admin   = who("admin@acme.example", "delete_file", nil)
	mallory = who("mallory@acme.example", "delete_file", nil)
)

// checkMemoCase decides tc's inputs with and without the memo and fails on any difference.
func checkMemoCase(t testing.TB, tc memoCase) {
	t.Helper()
	ctx := context.Background()
	var opts []pdp.Option
	if tc.query != "" {
		opts = append(opts, pdp.WithQuery(tc.query))
	}
	set := policySet(t, tc.files)
	plain := newEngine(t, set, opts...)
	memo := newEngine(t, set, append(opts, pdp.WithMemo(100))...)
	if m := memo.Policy().Memo; !strings.HasPrefix(m, tc.wantMemo) {
		t.Fatalf("memo %q, want %q...", m, tc.wantMemo)
	}
	for i, in := range tc.inputs {
		want, got := plain.Decide(ctx, in), memo.Decide(ctx, in)
		if want.Err != nil {
			t.Fatalf("input %d: %v", i, want.Err)
		}
		if i < len(tc.wantAllow) && want.Allow != tc.wantAllow[i] {
			t.Fatalf("input %d: evaluation allows %v, the case expects %v: the policy does not test what it should", i, want.Allow, tc.wantAllow[i])
		}
		if got.Allow != want.Allow || !slices.Equal(got.Reasons, want.Reasons) || !cmp.Equal(got.Obligations, want.Obligations) || (got.Err == nil) != (want.Err == nil) {
			t.Fatalf("input %d (%s %s): memo %v %v %v (err %v), evaluation %v %v %v; memo keys on %v",
				i, in.Subject.ID, in.Action.Name, got.Allow, got.Reasons, got.Obligations, got.Err, want.Allow, want.Reasons, want.Obligations, memo.Policy().InputPaths)
		}
	}
}

func authz(body string) map[string]string {
	return map[string]string{"p.rego": "package custody.authz\n\n" + body + "\n"}
}

// Issue 13, item 1: a local bound to an input field and only type-tested in the body, but used
// as a key of a general ref head, is a value read. The memo keyed on its type and served
// admin's allow to mallory.
func TestMemoRefHeadLocalIsAValueRead(t *testing.T) {
	both := []*pdp.Input{admin, mallory, admin, mallory}
	allowAdmin := []bool{true, false, true, false}
	for _, tc := range []memoCase{
		{name: "general ref head", files: authz(`acting[user].tool := input.action.name if {
	user := input.subject.id
	is_string(user)
}

decision := {"allow": true, "reasons": ["admin"]} if acting["admin@acme.example"].tool == "delete_file"`)},
		{name: "multi-value ref head", files: authz(`acting[user] contains input.action.name if {
	user := input.subject.id
	is_string(user)
}

decision := {"allow": true, "reasons": ["admin"]} if "delete_file" in acting["admin@acme.example"]`)},
		{name: "nested ref head", files: authz(`acting.by[user][tool] := true if {
	user := input.subject.id
	tool := input.action.name
	is_string(user)
	is_string(tool)
}

decision := {"allow": true} if acting.by["admin@acme.example"].delete_file`)},
		{name: "type_name guard", files: authz(`acting[user].tool := input.action.name if {
	user := input.subject.id
	type_name(user) == "string"
}

decision := {"allow": true} if acting["admin@acme.example"].tool == "delete_file"`)},
		{name: "negated guard", files: authz(`acting[user].tool := input.action.name if {
	user := input.subject.id
	not is_number(user)
}

decision := {"allow": true} if acting["admin@acme.example"].tool == "delete_file"`)},
		{name: "rule in another package", files: map[string]string{
			"lib.rego": `package lib.acting

by[user].tool := input.action.name if {
	user := input.subject.id
	is_string(user)
}
`,
			"p.rego": `package custody.authz

import data.lib.acting

decision := {"allow": true} if acting.by["admin@acme.example"].tool == "delete_file"
`}},
		{name: "else value", files: authz(`role := "none" if {
	input.action.name == "none"
} else := u if {
	u := input.subject.id
	is_string(u)
}

decision := {"allow": true} if role == "admin@acme.example"`)},
		{name: "comprehension head", files: authz(`users := {u | u := input.subject.id; is_string(u)}

decision := {"allow": true} if "admin@acme.example" in users`)},
		{name: "rule value", files: authz(`user := u if {
	u := input.subject.id
	is_string(u)
}

decision := {"allow": true} if user == "admin@acme.example"`)},
		{name: "function argument", files: authz(`is_admin(u) if u == "admin@acme.example"

decision := {"allow": true} if {
	u := input.subject.id
	is_string(u)
	is_admin(u)
}`)},
		{name: "every body", files: authz(`decision := {"allow": true} if {
	u := input.subject.id
	is_string(u)
	every a in ["admin@acme.example"] { a == u }
}`)},
		{name: "type test with a second binding", files: authz(`decision := {"allow": true} if {
	u := input.subject.id
	is_string(u)
	u == "admin@acme.example"
}`)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.inputs, tc.wantAllow, tc.wantMemo = both, allowAdmin, "on"
			checkMemoCase(t, tc)
		})
	}
}

func tenant(id, tool, tenant string) *pdp.Input {
	return who(id, tool, map[string]any{"tenant": tenant})
}

// Issue 13, item 2: the input the decision query reads is part of the key.
func TestMemoKeysOnWhatTheQueryReads(t *testing.T) {
	tenants := map[string]string{
		"t1.rego": "package tenants.t1\n\ndecision := {\"allow\": true, \"reasons\": [\"t1\"]} if input.action.name == \"read\"\n",
		"t2.rego": "package tenants.t2\n\ndecision := {\"allow\": false, \"reasons\": [\"t2\"]} if input.action.name == \"read\"\n",
	}
	for _, tc := range []memoCase{
		{
			name: "tenant in the query", files: tenants, query: "data.tenants[input.subject.properties.tenant].decision",
			inputs:    []*pdp.Input{tenant("a", "read", "t1"), tenant("a", "read", "t2"), tenant("a", "read", "t1"), tenant("a", "read", "t3")},
			wantAllow: []bool{true, false, true, false},
		},
		{
			name: "action in the query", query: "data.custody.authz.decisions[input.action.name]",
			files: authz(`decisions.read := {"allow": true}
decisions.write := {"allow": false}`),
			inputs:    []*pdp.Input{who("a", "read", nil), who("a", "write", nil), who("a", "read", nil)},
			wantAllow: []bool{true, false, true},
		},
		{
			name: "nested computed key in the query", query: `data.tenants[input.subject.properties[input.action.name]].decision`,
			files: tenants,
			inputs: []*pdp.Input{
				who("a", "read", map[string]any{"read": "t1"}), who("a", "read", map[string]any{"read": "t2"}),
				who("a", "read", map[string]any{"read": "t1", "tenant": "t2"}),
			},
			wantAllow: []bool{true, false, true},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.wantMemo = "on"
			checkMemoCase(t, tc)
		})
	}
	// A query that reads the input whole leaves nothing to key on.
	e := newEngine(t, policySet(t, tenants), pdp.WithQuery("data.tenants[input].decision"), pdp.WithMemo(10))
	if m := e.Policy().Memo; !strings.HasPrefix(m, "off: ") {
		t.Fatalf("memo %q with a query that reads the whole input, want off", m)
	}
}

// --decision-memo N means N: the memo holds N decisions, the least recently used one goes
// first, and no more are held. (Two generations of N/2 held one decision less for an odd N,
// and two for N = 1.) A decision is remembered the second time it is decided.
func TestMemoHoldsExactlyNEntries(t *testing.T) {
	ctx := context.Background()
	set := policySet(t, authz(`decision := {"allow": true, "reasons": [input.action.name]}`))
	for _, n := range []int{1, 2, 3, 5} {
		e := newEngine(t, set, pdp.WithMemo(n))
		in := func(i int) *pdp.Input { return who("a", fmt.Sprint("tool", i), nil) }
		for i := range n { // 2n misses: each is remembered the second time
			e.Decide(ctx, in(i))
			e.Decide(ctx, in(i))
		}
		for i := range n { // n hits: all of them are held
			e.Decide(ctx, in(i))
		}
		if hits, misses := e.MemoStats(); hits != uint64(n) || misses != uint64(2*n) {
			t.Fatalf("memo of %d: %d hits, %d misses after %d decisions three times, want %d and %d", n, hits, misses, n, n, 2*n)
		}
		if entries, _ := e.MemoUsage(); entries != n {
			t.Fatalf("memo of %d holds %d", n, entries)
		}
		e.Decide(ctx, in(n))
		e.Decide(ctx, in(n)) // remembered: evicts in(0), the least recently used
		e.Decide(ctx, in(0)) // a miss, remembered at once since it was decided before: evicts in(1)
		if hits, misses := e.MemoStats(); hits != uint64(n) || misses != uint64(2*n+3) {
			t.Fatalf("memo of %d: %d hits, %d misses, want %d and %d", n, hits, misses, n, 2*n+3)
		}
		if entries, _ := e.MemoUsage(); entries != n {
			t.Fatalf("memo of %d holds %d", n, entries)
		}
	}
}

// The memo is bounded by bytes too, counting its keys, reasons and obligations: large decisions
// hold fewer entries, and a decision larger than the whole bound is not remembered.
func TestMemoIsBoundedByBytes(t *testing.T) {
	ctx := context.Background()
	set := policySet(t, authz(`decision := {"allow": true, "reasons": [input.action.name], "obligations": {"note": input.subject.id}}`))
	const bound = 4096
	e := newEngine(t, set, pdp.WithMemo(1000), pdp.WithMemoBytes(bound))
	big := strings.Repeat("x", 300)
	for i := range 100 {
		e.Decide(ctx, who(fmt.Sprint(big, i), fmt.Sprint(big, i), nil))
		e.Decide(ctx, who(fmt.Sprint(big, i), fmt.Sprint(big, i), nil)) // remembered the second time
		if entries, bytes := e.MemoUsage(); bytes > bound || entries > 1000 {
			t.Fatalf("after %d decisions the memo holds %d entries, %d bytes: over %d", i+1, entries, bytes, bound)
		}
	}
	entries, bytes := e.MemoUsage()
	// Each entry holds the key (two 300-byte strings), a reason and an obligation of 300 bytes
	// each: at least 1,200 bytes, so no more than three fit.
	if entries < 1 || entries > 3 || bytes < 1200*int64(entries) {
		t.Fatalf("memo holds %d entries, %d bytes, want 1 to 3 entries of at least 1,200 bytes each", entries, bytes)
	}
	huge := strings.Repeat("y", 2100) // a key of 2,100 bytes and an obligation as large: over the bound
	e.Decide(ctx, who(huge, "t", nil))
	e.Decide(ctx, who(huge, "t", nil))
	if n, _ := e.MemoUsage(); n != entries {
		t.Fatalf("a decision larger than the bound changed the memo from %d to %d entries", entries, n)
	}
}

// TestMemoHitRateOnLoadBodies decides the requests test/load sends, as the policy input custody
// builds from each, twice over with the default memo, checks every decision against plain
// evaluation and reports the memo's hit rate. By hand, since it needs genbodies' output:
//
//	go run ./test/load/genbodies -out /tmp/bodies -n 400 -intent-key /tmp/intent.key
//	CUSTODY_LOAD_BODIES=/tmp/bodies/opa.jsonl go test ./pdp -run TestMemoHitRateOnLoadBodies -v
func TestMemoHitRateOnLoadBodies(t *testing.T) {
	path := os.Getenv("CUSTODY_LOAD_BODIES")
	if path == "" {
		t.Skip("CUSTODY_LOAD_BODIES is not set")
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var inputs []*pdp.Input
	for line := range strings.SplitSeq(strings.TrimSpace(string(raw)), "\n") {
		var body struct{ Input *pdp.Input }
		if err := json.Unmarshal([]byte(line), &body); err != nil {
			t.Fatal(err)
		}
		inputs = append(inputs, body.Input)
	}
	ctx := context.Background()
	plain := newEngine(t, embeddedSet(t))
	memo := newEngine(t, embeddedSet(t), pdp.WithMemo(10_000))
	for pass := 1; pass <= 2; pass++ {
		h0, m0 := memo.MemoStats()
		for i, in := range inputs {
			want, got := plain.Decide(ctx, in), memo.Decide(ctx, in)
			if got.Allow != want.Allow || !slices.Equal(got.Reasons, want.Reasons) || !cmp.Equal(got.Obligations, want.Obligations) {
				t.Fatalf("pass %d, request %d: memo %v %v, evaluation %v %v", pass, i, got.Allow, got.Reasons, want.Allow, want.Reasons)
			}
		}
		h, m := memo.MemoStats()
		entries, bytes := memo.MemoUsage()
		t.Logf("pass %d over %d requests: %d hits, %d misses (%.1f%% hits); memo holds %d decisions, %d bytes",
			pass, len(inputs), h-h0, m-m0, 100*float64(h-h0)/float64(len(inputs)), entries, bytes)
	}
}

// An import reads nothing itself: the compiler resolves every use of it to the full path, and
// that is what the memo keys on.
func TestMemoImportsAreReadWhereUsed(t *testing.T) {
	e := newEngine(t, policySet(t, authz(`import input.subject as s
import input.action

decision := {"allow": true} if {
	s.id == "admin@acme.example"
	is_string(action.name)
}`)), pdp.WithMemo(10))
	if diff := cmp.Diff([]string{"input.subject.id", "type of input.action.name"}, e.Policy().InputPaths); diff != "" {
		t.Fatalf("input paths (-want +got):\n%s", diff)
	}
	checkMemoCase(t, memoCase{files: authz(`import input.subject as s

decision := {"allow": true} if s.id == "admin@acme.example"`), inputs: []*pdp.Input{admin, mallory, admin}, wantAllow: []bool{true, false, true}, wantMemo: "on"})
}

// Traffic that never repeats leaves the memo empty: each of its decisions was built, inserted and
// evicted unused before, so a memo of distinct decisions cost every request CPU and held up to
// --decision-memo of them for the collector to scan. A decision that repeats is remembered the
// second time it is decided, and answered from memory from the third; the doorkeeper recalls
// twice the memo's entries, so a key that only repeats after more new keys than that are decided
// is decided twice again.
func TestMemoRemembersRepeatsOnly(t *testing.T) {
	ctx := context.Background()
	set := policySet(t, authz(`decision := {"allow": true, "reasons": [input.action.name]}`))
	const n = 100
	e := newEngine(t, set, pdp.WithMemo(n))
	in := func(i int) *pdp.Input { return who("a", fmt.Sprint("tool", i), nil) }
	for i := range 10 * n {
		e.Decide(ctx, in(i))
	}
	if entries, bytes := e.MemoUsage(); entries != 0 || bytes != 0 {
		t.Fatalf("after %d distinct decisions the memo holds %d entries, %d bytes; want none", 10*n, entries, bytes)
	}
	// in(10n-1) was decided last, within the doorkeeper's recall: remembered now, a hit next.
	e.Decide(ctx, in(10*n-1))
	if entries, _ := e.MemoUsage(); entries != 1 {
		t.Fatalf("a decision decided twice: the memo holds %d entries, want 1", entries)
	}
	h0, _ := e.MemoStats()
	if d := e.Decide(ctx, in(10*n-1)); !d.Allow {
		t.Fatalf("decision %+v", d)
	}
	if h, _ := e.MemoStats(); h != h0+1 {
		t.Fatalf("the third decision of a repeat was not answered from memory: hits %d, want %d", h, h0+1)
	}
	// in(0) was forgotten: 10n-1 new keys came after it, more than the 2n recalled.
	e.Decide(ctx, in(0))
	if entries, _ := e.MemoUsage(); entries != 1 {
		t.Fatalf("a key the doorkeeper forgot was remembered on its first decision since: %d entries", entries)
	}
}
