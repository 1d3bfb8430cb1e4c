package decisionlog

import (
	"crypto/sha256"
	"encoding/hex"
	"strings"
)

// Subject prefixes and header names on the decision stream.
const (
	StreamName     = "CUSTODY"
	StreamSubjects = "custody.>"
	DecisionPrefix = "custody.decision"

	HeaderMsgID         = "Nats-Msg-Id"
	HeaderCorrelationID = "Custody-Correlation-Id"
	HeaderDecision      = "Custody-Decision"
	HeaderDecisionID    = "Custody-Decision-Id" // on executions: the decision reported on
	HeaderExecution     = "Custody-Execution"   // on executions: succeeded, failed or skipped
)

// MaxTokenLen bounds one subject token. Longer values keep a readable prefix and end in a hash of
// the whole value, so distinct long IDs stay distinct and a hostile caller cannot make subjects
// that NATS would refuse.
const MaxTokenLen = 96

const hashedTokenSuffixLen = 1 + 16 // "~" is not allowed, so "_" + 16 hex digits of SHA-256

// Token makes s safe as one NATS subject token: every character outside A-Za-z0-9_- becomes "_",
// the empty string becomes "_", and values longer than MaxTokenLen are shortened as described there.
func Token(s string) string {
	if s == "" {
		return "_"
	}
	if safeToken(s) {
		return s // as sanitizeToken spells it, without copying it
	}
	return sanitizeToken(s)
}

// sanitizeToken is Token for a value that is not "": each rune outside the safe set becomes
// "_", and a value over MaxTokenLen runes is shortened with a hash.
func sanitizeToken(s string) string {
	var b strings.Builder
	b.Grow(min(len(s), MaxTokenLen))
	n, truncated := 0, false
	for _, r := range s {
		if n == MaxTokenLen {
			truncated = true
			break
		}
		if r < 128 && tokenSafe[r] {
			b.WriteByte(byte(r))
		} else {
			b.WriteByte('_')
		}
		n++
	}
	if !truncated {
		return b.String()
	}
	sum := sha256.Sum256([]byte(s))
	prefix := b.String()[:MaxTokenLen-hashedTokenSuffixLen]
	return prefix + "_" + hex.EncodeToString(sum[:8])
}

// safeToken reports whether Token(s) is s: it is short enough, and every byte is safe.
func safeToken(s string) bool {
	if len(s) > MaxTokenLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c >= 128 || !tokenSafe[c] {
			return false
		}
	}
	return true
}

var tokenSafe = func() (t [128]bool) {
	for c := 'a'; c <= 'z'; c++ {
		t[c] = true
	}
	for c := 'A'; c <= 'Z'; c++ {
		t[c] = true
	}
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	t['_'], t['-'] = true, true
	return t
}()

// DecisionSubject is where a record is published:
// custody.decision.<allow|deny>.<agent>.<action>.<correlation_id>.
func DecisionSubject(r *Record) string {
	return DecisionPrefix + "." + r.Outcome() + "." + Token(r.AgentID()) + "." + Token(r.Action.Name) + "." + Token(r.CorrelationID)
}

// DecisionFilter builds a subject filter over decisions. Empty arguments match anything.
func DecisionFilter(outcome, agent, action, correlationID string) string {
	tok := func(s string) string {
		if s == "" {
			return "*"
		}
		return Token(s)
	}
	o := "*"
	if outcome != "" {
		o = outcome
	}
	return DecisionPrefix + "." + o + "." + tok(agent) + "." + tok(action) + "." + tok(correlationID)
}
