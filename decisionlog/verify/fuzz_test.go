package verify_test

import (
	"bytes"
	"strings"
	"testing"

	"github.com/custodyhq/custody/decisionlog"
	"github.com/custodyhq/custody/decisionlog/verify"
)

// fuzzVKey verifies the checkpoints in the seed corpus; its signer key, which made them, is
// PRIVATE+KEY+custody-fuzz+c0dacb79+Afr9vvN6VhRvqEguY/rbLf3pphyJE+XSY04CoJUAsLV9 (a test key).
const fuzzVKey = "custody-fuzz+c0dacb79+Adn6rFfOIt1RsehYOhQh48JDR5ulPBDOnRN7G1k9KscK"

var kinds = map[verify.Kind]bool{
	verify.Edited: true, verify.Missing: true, verify.Inserted: true, verify.Duplicate: true,
	verify.Reordered: true, verify.Truncated: true, verify.CheckpointMismatch: true,
	verify.BadCheckpoint: true, verify.WrongSubject: true, verify.Unparseable: true,
}

// FuzzCheck: whatever lines an export file holds, Check never panics, with or without keys;
// every break is of a known kind, points into the input, and prints on one line; and the
// summary says FAIL exactly when there are breaks. Seeds, in testdata/fuzz/FuzzCheck, are
// export files of sealed chains and checkpoints of instance "fuzz", intact and tampered.
func FuzzCheck(f *testing.F) {
	vs, err := decisionlog.NewVerifiers(fuzzVKey)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, export string) {
		var msgs []verify.Message
		for line := range strings.Lines(export) {
			msgs = append(msgs, verify.Message{Data: []byte(strings.TrimSuffix(line, "\n"))})
		}
		for _, rep := range []*verify.Report{verify.Check(msgs, nil), verify.Check(msgs, vs)} {
			if rep.Messages != len(msgs) {
				t.Fatalf("report counts %d messages, input has %d", rep.Messages, len(msgs))
			}
			if rep.OK() != (len(rep.Breaks) == 0) {
				t.Fatalf("OK() = %v with %d breaks", rep.OK(), len(rep.Breaks))
			}
			for _, b := range rep.Breaks {
				if !kinds[b.Kind] {
					t.Fatalf("break of unknown kind: %+v", b)
				}
				if b.Msg < 1 || b.Msg > len(msgs) {
					t.Fatalf("break points at message %d of %d: %+v", b.Msg, len(msgs), b)
				}
				if s := b.String(); strings.Contains(s, "\n") || b.Detail == "" {
					t.Fatalf("break does not print as one line with a detail: %q", s)
				}
			}
			var out bytes.Buffer
			if err := rep.Summary(&out); err != nil {
				t.Fatal(err)
			}
			if failed := strings.Contains(out.String(), "\nFAIL: "); failed == rep.OK() {
				t.Fatalf("summary FAIL line = %v, OK() = %v:\n%s", failed, rep.OK(), out.String())
			}
		}
	})
}
