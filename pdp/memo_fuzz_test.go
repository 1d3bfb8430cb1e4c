package pdp_test

import (
	"context"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"testing/fstest"

	"github.com/google/go-cmp/cmp"

	"github.com/custodyhq/custody/bundles"
	"github.com/custodyhq/custody/pdp"
)

// The policy-set fuzzer: FuzzMemoPolicySets reads a policy set, a decision query and a
// sequence of inputs out of its bytes, decides each input with the memo and without it, and
// fails on any difference. The layout of the bytes is stable, so that the seeds under
// testdata/fuzz/FuzzMemoPolicySets keep meaning what they meant:
//
//	byte 0      the decision query (fuzzQueries)
//	byte 1      the memo's size, 1 to 16 decisions, so that evictions happen too
//	byte 2      how many fragments, 1 to 6
//	6 bytes     per fragment: its kind (fuzzFragments), its package, two input paths, a type
//	            test and a constant among the first path's values
//	the rest    seeds the inputs
//
// Bytes that run out read as zero.

// fuzzBytes reads small numbers out of the fuzz input.
type fuzzBytes struct {
	b []byte
	i int
}

func (r *fuzzBytes) pick(n int) int {
	if r.i >= len(r.b) {
		return 0
	}
	v := int(r.b[r.i])
	r.i++
	return v % n
}

// fuzzPaths are the input fields fragments read, with constants among the values the inputs
// give them (so that a lookup by constant can match); the inputs vary exactly these, in type too.
var fuzzPaths = []struct {
	path   string
	values []string
}{
	{"input.subject.id", []string{`"admin"`, `"mallory"`}},
	{"input.action.name", []string{`"read"`, `"delete_file"`}},
	{"input.subject.properties.tenant", []string{`"t1"`, `1`}},
	{"input.subject.properties.x", []string{`"admin"`, `1`, `true`}},
	{"input.subject.properties.roles", []string{`"admin"`, `["admin"]`}},
	{"input.resource.properties.owner", []string{`"admin"`, `7`}},
	{"input.context.n", []string{`1`, `"1"`}},
	{"input.subject.properties", []string{`"admin"`, `{"x": "admin"}`}},
}

// fuzzGuards are type tests in every form the analysis treats as a read of the type alone.
var fuzzGuards = []string{
	"is_string(%s)", "is_number(%s)", "is_array(%s)", "not is_number(%s)",
	`type_name(%s) == "string"`, "is_object(%s)", "is_boolean(%s)", "is_null(%s)",
}

var fuzzPackages = []string{"custody.authz", "lib.a", "lib.b"}

