package pdp_test

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/custodyhq/custody/bundles"
	"github.com/custodyhq/custody/pdp"
	"github.com/custodyhq/custody/policies"
)

func embeddedSet(t testing.TB) pdp.PolicySet {
	t.Helper()
	set, err := bundles.FromFS(policies.FS, "embedded")
	if err != nil {
		t.Fatal(err)
	}
	return set
}

// The memo is keyed by exactly what the default policy reads: nothing of the arguments, the
// context, the task or the correlation ID, which vary on every call.
func TestMemoKeysOnWhatThePolicyReads(t *testing.T) {
	e := newEngine(t, embeddedSet(t), pdp.WithMemo(100))
	info := e.Policy()
	if info.Memo != "on" {
		t.Fatalf("memo %q, want on", info.Memo)
	}
	want := []string{
		"input.action.name", "input.action.properties.server", "input.agent.id",
		"input.approval.approved", "input.approval.approved_via", "input.delegation.verified", "input.resource.id", "input.resource.properties.owner",
		"input.resource.type", "input.subject.id", "input.subject.properties.iss",
		"input.subject.properties.roles", "input.subject.properties.scopes",
		"type of input", "type of input.action", "type of input.action.properties",
		"type of input.agent", "type of input.agent.properties", "type of input.resource",
		"type of input.resource.properties", "type of input.subject", "type of input.subject.properties",
	}
	if diff := cmp.Diff(want, info.InputPaths); diff != "" {
		t.Errorf("input paths (-want +got):\n%s", diff)
	}
	if off := newEngine(t, embeddedSet(t)).Policy().Memo; off != "off" {
		t.Errorf("memo without WithMemo: %q", off)
	}
}

var everyScope = []any{"mail.send", "mail.read", "contacts.read", "files.read", "files.write", "web.search", "tickets.write", "payments.send"}

// pinnedServer is the server the default catalog pins each tool to.
var pinnedServer = map[string]string{"send_email": "mail", "read_inbox": "mail", "read_file": "filesystem", "write_file": "filesystem", "delete_file": "filesystem", "transfer_funds": "payments"}

// randomInput draws inputs over the values the default policy cares about, including wrong
// types, nulls and absent fields, and over values it ignores.
func randomInput(r *rand.Rand) *pdp.Input {
	pick := func(vs ...any) any { return vs[r.IntN(len(vs))] }
	props := func(fields map[string][]any) map[string]any {
		if r.IntN(20) == 0 {
			return nil
		}
		m := map[string]any{}
		for k, vs := range fields {
			if v := pick(vs...); v != "<absent>" {
				m[k] = v
			}
		}
		return m
	}
	in := &pdp.Input{
		Subject: pdp.Entity{
			Type: "user",
			ID:   pick("alice@acme.example", "alice@acme.example", "bob@acme.example", "").(string),
			Properties: props(map[string][]any{
				"scopes": {everyScope, everyScope, everyScope, everyScope, everyScope, everyScope, []any{"mail.send", "files.read", "tickets.write"}, []any{}, "mail.send", []any{"mail.send", 7}, nil, "<absent>"},
				"roles":  {[]any{"admin"}, []any{"employee"}, []any{"employee"}, "admin", []any{true}, nil, "<absent>", "<absent>", "<absent>"},
				"team":   {"x", "y"},
				"iss":    {"https://idp.acme.example", "https://idp.acme.example", "https://idp.partner.example", "<absent>", "<absent>", "<absent>", "<absent>", "<absent>", "<absent>", 7},
			}),
		},
		Action: pdp.Action{
			Name: pick("send_email", "read_inbox", "read_file", "web_search", "create_ticket", "delete_file", "transfer_funds", "nope").(string),
			Properties: props(map[string][]any{
				"server":    {"mail", "mail", "filesystem", "filesystem", "payments", "evil", 3, nil, "<absent>"},
				"arguments": {map[string]any{"to": fmt.Sprint(r.IntN(1000))}, map[string]any{}},
			}),
		},
		Resource: pdp.Entity{
			Type: pick("mailbox", "file", "tool").(string),
			ID:   fmt.Sprint(r.IntN(3)),
			Properties: props(map[string][]any{
				"owner": {"alice@acme.example", "alice@acme.example", "bob@acme.example", 42, nil, "<absent>", "<absent>", "<absent>"},
			}),
		},
		Context:       map[string]any{"ip": fmt.Sprintf("10.0.0.%d", r.IntN(255))},
		Delegation:    pdp.Delegation{Verified: r.IntN(2) == 0, Chain: []any{}},
		CorrelationID: fmt.Sprintf("c-%d", r.Int()),
	}
	if srv, pinned := pinnedServer[in.Action.Name]; pinned && in.Action.Properties != nil && r.IntN(2) == 0 {
		in.Action.Properties["server"] = srv // the catalog pins the tool there: needed for an allow
	}
	if r.IntN(2) == 0 { // the tool itself, which the default data declares ownerless
		in.Resource.ID = in.Action.Name
	}
	if r.IntN(6) != 0 {
		in.Agent = &pdp.Agent{
			ID:         pick("spiffe://acme.example/agents/mailer", "spiffe://acme.example/agents/researcher", "spiffe://acme.example/agents/ops", "spiffe://evil").(string),
			Type:       "agent",
			Properties: props(map[string][]any{"model": {"a", "b"}}),
		}
	}
	if r.IntN(2) == 0 {
		in.Task = &pdp.Task{ID: fmt.Sprint(r.IntN(5)), Attempt: int64(r.IntN(3))}
	}
	return in
}

