package spool_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/custodyhq/custody/decisionlog"
	custodyjs "github.com/custodyhq/custody/decisionlog/jetstream"
	"github.com/custodyhq/custody/decisionlog/spool"
	"github.com/custodyhq/custody/internal/natstest"
)

// Issue 14.6: a failed fsync is sticky. After one, the kernel may have dropped the dirty pages,
// and the next fsync reports success for data that is not on disk: no later append may be
// answered as durable until the spool is reopened.
func TestFailedFsyncIsSticky(t *testing.T) {
	s := open(t, t.TempDir(), spool.Config{})
	if err := s.Append(t.Context(), rec("before")); err != nil {
		t.Fatal(err)
	}
	var fail atomic.Bool
	fail.Store(true)
	spool.SetSync(s, func(f *os.File) error {
		if fail.Swap(false) {
			return errors.New("injected EIO")
		}
		return f.Sync()
	})
	if err := s.Append(t.Context(), rec("failed")); !errors.Is(err, decisionlog.ErrUnavailable) {
		t.Fatalf("append with a failing fsync: %v", err)
	}
	for i := range 3 {
		if err := s.Append(t.Context(), rec(fmt.Sprintf("after-%d", i))); !errors.Is(err, decisionlog.ErrUnavailable) {
			t.Fatalf("append %d after a failed fsync succeeded (%v): it may not be on disk", i, err)
		}
	}
	if s.Err() == nil {
		t.Fatal("Err is nil after a failed fsync")
	}
}

// bigRecord is a record whose sealed body is over NATS's default max_payload (1 MiB).
func bigRecord(id string) *decisionlog.Record {
	r := rec(id)
	r.Action.Properties = map[string]any{"body": strings.Repeat("x", 1100<<10)}
	return r
}

// Issue 14.6: a record the server can never take was answered and then retried forever, and
// nothing behind it reached JetStream. With Check it is refused before it is written.
func TestRecordTooLargeIsRefusedBeforeTheAnswer(t *testing.T) {
	ns := natstest.Start(t)
	st := newStream(t, ns.ClientURL())
	nc := natstest.Connect(t, ns)
	sink := custodyjs.NewSink(st.js, custodyjs.WithMaxPayload(nc.MaxPayload()))
	s := open(t, t.TempDir(), spool.Config{Check: sink.CheckSealed})
	forward(t, s, st)
	err := s.Append(t.Context(), bigRecord("big"))
	if !errors.Is(err, decisionlog.ErrTooLarge) || !errors.Is(err, decisionlog.ErrUnavailable) {
		t.Fatalf("append of a record over max_payload: %v", err)
	}
	appendN(t, s, "small", 5, 1)
	got := seqs(t, st.stream, 5)
	if got[4] != 5 {
		t.Fatalf("seqs %v: the refused record kept a seq", got)
	}
}

// Issue 14.6: a too-large record already in a spool (written before the check existed) is a
// permanent publish error. It is kept in rejected/, counted, and the records behind it flow.
func TestPermanentForwardErrorIsPassedOver(t *testing.T) {
	ns := natstest.Start(t)
	st := newStream(t, ns.ClientURL())
	dir := t.TempDir()
	s := open(t, dir, spool.Config{Permanent: custodyjs.Permanent})
	if err := s.Append(t.Context(), bigRecord("big")); err != nil {
		t.Fatal(err)
	}
	appendN(t, s, "small", 5, 1)
	forward(t, s, st)
	natstest.CheckFor(t, 30*time.Second, 20*time.Millisecond, func() error {
		info, err := st.stream.Info(t.Context())
		if err != nil {
			return err
		}
		if info.State.Msgs < 5 {
			return fmt.Errorf("%d of the 5 records behind the big one forwarded", info.State.Msgs)
		}
		return nil
	})
	if n := s.Rejected(); n != 1 {
		t.Errorf("%d rejected, want 1", n)
	}
	if _, err := os.Stat(filepath.Join(dir, "rejected", fmt.Sprintf("%020d.json", 1))); err != nil {
		t.Errorf("the rejected record is not kept: %v", err)
	}
}

// Issue 14.5: a data dir that ran in ack mode has no spool, and the chain is already at seq 50
// on the stream. The forwarder panicked (index out of range) in a crash loop.
func TestOpenAfterAckModeResumesTheStreamsChain(t *testing.T) {
	ns := natstest.Start(t)
	st := newStream(t, ns.ClientURL())
	s := open(t, t.TempDir(), spool.Config{Head: decisionlog.ChainHead{Seq: 50, Hash: "h50"}})
	if n, _ := s.Stats(); n != 0 {
		t.Fatalf("a new spool reports %d records to forward", n)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Forward(ctx, st.sink, nil, 0, time.Second) }()
	t.Cleanup(func() { cancel(); <-done })
	r := rec("next")
	if err := s.Append(t.Context(), r); err != nil {
		t.Fatal(err)
	}
	if r.Seq != 51 || r.PrevHash != "h50" {
		t.Fatalf("record linked at seq %d prev %q, want 51 after h50", r.Seq, r.PrevHash)
	}
	natstest.CheckFor(t, 20*time.Second, 20*time.Millisecond, func() error {
		m, err := st.stream.GetLastMsgForSubject(t.Context(), decisionlog.RecordSubject(r))
		if err != nil {
			return err
		}
		if m.Header.Get(custodyjs.HeaderSeq) != "51" {
			return fmt.Errorf("seq %s on the stream", m.Header.Get(custodyjs.HeaderSeq))
		}
		return nil
	})
	var _ jetstream.Stream = st.stream
}