// fuzzFragments each write rules named with the fragment's number i into one package: r<i> is
// the fragment's result, which the decision reports. P and Q are input paths, G(x) a type test
// of x, C a constant; prev is an earlier fragment's result, by its full path.
var fuzzFragments = []string{
	// general ref heads, their keys type-tested locals
	"h{i}[u].v := {Q} if {\n\tu := {P}\n\t{G u}\n}\nr{i} := x if x := h{i}[{C}].v",
	"h{i}[u] contains {Q} if {\n\tu := {P}\n\t{G u}\n}\nr{i} := h{i}[{C}]",
	"h{i}.by[u][w] := true if {\n\tu := {P}\n\tw := {Q}\n\t{G u}\n}\nr{i} := h{i}.by[{C}]",
	"h{i} contains u if {\n\tu := {P}\n\t{G u}\n}\nr{i} := {C} in h{i}",
	"h{i}[{P}] := 1\nr{i} := h{i}[{C}]",
	// else, functions
	"r{i} := 1 if {\n\t{G {P}}\n} else := 2 if {\n\t{P} == {C}\n} else := 3",
	"f{i}(x) := y if {\n\t{G x}\n\ty := x\n}\nr{i} := f{i}({P})",
	"f{i}(x) if {G x}\nr{i} := f{i}({P})",
	"f{i}(x) := \"s\" if {\n\t{G x}\n} else := \"o\"\nr{i} := f{i}({P})",
	// comprehensions, every
	"r{i} := [u | u := {P}; {G u}]",
	"r{i} := {k | some k, _ in {P}}",
	"r{i} if {\n\tevery x in {P} {\n\t\t{G x}\n\t}\n}",
	"r{i} := count([1 | {G {P}}])",
	// with
	"w{i} := {P}\nr{i} := y if {\n\ty := w{i} with {P} as {C}\n}",
	// computed keys
	"t{i} := {\"admin\": 1, \"t1\": 2, \"read\": 3, \"1\": 4}\nr{i} := t{i}[{P}]",
	"r{i} := input.subject.properties[{P}]",
	"r{i} := x if {\n\tu := {P}\n\t{G u}\n\tx := t{i}[u]\n}\nt{i} := {\"admin\": 1, \"t1\": 2}",
	// type reads alone, and type tests whose local flows on
	"r{i} := type_name({P})",
	"r{i} if {G {P}}",
	"r{i} := t if {\n\tu := {P}\n\tt := type_name(u)\n}",
	"r{i} if {\n\tu := {P}\n\t{G u}\n\tu == {C}\n}",
	"r{i} if {\n\tu := {P}\n\t{G u}\n\tstartswith(sprintf(\"%v\", [u]), \"ad\")\n}",
	"r{i} if {\n\tu := {P}\n\t{G u}\n\tnot is_number(u)\n}",
	"r{i} if {\n\tu := {P}\n\tu = {Q}\n\t{G u}\n}",
	"r{i} if {\n\ts := input.subject\n\t{G s.properties.x}\n}",
	"r{i} if not {G {P}}",
	"default r{i} := \"d\"\nr{i} := \"v\" if {G {P}}",
	"r{i} := object.get(input.subject.properties, \"x\", \"none\")",
	"r{i} contains k if {\n\tsome k, v in input.subject.properties\n\t{G v}\n}",
	// imports of input and of other packages
	"import input.subject as s{i}\nr{i} := x if {\n\tx := s{i}.properties.x\n\t{G x}\n}",
	"import input.subject.properties as s{i}\nr{i} if {G s{i}.x}",
	"import {prevpkg} as b{i}\nr{i} := x if x := b{i}.{prev}",
	"r{i} := x if {\n\tx := data.{prevpkg}.{prev}\n\t{G x}\n}",
}

// fuzzQueries are the decision queries; each has its decision rules.
var fuzzQueries = []struct{ query, rules string }{
	{"data.custody.authz.decision", "decision := {\"allow\": count(results) % 2 == 1, \"reasons\": [sprintf(\"%v\", [results])]}"},
	{"data.tenants[input.subject.properties.tenant].decision", ""},
	{"data.custody.authz.decisions[input.action.name]", "decisions[n] := {\"allow\": count(results) % 2 == 1, \"reasons\": [n, sprintf(\"%v\", [results])]} if some n in [\"read\", \"delete_file\"]"},
	{"data.custody.authz.by[input.subject.properties.x].decision", "by[k].decision := {\"allow\": count(results) > 0, \"reasons\": [sprintf(\"%v\", [results])]} if some k in [\"admin\", \"mallory\", 1]"},
}

// fuzzPolicySet is one generated policy set.
type fuzzPolicySet struct {
	files map[string]string
	query string
	size  int
	seed  uint64
}

