package evidence_test

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/note"

	"github.com/custodyhq/custody/decisionlog"
	"github.com/custodyhq/custody/decisionlog/evidence"
	"github.com/custodyhq/custody/pdp"
)

var epoch = time.Date(2026, 11, 27, 7, 45, 0, 0, time.UTC)

// writer writes one instance's records and Merkle checkpoints as custody does.
type writer struct {
	t      testing.TB
	inst   string
	head   decisionlog.ChainHead
	tree   *decisionlog.Tree
	signer note.Signer
	vkey   string
	msgs   *[]evidence.Message
}

func newWriter(t testing.TB, inst string, msgs *[]evidence.Message) *writer {
	skey, vkey, err := decisionlog.GenerateSigningKey(decisionlog.SigningKeyName(inst))
	if err != nil {
		t.Fatal(err)
	}
	s, _ := note.NewSigner(skey)
	return &writer{t: t, inst: inst, tree: decisionlog.NewTree(), signer: s, vkey: vkey, msgs: msgs}
}

func (w *writer) publish(r *decisionlog.Record) *decisionlog.Record {
	r.PDP = decisionlog.Instance{Instance: w.inst, Version: "test"}
	w.head.Link(r)
	body, err := decisionlog.Seal(r)
	if err != nil {
		w.t.Fatal(err)
	}
	if err := w.tree.Append(r, body); err != nil {
		w.t.Fatal(err)
	}
	w.head = decisionlog.After(r)
	*w.msgs = append(*w.msgs, evidence.Message{Subject: decisionlog.RecordSubject(r), MsgID: r.MsgID(), Data: body})
	return r
}

func (w *writer) checkpoint() {
	_, root, frontier, _ := w.tree.State()
	cp, err := decisionlog.NewTreeCheckpoint(w.inst, w.head, root, frontier, epoch, w.signer)
	if err != nil {
		w.t.Fatal(err)
	}
	body, _ := json.Marshal(cp)
	*w.msgs = append(*w.msgs, evidence.Message{Subject: decisionlog.CheckpointSubject(w.inst), MsgID: "cp", Data: body})
}

func decision(id, corr, task string, attempt int64, allow bool) *decisionlog.Record {
	return &decisionlog.Record{
		Schema: decisionlog.SchemaDecisionV1, DecisionID: id, Timestamp: epoch, CorrelationID: corr,
		Endpoint: "/v1/authorize", Subject: pdp.Entity{Type: "user", ID: "alice@acme.example"},
		Action: pdp.Action{Name: "write_file"}, Resource: pdp.Entity{Type: "file", ID: "q3.xlsx"},
		Task:  &pdp.Task{ID: task, ParentID: "t-plan", Attempt: attempt},
		Allow: allow, Reasons: []string{}, Policy: decisionlog.PolicyRef{Query: "data.custody.authz.decision", Revision: "rev-7"},
	}
}

func execution(id string, of *decisionlog.Record) *decisionlog.Record {
	return &decisionlog.Record{
		Schema: decisionlog.SchemaExecutionV1, DecisionID: of.DecisionID, ExecutionID: id, Timestamp: epoch,
		CorrelationID: of.CorrelationID, Endpoint: "/v1/executions", Subject: of.Subject, Action: of.Action,
		Resource: of.Resource, Task: of.Task, Reasons: []string{}, Execution: &decisionlog.Execution{Status: "succeeded"},
	}
}

// fanOut is the README's fan-out request on two instances, interleaved with other requests.
func fanOut(t testing.TB) (msgs []evidence.Message, vkeys []string) {
	a, b := newWriter(t, "pdp-a", &msgs), newWriter(t, "pdp-b", &msgs)
	for i := range 5 {
		a.publish(decision(fmt.Sprintf("other-a-%d", i), "req-other", "t", 1, true))
		b.publish(decision(fmt.Sprintf("other-b-%d", i), "req-other", "t", 1, true))
	}
	pay := a.publish(decision("d-pay", "req-q3-close", "t-pay", 1, false))
	mail := b.publish(decision("d-mail", "req-q3-close", "t-mail", 1, true))
	f1 := a.publish(decision("d-files-1", "req-q3-close", "t-files", 1, true))
	f2 := b.publish(decision("d-files-2", "req-q3-close", "t-files", 2, true))
	a.checkpoint()
	a.publish(execution("x-pay", pay))
	b.publish(execution("x-mail", mail))
	a.publish(execution("x-files-1", f1))
	b.publish(execution("x-files-2", f2))
	for i := range 3 {
		a.publish(decision(fmt.Sprintf("later-%d", i), "req-other", "t", 1, true))
	}
	a.checkpoint()
	b.checkpoint()
	return msgs, []string{a.vkey, b.vkey}
}

func build(t testing.TB) (*evidence.Document, note.Verifiers) {
	t.Helper()
	msgs, vkeys := fanOut(t)
	vs, err := decisionlog.NewVerifiers(vkeys...)
	if err != nil {
		t.Fatal(err)
	}
	b := evidence.NewBuilder("req-q3-close", vs, vkeys)
	for _, m := range msgs {
		b.Add(m)
	}
	doc, err := b.Document(epoch)
	if err != nil {
		t.Fatal(err)
	}
	return doc, vs
}

