package decisionlog

import (
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/custodyhq/custody/pdp"
)

// hashedToken is what Token must return for a value longer than MaxTokenLen runes whose first
// MaxTokenLen-17 runes sanitise to prefix: prefix, "_", then 16 hex digits of SHA-256 of s.
func hashedToken(prefix, s string) string {
	sum := sha256.Sum256([]byte(s))
	return prefix + "_" + hex.EncodeToString(sum[:8])
}

func TestToken(t *testing.T) {
	const keep = MaxTokenLen - 17 // readable prefix kept before "_" and the hash
	safe96 := strings.Repeat("a", MaxTokenLen)
	safe97 := strings.Repeat("a", MaxTokenLen+1)
	multi96 := strings.Repeat("é", MaxTokenLen)
	multi97 := strings.Repeat("é", MaxTokenLen+1)
	spiffeLong := "spiffe://acme.example/" + strings.Repeat("agents/", 20) + "mailer"
	tests := []struct {
		name string
		in   string
		want string
	}{
		{"empty", "", "_"},
		{"safe", "send_email", "send_email"},
		{"every safe class", "AZaz09_-", "AZaz09_-"},
		{"dot", ".", "_"},
		{"dots", "a.b.c", "a_b_c"},
		{"star", "*", "_"},
		{"greater than", ">", "_"},
		{"wildcard subject", "custody.>", "custody__"},
		{"space", " ", "_"},
		{"spaces", "a b  c", "a_b__c"},
		{"tab newline CR", "\t\n\r", "___"},
		{"NUL", "a\x00b", "a_b"},
		{"DEL", "\x7f", "_"},
		{"SPIFFE ID", "spiffe://acme.example/agents/mailer", "spiffe___acme_example_agents_mailer"},
		{"email", "alice@acme.example", "alice_acme_example"},
		{"plus email", "bob+tag@acme.example", "bob_tag_acme_example"},
		{"uuid", "0190b1a2-7c3d-7e4f-8a9b-0c1d2e3f4a5b", "0190b1a2-7c3d-7e4f-8a9b-0c1d2e3f4a5b"},
		{"tilde", "a~b", "a_b"},
		{"two-byte rune is one underscore", "é", "_"},
		{"CJK", "日本語", "___"},
		{"emoji", "🤖", "_"},
		{"emoji with ZWJ", "👩‍💻", "___"},
		{"RTL override", "a\u202eb", "a_b"},
		{"invalid UTF-8 bytes", "a\xff\xfeb", "a__b"},
		{"exactly MaxTokenLen safe", safe96, safe96},
		{"exactly MaxTokenLen multibyte runes", multi96, strings.Repeat("_", MaxTokenLen)},
		{"MaxTokenLen+1 safe", safe97, hashedToken(strings.Repeat("a", keep), safe97)},
		{"MaxTokenLen+1 multibyte runes", multi97, hashedToken(strings.Repeat("_", keep), multi97)},
		{"long SPIFFE ID", spiffeLong, hashedToken(Token(spiffeLong[:keep]), spiffeLong)},
		{"very long", strings.Repeat("x", 1<<16), hashedToken(strings.Repeat("x", keep), strings.Repeat("x", 1<<16))},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := Token(tc.in)
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("Token(%.40q) mismatch (-want +got):\n%s", tc.in, diff)
			}
			if len(got) > MaxTokenLen {
				t.Errorf("Token(%.40q) is %d bytes, want at most %d", tc.in, len(got), MaxTokenLen)
			}
		})
	}
}

func TestTokenLongValuesStayDistinct(t *testing.T) {
	prefix := strings.Repeat("p", 200)
	tests := []struct {
		name string
		a, b string
		same bool
	}{
		{"same long string", prefix + "x", prefix + "x", true},
		{"long strings sharing a prefix", prefix + "x", prefix + "y", false},
		{"long strings differing only past the kept prefix", strings.Repeat("a", MaxTokenLen) + "1", strings.Repeat("a", MaxTokenLen) + "2", false},
		{"long strings differing in an unsafe character", prefix + ".", prefix + "/", false},
		{"long strings differing only in length", prefix, prefix + "p", false},
		{"MaxTokenLen and MaxTokenLen+1", strings.Repeat("a", MaxTokenLen), strings.Repeat("a", MaxTokenLen+1), false},
		// Short values are sanitised, not hashed: distinct unsafe characters collide by design.
		{"short strings differing in an unsafe character", "a.b", "a/b", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ta, tb := Token(tc.a), Token(tc.b)
			if diff := cmp.Diff(tc.same, ta == tb); diff != "" {
				t.Errorf("Token(a) == Token(b) mismatch (-want +got):\n%s\nToken(a) = %q\nToken(b) = %q", diff, ta, tb)
			}
		})
	}
}