func genPolicySet(data []byte) fuzzPolicySet {
	r := &fuzzBytes{b: data}
	q := fuzzQueries[r.pick(len(fuzzQueries))]
	out := fuzzPolicySet{query: q.query, size: 1 + r.pick(16), files: map[string]string{}}
	n := 1 + r.pick(6)
	imports := map[string][]string{}
	rules := map[string][]string{}
	var results []string
	prevPkg, prev := "custody.authz", "none"
	for i := range n {
		kind, pkg := r.pick(len(fuzzFragments)), fuzzPackages[r.pick(len(fuzzPackages))]
		fp, qq := fuzzPaths[r.pick(len(fuzzPaths))], fuzzPaths[r.pick(len(fuzzPaths))].path
		p, g, c := fp.path, fuzzGuards[r.pick(len(fuzzGuards))], fp.values[r.pick(len(fp.values))]
		text := fuzzFragments[kind]
		text = strings.NewReplacer("{i}", strconv.Itoa(i), "{P}", p, "{Q}", qq, "{C}", c, "{prevpkg}", "data."+prevPkg, "{prev}", prev).Replace(text)
		text = strings.ReplaceAll(text, "data.data.", "data.")
		// {G x}: the type test of x, after the other substitutions so that x may be a path.
		for {
			at := strings.Index(text, "{G ")
			if at < 0 {
				break
			}
			end := at + strings.IndexByte(text[at:], '}')
			text = text[:at] + fmt.Sprintf(g, text[at+3:end]) + text[end+1:]
		}
		var body []string
		for line := range strings.SplitSeq(text, "\n") {
			if strings.HasPrefix(line, "import ") {
				imports[pkg] = append(imports[pkg], line)
			} else {
				body = append(body, line)
			}
		}
		rules[pkg] = append(rules[pkg], strings.Join(body, "\n"))
		results = append(results, fmt.Sprintf("results[%q] := x if x := data.%s.r%d", fmt.Sprint("r", i), pkg, i))
		prevPkg, prev = pkg, fmt.Sprint("r", i)
	}
	rules["custody.authz"] = append(rules["custody.authz"], strings.Join(results, "\n"))
	if q.rules != "" {
		rules["custody.authz"] = append(rules["custody.authz"], q.rules)
	} else {
		out.files["tenants.rego"] = "package tenants.t1\n\ndecision := {\"allow\": count(data.custody.authz.results) % 2 == 1, \"reasons\": [\"t1\"]}\n"
		out.files["tenants2.rego"] = "package tenants.t2\n\ndecision := {\"allow\": count(data.custody.authz.results) > 1, \"reasons\": [sprintf(\"%v\", [data.custody.authz.results])]}\n"
	}
	for pkg, rs := range rules {
		src := "package " + pkg + "\n\n"
		if len(imports[pkg]) > 0 {
			src += strings.Join(imports[pkg], "\n") + "\n\n"
		}
		out.files[strings.ReplaceAll(pkg, ".", "_")+".rego"] = src + strings.Join(rs, "\n\n") + "\n"
	}
	h := fnv.New64a()
	h.Write(data[min(r.i, len(data)):])
	out.seed = h.Sum64()
	return out
}

// fuzzInput draws an input over the values the fragments read, in every type, and a
// correlation ID no policy reads.
func fuzzInput(r *rand.Rand) *pdp.Input {
	pick := func(vs ...any) any { return vs[r.IntN(len(vs))] }
	props := map[string]any{}
	set := func(m map[string]any, k string, vs ...any) {
		if v := pick(vs...); v != "<absent>" {
			m[k] = v
		}
	}
	set(props, "tenant", "t1", "t2", 1, "<absent>")
	set(props, "x", "admin", "mallory", 1, true, nil, []any{"admin"}, map[string]any{"k": "admin"}, "<absent>")
	set(props, "roles", []any{"admin"}, []any{"user"}, "admin", "<absent>")
	set(props, "read", "t1", 2, "<absent>", "<absent>")
	set(props, "admin", "t2", true, "<absent>", "<absent>")
	owner := map[string]any{}
	set(owner, "owner", "admin", 7, "<absent>")
	ctx := map[string]any{}
	set(ctx, "n", 1, 2, "1", "<absent>")
	return &pdp.Input{
		Subject:       pdp.Entity{Type: "user", ID: pick("admin", "mallory", "").(string), Properties: props},
		Action:        pdp.Action{Name: pick("read", "delete_file", "admin").(string)},
		Resource:      pdp.Entity{Type: "file", Properties: owner},
		Context:       ctx,
		CorrelationID: strconv.Itoa(r.Int()),
	}
}

// fuzzStats counts what the policy-set checks saw, for TestMemoPolicySetSweep's figures.
var fuzzStats struct {
	sets, invalid, memoOn, decisions, hits atomic.Uint64
}