// nearMiss copies in with one field the default policy reads set to another value.
func nearMiss(r *rand.Rand, in *pdp.Input) *pdp.Input {
	out := *in
	clone := func(m map[string]any) map[string]any {
		c := map[string]any{}
		for k, v := range m {
			c[k] = v
		}
		return c
	}
	out.Subject.Properties = clone(in.Subject.Properties)
	out.Action.Properties = clone(in.Action.Properties)
	out.Resource.Properties = clone(in.Resource.Properties)
	switch r.IntN(10) {
	case 0:
		out.Resource.Properties["owner"] = []any{"bob@acme.example", "alice@acme.example", 1, nil}[r.IntN(4)]
	case 1:
		out.Subject.Properties["roles"] = []any{[]any{"admin"}, []any{}, "admin"}[r.IntN(3)]
	case 2:
		out.Subject.Properties["scopes"] = []any{everyScope, []any{"mail.send"}, []any{}}[r.IntN(3)]
	case 3:
		out.Action.Properties["server"] = []any{"mail", "filesystem", "payments", 1}[r.IntN(4)]
	case 4:
		out.Delegation.Verified = !in.Delegation.Verified
	case 5:
		out.Subject.ID = []string{"alice@acme.example", "bob@acme.example"}[r.IntN(2)]
	case 6:
		out.Action.Name = []string{"send_email", "delete_file", "transfer_funds", "read_file"}[r.IntN(4)]
	case 8:
		out.Subject.Properties["iss"] = []any{"https://idp.acme.example", "https://idp.partner.example"}[r.IntN(2)]
	case 9:
		out.Resource.Type = []string{"tool", "mailbox"}[r.IntN(2)]
	case 7:
		if out.Agent != nil {
			a := *out.Agent
			a.ID = []string{"spiffe://acme.example/agents/mailer", "spiffe://acme.example/agents/ops"}[r.IntN(2)]
			out.Agent = &a
		}
	}
	return &out
}

