package spool_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/custodyhq/custody/decisionlog"
	custodyjs "github.com/custodyhq/custody/decisionlog/jetstream"
	"github.com/custodyhq/custody/decisionlog/spool"
	"github.com/custodyhq/custody/internal/natstest"
)

// An execution goes through the spool like a decision: chained there, and forwarded to its
// execution subject with its execution ID as Nats-Msg-Id.
func TestForwardsExecutions(t *testing.T) {
	ns := natstest.Start(t)
	st := newStream(t, ns.ClientURL())
	s := open(t, t.TempDir(), spool.Config{})
	d := rec("d-1")
	e := rec("d-1")
	e.Schema, e.ExecutionID, e.Endpoint = decisionlog.SchemaExecutionV1, "e-1", "/v1/executions"
	e.Execution = &decisionlog.Execution{Status: decisionlog.ExecutionSucceeded, Target: decisionlog.ExecutionTarget{System: "mail"}}
	for _, r := range []*decisionlog.Record{d, e} {
		if err := s.Append(t.Context(), r); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- s.Forward(ctx, st.sink, nil, 0, time.Second) }()
	defer func() { cancel(); <-done }()
	natstest.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		info, err := st.stream.Info(t.Context())
		if err != nil {
			return err
		}
		if info.State.Msgs < 2 {
			return fmt.Errorf("%d of 2 records forwarded", info.State.Msgs)
		}
		return nil
	})
	m, err := st.stream.GetLastMsgForSubject(t.Context(), "custody.execution.succeeded.agent.send_email.c-d-1")
	if err != nil {
		t.Fatalf("execution not on its subject: %v", err)
	}
	if id := m.Header.Get(decisionlog.HeaderMsgID); id != "e-1" {
		t.Errorf("Nats-Msg-Id %q, want the execution ID", id)
	}
	if seq := m.Header.Get(custodyjs.HeaderSeq); seq != "2" {
		t.Errorf("execution has chain seq %q, want 2 (after its decision)", seq)
	}
	if err := s.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
}
