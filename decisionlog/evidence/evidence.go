package evidence

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"golang.org/x/mod/sumdb/note"

	"github.com/custodyhq/custody/decisionlog"
)

// Schema names the document format.
const Schema = "custody.evidence.v1"

// Hashing describes, in the document itself, how a reviewer recomputes what it proves.
const Hashing = "RFC 6962 over SHA-256: each record's leaf hash is SHA-256(0x00 || body), body being the base64-decoded bytes exactly as published; " +
	"interior nodes are SHA-256(0x01 || left || right); leaf_index is seq - 1 in the tree of the record's instance; " +
	"the inclusion proof leads to the root signed in checkpoints[checkpoint].note (a C2SP tlog-checkpoint signed note: origin, tree size, base64 root, chain-head extension), " +
	"verifiable with keys"

// Document is an evidence extract. Its JSON keys are the wire contract.
type Document struct {
	Schema        string    `json:"schema"`
	CorrelationID string    `json:"correlation_id"`
	Created       time.Time `json:"created"`
	Hashing       string    `json:"hashing"`
	// Records are in stream order.
	Records     []Entry                  `json:"records"`
	Checkpoints []decisionlog.Checkpoint `json:"checkpoints"`
	// Keys are the signed-note verifier keys of the instances. A reviewer should check the
	// document with keys obtained independently (custody verify --evidence --pubkey).
	Keys     []string `json:"keys"`
	Policies []Policy `json:"policies"`
}

// Entry is one record with its inclusion proof.
type Entry struct {
	Kind       string `json:"kind"` // decision, execution or unseal
	ID         string `json:"id"`   // decision_id, or execution_id for an execution
	Instance   string `json:"instance"`
	Seq        uint64 `json:"seq"`
	LeafIndex  uint64 `json:"leaf_index"`
	Checkpoint int    `json:"checkpoint"` // index into Document.Checkpoints
	TreeSize   uint64 `json:"tree_size"`
	// Body is the record exactly as published (base64 in JSON, so no tool can reformat it).
	Body  []byte   `json:"body"`
	Proof [][]byte `json:"inclusion_proof"`
}

// Policy is a policy revision that made one of the decisions.
type Policy struct {
	Query    string `json:"query"`
	Revision string `json:"revision"`
}

// Message is one stream message as Build reads it.
type Message struct {
	Subject string
	MsgID   string // Nats-Msg-Id
	Data    []byte
}

// ErrIncomplete is returned, wrapped, when the stream cannot back an extract: a record not yet
// under a Merkle checkpoint, or records of its instance missing before it.
var ErrIncomplete = errors.New("evidence cannot be proved from this stream")

// Builder collects a stream, message by message, for one correlation ID.
type Builder struct {
	correlationID string
	verifiers     note.Verifiers
	keys          []string
	leaves        map[string]map[uint64][]byte // instance -> seq -> leaf hash (first sealed record)
	cps           map[string][]cpAt
	records       []*found
}

type cpAt struct {
	cp   decisionlog.Checkpoint
	root []byte
}

type found struct {
	rec  *decisionlog.Record
	body []byte
}

// NewBuilder returns a builder for correlationID whose checkpoints must verify with verifiers;
// keys (their text form) go into the document.
func NewBuilder(correlationID string, verifiers note.Verifiers, keys []string) *Builder {
	return &Builder{correlationID: correlationID, verifiers: verifiers, keys: keys,
		leaves: map[string]map[uint64][]byte{}, cps: map[string][]cpAt{}}
}

// Add takes the next message of the stream. Messages that do not verify on their own (forged
// or damaged records, checkpoints not signed by the keys) are passed over: only what verifies
// can be proved, and custody verify reports the rest.
func (b *Builder) Add(m Message) {
	var head struct {
		Schema string `json:"schema"`
	}
	if json.Unmarshal(m.Data, &head) != nil {
		return
	}
	switch head.Schema {
	case decisionlog.SchemaCheckpointV2:
		var cp decisionlog.Checkpoint
		if json.Unmarshal(m.Data, &cp) != nil {
			return
		}
		st, err := decisionlog.OpenCheckpointState(&cp, b.verifiers)
		if err != nil || st.Root == nil || st.Head.Seq != cp.Seq {
			return
		}
		b.cps[cp.Instance] = append(b.cps[cp.Instance], cpAt{cp: cp, root: st.Root})
	case decisionlog.SchemaDecisionV1, decisionlog.SchemaExecutionV1, decisionlog.SchemaUnsealV1:
		r, err := decisionlog.CheckRecord(m.MsgID, m.Data)
		if err != nil {
			return
		}
		inst := r.PDP.Instance
		if b.leaves[inst] == nil {
			b.leaves[inst] = map[uint64][]byte{}
		}
		if _, seen := b.leaves[inst][r.Seq]; !seen {
			b.leaves[inst][r.Seq] = decisionlog.LeafHash(m.Data)
		}
		if r.CorrelationID == b.correlationID {
			b.records = append(b.records, &found{rec: r, body: m.Data})
		}
	}
}