// checkPolicySet decides a sequence of inputs against set with the memo and without it.
func checkPolicySet(t testing.TB, set fuzzPolicySet, inputs int) {
	t.Helper()
	ctx := context.Background()
	files := set.files
	fsys := fstest.MapFS{}
	for name, src := range files {
		fsys[name] = &fstest.MapFile{Data: []byte(src)}
	}
	ps, err := bundles.FromFS(fsys, "fuzz")
	var plain *pdp.Engine
	if err == nil {
		plain, err = pdp.New(ctx, ps, pdp.WithQuery(set.query))
	}
	if err != nil { // a generated policy that does not compile: nothing to compare
		fuzzStats.invalid.Add(1)
		t.Skip(err)
	}
	memo, err := pdp.New(ctx, ps, pdp.WithQuery(set.query), pdp.WithMemo(set.size))
	if err != nil {
		t.Fatalf("the memo engine refused a policy set the plain one took: %v", err)
	}
	fuzzStats.sets.Add(1)
	if memo.Policy().Memo == "on" {
		fuzzStats.memoOn.Add(1)
	}
	r := rand.New(rand.NewPCG(set.seed, 13))
	var seen []*pdp.Input
	for i := range inputs {
		in := fuzzInput(r)
		if len(seen) > 0 && r.IntN(3) == 0 { // a repeat, under another correlation ID
			c := *seen[r.IntN(len(seen))]
			c.CorrelationID = strconv.Itoa(r.Int())
			in = &c
		}
		seen = append(seen, in)
		want, got := plain.Decide(ctx, in), memo.Decide(ctx, in)
		if got.Allow != want.Allow || !slices.Equal(got.Reasons, want.Reasons) || !cmp.Equal(got.Obligations, want.Obligations) || (got.Err == nil) != (want.Err == nil) {
			names := make([]string, 0, len(files))
			for n := range files {
				names = append(names, n)
			}
			sort.Strings(names)
			var src strings.Builder
			for _, n := range names {
				fmt.Fprintf(&src, "--- %s\n%s", n, files[n])
			}
			t.Fatalf("input %d %+v:\nmemo %v %v (err %v)\nevaluation %v %v (err %v)\nquery %s, memo %q keyed on %v\n%s",
				i, *in, got.Allow, got.Reasons, got.Err, want.Allow, want.Reasons, want.Err, set.query, memo.Policy().Memo, memo.Policy().InputPaths, src.String())
		}
	}
	hits, misses := memo.MemoStats()
	fuzzStats.decisions.Add(hits + misses)
	fuzzStats.hits.Add(hits)
}

// FuzzMemoPolicySets generates policy sets and decision queries, and holds the memo to plain
// evaluation on each. CI runs the seeds under testdata/fuzz/FuzzMemoPolicySets; to search:
//
//	go test ./pdp -run '^$' -fuzz FuzzMemoPolicySets -fuzztime 20m -parallel 1
func FuzzMemoPolicySets(f *testing.F) {
	// The policy: a general ref head keyed by a type-tested local.
	f.Add([]byte{0, 4, 0, 0, 0, 0, 1, 0, 0, 7})
	f.Fuzz(func(t *testing.T, data []byte) {
		checkPolicySet(t, genPolicySet(data), 24)
	})
}

// TestMemoPolicySetSweep runs the policy-set generator over random bytes: a few sets on every
// run, CUSTODY_MEMO_SWEEP of them by hand, with figures:
//
//	CUSTODY_MEMO_SWEEP=2000 go test ./pdp -run TestMemoPolicySetSweep -v
func TestMemoPolicySetSweep(t *testing.T) {
	n := 20
	if s := os.Getenv("CUSTODY_MEMO_SWEEP"); s != "" {
		var err error
		if n, err = strconv.Atoi(s); err != nil {
			t.Fatal(err)
		}
	}
	snap := func() [5]uint64 {
		return [5]uint64{fuzzStats.sets.Load(), fuzzStats.invalid.Load(), fuzzStats.memoOn.Load(), fuzzStats.decisions.Load(), fuzzStats.hits.Load()}
	}
	before := snap()
	r := rand.New(rand.NewPCG(uint64(n), 99))
	for i := range n {
		data := make([]byte, 3+6*6+8)
		for j := range data {
			data[j] = byte(r.IntN(256))
		}
		t.Run(strconv.Itoa(i), func(t *testing.T) { checkPolicySet(t, genPolicySet(data), 24) })
	}
	after := snap()
	sets, invalid, on, dec, hits := after[0]-before[0], after[1]-before[1], after[2]-before[2], after[3]-before[3], after[4]-before[4]
	t.Logf("%d policy sets generated: %d compiled (%d did not), memo on for %d; %d decisions with the memo on, %d hits (%.0f%%)",
		n, sets, invalid, on, dec, hits, 100*float64(hits)/float64(max(dec, 1)))
}
