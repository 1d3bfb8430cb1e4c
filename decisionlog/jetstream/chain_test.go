package jetstream_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/mod/sumdb/note"

	"github.com/custodyhq/custody/decisionlog"
	custodyjs "github.com/custodyhq/custody/decisionlog/jetstream"
)

func signer(t *testing.T, instance string) (note.Signer, note.Verifiers) {
	t.Helper()
	skey, vkey, err := decisionlog.GenerateSigningKey(decisionlog.SigningKeyName(instance))
	if err != nil {
		t.Fatal(err)
	}
	s, err := note.NewSigner(skey)
	if err != nil {
		t.Fatal(err)
	}
	v, err := decisionlog.NewVerifiers(vkey)
	if err != nil {
		t.Fatal(err)
	}
	return s, v
}

// chainOf reads instance's records from the stream in order, skipping other writers' messages,
// and checks each link.
func chainOf(t *testing.T, s jetstream.Stream, instance string) []decisionlog.Record {
	t.Helper()
	info, err := s.Info(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	cons, err := s.OrderedConsumer(t.Context(), jetstream.OrderedConsumerConfig{FilterSubjects: []string{"custody.decision.>"}})
	if err != nil {
		t.Fatal(err)
	}
	var out []decisionlog.Record
	var head decisionlog.ChainHead
	deadline := time.Now().Add(30 * time.Second)
	for {
		if time.Now().After(deadline) {
			t.Fatalf("read %d of %s's records, then nothing more for 30 s", len(out), instance)
		}
		batch, err := cons.Fetch(500, jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		last := false // an empty fetch on a slow machine is not the end: read on until LastSeq
		for m := range batch.Messages() {
			md, err := m.Metadata()
			if err != nil {
				t.Fatal(err)
			}
			last = md.NumPending == 0 || md.Sequence.Stream >= info.State.LastSeq
			if m.Headers().Get(custodyjs.HeaderInstance) != instance {
				continue
			}
			var r decisionlog.Record
			if err := json.Unmarshal(m.Data(), &r); err != nil {
				t.Fatal(err)
			}
			h, err := decisionlog.BodyHash(m.Data())
			if err != nil {
				t.Fatal(err)
			}
			if r.Seq != head.Seq+1 || r.PrevHash != head.Hash || h != r.Hash {
				t.Fatalf("record seq %d prev %q does not follow head %+v", r.Seq, r.PrevHash, head)
			}
			head = decisionlog.ChainHead{Seq: r.Seq, Hash: h}
			out = append(out, r)
		}
		if last || info.State.LastSeq == 0 {
			return out
		}
	}
}

func TestChainedPublishLinksRecordsAndResumes(t *testing.T) {
	js, stream := setup(t, custodyjs.StreamConfig{})
	sig, verifiers := signer(t, "inst-a")
	sink := custodyjs.NewSink(js, custodyjs.WithChain(custodyjs.ChainConfig{
		Instance: "inst-a", Signer: sig, CheckpointEvery: 3, Stream: stream,
	}))
	for i := range 5 {
		if err := sink.Publish(t.Context(), record(fmt.Sprintf("a-%d", i), i%2 == 0)); err != nil {
			t.Fatal(err)
		}
	}
	if got := sink.Head().Seq; got != 5 {
		t.Fatalf("head seq %d, want 5", got)
	}
	if err := sink.Close(t.Context()); err != nil { // leaves a checkpoint at seq 5
		t.Fatal(err)
	}

	rec, err := custodyjs.RecoverHead(t.Context(), stream, "inst-a", verifiers)
	head := rec.Head
	if err != nil {
		t.Fatal(err)
	}
	if head != sink.Head() {
		t.Fatalf("recovered head %+v, want %+v", head, sink.Head())
	}
	// A restarted instance continues the same chain.
	sink2 := custodyjs.NewSink(js, custodyjs.WithChain(custodyjs.ChainConfig{Instance: "inst-a", Head: head, Signer: sig, Stream: stream}))
	t.Cleanup(func() { _ = sink2.Close(context.Background()) }) // stops its checkpoint goroutine
	for i := range 2 {
		if err := sink2.Publish(t.Context(), record(fmt.Sprintf("b-%d", i), true)); err != nil {
			t.Fatal(err)
		}
	}
	recs := chainOf(t, stream, "inst-a")
	if len(recs) != 7 || recs[6].Seq != 7 {
		t.Fatalf("%d records, last seq %d; want 7, 7", len(recs), recs[len(recs)-1].Seq)
	}

	// Checkpoints: at seq 3 (every 3) and 5 (on close); each verifies and matches its record.
	cp, err := stream.GetLastMsgForSubject(t.Context(), decisionlog.CheckpointSubject("inst-a"))
	if err != nil {
		t.Fatal(err)
	}
	var c decisionlog.Checkpoint
	if err := json.Unmarshal(cp.Data, &c); err != nil {
		t.Fatal(err)
	}
	got, err := decisionlog.OpenCheckpoint(&c, verifiers)
	if err != nil {
		t.Fatal(err)
	}
	if got.Seq != 5 || got.Hash != recs[4].Hash {
		t.Fatalf("checkpoint %+v does not commit to record 5 (%s)", got, recs[4].Hash)
	}
	_, otherVerifiers := signer(t, "inst-a")
	if _, err := decisionlog.OpenCheckpoint(&c, otherVerifiers); err == nil {
		t.Fatal("checkpoint verified under another key")
	}
	if !strings.HasPrefix(c.Note, decisionlog.CheckpointOrigin("inst-a")+"\n5\n") {
		t.Fatalf("note text %q", c.Note)
	}
}

func TestChainHasNoGapAfterAFailedPublish(t *testing.T) {
	js, stream := setup(t, custodyjs.StreamConfig{MaxBytes: 4096})
	sink := custodyjs.NewSink(js, custodyjs.WithPublishTimeout(time.Second),
		custodyjs.WithChain(custodyjs.ChainConfig{Instance: "inst-f", Stream: stream}))
	t.Cleanup(func() { _ = sink.Close(context.Background()) }) // stops its checkpoint goroutine
	failed := 0
	for i := 0; i < 40 && failed < 3; i++ {
		if err := sink.Publish(t.Context(), record(fmt.Sprintf("f-%d", i), true)); err != nil {
			failed++
		}
	}
	if failed == 0 {
		t.Fatal("the stream never filled")
	}
	recs := chainOf(t, stream, "inst-f") // fails on any gap or broken link
	if uint64(len(recs)) != sink.Head().Seq {
		t.Fatalf("%d records in the stream, head at %d", len(recs), sink.Head().Seq)
	}
}
