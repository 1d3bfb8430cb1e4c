package jetstream

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"

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
// of a stored message included), the API error when JetStream refused it. The answer nats-server
// writes for a stored message is read without encoding/json (storedAck); anything else is
// decoded in full, and is a stored message only if it names a stream and a seq and no error.
func ackError(m *nats.Msg) error {
	if len(m.Data) == 0 {
		if m.Header.Get("Status") == "503" {
			return jetstream.ErrNoStreamResponse // nobody answered: no stream leader
		}
		return fmt.Errorf("empty publish ack (status %q)", m.Header.Get("Status"))
	}
	if storedAck(m.Data) {
		return nil
	}
	var resp struct {
		Error  *jetstream.APIError `json:"error"`
		Stream string              `json:"stream"`
		Seq    *uint64             `json:"seq"`
	}
	if err := json.Unmarshal(m.Data, &resp); err != nil {
		return fmt.Errorf("malformed publish ack %q: %w", truncate(m.Data, 128), err)
	}
	switch {
	case resp.Error != nil:
		return resp.Error
	case resp.Stream == "" || resp.Seq == nil:
		return fmt.Errorf("publish ack %q names no stream and seq", truncate(m.Data, 128))
	}
	return nil
}

// storedAck reports whether b is, byte for byte, what nats-server writes when it stored a
// message (stream.go): {"stream":"NAME","seq":N}, with "domain":"D" before the seq when the
// server has a domain and ,"duplicate": true after it for a duplicate. FuzzAckError holds it to
// encoding/json's reading.
func storedAck(b []byte) bool {
	rest, ok := bytes.CutPrefix(b, []byte(`{"stream":`))
	if !ok {
		return false
	}
	if rest, ok = plainJSONString(rest); !ok {
		return false
	}
	if r, ok := bytes.CutPrefix(rest, []byte(`,"domain":`)); ok {
		if rest, ok = plainJSONString(r); !ok {
			return false
		}
	}
	if rest, ok = bytes.CutPrefix(rest, []byte(`,"seq":`)); !ok {
		return false
	}
	n := 0
	for n < len(rest) && n < 20 && rest[n] >= '0' && rest[n] <= '9' {
		n++
	}
	if n == 0 || (n > 1 && rest[0] == '0') {
		return false
	}
	var seq uint64
	for _, c := range rest[:n] { // a seq past uint64 is not one nats-server wrote
		d := uint64(c - '0')
		if seq > (math.MaxUint64-d)/10 {
			return false
		}
		seq = seq*10 + d
	}
	rest = rest[n:]
	return string(rest) == "}" || string(rest) == `,"duplicate": true}`
}

// plainJSONString reads a non-empty JSON string without escapes or control characters at the
// start of b (a stream or domain name) and returns what follows it.
func plainJSONString(b []byte) ([]byte, bool) {
	if len(b) < 3 || b[0] != '"' {
		return nil, false
	}
	for i := 1; i < len(b); i++ {
		switch c := b[i]; {
		case c == '"':
			return b[i+1:], i > 1
		case c == '\\' || c < 0x20:
			return nil, false
		}
	}
	return nil, false
}

func truncate(b []byte, n int) []byte {
	if len(b) > n {
		return b[:n]
	}
	return b
}
