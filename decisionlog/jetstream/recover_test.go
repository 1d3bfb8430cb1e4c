package jetstream_test

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/mod/sumdb/note"

	"github.com/custodyhq/custody/decisionlog"
	custodyjs "github.com/custodyhq/custody/decisionlog/jetstream"
)

// flakyStream is the real stream, except that every other call of the first few fails the way
// a JetStream cluster without a leader answers: nats: no responders.
type flakyStream struct {
	jetstream.Stream
	calls atomic.Int32
	fails atomic.Int32
}

func (f *flakyStream) flake() error {
	if n := f.calls.Add(1); n <= 8 && n%2 == 1 {
		f.fails.Add(1)
		return nats.ErrNoResponders
	}
	return nil
}

func (f *flakyStream) Info(ctx context.Context, opts ...jetstream.StreamInfoOpt) (*jetstream.StreamInfo, error) {
	if err := f.flake(); err != nil {
		return nil, err
	}
	return f.Stream.Info(ctx, opts...)
}

func (f *flakyStream) GetLastMsgForSubject(ctx context.Context, subject string) (*jetstream.RawStreamMsg, error) {
	if err := f.flake(); err != nil {
		return nil, err
	}
	return f.Stream.GetLastMsgForSubject(ctx, subject)
}

func (f *flakyStream) OrderedConsumer(ctx context.Context, cfg jetstream.OrderedConsumerConfig) (jetstream.Consumer, error) {
	if err := f.flake(); err != nil {
		return nil, err
	}
	return f.Stream.OrderedConsumer(ctx, cfg)
}

func (f *flakyStream) CreateOrUpdateConsumer(ctx context.Context, cfg jetstream.ConsumerConfig) (jetstream.Consumer, error) {
	if err := f.flake(); err != nil {
		return nil, err
	}
	return f.Stream.CreateOrUpdateConsumer(ctx, cfg)
}

// chainOfFive publishes five chained records of inst with a checkpoint at 5 (on close), then a
// record of another instance, so that the stream ends in a message recovery does not want.
func chainOfFive(t *testing.T, js jetstream.JetStream, stream jetstream.Stream, inst string) (decisionlog.ChainHead, note.Verifiers) {
	t.Helper()
	sig, verifiers := signer(t, inst)
	sink := custodyjs.NewSink(js, custodyjs.WithChain(custodyjs.ChainConfig{Instance: inst, Signer: sig, Stream: stream}))
	for i := range 5 {
		if err := sink.Publish(t.Context(), record(fmt.Sprintf("%s-%d", inst, i), true)); err != nil {
			t.Fatal(err)
		}
	}
	if err := sink.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	return sink.Head(), verifiers
}

// Restarts failed with "recover chain: fetch: nats: no responders" in 7 of 40 starts: recovery
// must ride out transient JetStream errors, and not wait seconds for nothing.
func TestRecoverHeadRidesOutNoResponders(t *testing.T) {
	js, stream := setup(t, custodyjs.StreamConfig{})
	want, verifiers := chainOfFive(t, js, stream, "inst-r")
	flaky := &flakyStream{Stream: stream}
	start := time.Now()
	rec, err := custodyjs.RecoverHead(t.Context(), flaky, "inst-r", verifiers)
	head := rec.Head
	took := time.Since(start)
	if err != nil {
		t.Fatalf("recover with transient errors: %v", err)
	}
	if head != want {
		t.Fatalf("recovered %+v, want %+v", head, want)
	}
	if flaky.fails.Load() == 0 {
		t.Fatal("no error was injected: the test proves nothing")
	}
	// Each start used to wait out a 2 s fetch; a few retries take well under that.
	if took > 1500*time.Millisecond {
		t.Errorf("recovery took %s", took)
	}
}

// One message with forged chain headers made a restarted instance resume at seq 1,000,000.
func TestRecoverHeadIgnoresForgedHeaders(t *testing.T) {
	js, stream := setup(t, custodyjs.StreamConfig{})
	want, verifiers := chainOfFive(t, js, stream, "inst-g")
	forged := nats.NewMsg("custody.decision.allow.x.y.z")
	forged.Data = []byte(`{"schema":"custody.decision.v1","decision_id":"forged"}`)
	forged.Header.Set(custodyjs.HeaderInstance, "inst-g")
	forged.Header.Set(custodyjs.HeaderSeq, "1000000")
	forged.Header.Set(custodyjs.HeaderHash, "deadbeef")
	if _, err := js.PublishMsg(t.Context(), forged); err != nil {
		t.Fatal(err)
	}
	rec, err := custodyjs.RecoverHead(t.Context(), stream, "inst-g", verifiers)
	if err != nil {
		t.Fatal(err)
	}
	if rec.Head != want {
		t.Fatalf("recovered %+v, want %+v: a forged header was adopted", rec.Head, want)
	}
	if rec.Skipped != 1 {
		t.Errorf("skipped %d messages, want the forged one counted: %+v", rec.Skipped, rec)
	}
}

// A forged last checkpoint (another key) and a sealed record that does not link are skipped:
// recovery resumes from the last checkpoint its own key verifies.
func TestRecoverHeadSkipsForgedCheckpointAndUnlinkedRecord(t *testing.T) {
	js, stream := setup(t, custodyjs.StreamConfig{})
	want, verifiers := chainOfFive(t, js, stream, "inst-c")
	other, _ := signer(t, "inst-c")
	forger := custodyjs.NewSink(js)
	if err := forger.PublishCheckpoint(t.Context(), "inst-c", decisionlog.ChainHead{Seq: 900, Hash: want.Hash}, other); err != nil {
		t.Fatal(err)
	}
	r := record("unlinked", true)
	r.PDP.Instance, r.Seq, r.PrevHash = "inst-c", 6, strings.Repeat("0", 64)
	body, err := decisionlog.Seal(r)
	if err != nil {
		t.Fatal(err)
	}
	m := nats.NewMsg(decisionlog.RecordSubject(r))
	m.Data = body
	m.Header.Set(decisionlog.HeaderMsgID, r.DecisionID)
	if _, err := js.PublishMsg(t.Context(), m); err != nil {
		t.Fatal(err)
	}
	rec, err := custodyjs.RecoverHead(t.Context(), stream, "inst-c", verifiers)
	if err != nil {
		t.Fatal(err)
	}
	if rec.Head != want || rec.CheckpointsRejected != 1 || rec.Skipped != 1 {
		t.Fatalf("recovery %+v, want head %+v with 1 rejected checkpoint and 1 skipped record", rec, want)
	}
}