// roundTrip encodes and decodes d, as a reviewer receives it.
func roundTrip(t testing.TB, d *evidence.Document) *evidence.Document {
	t.Helper()
	data, err := json.Marshal(d)
	if err != nil {
		t.Fatal(err)
	}
	out, err := evidence.Decode(data)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestExtractVerifiesOffline(t *testing.T) {
	doc, vs := build(t)
	if len(doc.Records) != 8 || len(doc.Checkpoints) != 2 {
		t.Fatalf("%d records, %d checkpoints; want 8 and 2", len(doc.Records), len(doc.Checkpoints))
	}
	res := evidence.Check(roundTrip(t, doc), vs)
	if !res.OK() || len(res.Records) != 8 {
		t.Fatalf("problems: %v", res.Problems)
	}
	if len(doc.Policies) != 1 || doc.Policies[0].Revision != "rev-7" {
		t.Errorf("policies %+v", doc.Policies)
	}
	t.Logf("fan-out extract: %d records, %d bytes of inclusion proofs", len(doc.Records), doc.ProofBytes())
}

// Every kind of tampering fails, and the problem names the record at fault.
func TestTamperedExtractFails(t *testing.T) {
	otherSigner := func(d *evidence.Document) {
		msgs, _ := fanOut(t) // same content, other keys
		var cp decisionlog.Checkpoint
		for _, m := range msgs {
			if strings.Contains(m.Subject, "checkpoint.pdp-a") {
				_ = json.Unmarshal(m.Data, &cp)
			}
		}
		d.Checkpoints[0] = cp
	}
	tests := []struct {
		name   string
		tamper func(d *evidence.Document)
		want   string // in a problem
	}{
		{"edited body", func(d *evidence.Document) {
			d.Records[0].Body = []byte(strings.Replace(string(d.Records[0].Body), `"allow":false`, `"allow":true`, 1))
		}, "decision d-pay"},
		{"edited and re-sealed body", func(d *evidence.Document) {
			r, _ := decisionlog.DecodeRecord(d.Records[0].Body)
			r.Allow = true
			d.Records[0].Body, _ = decisionlog.Seal(r)
		}, "decision d-pay"},
		{"removed decision that was executed", func(d *evidence.Document) {
			d.Records = d.Records[1:]
		}, "execution x-pay"},
		{"added forged record", func(d *evidence.Document) {
			r := decision("d-forged", "req-q3-close", "t-pay", 2, true)
			r.PDP = decisionlog.Instance{Instance: "pdp-a"}
			r.Seq, r.PrevHash = 99, strings.Repeat("0", 64)
			body, _ := decisionlog.Seal(r)
			e := d.Records[0]
			e.ID, e.Seq, e.LeafIndex, e.Body = "d-forged", 99, 98, body
			d.Records = append(d.Records, e)
		}, "decision d-forged"},
		{"proof hash changed", func(d *evidence.Document) {
			d.Records[2].Proof[0] = append([]byte{}, d.Records[2].Proof[1]...)
		}, "decision d-files-1"},
		{"proof of another record", func(d *evidence.Document) {
			d.Records[2].Proof = d.Records[0].Proof
		}, "decision d-files-1"},
		{"leaf index changed", func(d *evidence.Document) { d.Records[1].LeafIndex++ }, "decision d-mail"},
		{"record moved to another seq", func(d *evidence.Document) { d.Records[1].Seq++; d.Records[1].LeafIndex++ }, "decision d-mail"},
		{"duplicated record", func(d *evidence.Document) { d.Records = append(d.Records, d.Records[3]) }, "appears twice"},
		{"other correlation ID", func(d *evidence.Document) { d.CorrelationID = "req-other" }, "belongs to correlation ID"},
		{"checkpoint note edited", func(d *evidence.Document) {
			lines := strings.SplitN(d.Checkpoints[0].Note, "\n", 3)
			lines[1] = "1000"
			d.Checkpoints[0].Note = strings.Join(lines, "\n")
		}, "checkpoint 0"},
		{"checkpoint signed by another key", otherSigner, "checkpoint 0"},
		{"schema", func(d *evidence.Document) { d.Schema = "custody.evidence.v0" }, "schema"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			doc, vs := build(t)
			tc.tamper(doc)
			res := evidence.Check(roundTrip(t, doc), vs)
			if res.OK() {
				t.Fatal("a tampered extract verified")
			}
			var all []string
			for _, p := range res.Problems {
				all = append(all, p.String())
			}
			if !strings.Contains(strings.Join(all, "\n"), tc.want) {
				t.Fatalf("problems do not name %q:\n%s", tc.want, strings.Join(all, "\n"))
			}
		})
	}
}

func TestDecodeRefusesUnknownFieldsAndJunk(t *testing.T) {
	for _, in := range []string{`{"schema":"custody.evidence.v1","extra":1}`, `{"schema":"custody.evidence.v1"} {}`, `not json`, ``} {
		if _, err := evidence.Decode([]byte(in)); err == nil {
			t.Errorf("%q decoded", in)
		}
	}
	// A document with nothing in it does not verify.
	if evidence.Check(&evidence.Document{Schema: evidence.Schema}, nil).OK() {
		t.Error("an empty document verified")
	}
}

func TestBuildNeedsACheckpointAfterTheRecords(t *testing.T) {
	var msgs []evidence.Message
	w := newWriter(t, "pdp-c", &msgs)
	w.publish(decision("d1", "req", "t", 1, true))
	w.checkpoint()
	w.publish(decision("d2", "req", "t", 2, true)) // not yet under a checkpoint
	vs, _ := decisionlog.NewVerifiers(w.vkey)
	b := evidence.NewBuilder("req", vs, []string{w.vkey})
	for _, m := range msgs {
		b.Add(m)
	}
	if _, err := b.Document(epoch); err == nil || !strings.Contains(err.Error(), "no Merkle checkpoint") {
		t.Fatalf("err = %v", err)
	}
}
