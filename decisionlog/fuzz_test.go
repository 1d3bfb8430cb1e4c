package decisionlog

import (
	"regexp"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/custodyhq/custody/pdp"
)

var tokenRE = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)

// FuzzToken: Token always yields a non-empty, subject-safe token of at most MaxTokenLen bytes,
// deterministically, and leaves short safe values alone. Seeds are in testdata/fuzz/FuzzToken.
func FuzzToken(f *testing.F) {
	f.Fuzz(func(t *testing.T, s string) {
		got := Token(s)
		if got == "" {
			t.Fatalf("Token(%q) is empty", s)
		}
		if !tokenRE.MatchString(got) {
			t.Fatalf("Token(%q) = %q, not subject-safe", s, got)
		}
		if len(got) > MaxTokenLen {
			t.Fatalf("Token(%q) is %d bytes, want at most %d", s, len(got), MaxTokenLen)
		}
		if s != "" && got != sanitizeToken(s) {
			t.Fatalf("Token(%q) = %q, sanitizeToken %q", s, got, sanitizeToken(s))
		}
		if again := Token(s); again != got {
			t.Fatalf("Token(%q) not deterministic: %q then %q", s, got, again)
		}
		if s != "" && tokenRE.MatchString(s) && len(s) <= MaxTokenLen && got != s {
			t.Fatalf("Token(%q) = %q, want the safe value unchanged", s, got)
		}
		// Values of at most MaxTokenLen runes are sanitised one rune for one byte; longer ones
		// are exactly MaxTokenLen bytes, ending in "_" and 16 hex digits.
		if n := utf8.RuneCountInString(s); s != "" && n <= MaxTokenLen {
			if len(got) != n {
				t.Fatalf("Token(%q) = %q, want %d bytes, one per rune", s, got, n)
			}
		} else if n > MaxTokenLen {
			if len(got) != MaxTokenLen || got[MaxTokenLen-17] != '_' || !isLowerHexString(got[MaxTokenLen-16:]) {
				t.Fatalf("Token(%q) = %q, want a %d-byte prefix_hash token", s, got, MaxTokenLen)
			}
		}
	})
}

func isLowerHexString(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// FuzzDecisionSubject: whatever IDs a record carries, its subject is custody.decision. followed
// by exactly four safe tokens, the first being the outcome. Seeds are in
// testdata/fuzz/FuzzDecisionSubject.
func FuzzDecisionSubject(f *testing.F) {
	f.Fuzz(func(t *testing.T, agent, action, correlationID string, allow, hasAgent bool) {
		r := &Record{Allow: allow, Action: pdp.Action{Name: action}, CorrelationID: correlationID}
		if hasAgent {
			r.Agent = &pdp.Agent{ID: agent}
		}
		subject := DecisionSubject(r)
		if !strings.HasPrefix(subject, "custody.decision.") {
			t.Fatalf("subject %q does not start with custody.decision.", subject)
		}
		tokens := strings.Split(subject, ".")
		if len(tokens) != 6 {
			t.Fatalf("subject %q has %d tokens, want 6", subject, len(tokens))
		}
		want := "deny"
		if allow {
			want = "allow"
		}
		if tokens[2] != want {
			t.Fatalf("subject %q has outcome token %q, want %q", subject, tokens[2], want)
		}
		for i, tok := range tokens[3:] {
			if !tokenRE.MatchString(tok) || len(tok) > MaxTokenLen {
				t.Fatalf("subject %q: token %d (%q) is not subject-safe", subject, i+3, tok)
			}
		}
		wantAgent := "_"
		if hasAgent {
			wantAgent = Token(agent)
		}
		if tokens[3] != wantAgent || tokens[4] != Token(action) || tokens[5] != Token(correlationID) {
			t.Fatalf("subject %q does not carry the record's tokens", subject)
		}
		// A filter built from the same values selects the subject.
		filter := DecisionFilter(r.Outcome(), r.AgentID(), action, correlationID)
		if !subjectMatches(filter, subject) {
			t.Fatalf("filter %q does not match subject %q", filter, subject)
		}
	})
}
