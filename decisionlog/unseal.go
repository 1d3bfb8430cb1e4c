package decisionlog

import "github.com/custodyhq/custody/schema"

// SchemaUnsealV1 names the wire format of an unseal record: someone was given the sealed intent
// of a decision (serve --intent-vault, custody unseal). It shares Record's fields, and so the
// chain, the Merkle tree and checkpoints, and fills UnsealID and Unseal; DecisionID is the
// decision whose intent was released, CorrelationID that decision's, Caller who asked and
// Timestamp when. It is made durable before the ciphertext is released, so no intent leaves
// the vault without evidence that it did.
const SchemaUnsealV1 = "custody.unseal.v1"

// UnsealPrefix starts the subject of every unseal record.
const UnsealPrefix = "custody.unseal"

// MaxUnsealReason bounds the reason an unseal record keeps.
const MaxUnsealReason = 1024

// Unseal says why a sealed intent was released, and which vault entry it was.
type Unseal struct {
	Reason string               `json:"reason"`
	Sealed *schema.SealedIntent `json:"sealed"`
}

// IsUnseal reports whether r is an unseal record.
func (r *Record) IsUnseal() bool { return r.Schema == SchemaUnsealV1 }

// UnsealSubject is where an unseal record is published:
// custody.unseal.<instance>.<decision_id>.<correlation_id>. The correlation ID comes last, as on
// decisions, so that one request's records are found with one filter per kind.
func UnsealSubject(r *Record) string {
	return UnsealPrefix + "." + Token(r.PDP.Instance) + "." + Token(r.DecisionID) + "." + Token(r.CorrelationID)
}

// Kind names what r records, as evidence documents do: "decision", "execution" or "unseal".
func (r *Record) Kind() string {
	switch {
	case r.IsExecution():
		return "execution"
	case r.IsUnseal():
		return "unseal"
	}
	return "decision"
}
