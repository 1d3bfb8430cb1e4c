package pdp

import (
	"bytes"
	"encoding/json"
	"math/rand/v2"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/open-policy-agent/opa/v1/ast"
)

// wideProjection reads every part of the input the envelope has, whole and member by member,
// by value and by type, and places that do not exist.
func wideProjection(t testing.TB) projection {
	t.Helper()
	var p projection
	for _, s := range []string{
		"subject.id", "subject.type", "subject.properties", "subject.properties.scopes",
		"subject.properties.roles", "subject.properties.iss", "subject.properties.a.b", "subject.nope",
		"resource.id", "resource.type", "resource.properties.owner", "resource.properties",
		"action.name", "action.properties", "action.properties.server", "action.properties.arguments",
		"action.properties.arguments.to", "context", "context.ip", "context.n", "context.ip.x",
		"delegation.verified", "delegation.chain", "agent.id", "agent.type", "agent.properties",
		"agent.properties.model", "task.id", "task.parent_id", "task.attempt", "task.session_id",
		"task.intent_sha256", "task.nope", "correlation_id", "correlation_id.x", "approval",
		"approval.approved", "approval.approved_via", "caller.kind", "caller.id", "nope",
		"subject", "agent", // whole envelope objects: their type natively, their value converted
	} {
		ref := ast.MustParseRef("input." + s)[1:]
		p = append(p, newInputPath(ref, false), newInputPath(ref, true))
	}
	p = append(p, newInputPath(nil, true)) // is_object(input)
	return p
}

// checkNativeKey fails unless the native key, when there is one, is the converted input's key,
// path by path and whole. It returns how many paths were keyed natively.
func checkNativeKey(t testing.TB, p projection, in *Input) int {
	t.Helper()
	native := 0
	value, err := in.AST()
	for _, ip := range p {
		one := projection{ip}
		got, ok := one.nativeKey(in)
		if !ok {
			continue
		}
		native++
		if err != nil {
			t.Fatalf("%s: a native key for an input that does not convert (%v)", one.names()[0], err)
		}
		want, wok := one.key(value)
		if !wok || got != want {
			t.Fatalf("%s: native key %q (ok), converted %q (ok %v)", one.names()[0], got, want, wok)
		}
	}
	if got, ok := p.nativeKey(in); ok {
		if want, wok := p.key(value); !wok || got != want {
			t.Fatalf("whole projection: native key %q, converted %q (ok %v)", got, want, wok)
		}
	}
	return native
}

func TestNativeKeyMatchesAST(t *testing.T) {
	p := wideProjection(t)
	agentless := &Input{Subject: Entity{ID: "a"}, Action: Action{Name: "x"}}
	full := &Input{
		Subject: Entity{Type: "user", ID: "alice", Properties: map[string]any{
			"scopes": []any{"mail.send", json.Number("7"), nil, true, map[string]any{"z": "1", "a": []any{}}},
			"iss":    "https://idp", "a": map[string]any{"b": json.Number("-1.5e3")},
		}},
		Action:        Action{Name: "send_email", Properties: map[string]any{"server": "mail", "arguments": map[string]any{"to": "bob"}}},
		Resource:      Entity{Type: "mailbox", ID: "alice", Properties: map[string]any{}},
		Context:       map[string]any{"ip": "10.0.0.1", "n": json.Number("12345678901234567890")},
		Agent:         &Agent{ID: "spiffe://a", Properties: map[string]any{"model": "m"}},
		Delegation:    Delegation{Verified: true, Chain: []any{map[string]any{"sub": "alice"}}},
		Task:          &Task{ID: "t", Attempt: 3, IntentSHA256: "ab"},
		CorrelationID: "c-1",
		Approval:      map[string]any{"approved": true, "approved_via": "approver_cli"},
		Caller:        &Caller{Kind: CallerToken, ID: "alice"},
	}
	tests := []struct {
		name      string
		in        *Input
		minNative int // paths that must key natively: the conversion is skipped for real
	}{
		{"agentless, taskless", agentless, 60},
		{"every part", full, 70},
		{"big exponent: does not convert, never keyed natively", &Input{Context: map[string]any{"x": json.Number("1e999999")}}, 0},
		{"a Go type OPA round-trips", &Input{Context: map[string]any{"x": []string{"a"}}}, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if n := checkNativeKey(t, p, tc.in); n < tc.minNative {
				t.Errorf("%d paths keyed natively, want at least %d", n, tc.minNative)
			}
		})
	}
	t.Run("random inputs", func(t *testing.T) {
		r := rand.New(rand.NewPCG(7, 8))
		for range 500 {
			checkNativeKey(t, p, randomNativeInput(r))
		}
	})
}

