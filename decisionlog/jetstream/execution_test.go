package jetstream_test

import (
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/custodyhq/custody/decisionlog"
	custodyjs "github.com/custodyhq/custody/decisionlog/jetstream"
	"github.com/custodyhq/custody/decisionlog/verify"
)

func execution(id string, of *decisionlog.Record, status string) *decisionlog.Record {
	r := *of
	r.Schema, r.ExecutionID, r.Seq, r.PrevHash, r.Hash = decisionlog.SchemaExecutionV1, id, 0, "", ""
	r.Endpoint = "/v1/executions"
	r.Execution = &decisionlog.Execution{Status: status, Target: decisionlog.ExecutionTarget{System: "mail"}}
	return &r
}

// Executions share the instance's chain: RecoverHead counts them, verify checks them, and Lookup
// finds their decision by ID within its correlation ID.
func TestExecutionsAreChainedAndDecisionsFound(t *testing.T) {
	js, stream := setup(t, custodyjs.StreamConfig{})
	sig, verifiers := signer(t, "inst-x")
	sink := custodyjs.NewSink(js, custodyjs.WithChain(custodyjs.ChainConfig{Instance: "inst-x", Signer: sig, Stream: stream}))
	d1, d2 := record("d-1", true), record("d-2", false)
	d2.CorrelationID = d1.CorrelationID
	for _, r := range []*decisionlog.Record{d1, execution("e-1", d1, "succeeded"), d2, execution("e-2", d2, "failed")} {
		if err := sink.Publish(t.Context(), r); err != nil {
			t.Fatal(err)
		}
	}
	rec, err := custodyjs.RecoverHead(t.Context(), stream, "inst-x", verifiers)
	head := rec.Head
	if err != nil {
		t.Fatal(err)
	}
	if head.Seq != 4 {
		t.Errorf("recovered head seq %d, want 4 (executions are part of the chain)", head.Seq)
	}
	if _, err := stream.GetLastMsgForSubject(t.Context(), "custody.execution.succeeded.spiffe___acme_example_agents_mailer.send_email.corr_d-1"); err != nil {
		t.Errorf("execution not on its subject: %v", err)
	}

	l := &custodyjs.Lookup{Stream: stream}
	got, err := l.Lookup(t.Context(), "d-2", d1.CorrelationID)
	if err != nil || got == nil || got.DecisionID != "d-2" || got.Allow {
		t.Fatalf("lookup d-2: %+v, %v", got, err)
	}
	if got, err := l.Lookup(t.Context(), "d-9", d1.CorrelationID); got != nil || err != nil {
		t.Errorf("lookup of a missing decision: %+v, %v", got, err)
	}
	if got, err := l.Lookup(t.Context(), "d-1", ""); got != nil || err != nil {
		t.Errorf("lookup without correlation ID scanned: %+v, %v", got, err)
	}

	if err := sink.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	cons, err := stream.OrderedConsumer(t.Context(), jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	batch, err := cons.Fetch(10, jetstream.FetchMaxWait(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	var msgs []verify.Message
	for m := range batch.Messages() {
		msgs = append(msgs, verify.Message{Subject: m.Subject(), Data: m.Data()})
	}
	rep := verify.Check(msgs, verifiers)
	if len(rep.Breaks) != 0 || rep.Records != 4 {
		t.Errorf("verify: %d records, breaks %+v", rep.Records, rep.Breaks)
	}
}
