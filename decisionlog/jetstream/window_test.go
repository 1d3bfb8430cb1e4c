package jetstream_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/custodyhq/custody/decisionlog"
	custodyjs "github.com/custodyhq/custody/decisionlog/jetstream"
	"github.com/custodyhq/custody/internal/natstest"
)

// publishConcurrently publishes n records from workers goroutines and returns the decision IDs
// whose Publish succeeded.
func publishConcurrently(t *testing.T, sink *custodyjs.Sink, prefix string, n, workers int, between func(i int)) map[string]bool {
	t.Helper()
	var (
		mu    sync.Mutex
		acked = map[string]bool{}
		next  atomic.Int64
		wg    sync.WaitGroup
	)
	for range workers {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				if between != nil {
					between(i)
				}
				id := fmt.Sprintf("%s-%d", prefix, i)
				if sink.Publish(t.Context(), record(id, i%3 != 0)) == nil {
					mu.Lock()
					acked[id] = true
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	return acked
}

// checkAnsweredAreStored fails t unless every acked decision is in recs and the chain (checked
// link by link by chainOf) ends at the sink's head.
func checkAnsweredAreStored(t *testing.T, sink *custodyjs.Sink, recs []decisionlog.Record, acked map[string]bool) {
	t.Helper()
	stored := map[string]bool{}
	for _, r := range recs {
		stored[r.DecisionID] = true
	}
	for id := range acked {
		if !stored[id] {
			t.Errorf("decision %s was answered but is not on the stream", id)
		}
	}
	if uint64(len(recs)) != sink.Head().Seq {
		t.Fatalf("%d records in the stream, head at %d", len(recs), sink.Head().Seq)
	}
}

func TestWindowedChainIsGaplessUnderConcurrency(t *testing.T) {
	js, stream := setup(t, custodyjs.StreamConfig{})
	sig, verifiers := signer(t, "inst-w")
	sink := custodyjs.NewSink(js, custodyjs.WithChain(custodyjs.ChainConfig{
		Instance: "inst-w", Signer: sig, CheckpointEvery: 50, Stream: stream, Window: 64,
	}))
	acked := publishConcurrently(t, sink, "w", 600, 32, nil)
	if len(acked) != 600 {
		t.Fatalf("%d of 600 publishes succeeded with a healthy server", len(acked))
	}
	if err := sink.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	recs := chainOf(t, stream, "inst-w")
	checkAnsweredAreStored(t, sink, recs, acked)
	// Checkpoints were published in between records without breaking the pipeline.
	info, err := stream.Info(t.Context(), jetstream.WithSubjectFilter(decisionlog.CheckpointSubject("inst-w")))
	if err != nil {
		t.Fatal(err)
	}
	if len(info.State.Subjects) == 0 {
		t.Fatal("no checkpoint published")
	}
	rec, err := custodyjs.RecoverHead(t.Context(), stream, "inst-w", verifiers)
	head := rec.Head
	if err != nil {
		t.Fatal(err)
	}
	if head != sink.Head() {
		t.Fatalf("recovered head %+v, want %+v", head, sink.Head())
	}
}

// A full stream refuses records while others are in flight behind them: none of those may be
// stored out of order, and the chain goes on without a gap.
func TestWindowedChainHasNoGapWhenTheStreamFills(t *testing.T) {
	js, stream := setup(t, custodyjs.StreamConfig{MaxBytes: 64 << 10})
	sink := custodyjs.NewSink(js, custodyjs.WithPublishTimeout(time.Second),
		custodyjs.WithChain(custodyjs.ChainConfig{Instance: "inst-f", Stream: stream, Window: 64}))
	t.Cleanup(func() { _ = sink.Close(context.Background()) }) // stops its checkpoint goroutine
	acked := publishConcurrently(t, sink, "f", 400, 32, nil)
	if len(acked) == 400 {
		t.Fatal("the stream never filled")
	}
	checkAnsweredAreStored(t, sink, chainOf(t, stream, "inst-f"), acked)
}

// Another client writing to the stream breaks the expected-last-message chain: the records
// behind it are refused (503s, not gaps), and the sink recovers.
func TestWindowedChainSurvivesAForeignWriter(t *testing.T) {
	ns := natstest.Start(t)
	nc := natstest.Connect(t, ns)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	stream, err := custodyjs.EnsureStream(t.Context(), js, custodyjs.StreamConfig{})
	if err != nil {
		t.Fatal(err)
	}
	other := natstest.Connect(t, ns)
	sink := custodyjs.NewSink(js, custodyjs.WithChain(custodyjs.ChainConfig{Instance: "inst-o", Stream: stream, Window: 64}))
	t.Cleanup(func() { _ = sink.Close(context.Background()) }) // stops its checkpoint goroutine
	acked := publishConcurrently(t, sink, "o", 600, 32, func(i int) {
		if i%50 == 0 {
			_ = other.Publish("custody.decision.allow.someone.something.x", []byte(`{}`))
		}
	})
	if len(acked) == 0 {
		t.Fatal("nothing was published")
	}
	// After the interference, publishing works again.
	if err := sink.Publish(t.Context(), record("o-after", true)); err != nil {
		t.Fatalf("publish after the foreign writes: %v", err)
	}
	acked["o-after"] = true
	recs := chainOf(t, stream, "inst-o")
	checkAnsweredAreStored(t, sink, recs, acked)
}

// NATS goes away while records are in flight and comes back: every answered decision is stored
// and the chain has no gap.
func TestWindowedChainRidesOutAServerRestart(t *testing.T) {
	dir := t.TempDir()
	ns := natstest.StartAt(t, "127.0.0.1:0", dir)
	listen := ns.Addr().String()
	nc := natstest.ConnectURL(t, ns.ClientURL())
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	stream, err := custodyjs.EnsureStream(t.Context(), js, custodyjs.StreamConfig{})
	if err != nil {
		t.Fatal(err)
	}
	sink := custodyjs.NewSink(js, custodyjs.WithPublishTimeout(500*time.Millisecond),
		custodyjs.WithChain(custodyjs.ChainConfig{Instance: "inst-r", Stream: stream, Window: 64}))
	t.Cleanup(func() { _ = sink.Close(context.Background()) }) // stops its checkpoint goroutine
	var restarted sync.Once
	acked := publishConcurrently(t, sink, "r", 600, 32, func(i int) {
		if i == 200 {
			restarted.Do(func() {
				natstest.Shutdown(ns)
				ns = natstest.StartAt(t, listen, dir)
			})
		}
	})
	natstest.CheckFor(t, 20*time.Second, 50*time.Millisecond, func() error {
		if nc.Status() != nats.CONNECTED {
			return fmt.Errorf("client %s", nc.Status())
		}
		return sink.Publish(t.Context(), record(fmt.Sprintf("r-after-%d", time.Now().UnixNano()), true))
	})
	checkAnsweredAreStored(t, sink, chainOf(t, stream, "inst-r"), acked)
}