// randomNativeInput draws inputs of every shape JSON decoding gives.
func randomNativeInput(r *rand.Rand) *Input {
	vals := []any{nil, true, false, "", "x", "alice", json.Number("0"), json.Number("-0"), json.Number("1.50"),
		[]any{}, []any{"a", "b"}, []any{json.Number("1"), nil}, map[string]any{}, map[string]any{"b": "1", "a": nil}}
	pick := func() any { return vals[r.IntN(len(vals))] }
	props := func() map[string]any {
		switch r.IntN(4) {
		case 0:
			return nil
		case 1:
			return map[string]any{}
		}
		m := map[string]any{}
		for _, k := range []string{"scopes", "roles", "iss", "owner", "server", "arguments", "model", "a"} {
			if r.IntN(2) == 0 {
				m[k] = pick()
			}
		}
		return m
	}
	in := &Input{
		Subject:  Entity{Type: "user", ID: "alice", Properties: props()},
		Action:   Action{Name: "read_file", Properties: props()},
		Resource: Entity{Type: "file", ID: "/x", Properties: props()},
		Context:  props(),
	}
	if r.IntN(2) == 0 {
		in.Agent = &Agent{ID: "a", Properties: props()}
	}
	if r.IntN(2) == 0 {
		in.Task = &Task{ID: "t", Attempt: int64(r.IntN(5))}
	}
	if r.IntN(2) == 0 {
		in.Approval = props()
	}
	if r.IntN(3) == 0 {
		in.Delegation.Chain = []any{pick()}
	}
	return in
}

// FuzzNativeKey decodes the input as the server's decoder would (numbers as json.Number) and
// holds the native key to the converted input's.
func FuzzNativeKey(f *testing.F) {
	f.Add([]byte(`{"subject":{"id":"alice","properties":{"scopes":["a",1,null]}},"action":{"name":"x","properties":{"server":"mail"}},"context":{"n":1e3}}`))
	f.Add([]byte(`{"agent":{"id":"a","properties":{"model":{"b":[true]}}},"task":{"id":"t","attempt":2},"approval":{"approved":true}}`))
	f.Add([]byte(`{"context":{"x":1e999999},"resource":{"properties":{"owner":"-0"}}}`))
	p := wideProjection(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		dec := json.NewDecoder(bytes.NewReader(data))
		dec.UseNumber()
		var in Input
		if dec.Decode(&in) != nil {
			return
		}
		checkNativeKey(t, p, &in)
		checkObserved(t, p.minimal(), &in)
	})
}

// The wide projection keys natively what the default policy reads, so the test above is not
// vacuous for it.
func TestNativeKeyCoversDefaultPaths(t *testing.T) {
	in := &Input{Subject: Entity{ID: "alice", Properties: map[string]any{"scopes": []any{"a"}}}, Agent: &Agent{ID: "x"}}
	var got []string
	for _, ip := range wideProjection(t) {
		if _, ok := (projection{ip}).nativeKey(in); !ok {
			got = append(got, projection{ip}.names()[0])
		}
	}
	want := []string{"input.subject", "input.agent"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("paths left to the conversion (-want +got):\n%s", diff)
	}
}

// checkObserved fails unless the input observed builds for p agrees with the whole converted
// input at every path of p: what the memo's exactness says the policy can read. It reports
// whether observed built one.
func checkObserved(t testing.TB, p projection, in *Input) bool {
	t.Helper()
	o := newObserver(p)
	if o == nil {
		return false
	}
	vals := make([]pathValue, len(p))
	if _, ok := p.nativeKeyInto(in, vals); !ok {
		return false
	}
	got, ok := o.build(vals)
	if !ok {
		return false
	}
	whole, err := in.AST()
	if err != nil {
		t.Fatalf("observed built an input for one that does not convert (%v)", err)
	}
	for _, ip := range p {
		one := projection{ip}
		gk, gok := one.key(got)
		wk, wok := one.key(whole)
		if gok != wok || gk != wk {
			t.Fatalf("%s: observed %q (ok %v), whole input %q (ok %v)\nobserved: %v", one.names()[0], gk, gok, wk, wok, got)
		}
	}
	return true
}

// The input observed builds (only what the policy reads) agrees with the whole input on every
// path the policy reads, for single paths, for random sets of them and for the default policy's,
// over inputs of every shape.
func TestObservedAgreesOnTheProjection(t *testing.T) {
	wide := wideProjection(t)
	r := rand.New(rand.NewPCG(9, 10))
	built := 0
	for i := range 2000 {
		in := randomNativeInput(r)
		if i%2 == 0 {
			in.Caller = &Caller{Kind: CallerToken, ID: "alice"}
			in.CorrelationID = "c"
			in.Delegation.Verified = true
		}
		var p projection
		for _, ip := range wide {
			if r.IntN(6) == 0 {
				p = append(p, ip)
			}
		}
		if checkObserved(t, p.minimal(), in) {
			built++
		}
		for _, ip := range wide[r.IntN(len(wide)):][:1] {
			checkObserved(t, projection{ip}, in)
		}
	}
	if built < 1000 {
		t.Fatalf("observed built %d of 2000 inputs: the test is close to vacuous", built)
	}
}

// The doorkeeper recalls no more keys than the memo could hold by either of its bounds: sized by
// --decision-memo alone, a memo of 1,000,000 entries under the default 16 MiB held 2,000,000
// hashes (about 50 MB) for a memo that fits about 100,000 decisions.
func TestDoorkeeperIsBoundedByBytes(t *testing.T) {
	m := newMemo(1_000_000, 16<<20)
	if got, limit := cap(m.door.ring), 2*(16<<20)/entryOverhead; got > limit {
		t.Fatalf("doorkeeper recalls %d keys, want at most %d", got, limit)
	}
	if got := cap(newMemo(100, 16<<20).door.ring); got != 200 {
		t.Fatalf("doorkeeper of a memo of 100 recalls %d keys, want 200", got)
	}
}
