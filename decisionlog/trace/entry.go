package trace

import (
	"github.com/custodyhq/custody/decisionlog"
)

// KindUnverified is the node of a message on the correlation's subjects that does not verify:
// shown, never counted or linked as a decision.
const KindUnverified = "unverified"

// Entry is one message read for a trace or a correlation: the record it holds and, when it does
// not verify, why.
type Entry struct {
	Seq     uint64 // stream sequence
	Subject string
	MsgID   string              // its Nats-Msg-Id
	Record  *decisionlog.Record // nil when the body cannot be read at all
	// Unverified says why the message cannot be taken as a record custody wrote ("" when it
	// can): not sealed, decision_id not its Nats-Msg-Id, or unreadable.
	Unverified string
}

// Check makes the entry of one stream message, with decisionlog.CheckRecord.
func Check(seq uint64, subject, msgID string, body []byte) Entry {
	r, err := decisionlog.CheckRecord(msgID, body)
	e := Entry{Seq: seq, Subject: subject, MsgID: msgID, Record: r}
	if err != nil {
		e.Unverified = err.Error()
	}
	return e
}

// Verified wraps records known to be custody's (held in memory, not read from the stream).
func Verified(recs []decisionlog.Record) []Entry {
	out := make([]Entry, len(recs))
	for i := range recs {
		out[i] = Entry{Record: &recs[i], MsgID: recs[i].MsgID()}
	}
	return out
}
