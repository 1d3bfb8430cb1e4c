package verify_test

import (
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/custodyhq/custody/decisionlog"
	"github.com/custodyhq/custody/decisionlog/verify"
)

// execution appends inst's next record as an execution report of the decision in m.
func (s *stream) execution(inst string, of verify.Message, status string) verify.Message {
	s.t.Helper()
	s.n++
	r := decode(s.t, of)
	r.Schema, r.ExecutionID, r.Endpoint = decisionlog.SchemaExecutionV1, "exec-"+r.DecisionID, "/v1/executions"
	r.Execution = &decisionlog.Execution{Status: status, Target: decisionlog.ExecutionTarget{System: "mail"}}
	s.heads[inst].Link(r)
	body, err := decisionlog.Seal(r)
	if err != nil {
		s.t.Fatal(err)
	}
	m := verify.Message{Subject: decisionlog.RecordSubject(r), Data: body}
	s.heads[inst] = decisionlog.After(r)
	s.msgs = append(s.msgs, m)
	return m
}

// Executions are links of their instance's chain: a clean stream with them verifies, and edits,
// deletions, wrong subjects and reused execution IDs are caught like a decision's.
func TestCheckExecutions(t *testing.T) {
	build := func() *stream {
		s := newStream(t, "a")
		d1 := s.record("a")        // 1
		s.execution("a", d1, "ok") // 2: the status token is whatever was reported
		d2 := s.record("a")        // 3
		s.execution("a", d2, decisionlog.ExecutionFailed)
		s.checkpoint("a") // 5
		return s
	}
	tests := []struct {
		name string
		edit func(t *testing.T, msgs []verify.Message) []verify.Message
		want []got
	}{
		{"clean", func(_ *testing.T, m []verify.Message) []verify.Message { return m }, nil},
		{"edited", func(t *testing.T, m []verify.Message) []verify.Message {
			m[1].Data = []byte(string(m[1].Data[:len(m[1].Data)-100]) + "x" + string(m[1].Data[len(m[1].Data)-99:]))
			return m
		}, []got{{"a", 2, verify.Edited, 2}}},
		{"deleted", func(_ *testing.T, m []verify.Message) []verify.Message { return remove(m, 2) }, []got{{"a", 2, verify.Missing, 0}}},
		{"reused execution id", func(t *testing.T, m []verify.Message) []verify.Message {
			first := decode(t, m[1]).ExecutionID
			m[3] = reseal(t, m[3], func(r *decisionlog.Record) { r.ExecutionID = first })
			return m
		}, []got{{"a", 4, verify.Duplicate, 4}}},
		{"wrong subject", func(_ *testing.T, m []verify.Message) []verify.Message {
			m[3].Subject = "custody.execution.succeeded.x.send_email.corr-2"
			return m
		}, []got{{"a", 4, verify.WrongSubject, 4}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := build()
			rep := verify.Check(tc.edit(t, s.msgs), s.verifiers())
			gotBreaks := project(rep.Breaks)
			if tc.name != "clean" && tc.name != "wrong subject" {
				// The edit also breaks later links and the checkpoint; the named break must be there.
				for _, b := range gotBreaks {
					if b.Kind == tc.want[0].Kind && b.Seq == tc.want[0].Seq {
						return
					}
				}
				t.Fatalf("breaks %+v, want among them %+v", gotBreaks, tc.want[0])
			}
			if diff := cmp.Diff(tc.want, gotBreaks); diff != "" {
				t.Errorf("breaks (-want +got):\n%s\n%+v", diff, rep.Breaks)
			}
			if tc.name == "clean" && rep.Records != 4 {
				t.Errorf("%d records, want 4 (2 decisions, 2 executions)", rep.Records)
			}
		})
	}
}
