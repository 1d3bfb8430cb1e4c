package spool_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/custodyhq/custody/decisionlog"
	custodyjs "github.com/custodyhq/custody/decisionlog/jetstream"
	"github.com/custodyhq/custody/decisionlog/spool"
	"github.com/custodyhq/custody/internal/natstest"
	"github.com/custodyhq/custody/pdp"
)

func rec(id string) *decisionlog.Record {
	return &decisionlog.Record{
		Schema: decisionlog.SchemaDecisionV1, DecisionID: id, CorrelationID: "c-" + id,
		Timestamp: time.Date(2026, 11, 27, 0, 0, 0, 0, time.UTC), Endpoint: "/v1/authorize",
		Action: pdp.Action{Name: "send_email"}, Agent: &pdp.Agent{ID: "agent"}, Allow: true, Reasons: []string{},
		Delegation: pdp.Delegation{Chain: []any{}},
	}
}

func open(t *testing.T, dir string, cfg spool.Config) *spool.Spool {
	t.Helper()
	cfg.Dir, cfg.Instance = dir, "inst"
	s, err := spool.Open(cfg, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func appendN(t *testing.T, s *spool.Spool, prefix string, n, workers int) {
	t.Helper()
	var wg sync.WaitGroup
	ch := make(chan int)
	for range workers {
		wg.Go(func() {
			for i := range ch {
				if err := s.Append(context.Background(), rec(fmt.Sprintf("%s-%d", prefix, i))); err != nil {
					t.Error(err)
				}
			}
		})
	}
	for i := range n {
		ch <- i
	}
	close(ch)
	wg.Wait()
}

// forward runs the forwarder until the test ends. Its cleanup stops the
// forwarder and waits for it: the forwarder saves its cursor on the way out,
// and a write racing the temp dir's removal fails the test.
func forward(t *testing.T, s *spool.Spool, st stream) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = s.Forward(ctx, st.sink, nil, 0, time.Second)
	}()
	t.Cleanup(func() { cancel(); <-done })
}

type stream struct {
	js     jetstream.JetStream
	stream jetstream.Stream
	sink   *custodyjs.Sink
}

func newStream(t *testing.T, url string) stream {
	t.Helper()
	nc := natstest.ConnectURL(t, url)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	st, err := custodyjs.EnsureStream(t.Context(), js, custodyjs.StreamConfig{})
	if err != nil {
		t.Fatal(err)
	}
	return stream{js: js, stream: st, sink: custodyjs.NewSink(js, custodyjs.WithPublishTimeout(500*time.Millisecond))}
}

// seqs returns the chain seqs in stream order and checks every link.
func seqs(t *testing.T, st jetstream.Stream, want int) []uint64 {
	t.Helper()
	var out []uint64
	natstest.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		info, err := st.Info(t.Context())
		if err != nil {
			return err
		}
		if int(info.State.Msgs) < want {
			return fmt.Errorf("%d of %d records forwarded", info.State.Msgs, want)
		}
		return nil
	})
	cons, err := st.OrderedConsumer(t.Context(), jetstream.OrderedConsumerConfig{FilterSubjects: []string{"custody.decision.>"}})
	if err != nil {
		t.Fatal(err)
	}
	var head decisionlog.ChainHead
	for len(out) < want {
		batch, err := cons.Fetch(want-len(out), jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		for m := range batch.Messages() {
			var r decisionlog.Record
			if err := json.Unmarshal(m.Data(), &r); err != nil {
				t.Fatal(err)
			}
			h, err := decisionlog.BodyHash(m.Data())
			if err != nil || r.Seq != head.Seq+1 || r.PrevHash != head.Hash {
				t.Fatalf("record %d does not follow %+v (%v)", r.Seq, head, err)
			}
			head = decisionlog.ChainHead{Seq: r.Seq, Hash: h}
			out = append(out, r.Seq)
		}
	}
	return out
}

func TestGroupCommitAndForwardInOrder(t *testing.T) {
	ns := natstest.Start(t)
	st := newStream(t, ns.ClientURL())
	dir := t.TempDir()
	s := open(t, dir, spool.Config{SegmentBytes: 8 << 10}) // small segments: rotation and cleanup
	appendN(t, s, "a", 300, 16)
	if n, _ := s.Stats(); n != 300 {
		t.Fatalf("%d records waiting, want 300", n)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- s.Forward(ctx, st.sink, nil, 0, time.Second) }()
	got := seqs(t, st.stream, 300)
	if got[299] != 300 {
		t.Fatalf("last seq %d", got[299])
	}
	natstest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if n, b := s.Stats(); n != 0 || b != 0 {
			return fmt.Errorf("%d records, %d bytes still spooled", n, b)
		}
		return nil
	})
	if err := s.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	cancel()
	<-done
	segs, _ := filepath.Glob(filepath.Join(dir, "*.seg"))
	if len(segs) > 1 {
		t.Fatalf("%d segments left after everything was forwarded", len(segs))
	}
}

func TestSurvivesRestartAndTornTail(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, spool.Config{})
	appendN(t, s, "before", 50, 4)
	head := s.Head()
	// Crash: no Close. A half-written entry is left at the tail.
	segs, _ := filepath.Glob(filepath.Join(dir, "*.seg"))
	f, err := os.OpenFile(segs[len(segs)-1], os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = f.Write([]byte{200, 0, 0, 0, 1, 2, 3, 4, '{', '"'})
	f.Close()

	s2 := open(t, dir, spool.Config{})
	if s2.Head() != head {
		t.Fatalf("head after restart %+v, want %+v", s2.Head(), head)
	}
	appendN(t, s2, "after", 10, 2)
	ns := natstest.Start(t)
	st := newStream(t, ns.ClientURL())
	forward(t, s2, st)
	got := seqs(t, st.stream, 60)
	if got[59] != 60 {
		t.Fatalf("last seq %d, want 60", got[59])
	}
}

func TestFullSpoolRefuses(t *testing.T) {
	s := open(t, t.TempDir(), spool.Config{MaxBytes: 4096})
	var err error
	for i := 0; i < 100 && err == nil; i++ {
		err = s.Append(t.Context(), rec(fmt.Sprintf("full-%d", i)))
	}
	if !errors.Is(err, decisionlog.ErrUnavailable) || !errors.Is(err, spool.ErrFull) {
		t.Fatalf("Append to a full spool = %v, want ErrUnavailable and ErrFull", err)
	}
}

func TestRidesOutNATSOutage(t *testing.T) {
	natsDir := t.TempDir()
	ns := natstest.StartAt(t, "127.0.0.1:0", natsDir)
	listen := ns.Addr().String()
	st := newStream(t, ns.ClientURL())
	s := open(t, t.TempDir(), spool.Config{})
	forward(t, s, st)
	appendN(t, s, "up", 20, 4)
	natstest.Shutdown(ns)
	appendN(t, s, "down", 40, 4) // answered from the spool while NATS is away
	ns = natstest.StartAt(t, listen, natsDir)
	got := seqs(t, st.stream, 60)
	if len(got) != 60 {
		t.Fatalf("%d records, want 60", len(got))
	}
	info, err := st.stream.Info(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 60 {
		t.Fatalf("stream holds %d records, want exactly 60 (no duplicates)", info.State.Msgs)
	}
}
