package evidence

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	"golang.org/x/mod/sumdb/note"

	"github.com/custodyhq/custody/decisionlog"
)

// Problem is one reason a document does not verify, naming the record (or checkpoint) at fault.
type Problem struct {
	Record string // "decision <id> (instance <i> seq <n>)", "checkpoint <i>", or "" for the document
	Detail string
}

func (p Problem) String() string {
	if p.Record == "" {
		return p.Detail
	}
	return p.Record + ": " + p.Detail
}

// Result is what Check found.
type Result struct {
	CorrelationID string
	Records       []*decisionlog.Record // the records that verified, in document order
	Checkpoints   int
	ProofBytes    int
	Problems      []Problem
}

// OK reports whether the document verified.
func (r *Result) OK() bool { return len(r.Problems) == 0 }

// Decode reads a document strictly: unknown fields are refused, so that nothing in a document
// passes unchecked.
func Decode(data []byte) (*Document, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var d Document
	if err := dec.Decode(&d); err != nil {
		return nil, fmt.Errorf("evidence: decode: %w", err)
	}
	if dec.More() {
		return nil, fmt.Errorf("evidence: decode: data after the document")
	}
	return &d, nil
}

// Check verifies d offline. Every checkpoint must verify with verifiers; every record must be
// sealed, be the record its entry names, belong to d's correlation ID, and be included, by its
// proof, in the tree its checkpoint signs. Entries may not repeat, and an execution's decision
// must be in the document too, so that removing a decision that was carried out shows. An
// extract proves that its records were written, not that no other record of the correlation
// ID exists: a reviewer who needs that compares with the stream or a second extract.
func Check(d *Document, verifiers note.Verifiers) *Result {
	res := &Result{CorrelationID: d.CorrelationID, Checkpoints: len(d.Checkpoints), ProofBytes: d.ProofBytes()}
	fail := func(who, format string, args ...any) {
		res.Problems = append(res.Problems, Problem{Record: who, Detail: fmt.Sprintf(format, args...)})
	}
	if d.Schema != Schema {
		fail("", "schema %q is not %s", d.Schema, Schema)
		return res
	}
	if len(d.Records) == 0 {
		fail("", "the document holds no record")
	}
	roots := make([]*decisionlog.CheckpointState, len(d.Checkpoints))
	for i := range d.Checkpoints {
		cp := &d.Checkpoints[i]
		who := fmt.Sprintf("checkpoint %d (instance %s)", i, cp.Instance)
		st, err := decisionlog.OpenCheckpointState(cp, verifiers)
		switch {
		case err != nil:
			fail(who, "%v", err)
		case st.Root == nil:
			fail(who, "signs no Merkle root (a v1 checkpoint)")
		default:
			roots[i] = &st
		}
	}
	seen := map[string]bool{}
	decisions := map[string]bool{}
	type ref struct{ who, decision string }
	var execs []ref
	for i, e := range d.Records {
		who := fmt.Sprintf("%s %s (instance %s seq %d)", e.Kind, e.ID, e.Instance, e.Seq)
		if e.ID == "" {
			who = fmt.Sprintf("record %d", i)
		}
		key := fmt.Sprintf("%s/%d", e.Instance, e.Seq)
		if seen[key] {
			fail(who, "appears twice in the document")
			continue
		}
		seen[key] = true
		r, err := decisionlog.CheckRecord(e.ID, e.Body)
		if err != nil {
			fail(who, "%v", err)
			continue
		}
		kind := r.Kind()
		switch {
		case kind != e.Kind || r.PDP.Instance != e.Instance || r.Seq != e.Seq:
			fail(who, "the record is %s %s of instance %s at seq %d, not what its entry says", kind, r.MsgID(), r.PDP.Instance, r.Seq)
			continue
		case r.CorrelationID != d.CorrelationID:
			fail(who, "belongs to correlation ID %q, not %q", r.CorrelationID, d.CorrelationID)
			continue
		case e.LeafIndex != e.Seq-1:
			fail(who, "leaf_index %d is not seq - 1", e.LeafIndex)
			continue
		case e.Checkpoint < 0 || e.Checkpoint >= len(d.Checkpoints):
			fail(who, "names checkpoint %d, which the document does not hold", e.Checkpoint)
			continue
		}
		st := roots[e.Checkpoint]
		if st == nil {
			fail(who, "its checkpoint %d does not verify", e.Checkpoint)
			continue
		}
		if d.Checkpoints[e.Checkpoint].Instance != e.Instance || st.Head.Seq != e.TreeSize {
			fail(who, "its checkpoint %d is of instance %s at tree size %d, not of its instance at tree size %d", e.Checkpoint, d.Checkpoints[e.Checkpoint].Instance, st.Head.Seq, e.TreeSize)
			continue
		}
		if err := decisionlog.VerifyInclusion(e.LeafIndex, e.TreeSize, decisionlog.LeafHash(e.Body), e.Proof, st.Root); err != nil {
			fail(who, "its inclusion proof does not lead to the signed root: %v", err)
			continue
		}
		res.Records = append(res.Records, r)
		if kind == "decision" {
			decisions[r.DecisionID] = true
		} else {
			execs = append(execs, ref{who: who, decision: r.DecisionID})
		}
	}
	for _, x := range execs {
		if !decisions[x.decision] {
			fail(x.who, "reports on decision %s, which is not in the document: a record was removed", x.decision)
		}
	}
	slices.SortStableFunc(res.Problems, func(a, b Problem) int { return strings.Compare(a.Record, b.Record) })
	return res
}
