package jetstream

import (
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/custodyhq/custody/decisionlog"
	"github.com/custodyhq/custody/internal/natstest"
)

// TestAckErrorAgreesWithJetStream: for each answer JetStream gives a publish (stored, a
// duplicate, each refusal the chain can meet, nobody there), ackError says what the jetstream
// client's PublishMsg says of the same publish: stored or not, and the same API error code.
func TestAckErrorAgreesWithJetStream(t *testing.T) {
	ns := natstest.Start(t)
	nc := natstest.Connect(t, ns)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := EnsureStream(t.Context(), js, StreamConfig{}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		subject string
		msgID   string
		opts    []jetstream.PublishOpt
		headers map[string]string // the same expectations as raw headers
	}{
		{name: "stored", subject: "custody.decision.allow.a.t.c1", msgID: "m1",
			opts:    []jetstream.PublishOpt{jetstream.WithExpectStream(decisionlog.StreamName)},
			headers: map[string]string{jetstream.ExpectedStreamHeader: decisionlog.StreamName}},
		{name: "duplicate", subject: "custody.decision.allow.a.t.c1", msgID: "m1"},
		{name: "wrong last message", subject: "custody.decision.allow.a.t.c2", msgID: "m2",
			opts:    []jetstream.PublishOpt{jetstream.WithExpectLastMsgID("not-the-last")},
			headers: map[string]string{jetstream.ExpectedLastMsgIDHeader: "not-the-last"}},
		{name: "wrong stream", subject: "custody.decision.allow.a.t.c3", msgID: "m3",
			opts:    []jetstream.PublishOpt{jetstream.WithExpectStream("OTHER")},
			headers: map[string]string{jetstream.ExpectedStreamHeader: "OTHER"}},
		{name: "no stream", subject: "nostream.x", msgID: "m4"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// The raw publish first: the library's then meets what the raw one left (the
			// duplicate case relies on the stored case's message).
			msg := nats.NewMsg(tc.subject)
			msg.Data = []byte(`{}`)
			msg.Header.Set(jetstream.MsgIDHeader, tc.msgID)
			for k, v := range tc.headers {
				msg.Header.Set(k, v)
			}
			slot := &ackSlot{}
			if err := slot.open(nc); err != nil {
				t.Fatal(err)
			}
			defer slot.retire()
			msg.Reply = slot.subject
			if err := nc.PublishMsg(msg); err != nil {
				t.Fatal(err)
			}
			var reply *nats.Msg
			select {
			case reply = <-slot.ch:
			case <-time.After(10 * time.Second):
				t.Fatal("no answer to the publish")
			}
			got := ackError(reply)

			again := nats.NewMsg(tc.subject)
			again.Data = []byte(`{}`)
			_, want := js.PublishMsg(t.Context(), again, append([]jetstream.PublishOpt{jetstream.WithMsgID(tc.msgID)}, tc.opts...)...)

			if (got == nil) != (want == nil) {
				t.Fatalf("ackError says %v for %s; jetstream says %v", got, reply.Data, want)
			}
			if want == nil && !storedAck(reply.Data) {
				t.Errorf("nats-server's answer %s to a stored message misses storedAck: every ack would take encoding/json", reply.Data)
			}
			var gotAPI, wantAPI *jetstream.APIError
			if errors.As(want, &wantAPI) {
				if !errors.As(got, &gotAPI) || gotAPI.ErrorCode != wantAPI.ErrorCode {
					t.Fatalf("ackError says %v; jetstream says API error %d (%v)", got, wantAPI.ErrorCode, want)
				}
			}
			if errors.Is(want, jetstream.ErrNoStreamResponse) != errors.Is(got, jetstream.ErrNoStreamResponse) {
				t.Fatalf("ackError says %v; jetstream says %v", got, want)
			}
		})
	}
}

// TestRetiredSlotNeverReadsALateAck: a slot whose wait ended without an ack gets a new inbox,
// so an ack that comes after its record gave up is never read as the next record's.
func TestRetiredSlotNeverReadsALateAck(t *testing.T) {
	nc := natstest.Connect(t, natstest.Start(t))
	slot := &ackSlot{}
	if err := slot.open(nc); err != nil {
		t.Fatal(err)
	}
	old := slot.subject
	slot.retire()
	if err := slot.open(nc); err != nil {
		t.Fatal(err)
	}
	if slot.subject == old {
		t.Fatalf("a retired slot reopened on its old inbox %s", old)
	}
	if err := nc.Publish(old, []byte(`{"stream":"CUSTODY","seq":1}`)); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil { // the late ack has gone round the server
		t.Fatal(err)
	}
	select {
	case m := <-slot.ch:
		t.Fatalf("the reopened slot got the late ack %s of its retired inbox", m.Data)
	default:
	}
	slot.retire()
}

func TestAckErrorRefusesWhatIsNotAnAck(t *testing.T) {
	for _, data := range []string{`[]`, `{"stream":"CUSTODY"}`, `garbage`, `{"error":null,"seq":1}`} {
		if err := ackError(&nats.Msg{Data: []byte(data)}); err == nil {
			t.Errorf("ackError(%s) = nil: read as stored", data)
		}
	}
	if err := ackError(&nats.Msg{}); err == nil {
		t.Error("an empty message without a status was read as stored")
	}
}

// FuzzAckError: ackError reads an answer as stored exactly when encoding/json reads it as a
// stream and a seq with no error. Its fast path for nats-server's own format (storedAck) may
// only ever agree with that.
func FuzzAckError(f *testing.F) {
	for _, seed := range []string{
		`{"stream":"CUSTODY","seq":1}`,
		`{"stream":"CUSTODY","domain":"hub","seq":18446744073709551615}`,
		`{"stream":"CUSTODY","seq":7,"duplicate": true}`,
		`{"stream":"CUSTODY","seq":18446744073709551616}`,
		`{"stream":"CUSTODY","seq":01}`,
		`{"stream":"","seq":1}`,
		`{"stream":"CUS\"TODY","seq":1}`,
		`{"error":{"code":400,"err_code":10071,"description":"wrong last msg ID: m1"},"stream":"CUSTODY","seq":0}`,
		`{"stream":"CUSTODY","seq":1,"error":null}`,
		`{"stream":"CUSTODY","seq":1}trailing`,
		`{"stream":"CUSTODY","seq":"1"}`,
		`{"stream":"CUSTODY"}`,
		`[]`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var resp struct {
			Error  *jetstream.APIError `json:"error"`
			Stream string              `json:"stream"`
			Seq    *uint64             `json:"seq"`
		}
		want := len(data) > 0 && json.Unmarshal(data, &resp) == nil && resp.Error == nil && resp.Stream != "" && resp.Seq != nil
		err := ackError(&nats.Msg{Data: data})
		if (err == nil) != want {
			t.Fatalf("ackError(%q) = %v; encoding/json reads it as stored: %v", data, err, want)
		}
		if storedAck(data) && !want {
			t.Fatalf("storedAck(%q) is true; encoding/json does not read it as stored", data)
		}
	})
}
