package decisionlog

import (
	"bytes"
	"encoding/json"
	"math"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/custodyhq/custody/schema"
)

// checkMarshal fails unless marshalRecord spells r exactly as json.Marshal does, or fails alike.
func checkMarshal(t testing.TB, r *Record) {
	t.Helper()
	want, werr := json.Marshal(r)
	got, gerr := marshalRecord(r)
	if (werr != nil) != (gerr != nil) {
		t.Fatalf("json.Marshal error %v, marshalRecord error %v", werr, gerr)
	}
	if diff := cmp.Diff(string(want), string(got)); diff != "" {
		t.Fatalf("marshalRecord differs from json.Marshal (-json +marshalRecord):\n%s", diff)
	}
}

func TestMarshalRecordMatchesJSON(t *testing.T) {
	ts := time.Date(2026, 12, 1, 12, 0, 0, 123456000, time.UTC)
	odd := map[string]any{
		"html": "<a href='x'>&</a>", "ctl": "a\x00b\n\t", "uni": "é\u2028\u2029", "bad": "\xff\xfe",
		"quote": `"\`, "f": 1.5, "big": 1e21, "small": 1e-7, "nan?": json.Number("1e400"), "neg0": json.Number("-0"),
		"n": json.Number("12"), "int": 7, "i64": int64(-3), "nil": nil, "list": []any{nil, "x", []any{}, map[string]any{}},
		"strs": []string{"a", "<"}, "nilmap": map[string]any(nil), "nillist": []any(nil), "strmap": map[string]string{"b": "c"},
		"<key>": "v", "é": 1, "": "empty key",
	}
	tests := []struct {
		name string
		r    *Record
	}{
		{"full", fullRecord()},
		{"empty", &Record{}},
		{"minimal decision", &Record{Schema: SchemaDecisionV1, DecisionID: "d", Timestamp: ts, Reasons: []string{}, Delegation: schema.Delegation{Chain: []any{}}}},
		{"odd values everywhere", &Record{
			Timestamp: ts, CorrelationID: "c<>", Subject: schema.Entity{Type: "user", ID: "ä", Properties: odd},
			Action: schema.Action{Name: "n", Properties: odd}, Resource: schema.Entity{Properties: map[string]any{}},
			Agent: &schema.Agent{ID: "a", Properties: odd}, Delegation: schema.Delegation{Chain: []any{odd}},
			Task: &schema.Task{}, Obligations: odd, Reasons: nil, Error: "e\u00e9", EvalNS: -5, Seq: math.MaxUint64,
		}},
		{"local time", &Record{Timestamp: time.Date(2026, 1, 2, 3, 4, 5, 6, time.FixedZone("x", 3600))}},
		{"year out of range", &Record{Timestamp: time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)}},
		{"negative year", &Record{Timestamp: time.Date(-1, 1, 1, 0, 0, 0, 0, time.UTC)}},
		{"NaN obligation", &Record{Obligations: map[string]any{"x": math.NaN()}}},
		{"invalid number", &Record{Obligations: map[string]any{"x": json.Number("abc")}}},
		{"empty number", &Record{Obligations: map[string]any{"x": json.Number("")}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { checkMarshal(t, tc.r) })
	}
}

// FuzzMarshalRecord reads a record as a reader would (numbers as json.Number, or as float64)
// and holds marshalRecord to json.Marshal.
func FuzzMarshalRecord(f *testing.F) {
	full, _ := json.Marshal(fullRecord())
	f.Add(full)
	f.Add([]byte(`{"timestamp":"2026-12-01T12:00:00.5+01:00","subject":{"properties":{"a":[1.5,"<",null,{"é":true}]}},"task":{},"reasons":null}`))
	f.Add([]byte(`{"obligations":{"x":1e308,"y":-0,"z":"\u2028"},"delegation":{"chain":null},"seq":18446744073709551615}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, useNumber := range []bool{true, false} {
			dec := json.NewDecoder(bytes.NewReader(data))
			if useNumber {
				dec.UseNumber()
			}
			var r Record
			if dec.Decode(&r) != nil {
				return
			}
			checkMarshal(t, &r)
			if !r.Timestamp.IsZero() { // as the server sets it
				r.Timestamp = r.Timestamp.UTC()
				checkMarshal(t, &r)
			}
		}
	})
}

// BenchmarkSeal is the encoding and hashing of a typical decision record before it is published.
func BenchmarkSeal(b *testing.B) {
	r := &Record{
		Schema: SchemaDecisionV1, DecisionID: "01938f6e-8f2a-7c3b-9a55-3f0f5d1b2c4d", Timestamp: time.Now().UTC(),
		CorrelationID: "repeat-1-3", RequestID: "01938f6e-8f2a-7c3b-9a55-3f0f5d1b2c4e", Endpoint: "authorize",
		Subject: schema.Entity{ID: "alice@acme.example", Properties: map[string]any{
			"roles": []any{"employee"}, "scopes": []any{"files.read", "files.write"},
		}},
		Action: schema.Action{Name: "write_file", Properties: map[string]any{
			"server": "filesystem", "arguments": map[string]any{"path": "/home/alice/notes.txt", "content": "[masked]"},
		}},
		Resource:   schema.Entity{Type: "file", ID: "/home/alice/notes.txt", Properties: map[string]any{"owner": "alice@acme.example"}},
		Agent:      &schema.Agent{ID: "spiffe://acme.example/agents/ops"},
		Delegation: schema.Delegation{Chain: []any{}},
		Caller:     &Caller{Method: "anonymous"},
		Task:       &schema.Task{ID: "t-repeat-3", SessionID: "s-0", Attempt: 2, IntentSHA256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"},
		Allow:      true, Reasons: []string{"allowed"},
		Policy: PolicyRef{Query: "data.custody.authz.decision", Revision: "sha256:0123456789abcdef"},
		EvalNS: 5321, PDP: Instance{Instance: "01938f6e-0000-7000-8000-000000000000", Version: "dev"},
		Seq: 123456, PrevHash: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Seal(r); err != nil {
			b.Fatal(err)
		}
	}
}
