package jetstream

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// ackSlot is one place in a chained sink's ack window: a reply subject of its own, subscribed
// with a channel, so that the connection's read loop hands a record's ack straight to the
// publisher waiting for it. jetstream's PublishMsgAsync routed every ack through the dispatch
// goroutine of one reply subscription, a future and a timer per record, and encoding/json:
// about 3% of a decision's CPU under load, and one more goroutine to wake before each answer.
//
// A slot is held by one record from its send to its ack. A slot whose wait ended without an ack
// is retired (see retire): its ack may still come, and must never be read as the next record's.
type ackSlot struct {
	subject string
	sub     *nats.Subscription
	ch      chan *nats.Msg
}

// newAckSlots returns n slots, each subscribed on first use.
func newAckSlots(n int) chan *ackSlot {
	slots := make(chan *ackSlot, n)
	for range n {
		slots <- &ackSlot{}
	}
	return slots
}

// open subscribes the slot to a fresh inbox of nc unless it already is.
func (a *ackSlot) open(nc *nats.Conn) error {
	if a.sub != nil {
		return nil
	}
	// Room for more than the one ack a record gets: a stray message must not make the read
	// loop drop the connection's next message to this subject as a slow consumer's.
	ch := make(chan *nats.Msg, 4)
	subject := nc.NewInbox()
	sub, err := nc.ChanSubscribe(subject, ch)
	if err != nil {
		return fmt.Errorf("subscribe to ack inbox: %w", err)
	}
	a.subject, a.sub, a.ch = subject, sub, ch
	return nil
}

// retire drops the slot's subscription; its next use subscribes to a new inbox.
func (a *ackSlot) retire() {
	if a.sub != nil {
		_ = a.sub.Unsubscribe()
	}
	a.subject, a.sub, a.ch = "", nil, nil
}

// ackError reads JetStream's answer to a publish: nil when the message is stored (a duplicate
// of a stored message included), the API error when JetStream refused it. Only what the chain
// needs is read; refusals, which are rare, are decoded in full.
func ackError(m *nats.Msg) error {
	if len(m.Data) == 0 {
		if m.Header.Get("Status") == "503" {
			return jetstream.ErrNoStreamResponse // nobody answered: no stream leader
		}
		return fmt.Errorf("empty publish ack (status %q)", m.Header.Get("Status"))
	}
	if !bytes.Contains(m.Data, []byte(`"error"`)) {
		if bytes.HasPrefix(m.Data, []byte(`{`)) && bytes.Contains(m.Data, []byte(`"seq":`)) {
			return nil
		}
		return fmt.Errorf("malformed publish ack %q", truncate(m.Data, 128))
	}
	var resp struct {
		Error *jetstream.APIError `json:"error"`
	}
	if err := json.Unmarshal(m.Data, &resp); err != nil {
		return fmt.Errorf("malformed publish ack %q: %w", truncate(m.Data, 128), err)
	}
	if resp.Error == nil {
		return errors.New("publish ack names an error and holds none")
	}
	return resp.Error
}

func truncate(b []byte, n int) []byte {
	if len(b) > n {
		return b[:n]
	}
	return b
}