// Whatever the input, a remembered decision is the decision evaluation gives.
func TestMemoAgreesWithEvaluation(t *testing.T) {
	ctx := context.Background()
	plain := newEngine(t, embeddedSet(t))
	memo := newEngine(t, embeddedSet(t), pdp.WithMemo(64)) // small: evictions too
	r := rand.New(rand.NewPCG(8, 27))
	allowed := 0
	for i := range 3000 {
		in := randomInput(r)
		want := plain.Decide(ctx, in)
		if want.Err != nil {
			t.Fatalf("input %d: %v", i, want.Err)
		}
		for round := range 2 { // a miss, then (unless evicted) a hit
			got := memo.Decide(ctx, in)
			if got.Allow != want.Allow || !slices.Equal(got.Reasons, want.Reasons) || !cmp.Equal(got.Obligations, want.Obligations) {
				t.Fatalf("input %d round %d: memo %v %v %v, evaluation %v %v %v", i, round, got.Allow, got.Reasons, got.Obligations, want.Allow, want.Reasons, want.Obligations)
			}
		}
		if want.Allow {
			allowed++
		}
		// A near miss: the same input with one field the policy reads changed. A key that
		// missed the field would answer it with the decision just remembered.
		near := nearMiss(r, in)
		want, got := plain.Decide(ctx, near), memo.Decide(ctx, near)
		if got.Allow != want.Allow || !slices.Equal(got.Reasons, want.Reasons) {
			t.Fatalf("near miss of input %d: memo %v %v, evaluation %v %v", i, got.Allow, got.Reasons, want.Allow, want.Reasons)
		}
	}
	if allowed < 30 || allowed > 2970 {
		t.Fatalf("%d of 3000 allowed: the inputs do not exercise both outcomes", allowed)
	}
}

// The memo tells apart what the policy can tell apart, including a field's type alone.
func TestMemoTellsApartWhatThePolicyReads(t *testing.T) {
	ctx := context.Background()
	e := newEngine(t, policySet(t, map[string]string{"p.rego": `package custody.authz
decision := {"allow": true} if {
	is_string(input.subject.properties.x)
	input.action.name == "go"
}
`}), pdp.WithMemo(100))
	if e.Policy().Memo != "on" {
		t.Fatalf("memo %q", e.Policy().Memo)
	}
	in := func(x any, name string) *pdp.Input {
		return &pdp.Input{Subject: pdp.Entity{ID: "a", Properties: map[string]any{"x": x}}, Action: pdp.Action{Name: name}}
	}
	for i, tc := range []struct {
		in   *pdp.Input
		want bool
	}{
		{in("s", "go"), true}, {in(1, "go"), false}, {in("t", "go"), true}, {in(nil, "go"), false},
		{in("s", "stop"), false}, {in("s", "go"), true}, {in(1, "go"), false},
	} {
		if got := e.Decide(ctx, tc.in).Allow; got != tc.want {
			t.Errorf("case %d: allow %v, want %v", i, got, tc.want)
		}
	}
}

func TestMemoIsOffWhenDecisionsCouldDiffer(t *testing.T) {
	for name, body := range map[string]string{
		"clock":          `decision := time.now_ns() > 0`,
		"randomness":     `decision := rand.intn("x", 2) == 0`,
		"network":        `decision := http.send({"method": "GET", "url": "http://127.0.0.1:1"}).status_code == 200`,
		"token expiry":   `decision := io.jwt.decode_verify(input.token, {"secret": "k"})[0]`,
		"with":           "decision := x if {\n\tx := allow with input as {\"x\": 1}\n}\nallow if input.x == 1",
		"whole input":    `decision := json.marshal(input) == "{}"`,
		"computed key":   `decision := input[input.k] == 1`,
		"input argument": `decision := f(input)` + "\nf(x) := true if x.a == 1",
	} {
		t.Run(name, func(t *testing.T) {
			e := newEngine(t, policySet(t, map[string]string{"p.rego": "package custody.authz\n" + body + "\n"}), pdp.WithMemo(100))
			if m := e.Policy().Memo; !strings.HasPrefix(m, "off: ") {
				t.Fatalf("memo %q, want off with a reason", m)
			}
		})
	}
}

