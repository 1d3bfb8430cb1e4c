package verify_test

import (
	"encoding/json"
	"testing"

	"github.com/custodyhq/custody/decisionlog"
	"github.com/custodyhq/custody/decisionlog/verify"
)

// treeStream is one instance's stream as custody now writes it: n records, with Merkle
// checkpoints after the records at the given seqs. It returns the messages and the
// checkpoints' bodies (what a witness keeps).
func treeStream(t testing.TB, s *stream, inst string, n int, at ...uint64) (cps [][]byte) {
	t.Helper()
	tree := decisionlog.NewTree()
	for range n {
		m := s.record(inst)
		r, err := decisionlog.DecodeRecord(m.Data)
		if err != nil {
			t.Fatal(err)
		}
		if err := tree.Append(r, m.Data); err != nil {
			t.Fatal(err)
		}
		for _, a := range at {
			if a == r.Seq {
				_, root, frontier, _ := tree.State()
				cp, err := decisionlog.NewTreeCheckpoint(inst, s.heads[inst], root, frontier, epoch, s.signers[inst])
				if err != nil {
					t.Fatal(err)
				}
				body, _ := json.Marshal(cp)
				s.msgs = append(s.msgs, verify.Message{Subject: decisionlog.CheckpointSubject(inst), Data: body})
				cps = append(cps, body)
			}
		}
	}
	return cps
}

func breakKinds(bs []verify.Break) []verify.Kind {
	var out []verify.Kind
	for _, b := range bs {
		out = append(out, b.Kind)
	}
	return out
}

// The stream's operator removes the tail together with its checkpoints, or rewrites it
// (re-sealed, re-linked, so the chain itself holds): the stream alone shows nothing, the
// witness copy of the checkpoints does.
func TestWitnessCatchesTruncationAndRewrite(t *testing.T) {
	honest := newStream(t, "w")
	witnessed := treeStream(t, honest, "w", 10, 4, 10)
	// msgs: r1..r4 cp4 r5..r10 cp10

	rewritten := newStream(t, "w")
	rewritten.signers, rewritten.vkeys = honest.signers, honest.vkeys
	rewritten.msgs = append(rewritten.msgs, honest.msgs[:5]...)
	rewritten.heads["w"] = decisionlog.ChainHead{}
	{
		r, _ := decisionlog.DecodeRecord(honest.msgs[3].Data)
		rewritten.heads["w"] = decisionlog.After(r)
		rewritten.n = 100 // other content for seqs 5 to 10
	}
	for range 6 {
		rewritten.record("w")
	}

	tests := []struct {
		name    string
		msgs    []verify.Message
		witness bool
		want    []verify.Kind
	}{
		{"whole stream", honest.msgs, false, nil},
		{"whole stream with witness", honest.msgs, true, nil},
		{"tail and its checkpoint removed", honest.msgs[:5], false, nil},
		{"tail and its checkpoint removed, with witness", honest.msgs[:5], true, []verify.Kind{verify.Truncated}},
		{"tail rewritten", rewritten.msgs, false, nil},
		{"tail rewritten, with witness", rewritten.msgs, true, []verify.Kind{verify.CheckpointMismatch, verify.TreeMismatch}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := verify.NewChecker(honest.verifiers())
			if tc.witness {
				for _, w := range witnessed {
					c.AddWitnessed(w)
				}
			}
			for _, m := range tc.msgs {
				c.Add(m)
			}
			rep := c.Report()
			got := breakKinds(rep.Breaks)
			if len(got) != len(tc.want) {
				t.Fatalf("breaks %v, want kinds %v", rep.Breaks, tc.want)
			}
			for i := range got {
				if got[i] != tc.want[i] {
					t.Fatalf("breaks %v, want kinds %v", rep.Breaks, tc.want)
				}
			}
			if tc.want == nil && rep.Chains[0].TreeCheckpoints == 0 {
				t.Fatalf("no Merkle checkpoint was checked: %+v", rep.Chains[0])
			}
		})
	}
}

// A stream whose first records expired resumes the tree from a checkpoint's compact range, and
// a later checkpoint whose root does not extend it is caught.
func TestTreeResumesFromCompactRange(t *testing.T) {
	s := newStream(t, "x")
	treeStream(t, s, "x", 8, 3, 8)
	// r1 r2 r3 cp3 r4..r8 cp8: drop r1..r3 (expired).
	msgs := s.msgs[3:]
	rep := verify.Check(msgs, s.verifiers())
	if !rep.OK() || rep.Chains[0].TreeCheckpoints != 1 {
		t.Fatalf("expired prefix: %v %+v", rep.Breaks, rep.Chains)
	}
	// An edited compact range in the first checkpoint: it no longer hashes to the signed root,
	// so it is not used as a start, and the later one is not counted as checked.
	var cp decisionlog.Checkpoint
	_ = json.Unmarshal(msgs[0].Data, &cp)
	cp.Tree[0] = cp.Tree[len(cp.Tree)-1]
	cp.Tree[len(cp.Tree)-1] = "00" + cp.Tree[0][2:]
	body, _ := json.Marshal(cp)
	edited := append([]verify.Message{{Subject: msgs[0].Subject, Data: body}}, msgs[1:]...)
	rep = verify.Check(edited, s.verifiers())
	if !rep.OK() || rep.Chains[0].TreeCheckpoints != 0 {
		t.Fatalf("edited range: %v %+v", rep.Breaks, rep.Chains)
	}
}
