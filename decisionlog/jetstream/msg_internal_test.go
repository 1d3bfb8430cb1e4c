package jetstream

import (
	"strconv"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/nats-io/nats.go"

	"github.com/custodyhq/custody/decisionlog"
	"github.com/custodyhq/custody/pdp"
)

// setHeaderMsg is the message as decisionMsg and chainedMsg built it before recordMsg: nats.NewMsg
// and a Header.Set per header.
func setHeaderMsg(r *decisionlog.Record, body []byte, chained bool) *nats.Msg {
	msg := nats.NewMsg(decisionlog.RecordSubject(r))
	msg.Data = body
	msg.Header.Set(decisionlog.HeaderCorrelationID, r.CorrelationID)
	switch {
	case r.IsUnseal():
		msg.Header.Set(decisionlog.HeaderDecisionID, r.DecisionID)
	case r.IsExecution():
		msg.Header.Set(decisionlog.HeaderDecisionID, r.DecisionID)
		if r.Execution != nil {
			msg.Header.Set(decisionlog.HeaderExecution, r.Execution.Status)
		}
	default:
		msg.Header.Set(decisionlog.HeaderDecision, r.Outcome())
	}
	if chained {
		msg.Header.Set(HeaderInstance, r.PDP.Instance)
		msg.Header.Set(HeaderSeq, strconv.FormatUint(r.Seq, 10))
		msg.Header.Set(HeaderHash, r.Hash)
	}
	return msg
}

// TestRecordMsgMatchesHeaderSet: every kind of record gets the subject, body and headers it got
// from nats.NewMsg and Header.Set, chained or not, and the headers the jetstream client adds
// (here by hand, as it does) land beside them without disturbing them.
func TestRecordMsgMatchesHeaderSet(t *testing.T) {
	base := func() *decisionlog.Record {
		return &decisionlog.Record{
			Schema: decisionlog.SchemaDecisionV1, DecisionID: "d-1", CorrelationID: "corr-1",
			Subject: pdp.Entity{Type: "user", ID: "alice"}, Action: pdp.Action{Name: "send_email"},
			Agent: &pdp.Agent{ID: "spiffe://acme/agents/mailer"}, Seq: 42, Hash: "ab12", PDP: decisionlog.Instance{Instance: "pdp-a"},
		}
	}
	tests := []struct {
		name string
		edit func(r *decisionlog.Record)
	}{
		{"deny", func(*decisionlog.Record) {}},
		{"allow", func(r *decisionlog.Record) { r.Allow = true }},
		{"execution", func(r *decisionlog.Record) {
			r.Schema, r.ExecutionID = decisionlog.SchemaExecutionV1, "e-1"
			r.Execution = &decisionlog.Execution{Status: decisionlog.ExecutionSucceeded}
		}},
		{"execution without its section", func(r *decisionlog.Record) { r.Schema, r.ExecutionID = decisionlog.SchemaExecutionV1, "e-1" }},
		{"unseal", func(r *decisionlog.Record) { r.Schema, r.UnsealID = decisionlog.SchemaUnsealV1, "u-1" }},
		{"empty values", func(r *decisionlog.Record) { r.CorrelationID, r.PDP.Instance, r.Hash, r.Seq = "", "", "", 0 }},
	}
	for _, tc := range tests {
		for _, chained := range []bool{false, true} {
			t.Run(tc.name+"/chained="+strconv.FormatBool(chained), func(t *testing.T) {
				r := base()
				tc.edit(r)
				body := []byte(`{"x":1}`)
				want, got := setHeaderMsg(r, body, chained), recordMsg(r, body, chained)
				if diff := cmp.Diff(want.Subject, got.Subject); diff != "" {
					t.Errorf("subject (-want +got):\n%s", diff)
				}
				if string(want.Data) != string(got.Data) || want.Reply != got.Reply {
					t.Errorf("data %q reply %q, want %q %q", got.Data, got.Reply, want.Data, want.Reply)
				}
				for _, m := range []*nats.Msg{want, got} {
					m.Header.Set(decisionlog.HeaderMsgID, r.MsgID())
					m.Header.Set("Nats-Expected-Stream", decisionlog.StreamName)
					m.Header.Set("Nats-Expected-Last-Msg-Id", "prev")
				}
				if diff := cmp.Diff(want.Header, got.Header); diff != "" {
					t.Errorf("headers (-want +got):\n%s", diff)
				}
				if MessageSize(want) != MessageSize(got) {
					t.Errorf("MessageSize %d, want %d", MessageSize(got), MessageSize(want))
				}
			})
		}
	}
}

// TestRecordMsgAllocations bounds a chained record's message: the map, the values' one array,
// the message, the subject and the seq. nats.NewMsg, a Header.Set per header and a copy of every
// subject token made twelve.
func TestRecordMsgAllocations(t *testing.T) {
	r := &decisionlog.Record{Schema: decisionlog.SchemaDecisionV1, DecisionID: "d-1", CorrelationID: "019ac0de-corr-1",
		Agent: &pdp.Agent{ID: "mailer"}, Action: pdp.Action{Name: "send_email"}, Seq: 1234, Hash: "ab12", PDP: decisionlog.Instance{Instance: "pdp-a"}}
	body := []byte(`{}`)
	if n := testing.AllocsPerRun(100, func() { _ = recordMsg(r, body, true) }); n > 6 {
		t.Errorf("%v allocations for a chained record's message, want at most 6", n)
	}
}

// TestAckTimerReuseHasNoStaleTick: a timer that fired unread before it was given back does not
// fire at once when reused: a stale tick would fail a record's wait for its ack at once.
func TestAckTimerReuseHasNoStaleTick(t *testing.T) {
	first := ackTimer(time.Millisecond)
	time.Sleep(20 * time.Millisecond) // fired, never read
	releaseAckTimer(first)
	for range 3 {
		tm := ackTimer(time.Hour)
		select {
		case <-tm.C:
			t.Fatal("a reused timer fired at once")
		case <-time.After(30 * time.Millisecond):
		}
		releaseAckTimer(tm)
	}
}