// A remembered decision is handed out as a copy: a caller changing it changes nothing else.
func TestMemoHandsOutCopies(t *testing.T) {
	ctx := context.Background()
	e := newEngine(t, policySet(t, map[string]string{"p.rego": `package custody.authz
decision := {"allow": true, "reasons": ["ok"], "obligations": {"require_approval": true, "nested": {"a": [1]}}} if input.action.name == "go"
`}), pdp.WithMemo(100))
	in := &pdp.Input{Action: pdp.Action{Name: "go"}}
	first := e.Decide(ctx, in)
	first.Reasons[0] = "tampered"
	first.Obligations["require_approval"] = false
	first.Obligations["nested"].(map[string]any)["a"] = "tampered"
	for range 2 {
		d := e.Decide(ctx, in)
		if d.Reasons[0] != "ok" || d.Obligations["require_approval"] != true || !cmp.Equal(d.Obligations["nested"], map[string]any{"a": []any{json.Number("1")}}) {
			t.Fatalf("decision changed through a copy: %v %v", d.Reasons, d.Obligations)
		}
	}
}

// A projection too large to keep (a user with thousands of scopes) is decided without the memo.
func TestMemoSkipsLargeInputs(t *testing.T) {
	ctx := context.Background()
	e := newEngine(t, embeddedSet(t), pdp.WithMemo(100))
	scopes := []any{"mail.send"}
	for i := range 2000 {
		scopes = append(scopes, fmt.Sprintf("scope.%d", i))
	}
	in := &pdp.Input{
		Subject:  pdp.Entity{Type: "user", ID: "alice@acme.example", Properties: map[string]any{"scopes": scopes}},
		Action:   pdp.Action{Name: "send_email", Properties: map[string]any{"server": "mail"}},
		Resource: pdp.Entity{Type: "tool", ID: "send_email"},
		Agent:    &pdp.Agent{ID: "spiffe://acme.example/agents/mailer", Type: "agent"},
	}
	for range 3 {
		if d := e.Decide(ctx, in); !d.Allow {
			t.Fatalf("decision %v", d.Reasons)
		}
	}
	if hits, misses := e.MemoStats(); hits != 0 || misses != 0 {
		t.Fatalf("memo hits %d, misses %d: a large input went through the memo", hits, misses)
	}
	in.Subject.Properties["scopes"] = []any{"mail.send"}
	for range 3 { // remembered the second time, answered from memory the third
		e.Decide(ctx, in)
	}
	if hits, misses := e.MemoStats(); hits != 1 || misses != 2 {
		t.Fatalf("memo hits %d, misses %d after a small input three times, want 1 and 2", hits, misses)
	}
}

// BenchmarkDecideMemo is a repeated decision of the default policy set answered from the memo,
// against BenchmarkDecide's evaluation of the same input.
func BenchmarkDecideMemo(b *testing.B) {
	ctx := context.Background()
	e := newEngine(b, embeddedSet(b), pdp.WithMemo(1000))
	in := randomInput(rand.New(rand.NewPCG(1, 2)))
	e.Decide(ctx, in)
	b.ReportAllocs()
	for b.Loop() {
		e.Decide(ctx, in)
	}
}

// Concurrent deciders share one memo; run with -race.
func TestMemoUnderConcurrency(t *testing.T) {
	ctx := context.Background()
	plain := newEngine(t, embeddedSet(t))
	memo := newEngine(t, embeddedSet(t), pdp.WithMemo(32))
	inputs := make([]*pdp.Input, 200)
	r := rand.New(rand.NewPCG(3, 4))
	for i := range inputs {
		inputs[i] = randomInput(r)
	}
	want := make([]pdp.Decision, len(inputs))
	for i, in := range inputs {
		want[i] = plain.Decide(ctx, in)
	}
	errs := make(chan error, 8)
	for w := range 8 {
		go func() {
			for k := range 400 {
				i := (k*7 + w*13) % len(inputs)
				got := memo.Decide(ctx, inputs[i])
				if got.Allow != want[i].Allow || !slices.Equal(got.Reasons, want[i].Reasons) {
					errs <- fmt.Errorf("input %d: memo %v %v, evaluation %v %v", i, got.Allow, got.Reasons, want[i].Allow, want[i].Reasons)
					return
				}
			}
			errs <- nil
		}()
	}
	for range 8 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}