func TestDecisionSubject(t *testing.T) {
	tests := []struct {
		name string
		rec  *Record
		want string
	}{
		{
			name: "allow",
			rec: &Record{
				Allow:         true,
				Agent:         &pdp.Agent{ID: "spiffe://acme.example/agents/mailer"},
				Action:        pdp.Action{Name: "send_email"},
				CorrelationID: "0190b1a2-7c3d-7e4f-8a9b-0c1d2e3f4a5b",
			},
			want: "custody.decision.allow.spiffe___acme_example_agents_mailer.send_email.0190b1a2-7c3d-7e4f-8a9b-0c1d2e3f4a5b",
		},
		{
			name: "deny",
			rec:  &Record{Agent: &pdp.Agent{ID: "a"}, Action: pdp.Action{Name: "t"}, CorrelationID: "c"},
			want: "custody.decision.deny.a.t.c",
		},
		{
			name: "no agent, action or correlation ID",
			rec:  &Record{},
			want: "custody.decision.deny._._._",
		},
		{
			name: "agent with empty ID",
			rec:  &Record{Allow: true, Agent: &pdp.Agent{}},
			want: "custody.decision.allow._._._",
		},
		{
			name: "wildcards and dots cannot add or widen tokens",
			rec:  &Record{Agent: &pdp.Agent{ID: "*"}, Action: pdp.Action{Name: "a.b.>"}, CorrelationID: "x y"},
			want: "custody.decision.deny._.a_b__.x_y",
		},
		{
			name: "unicode",
			rec:  &Record{Agent: &pdp.Agent{ID: "🤖"}, Action: pdp.Action{Name: "送信"}, CorrelationID: "\xff"},
			want: "custody.decision.deny._.__._",
		},
		{
			name: "long IDs are hashed",
			rec:  &Record{Agent: &pdp.Agent{ID: strings.Repeat("a", 300)}, Action: pdp.Action{Name: "t"}, CorrelationID: "c"},
			want: "custody.decision.deny." + hashedToken(strings.Repeat("a", MaxTokenLen-17), strings.Repeat("a", 300)) + ".t.c",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if diff := cmp.Diff(tc.want, DecisionSubject(tc.rec)); diff != "" {
				t.Errorf("DecisionSubject mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestDecisionFilter(t *testing.T) {
	tests := []struct {
		name                        string
		outcome, agent, action, cid string
		want                        string
	}{
		{name: "everything", want: "custody.decision.*.*.*.*"},
		{name: "allow only", outcome: "allow", want: "custody.decision.allow.*.*.*"},
		{name: "deny only", outcome: "deny", want: "custody.decision.deny.*.*.*"},
		{name: "one agent", agent: "spiffe://acme.example/agents/mailer", want: "custody.decision.*.spiffe___acme_example_agents_mailer.*.*"},
		{name: "one tool", action: "send_email", want: "custody.decision.*.*.send_email.*"},
		{name: "one correlation ID", cid: "corr-1", want: "custody.decision.*.*.*.corr-1"},
		{name: "all set", outcome: "deny", agent: "a", action: "t", cid: "c", want: "custody.decision.deny.a.t.c"},
		// A literal wildcard in an argument names the sanitised ID, never a wider filter.
		{name: "literal star", agent: "*", action: ">", want: "custody.decision.*._._.*"},
		{name: "dots", cid: "a.b", want: "custody.decision.*.*.*.a_b"},
		{name: "long agent", agent: strings.Repeat("a", 300), want: "custody.decision.*." + hashedToken(strings.Repeat("a", MaxTokenLen-17), strings.Repeat("a", 300)) + ".*.*"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := DecisionFilter(tc.outcome, tc.agent, tc.action, tc.cid)
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("DecisionFilter mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

// TestDecisionFilterMatchesSubject: a filter built from a record's own values selects that
// record's subject, token by token.
func TestDecisionFilterMatchesSubject(t *testing.T) {
	recs := []*Record{
		{Allow: true, Agent: &pdp.Agent{ID: "spiffe://x/y"}, Action: pdp.Action{Name: "send.email"}, CorrelationID: "c-1"},
		{Agent: &pdp.Agent{ID: strings.Repeat("é", 200)}, Action: pdp.Action{Name: "*"}, CorrelationID: ""},
		{Action: pdp.Action{Name: "t"}, CorrelationID: "c"},
	}
	for _, r := range recs {
		subject := DecisionSubject(r)
		filters := []string{
			DecisionFilter("", "", "", ""),
			DecisionFilter(r.Outcome(), "", "", ""),
			DecisionFilter("", r.AgentID(), "", ""),
			DecisionFilter("", "", r.Action.Name, ""),
			DecisionFilter("", "", "", r.CorrelationID),
			DecisionFilter(r.Outcome(), r.AgentID(), r.Action.Name, r.CorrelationID),
		}
		for _, f := range filters {
			if !subjectMatches(f, subject) {
				t.Errorf("filter %q does not match subject %q", f, subject)
			}
		}
	}
}

// subjectMatches is NATS subject matching for filters that use only "*".
func subjectMatches(filter, subject string) bool {
	ft, st := strings.Split(filter, "."), strings.Split(subject, ".")
	if len(ft) != len(st) {
		return false
	}
	for i := range ft {
		if ft[i] != "*" && ft[i] != st[i] {
			return false
		}
	}
	return true
}
