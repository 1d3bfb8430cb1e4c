package decisionlog

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
)

// ErrUnverified is returned, wrapped, for a message that cannot be taken as a record custody
// wrote: its body does not hash to its hash member, its ID is not its Nats-Msg-Id, or it cannot
// be read at all. Readers report such a message as unverified; they never act on it.
var ErrUnverified = errors.New("record does not verify")

// DecodeRecord reads a record body. Numbers in free-form fields (properties, obligations) are
// kept as json.Number, so that a value no float64 holds (1e400) does not make a record that
// custody wrote unreadable.
func DecodeRecord(body []byte) (*Record, error) {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var r Record
	if err := dec.Decode(&r); err != nil {
		return nil, fmt.Errorf("decisionlog: decode record: %w", err)
	}
	return &r, nil
}

// CheckRecord decodes a decision, execution or unseal record and checks what one message can show on
// its own: the body is sealed (it hashes to its hash member) and the record's ID (decision_id,
// execution_id for an execution, unseal_id for an unseal) is msgID, the message's Nats-Msg-Id. It returns the record
// whenever the body could be decoded, with an error wrapping ErrUnverified when a check fails,
// so that a reader can still say what the unverified message claims.
//
// A sealed record can still be a forgery by anyone who may publish on the stream: only
// `custody verify` with the instances' keys tells a chain custody signed from one that merely
// hashes.
func CheckRecord(msgID string, body []byte) (*Record, error) {
	r, err := DecodeRecord(body)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUnverified, err)
	}
	switch {
	case r.Schema != SchemaDecisionV1 && r.Schema != SchemaExecutionV1 && r.Schema != SchemaUnsealV1:
		return r, fmt.Errorf("%w: schema %q is not a decision, execution or unseal record", ErrUnverified, r.Schema)
	case r.MsgID() == "" || r.MsgID() != msgID:
		return r, fmt.Errorf("%w: its ID %q is not its Nats-Msg-Id %q", ErrUnverified, r.MsgID(), msgID)
	}
	h, err := BodyHash(body)
	if err != nil {
		return r, fmt.Errorf("%w: %w", ErrUnverified, err)
	}
	if h != r.Hash || r.Seq == 0 {
		return r, fmt.Errorf("%w: not sealed in a chain", ErrUnverified)
	}
	return r, nil
}