var fuzzEngines struct {
	once        sync.Once
	plain, memo *pdp.Engine
}

// FuzzMemoAgreesWithEvaluation decides arbitrary JSON properties through one long-lived memo and
// through plain evaluation: the memo, filled by every earlier input of the run, must never answer
// differently.
func FuzzMemoAgreesWithEvaluation(f *testing.F) {
	f.Add([]byte(`{"scopes":["mail.send"],"roles":["employee"]}`), []byte(`{"owner":"alice@acme.example"}`), []byte(`{"server":"mail","arguments":{"to":"x"}}`), "send_email", "spiffe://acme.example/agents/mailer", "alice@acme.example", false)
	f.Add([]byte(`{"scopes":"mail.send","roles":null}`), []byte(`{"owner":42}`), []byte(`{"server":1}`), "delete_file", "spiffe://acme.example/agents/ops", "bob@acme.example", true)
	f.Add([]byte(`{"scopes":["files.write","files.read"],"roles":["admin"]}`), []byte(`{}`), []byte(`{"server":"filesystem"}`), "delete_file", "spiffe://acme.example/agents/ops", "alice@acme.example", true)
	f.Add([]byte(`null`), []byte(`[]`), []byte(`{"server":null}`), "", "", "", false)
	f.Fuzz(func(t *testing.T, subject, resource, action []byte, tool, agent, user string, verified bool) {
		fuzzEngines.once.Do(func() {
			fuzzEngines.plain = newEngine(t, embeddedSet(t))
			fuzzEngines.memo = newEngine(t, embeddedSet(t), pdp.WithMemo(4096))
		})
		var sp, rp, ap map[string]any
		if json.Unmarshal(subject, &sp) != nil || json.Unmarshal(resource, &rp) != nil || json.Unmarshal(action, &ap) != nil {
			t.Skip()
		}
		in := &pdp.Input{
			Subject:    pdp.Entity{Type: "user", ID: user, Properties: sp},
			Action:     pdp.Action{Name: tool, Properties: ap},
			Resource:   pdp.Entity{Type: "tool", ID: tool, Properties: rp},
			Delegation: pdp.Delegation{Verified: verified, Chain: []any{}},
		}
		if agent != "" {
			in.Agent = &pdp.Agent{ID: agent, Type: "agent"}
		}
		ctx := context.Background()
		want := fuzzEngines.plain.Decide(ctx, in)
		for range 2 {
			got := fuzzEngines.memo.Decide(ctx, in)
			if got.Allow != want.Allow || !slices.Equal(got.Reasons, want.Reasons) || !cmp.Equal(got.Obligations, want.Obligations) || (got.Err == nil) != (want.Err == nil) {
				t.Fatalf("memo %v %v %v %v, evaluation %v %v %v %v", got.Allow, got.Reasons, got.Obligations, got.Err, want.Allow, want.Reasons, want.Obligations, want.Err)
			}
		}
	})
}