// Document proves the records found against, for each instance, its latest Merkle checkpoint,
// which covers them all.
func (b *Builder) Document(now time.Time) (*Document, error) {
	if len(b.records) == 0 {
		return nil, fmt.Errorf("evidence: build: %w: no verified record of correlation ID %q", ErrIncomplete, b.correlationID)
	}
	doc := &Document{Schema: Schema, CorrelationID: b.correlationID, Created: now.UTC(), Hashing: Hashing, Keys: b.keys}
	maxSeq := map[string]uint64{}
	policies := map[Policy]bool{}
	for _, f := range b.records {
		maxSeq[f.rec.PDP.Instance] = max(maxSeq[f.rec.PDP.Instance], f.rec.Seq)
		if f.rec.Schema == decisionlog.SchemaDecisionV1 {
			policies[Policy{Query: f.rec.Policy.Query, Revision: f.rec.Policy.Revision}] = true
		}
	}
	cpIndex := map[string]int{}
	trees := map[string]*decisionlog.Leaves{}
	for _, inst := range slices.Sorted(maps.Keys(maxSeq)) {
		var best *cpAt
		for i := range b.cps[inst] {
			c := &b.cps[inst][i]
			if c.cp.Seq >= maxSeq[inst] && (best == nil || c.cp.Seq > best.cp.Seq) {
				best = c
			}
		}
		if best == nil {
			return nil, fmt.Errorf("evidence: build: %w: instance %s has no Merkle checkpoint at or after seq %d yet (they follow within --checkpoint-interval)", ErrIncomplete, inst, maxSeq[inst])
		}
		hashes := make([][]byte, best.cp.Seq)
		for s := uint64(1); s <= best.cp.Seq; s++ {
			h, ok := b.leaves[inst][s]
			if !ok {
				return nil, fmt.Errorf("evidence: build: %w: instance %s seq %d is not on the stream (expired or removed), so its tree cannot be rebuilt", ErrIncomplete, inst, s)
			}
			hashes[s-1] = h
		}
		tree := decisionlog.NewLeaves(hashes)
		root, err := tree.Root(best.cp.Seq)
		if err != nil {
			return nil, fmt.Errorf("evidence: build: %w", err)
		}
		if string(root) != string(best.root) {
			return nil, fmt.Errorf("evidence: build: instance %s: the stream's records do not hash to the root its checkpoint at seq %d signs: run custody verify", inst, best.cp.Seq)
		}
		cpIndex[inst], trees[inst] = len(doc.Checkpoints), tree
		doc.Checkpoints = append(doc.Checkpoints, best.cp)
	}
	for _, f := range b.records {
		inst := f.rec.PDP.Instance
		cp := doc.Checkpoints[cpIndex[inst]]
		p, err := trees[inst].Inclusion(f.rec.Seq-1, cp.Seq)
		if err != nil {
			return nil, fmt.Errorf("evidence: build: %w", err)
		}
		kind, id := f.rec.Kind(), f.rec.MsgID()
		doc.Records = append(doc.Records, Entry{Kind: kind, ID: id, Instance: inst, Seq: f.rec.Seq, LeafIndex: f.rec.Seq - 1,
			Checkpoint: cpIndex[inst], TreeSize: cp.Seq, Body: f.body, Proof: p})
	}
	doc.Policies = slices.SortedFunc(maps.Keys(policies), func(a, b Policy) int {
		return cmp.Or(cmp.Compare(a.Query, b.Query), cmp.Compare(a.Revision, b.Revision))
	})
	return doc, nil
}

// ProofBytes is the size of the document's inclusion proofs, in hash bytes.
func (d *Document) ProofBytes() int {
	n := 0
	for _, e := range d.Records {
		n += 32 * len(e.Proof)
	}
	return n
}
