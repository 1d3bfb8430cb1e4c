package jetstream_test

import (
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/mod/sumdb/note"

	custodyjs "github.com/custodyhq/custody/decisionlog/jetstream"
	"github.com/custodyhq/custody/internal/natstest"
)

// Issue 14.1: two ack-mode instances on one stream. A checkpoint sent while a record was in
// flight named that record in Nats-Expected-Last-Msg-Id, so another instance's record landing in
// between made JetStream refuse it (and wedged a clustered stream for good). No message an
// instance on a shared stream sends may depend on the stream's last message, and each
// instance's chain must still recover exactly to its head.
func TestSharedStreamWritersNeverExpectTheLastMessage(t *testing.T) {
	ns := natstest.Start(t)
	watch := natstest.Connect(t, ns)
	var expecting, seen atomic.Int64
	var firstBad atomic.Value
	sub, err := watch.Subscribe("custody.>", func(m *nats.Msg) {
		seen.Add(1)
		for k := range m.Header {
			if strings.HasPrefix(k, "Nats-Expected-Last") {
				expecting.Add(1)
				firstBad.CompareAndSwap(nil, m.Subject+" "+k)
			}
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := watch.Flush(); err != nil {
		t.Fatal(err)
	}
	var stream jetstream.Stream
	sinks := make([]*custodyjs.Sink, 2)
	verifiers := make([]note.Verifiers, 2)
	for i := range sinks {
		js, err := jetstream.New(natstest.Connect(t, ns))
		if err != nil {
			t.Fatal(err)
		}
		if stream, err = custodyjs.EnsureStream(t.Context(), js, custodyjs.StreamConfig{}); err != nil {
			t.Fatal(err)
		}
		inst := fmt.Sprintf("fleet-%d", i)
		sig, v := signer(t, inst)
		verifiers[i] = v
		// Window 1 is what serve uses on a stream a fleet may share.
		sinks[i] = custodyjs.NewSink(js, custodyjs.WithChain(custodyjs.ChainConfig{
			Instance: inst, Signer: sig, Stream: stream, Window: 1,
			CheckpointEvery: 3, CheckpointInterval: time.Millisecond,
		}))
	}
	var wg sync.WaitGroup
	acked := make([]map[string]bool, len(sinks))
	for i, s := range sinks {
		wg.Go(func() { acked[i] = publishConcurrently(t, s, fmt.Sprintf("fleet-%d", i), 400, 8, nil) })
	}
	wg.Wait()
	for i, s := range sinks {
		if len(acked[i]) != 400 {
			t.Errorf("instance %d: %d of 400 publishes succeeded on a healthy server", i, len(acked[i]))
		}
		if err := s.Close(t.Context()); err != nil {
			t.Fatalf("close %d: %v", i, err)
		}
	}
	if err := watch.Flush(); err != nil {
		t.Fatal(err)
	}
	_ = sub.Unsubscribe()
	if n := expecting.Load(); n > 0 {
		t.Errorf("%d of %d messages carried an expected-last header (first: %v)", n, seen.Load(), firstBad.Load())
	}
	for i, s := range sinks {
		inst := fmt.Sprintf("fleet-%d", i)
		checkAnsweredAreStored(t, s, chainOf(t, stream, inst), acked[i])
		rec, err := custodyjs.RecoverHead(t.Context(), stream, inst, verifiers[i])
		if err != nil {
			t.Fatal(err)
		}
		if head := rec.Head; head != s.Head() {
			t.Errorf("instance %d recovers at %+v, its head is %+v", i, head, s.Head())
		}
		if s.CheckpointedSeq() != s.Head().Seq {
			t.Errorf("instance %d: checkpointed %d, head %d", i, s.CheckpointedSeq(), s.Head().Seq)
		}
	}
}
