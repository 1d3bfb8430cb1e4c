package jetstream_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	custodyjs "github.com/custodyhq/custody/decisionlog/jetstream"
)

// stallCheckpoints publishes through a real JetStream, but holds every checkpoint's ack (sync
// or async) until release is closed, signalling entered when one is sent: a slow round trip.
type stallCheckpoints struct {
	jetstream.JetStream
	entered chan struct{}
	release chan struct{}
}

func isCheckpoint(msg *nats.Msg) bool { return strings.HasPrefix(msg.Subject, "custody.checkpoint.") }

func (s *stallCheckpoints) PublishMsg(ctx context.Context, msg *nats.Msg, opts ...jetstream.PublishOpt) (*jetstream.PubAck, error) {
	if isCheckpoint(msg) {
		s.entered <- struct{}{}
		<-s.release
	}
	return s.JetStream.PublishMsg(ctx, msg, opts...)
}

func (s *stallCheckpoints) PublishMsgAsync(msg *nats.Msg, opts ...jetstream.PublishOpt) (jetstream.PubAckFuture, error) {
	fut, err := s.JetStream.PublishMsgAsync(msg, opts...)
	if err != nil || !isCheckpoint(msg) {
		return fut, err
	}
	s.entered <- struct{}{}
	held := &heldFuture{PubAckFuture: fut, ok: make(chan *jetstream.PubAck, 1), err: make(chan error, 1)}
	go func() {
		<-s.release
		select {
		case a := <-fut.Ok():
			held.ok <- a
		case e := <-fut.Err():
			held.err <- e
		}
	}()
	return held, nil
}

type heldFuture struct {
	jetstream.PubAckFuture
	ok  chan *jetstream.PubAck
	err chan error
}

func (f *heldFuture) Ok() <-chan *jetstream.PubAck { return f.ok }
func (f *heldFuture) Err() <-chan error            { return f.err }

// TestRecordsDoNotWaitOnACheckpoint: while a checkpoint's round trip to JetStream hangs, records
// keep being published and acked, and the checkpoint still lands after the records it covers.
// Before, the checkpoint was published under the chain mutex, so every decision waited for it.
func TestRecordsDoNotWaitOnACheckpoint(t *testing.T) {
	for _, window := range []int{1, 8} {
		t.Run(fmt.Sprintf("window=%d", window), func(t *testing.T) {
			js, stream := setup(t, custodyjs.StreamConfig{})
			stall := &stallCheckpoints{JetStream: js, entered: make(chan struct{}, 4), release: make(chan struct{})}
			released := false
			release := func() {
				if !released {
					released = true
					close(stall.release)
				}
			}
			t.Cleanup(release)
			sig, verifiers := signer(t, "inst-cp")
			sink := custodyjs.NewSink(stall, custodyjs.WithChain(custodyjs.ChainConfig{
				Instance: "inst-cp", Signer: sig, CheckpointEvery: 2, CheckpointInterval: time.Hour,
				Stream: stream, Window: window,
			}))
			if err := sink.Publish(t.Context(), record("cp-0", true)); err != nil {
				t.Fatal(err)
			}
			second := make(chan error, 1)
			go func() { second <- sink.Publish(t.Context(), record("cp-1", true)) }() // due: a checkpoint at 2
			<-stall.entered
			done := make(chan error, 1)
			go func() {
				for i := 2; i < 6; i++ {
					if err := sink.Publish(t.Context(), record(fmt.Sprintf("cp-%d", i), true)); err != nil {
						done <- err
						return
					}
				}
				done <- nil
			}()
			select {
			case err := <-done:
				if err != nil {
					t.Fatal(err)
				}
			case <-time.After(10 * time.Second): // a guard against hanging, not a measurement
				release()
				t.Fatal("records waited behind a checkpoint's round trip")
			}
			release()
			if err := <-second; err != nil {
				t.Fatal(err)
			}
			if err := sink.Close(t.Context()); err != nil {
				t.Fatal(err)
			}
			recs := chainOf(t, stream, "inst-cp")
			if len(recs) != 6 || sink.Head().Seq != 6 {
				t.Fatalf("%d records on the stream, head at %d; want 6", len(recs), sink.Head().Seq)
			}
			rec, err := custodyjs.RecoverHead(t.Context(), stream, "inst-cp", verifiers)
			if err != nil {
				t.Fatal(err)
			}
			if rec.Head != sink.Head() || sink.CheckpointedSeq() != 6 {
				t.Errorf("recovers at %+v, checkpointed %d; want head %+v checkpointed", rec.Head, sink.CheckpointedSeq(), sink.Head())
			}
		})
	}
}