// BenchmarkDecideMemoHit is a memo hit on an input as the server decodes it (numbers as
// json.Number), the repeating traffic of the load harness: the same call, arguments and
// correlation ID aside.
func BenchmarkDecideMemoHit(b *testing.B) {
	ctx := context.Background()
	e := newEngine(b, embeddedSet(b), pdp.WithMemo(1000))
	in := &pdp.Input{
		Subject: pdp.Entity{Type: "user", ID: "alice@acme.example", Properties: map[string]any{
			"roles": []any{"employee"}, "scopes": []any{"files.read", "files.write"},
		}},
		Action: pdp.Action{Name: "write_file", Properties: map[string]any{
			"server": "filesystem", "arguments": map[string]any{"path": "/home/alice/notes.txt", "n": json.Number("3")},
		}},
		Resource:      pdp.Entity{Type: "file", ID: "/home/alice/notes.txt", Properties: map[string]any{"owner": "alice@acme.example"}},
		Context:       map[string]any{"channel": "slack", "client_ip": "10.1.0.1"},
		Agent:         &pdp.Agent{ID: "spiffe://acme.example/agents/ops"},
		Delegation:    pdp.Delegation{Chain: []any{}},
		Task:          &pdp.Task{ID: "t-1", SessionID: "s-1", Attempt: 1},
		CorrelationID: "repeat-1",
		Caller:        &pdp.Caller{Kind: pdp.CallerAnonymous},
	}
	if d := e.Decide(ctx, in); !d.Allow {
		b.Fatalf("not an allow: %v", d.Reasons)
	}
	b.ReportAllocs()
	for b.Loop() {
		e.Decide(ctx, in)
	}
	if hits, _ := e.MemoStats(); hits == 0 {
		b.Fatal("no memo hit")
	}
}

// BenchmarkDecideDistinct is the load harness's distinct traffic: every decision new to the memo
// (the user holds one scope no other request names), with the memo serve runs by default and
// without one. The two should cost the same: a memo that never hits must not tax evaluation.
func BenchmarkDecideDistinct(b *testing.B) {
	ctx, cancel := context.WithCancel(context.Background()) // cancellable, as a request's
	defer cancel()
	inputs := make([]*pdp.Input, 1<<16) // more than the memo and its doorkeeper recall
	for i := range inputs {
		in := nativeInput()
		in.Subject.Properties["scopes"] = []any{"mail.send", fmt.Sprintf("unique.%d", i)}
		inputs[i] = in
	}
	for _, bc := range []struct {
		name string
		opts []pdp.Option
	}{
		{"memo", []pdp.Option{pdp.WithMemo(10_000)}},
		{"nomemo", nil},
	} {
		b.Run(bc.name, func(b *testing.B) {
			e := newEngine(b, embeddedSet(b), bc.opts...)
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				if d := e.Decide(ctx, inputs[i%len(inputs)]); !d.Allow {
					b.Fatalf("not an allow: %v", d.Reasons)
				}
				i++
			}
		})
	}
}

// With the memo on, a decision converts only what the policy reads: the default policy never
// reads the context, the task, the arguments or the delegation chain, and a call carrying a large
// context cost every decision its conversion (the whole input was converted for OPA, about a
// tenth of a decision's CPU on the load harness's distinct traffic).
func TestDecisionConvertsOnlyWhatThePolicyReads(t *testing.T) {
	ctx := context.Background()
	e := newEngine(t, embeddedSet(t), pdp.WithMemo(10))
	allocsFor := func(contextKeys int) float64 {
		context := map[string]any{}
		for i := range contextKeys {
			context[fmt.Sprint("k", i)] = []any{"v", json.Number(fmt.Sprint(i))}
		}
		n := 0
		return testing.AllocsPerRun(20, func() {
			in := nativeInput()
			in.Subject.Properties["scopes"] = []any{"mail.send", fmt.Sprint("unique.", n)} // a memo miss
			n++
			in.Context = context
			if d := e.Decide(ctx, in); !d.Allow {
				t.Fatalf("decision %v", d.Reasons)
			}
		})
	}
	small, large := allocsFor(0), allocsFor(1000)
	if large > small+100 {
		t.Fatalf("a decision with a context of 1,000 keys allocates %.0f times, with none %.0f: the unread context is converted", large, small)
	}
}
