package main

import (
	"testing"
)

// FuzzEvalInput: whatever --input holds, eval tells its kind and builds an input or refuses it,
// without panicking; a refusal is a usage error, never a decision on an empty input.
func FuzzEvalInput(f *testing.F) {
	for _, seed := range []string{aliceSendsMail, nativeMail, authzenMail, `{"schema":"custody.decision.v1","decision_id":"d","subject":{"id":"a"}}`, `{"schema":"custody.execution.v1"}`, `{"evaluations":[{}]}`, `null`, `{"context":[]}`} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		kind, err := evalKindOf(raw)
		if err != nil {
			return
		}
		in, rec, err := evalInput(kind, raw)
		if err != nil {
			return
		}
		if in == nil || (kind == evalKindRecord) != (rec != nil) {
			t.Fatalf("kind %s: input %v, record %v", kind, in, rec)
		}
	})
}
