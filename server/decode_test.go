package server

import (
	"encoding/json"
	"errors"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// designRequest is the native request of docs/agents.md, with its placeholder correlation ID replaced
// by a valid one (the placeholder contains spaces and a semicolon, which the contract forbids).
const designRequest = `{
  "correlation_id": "corr-1",
  "agent":    {"id": "spiffe://acme.example/agents/mailer", "properties": {}},
  "user":     {"id": "alice@acme.example", "properties": {"roles": ["employee"], "scopes": ["mail.send"]}},
  "tool":     {"name": "send_email", "server": "mail", "arguments": {"to": "bob@acme.example"}},
  "resource": {"type": "mailbox", "id": "alice", "properties": {"owner": "alice@acme.example"}},
  "task":     {"id": "t-42", "parent_id": "t-41", "attempt": 1, "session_id": "s-7", "intent": "prompt text, hashed, never stored"},
  "context":  {}
}`

// minimal wraps extra top-level members around the smallest valid request.
func minimal(extra string) string {
	b := `{"agent":{"id":"a"},"tool":{"name":"t"}`
	if extra != "" {
		b += "," + extra
	}
	return b + "}"
}

// quote renders s as a JSON string literal.
func quote(s string) string {
	b, err := json.Marshal(s)
	if err != nil {
		panic(err)
	}
	return string(b)
}

func ptr[T any](v T) *T { return &v }

// stableCodes are the codes decoding may return.
var stableCodes = map[string]bool{
	CodeInvalidJSON: true, CodeInvalidRequest: true,
	CodeUnknownField: true, CodeDuplicateField: true, CodeNestingTooDeep: true, CodeNumberOutOfRange: true,
}

// errSummary is what a caller relies on in a decoding error: its stable code, and that the
// message names the field (or the place) at fault.
type errSummary struct {
	Code         string
	NamesTheSpot bool
}

func TestDecodeAuthorizeRejects(t *testing.T) {
	long := strings.Repeat("x", maxIDLen+1)
	deep := minimal(`"context":` + strings.Repeat(`{"a":`, 10001) + "1" + strings.Repeat("}", 10001))
	tests := []struct {
		name string
		body string
		code string
		// spot must appear in the message: the field at fault, or what is wrong with the body.
		spot string
	}{
		// Not JSON, or not exactly one JSON value.
		{"empty body", "", CodeInvalidJSON, "empty"},
		{"whitespace only", " \r\n\t ", CodeInvalidJSON, "empty"},
		{"truncated object", `{"agent":{"id":"a"`, CodeInvalidJSON, "unexpected end"},
		{"truncated string", `{"agent":{"id":"a`, CodeInvalidJSON, "unexpected end"},
		{"trailing comma", `{"agent":{"id":"a",},"tool":{"name":"t"}}`, CodeInvalidJSON, "byte 20"},
		{"single quotes", `{'agent':{'id':'a'}}`, CodeInvalidJSON, "byte 2"},
		{"bare word", `agent`, CodeInvalidJSON, "byte 1"},
		{"comment", `/* hi */` + minimal(""), CodeInvalidJSON, "byte 1"},
		{"NaN literal", minimal(`"context":{"n":NaN}`), CodeInvalidJSON, "malformed JSON"},
		{"leading zero number", minimal(`"context":{"n":01}`), CodeInvalidJSON, "malformed JSON"},
		{"bad escape", `{"agent":{"id":"\x41"},"tool":{"name":"t"}}`, CodeInvalidJSON, "malformed JSON"},
		{"raw NUL in string", "{\"agent\":{\"id\":\"a\x00b\"},\"tool\":{\"name\":\"t\"}}", CodeInvalidJSON, "malformed JSON"},
		{"raw newline in string", "{\"agent\":{\"id\":\"a\nb\"},\"tool\":{\"name\":\"t\"}}", CodeInvalidJSON, "malformed JSON"},
		{"byte order mark", "\xef\xbb\xbf" + minimal(""), CodeInvalidJSON, "malformed JSON"},
		{"deep nesting", deep, CodeNestingTooDeep, "nested deeper than 64 levels"},
		{"1e400", minimal(`"context":{"n":1e400}`), CodeNumberOutOfRange, "context.n: 1e400"},
		{"unknown member", minimal(`"resources":{}`), CodeUnknownField, "resources: unknown field"},
		{"case variant member", minimal(`"Agent":{}`), CodeUnknownField, `case-exact: "agent"`},
		{"duplicate member", minimal(`"tool":{"name":"u"}`), CodeDuplicateField, "tool: sent twice"},
		{"two objects", minimal("") + minimal(""), CodeInvalidJSON, "after the JSON object"},
		{"trailing garbage", minimal("") + " x", CodeInvalidJSON, "after the JSON object"},
		{"trailing brace", minimal("") + "}", CodeInvalidJSON, "after the JSON object"},
		{"trailing number", minimal("") + "\n1", CodeInvalidJSON, "after the JSON object"},

		// Valid JSON, but not an object.
		{"top-level array", `[]`, CodeInvalidRequest, "must be a JSON object, got array"},
		{"top-level array of request", "[" + minimal("") + "]", CodeInvalidRequest, "must be a JSON object, got array"},
		{"top-level string", `"agent"`, CodeInvalidRequest, "must be a JSON object, got string"},
		{"top-level number", `42`, CodeInvalidRequest, "must be a JSON object, got number"},
		{"top-level bool", `true`, CodeInvalidRequest, "must be a JSON object, got bool"},
		// null decodes to the zero request, so the first missing field is reported.
		{"top-level null", `null`, CodeInvalidRequest, "agent.id: required"},

		// Missing required fields.
		{"empty object", `{}`, CodeInvalidRequest, "agent.id: required"},
		{"missing agent", `{"tool":{"name":"t"}}`, CodeInvalidRequest, "agent.id: required"},
		{"agent null", `{"agent":null,"tool":{"name":"t"}}`, CodeInvalidRequest, "agent.id: required"},
		{"agent empty object", `{"agent":{},"tool":{"name":"t"}}`, CodeInvalidRequest, "agent.id: required"},
		{"agent.id empty", `{"agent":{"id":""},"tool":{"name":"t"}}`, CodeInvalidRequest, "agent.id: required"},
		{"agent.id null", `{"agent":{"id":null},"tool":{"name":"t"}}`, CodeInvalidRequest, "agent.id: required"},
		{"missing tool", `{"agent":{"id":"a"}}`, CodeInvalidRequest, "tool.name: required"},
		{"tool null", `{"agent":{"id":"a"},"tool":null}`, CodeInvalidRequest, "tool.name: required"},
		{"missing tool.name", `{"agent":{"id":"a"},"tool":{"server":"s"}}`, CodeInvalidRequest, "tool.name: required"},
		{"tool.name null", `{"agent":{"id":"a"},"tool":{"name":null}}`, CodeInvalidRequest, "tool.name: required"},
		{"user without id", minimal(`"user":{"properties":{}}`), CodeInvalidRequest, "user.id: required"},
		{"resource without type", minimal(`"resource":{"id":"r"}`), CodeInvalidRequest, "resource.type: required"},
		{"resource without id", minimal(`"resource":{"type":"mailbox"}`), CodeInvalidRequest, "resource.id: required"},

		// Wrong types.
		{"agent.id number", `{"agent":{"id":42},"tool":{"name":"t"}}`, CodeInvalidRequest, "agent.id: want string, got number"},
		{"agent.id bool", `{"agent":{"id":true},"tool":{"name":"t"}}`, CodeInvalidRequest, "agent.id: want string, got bool"},
		{"agent.id object", `{"agent":{"id":{}},"tool":{"name":"t"}}`, CodeInvalidRequest, "agent.id: want string, got object"},
		{"agent.id array", `{"agent":{"id":["a"]},"tool":{"name":"t"}}`, CodeInvalidRequest, "agent.id: want string, got array"},
		{"agent string", `{"agent":"a","tool":{"name":"t"}}`, CodeInvalidRequest, "agent: want object, got string"},
		{"agent array", `{"agent":[{"id":"a"}],"tool":{"name":"t"}}`, CodeInvalidRequest, "agent: want object, got array"},
		{"agent.properties string", `{"agent":{"id":"a","properties":"p"},"tool":{"name":"t"}}`, CodeInvalidRequest, "agent.properties: want object, got string"},
		{"tool string", `{"agent":{"id":"a"},"tool":"send_email"}`, CodeInvalidRequest, "tool: want object, got string"},
		{"tool.name number", `{"agent":{"id":"a"},"tool":{"name":1}}`, CodeInvalidRequest, "tool.name: want string, got number"},
		{"tool.server number", `{"agent":{"id":"a"},"tool":{"name":"t","server":1}}`, CodeInvalidRequest, "tool.server: want string, got number"},
		{"tool.arguments array", `{"agent":{"id":"a"},"tool":{"name":"t","arguments":[1]}}`, CodeInvalidRequest, "tool.arguments: want object, got array"},
		{"user.properties array", minimal(`"user":{"id":"u","properties":["admin"]}`), CodeInvalidRequest, "user.properties: want object, got array"},
		{"user.id number", minimal(`"user":{"id":7}`), CodeInvalidRequest, "user.id: want string, got number"},
		{"resource string", minimal(`"resource":"r"`), CodeInvalidRequest, "resource: want object, got string"},
		{"task.attempt string", minimal(`"task":{"attempt":"1"}`), CodeInvalidRequest, "task.attempt: want integer, got string"},
		{"task.attempt float", minimal(`"task":{"attempt":1.5}`), CodeInvalidRequest, "task.attempt: want integer, got number 1.5"},
		{"task.attempt float with zero fraction", minimal(`"task":{"attempt":1.0}`), CodeInvalidRequest, "task.attempt"},
		{"task.attempt exponent", minimal(`"task":{"attempt":1e3}`), CodeInvalidRequest, "task.attempt"},
		{"task.attempt over int64", minimal(`"task":{"attempt":9223372036854775808}`), CodeInvalidRequest, "task.attempt"},
		{"task.attempt negative", minimal(`"task":{"attempt":-1}`), CodeInvalidRequest, "task.attempt: must not be negative"},
		{"task.attempt min int64", minimal(`"task":{"attempt":-9223372036854775808}`), CodeInvalidRequest, "task.attempt: must not be negative"},
		{"task string", minimal(`"task":"t-1"`), CodeInvalidRequest, "task: want object, got string"},
		{"task.intent number", minimal(`"task":{"intent":1}`), CodeInvalidRequest, "task.intent: want string, got number"},
		{"context array", minimal(`"context":[]`), CodeInvalidRequest, "context: want object, got array"},
		{"correlation_id number", minimal(`"correlation_id":1`), CodeInvalidRequest, "correlation_id: want string, got number"},
		{"correlation_id object", minimal(`"correlation_id":{}`), CodeInvalidRequest, "correlation_id: want string, got object"},

		// Identifiers over 1024 bytes.
		{"agent.id too long", `{"agent":{"id":"` + long + `"},"tool":{"name":"t"}}`, CodeInvalidRequest, "agent.id: longer than 1024 bytes"},
		{"agent.id too long in bytes not runes", `{"agent":{"id":"` + strings.Repeat("é", 513) + `"},"tool":{"name":"t"}}`, CodeInvalidRequest, "agent.id: longer than 1024 bytes"},
		{"tool.name too long", `{"agent":{"id":"a"},"tool":{"name":"` + long + `"}}`, CodeInvalidRequest, "tool.name: longer than 1024 bytes"},
		{"tool.server too long", `{"agent":{"id":"a"},"tool":{"name":"t","server":"` + long + `"}}`, CodeInvalidRequest, "tool.server: longer than 1024 bytes"},
		{"user.id too long", minimal(`"user":{"id":"` + long + `"}`), CodeInvalidRequest, "user.id: longer than 1024 bytes"},
		{"user.type too long", minimal(`"user":{"id":"u","type":"` + long + `"}`), CodeInvalidRequest, "user.type: longer than 1024 bytes"},
		{"resource.type too long", minimal(`"resource":{"type":"` + long + `","id":"r"}`), CodeInvalidRequest, "resource.type: longer than 1024 bytes"},
		{"resource.id too long", minimal(`"resource":{"type":"m","id":"` + long + `"}`), CodeInvalidRequest, "resource.id: longer than 1024 bytes"},
		{"task.id too long", minimal(`"task":{"id":"` + long + `"}`), CodeInvalidRequest, "task.id: longer than 1024 bytes"},
		{"task.parent_id too long", minimal(`"task":{"parent_id":"` + long + `"}`), CodeInvalidRequest, "task.parent_id: longer than 1024 bytes"},
		{"task.session_id too long", minimal(`"task":{"session_id":"` + long + `"}`), CodeInvalidRequest, "task.session_id: longer than 1024 bytes"},
		// An invalid byte decodes to U+FFFD (3 bytes), so 1024 raw bytes can exceed the limit.
		{"agent.id invalid UTF-8", "{\"agent\":{\"id\":\"" + strings.Repeat("\xff", 342) + "\"},\"tool\":{\"name\":\"t\"}}", CodeInvalidJSON, "not valid UTF-8"},

		// Correlation IDs: 1 to 256 visible ASCII characters.
		{"correlation_id empty", minimal(`"correlation_id":""`), CodeInvalidRequest, "correlation_id: want 1 to 256 visible ASCII characters"},
		{"correlation_id space", minimal(`"correlation_id":"a b"`), CodeInvalidRequest, "correlation_id"},
		{"correlation_id leading space", minimal(`"correlation_id":" a"`), CodeInvalidRequest, "correlation_id"},
		{"correlation_id tab", minimal(`"correlation_id":"a\tb"`), CodeInvalidRequest, "correlation_id"},
		{"correlation_id newline", minimal(`"correlation_id":"a\nb"`), CodeInvalidRequest, "correlation_id"},
		{"correlation_id CRLF header injection", minimal(`"correlation_id":"a\r\nX-Evil: 1"`), CodeInvalidRequest, "correlation_id"},
		{"correlation_id NUL", minimal(`"correlation_id":"a\u0000"`), CodeInvalidRequest, "correlation_id"},
		{"correlation_id DEL", minimal(`"correlation_id":"a\u007f"`), CodeInvalidRequest, "correlation_id"},
		{"correlation_id non-ASCII", minimal(`"correlation_id":"café"`), CodeInvalidRequest, "correlation_id"},
		{"correlation_id emoji", minimal(`"correlation_id":"😀"`), CodeInvalidRequest, "correlation_id"},
		{"correlation_id invalid UTF-8", minimal("\"correlation_id\":\"a\xffb\""), CodeInvalidJSON, "not valid UTF-8"},
		{"correlation_id 257 chars", minimal(`"correlation_id":"` + strings.Repeat("c", 257) + `"`), CodeInvalidRequest, "correlation_id"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := decodeAuthorize([]byte(tc.body))
			if got != nil {
				t.Errorf("decodeAuthorize returned a request with an error: %+v", got)
			}
			if err == nil {
				t.Fatalf("decodeAuthorize(%.80q) succeeded, want error %s", tc.body, tc.code)
			}
			want := errSummary{Code: tc.code, NamesTheSpot: true}
			gotSum := errSummary{Code: err.Code, NamesTheSpot: strings.Contains(err.Message, tc.spot)}
			if diff := cmp.Diff(want, gotSum); diff != "" {
				t.Errorf("decodeAuthorize error mismatch (-want +got):\n%s\nmessage: %q, want it to contain %q", diff, err.Message, tc.spot)
			}
		})
	}
}

func TestDecodeAuthorizeAccepts(t *testing.T) {
	id1024 := strings.Repeat("i", maxIDLen)
	multibyte1024 := strings.Repeat("é", maxIDLen/2)
	corr256 := strings.Repeat("c", maxCorrelationIDLen)
	visibleASCII := func() string {
		var b strings.Builder
		for c := byte(0x21); c <= 0x7e; c++ {
			b.WriteByte(c)
		}
		return b.String()
	}()
	// cmp.Diff is exponential in slice nesting, so this case stays shallow; see
	// TestDecodeAuthorizeDeepNesting for depth.
	var nested8 any = []any{}
	for range 7 {
		nested8 = []any{nested8}
	}
	ids := func(agent, tool string) *authorizeRequest {
		return &authorizeRequest{Agent: &agentBody{ID: agent}, Tool: &toolBody{Name: tool}}
	}
	tests := []struct {
		name string
		body string
		want *authorizeRequest
	}{
		{
			name: "design request",
			body: designRequest,
			want: &authorizeRequest{
				CorrelationID: ptr("corr-1"),
				Agent:         &agentBody{ID: "spiffe://acme.example/agents/mailer", Properties: map[string]any{}},
				User: &entityBody{ID: "alice@acme.example", Properties: map[string]any{
					"roles":  []any{"employee"},
					"scopes": []any{"mail.send"},
				}},
				Tool:     &toolBody{Name: "send_email", Server: "mail", Arguments: map[string]any{"to": "bob@acme.example"}},
				Resource: &entityBody{Type: "mailbox", ID: "alice", Properties: map[string]any{"owner": "alice@acme.example"}},
				Task:     &taskBody{ID: "t-42", ParentID: "t-41", Attempt: 1, SessionID: "s-7", Intent: "prompt text, hashed, never stored"},
				Context:  map[string]any{},
			},
		},
		{name: "minimal", body: minimal(""), want: ids("a", "t")},
		{name: "surrounding whitespace", body: "\n\t " + minimal("") + " \r\n", want: ids("a", "t")},
		{
			name: "optional members null",
			body: minimal(`"correlation_id":null,"user":null,"resource":null,"task":null,"context":null`),
			want: ids("a", "t"),
		},
		{
			name: "optional strings null",
			body: `{"agent":{"id":"a","type":null,"properties":null},"tool":{"name":"t","server":null,"arguments":null},"task":{"id":null,"attempt":null,"intent":null}}`,
			want: &authorizeRequest{Agent: &agentBody{ID: "a"}, Tool: &toolBody{Name: "t"}, Task: &taskBody{}},
		},
		{
			name: "empty optional objects",
			body: minimal(`"task":{},"context":{}`),
			want: &authorizeRequest{Agent: &agentBody{ID: "a"}, Tool: &toolBody{Name: "t"}, Task: &taskBody{}, Context: map[string]any{}},
		},
		{
			name: "numbers kept exact",
			body: minimal(`"context":{"big":12345678901234567890123,"tenth":0.1,"tiny":1e-400,"neg":-0,"list":[1.50,2E-3]}`),
			want: &authorizeRequest{Agent: &agentBody{ID: "a"}, Tool: &toolBody{Name: "t"}, Context: map[string]any{
				"big":   json.Number("12345678901234567890123"),
				"tenth": json.Number("0.1"),
				"tiny":  json.Number("1e-400"), // rounds to 0: finite
				"neg":   json.Number("-0"),
				"list":  []any{json.Number("1.50"), json.Number("2E-3")},
			}},
		},
		{
			name: "numbers in tool arguments",
			body: `{"agent":{"id":"a"},"tool":{"name":"t","arguments":{"amount":100.00,"id":9007199254740993}}}`,
			want: &authorizeRequest{Agent: &agentBody{ID: "a"}, Tool: &toolBody{Name: "t", Arguments: map[string]any{
				"amount": json.Number("100.00"),
				"id":     json.Number("9007199254740993"),
			}}},
		},
		{
			name: "task.attempt zero and max",
			body: minimal(`"task":{"attempt":9223372036854775807}`),
			want: &authorizeRequest{Agent: &agentBody{ID: "a"}, Tool: &toolBody{Name: "t"}, Task: &taskBody{Attempt: math.MaxInt64}},
		},
		{name: "ids of exactly 1024 bytes", body: `{"agent":{"id":"` + id1024 + `"},"tool":{"name":"` + id1024 + `"}}`, want: ids(id1024, id1024)},
		{name: "multibyte id of exactly 1024 bytes", body: `{"agent":{"id":"` + multibyte1024 + `"},"tool":{"name":"t"}}`, want: ids(multibyte1024, "t")},
		{name: "lone surrogate escape becomes U+FFFD", body: `{"agent":{"id":"a\ud800"},"tool":{"name":"t"}}`, want: ids("a\uFFFD", "t")},
		{name: "escaped NUL in id", body: `{"agent":{"id":"a\u0000b"},"tool":{"name":"t\u0000"}}`, want: ids("a\x00b", "t\x00")},
		{name: "escaped control characters in id", body: `{"agent":{"id":"a\nb\tc\r"},"tool":{"name":"t"}}`, want: ids("a\nb\tc\r", "t")},
		{name: "RTL override in id", body: `{"agent":{"id":"agent\u202egnp.exe"},"tool":{"name":"t"}}`, want: ids("agent\u202egnp.exe", "t")},
		{name: "emoji in ids", body: `{"agent":{"id":"🤖"},"tool":{"name":"send_📧"}}`, want: ids("🤖", "send_📧")},
		{name: "escaped surrogate pair", body: `{"agent":{"id":"\ud83e\udd16"},"tool":{"name":"t"}}`, want: ids("🤖", "t")},
		{name: "NATS wildcards and dots in ids", body: `{"agent":{"id":"custody.>"},"tool":{"name":"*"}}`, want: ids("custody.>", "*")},
		{name: "whitespace-only id", body: `{"agent":{"id":" "},"tool":{"name":"\t"}}`, want: ids(" ", "\t")},
		{
			name: "unicode in optional ids",
			body: minimal(`"user":{"id":"アリス@例え.jp","type":"ユーザー"},"resource":{"type":"ü","id":"\u202e"},"task":{"id":"🧵","parent_id":"\u0000","session_id":"ß"}`),
			want: &authorizeRequest{
				Agent:    &agentBody{ID: "a"},
				Tool:     &toolBody{Name: "t"},
				User:     &entityBody{ID: "アリス@例え.jp", Type: "ユーザー"},
				Resource: &entityBody{Type: "ü", ID: "\u202e"},
				Task:     &taskBody{ID: "🧵", ParentID: "\x00", SessionID: "ß"},
			},
		},
		{
			name: "long intent is not an id",
			body: minimal(`"task":{"intent":"` + strings.Repeat("p", 10*maxIDLen) + `"}`),
			want: &authorizeRequest{Agent: &agentBody{ID: "a"}, Tool: &toolBody{Name: "t"}, Task: &taskBody{Intent: strings.Repeat("p", 10*maxIDLen)}},
		},
		{
			name: "correlation_id of 256 chars",
			body: minimal(`"correlation_id":"` + corr256 + `"`),
			want: &authorizeRequest{CorrelationID: ptr(corr256), Agent: &agentBody{ID: "a"}, Tool: &toolBody{Name: "t"}},
		},
		{
			name: "correlation_id of every visible ASCII character",
			body: minimal(`"correlation_id":` + quote(visibleASCII)),
			want: &authorizeRequest{CorrelationID: ptr(visibleASCII), Agent: &agentBody{ID: "a"}, Tool: &toolBody{Name: "t"}},
		},
		{
			name: "correlation_id as UUID",
			body: minimal(`"correlation_id":"0190b1a2-7c3d-7e4f-8a9b-0c1d2e3f4a5b"`),
			want: &authorizeRequest{CorrelationID: ptr("0190b1a2-7c3d-7e4f-8a9b-0c1d2e3f4a5b"), Agent: &agentBody{ID: "a"}, Tool: &toolBody{Name: "t"}},
		},
		{
			name: "nested arrays",
			body: minimal(`"context":{"n":` + strings.Repeat(`[`, 8) + strings.Repeat(`]`, 8) + `}`),
			want: &authorizeRequest{Agent: &agentBody{ID: "a"}, Tool: &toolBody{Name: "t"}, Context: map[string]any{"n": nested8}},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := decodeAuthorize([]byte(tc.body))
			if err != nil {
				t.Fatalf("decodeAuthorize: %v", err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("decodeAuthorize mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

// TestDecodeAuthorizeDeepNesting: a body nests at most MaxNestingDepth (64) levels, the request
// object being the first; encoding/json alone allowed 10000.
func TestDecodeAuthorizeDeepNesting(t *testing.T) {
	tests := []struct {
		name  string
		depth int
		code  string // "" when accepted
	}{
		{"63 levels in context", 63, ""},
		{"64 levels in context", 64, CodeNestingTooDeep},
		{"9999 levels in context", 9999, CodeNestingTooDeep},
		{"20000 levels in context", 20000, CodeNestingTooDeep},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			body := minimal(`"context":` + strings.Repeat(`{"a":`, tc.depth) + "1" + strings.Repeat("}", tc.depth))
			_, err := decodeAuthorize([]byte(body))
			got := ""
			if err != nil {
				got = err.Code
			}
			if diff := cmp.Diff(tc.code, got); diff != "" {
				t.Errorf("decodeAuthorize error code mismatch (-want +got):\n%s\nerror: %v", diff, err)
			}
		})
	}
}

func TestDecodeJSON(t *testing.T) {
	type result struct {
		Value any
		Err   *errSummary
	}
	tests := []struct {
		name string
		body string
		// spot must appear in the error message when an error is expected.
		spot string
		want result
	}{
		{name: "object", body: `{"a":1}`, want: result{Value: map[string]any{"a": json.Number("1")}}},
		{name: "exact big number", body: `{"n":123456789012345678901234567890}`, want: result{Value: map[string]any{"n": json.Number("123456789012345678901234567890")}}},
		{name: "float kept as text", body: `{"n":0.30000000000000004}`, want: result{Value: map[string]any{"n": json.Number("0.30000000000000004")}}},
		{name: "nested", body: `{"a":{"b":[true,null,"s"]}}`, want: result{Value: map[string]any{"a": map[string]any{"b": []any{true, nil, "s"}}}}},
		{name: "trailing whitespace", body: "{}\n\n", want: result{Value: map[string]any{}}},
		{name: "empty", body: "", spot: "empty", want: result{Err: &errSummary{CodeInvalidJSON, true}}},
		{name: "blank", body: "\n", spot: "empty", want: result{Err: &errSummary{CodeInvalidJSON, true}}},
		{name: "syntax error names the byte", body: `{"a" 1}`, spot: "byte 6", want: result{Err: &errSummary{CodeInvalidJSON, true}}},
		{name: "truncated", body: `{"a":`, spot: "unexpected end of input", want: result{Err: &errSummary{CodeInvalidJSON, true}}},
		{name: "trailing data", body: `{}{}`, spot: "after the JSON object", want: result{Err: &errSummary{CodeInvalidJSON, true}}},
		{name: "trailing garbage", body: `{} ]`, spot: "after the JSON object", want: result{Err: &errSummary{CodeInvalidJSON, true}}},
		{name: "array into object", body: `[1]`, spot: "must be a JSON object, got array", want: result{Err: &errSummary{CodeInvalidRequest, true}}},
		{name: "wrong type names the field", body: `{"a":"x"}`, spot: "a: want integer, got string", want: result{Err: &errSummary{CodeInvalidRequest, true}}},
		{name: "nested wrong type names the path", body: `{"a":1,"b":{"c":[]}}`, spot: "b.c: want string, got array", want: result{Err: &errSummary{CodeInvalidRequest, true}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var got result
			var err *apiError
			if strings.Contains(tc.name, "wrong type") {
				var v struct {
					A int64 `json:"a"`
					B struct {
						C string `json:"c"`
					} `json:"b"`
				}
				err = decodeJSON([]byte(tc.body), &v)
			} else {
				var v map[string]any
				err = decodeJSON([]byte(tc.body), &v)
				if err == nil {
					got.Value = v
				}
			}
			if err != nil {
				got.Err = &errSummary{Code: err.Code, NamesTheSpot: strings.Contains(err.Message, tc.spot)}
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				msg := ""
				if err != nil {
					msg = err.Message
				}
				t.Errorf("decodeJSON mismatch (-want +got):\n%s\nmessage: %q, want it to contain %q", diff, msg, tc.spot)
			}
		})
	}
}

func TestCheckContentType(t *testing.T) {
	tests := []struct {
		name        string
		contentType string
		// want is nil when the type is accepted.
		want *apiError
	}{
		{name: "json", contentType: "application/json"},
		{name: "json with charset", contentType: "application/json; charset=utf-8"},
		{name: "upper case", contentType: "Application/JSON"},
		{name: "spaces around parameters", contentType: "application/json ;  charset=UTF-8"},
		{name: "problem+json", contentType: "application/problem+json"},
		{name: "vendor +json", contentType: "application/vnd.custody.v1+json"},
		{name: "missing", contentType: "", want: errorf(CodeUnsupportedMediaType, `Content-Type must be application/json, got "none"`)},
		{name: "text/plain", contentType: "text/plain", want: errorf(CodeUnsupportedMediaType, `Content-Type must be application/json, got "text/plain"`)},
		{name: "text/json", contentType: "text/json", want: errorf(CodeUnsupportedMediaType, `Content-Type must be application/json, got "text/json"`)},
		{name: "form", contentType: "application/x-www-form-urlencoded", want: errorf(CodeUnsupportedMediaType, `Content-Type must be application/json, got "application/x-www-form-urlencoded"`)},
		{name: "jsonp lookalike", contentType: "application/jsonp", want: errorf(CodeUnsupportedMediaType, `Content-Type must be application/json, got "application/jsonp"`)},
		{name: "json-seq", contentType: "application/json-seq", want: errorf(CodeUnsupportedMediaType, `Content-Type must be application/json, got "application/json-seq"`)},
		{name: "+json outside application", contentType: "text/foo+json", want: errorf(CodeUnsupportedMediaType, `Content-Type must be application/json, got "text/foo+json"`)},
		{name: "bare json", contentType: "json", want: errorf(CodeUnsupportedMediaType, `Content-Type must be application/json, got "json"`)},
		{name: "malformed parameter", contentType: "application/json; charset", want: errorf(CodeUnsupportedMediaType, `Content-Type must be application/json, got "application/json; charset"`)},
		{name: "wildcard", contentType: "*/*", want: errorf(CodeUnsupportedMediaType, `Content-Type must be application/json, got "*/*"`)},
		{name: "control characters quoted", contentType: "a\x01b", want: errorf(CodeUnsupportedMediaType, `Content-Type must be application/json, got "a\x01b"`)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodPost, "/v1/authorize", strings.NewReader("{}"))
			if tc.contentType != "" {
				r.Header.Set("Content-Type", tc.contentType)
			}
			got := checkContentType(r)
			if diff := cmp.Diff(tc.want, got, cmp.AllowUnexported(apiError{})); diff != "" {
				t.Errorf("checkContentType(%q) mismatch (-want +got):\n%s", tc.contentType, diff)
			}
		})
	}
}

// errReader returns some bytes, then an error that is not about size.
type errReader struct{ sent bool }

func (e *errReader) Read(p []byte) (int, error) {
	if !e.sent {
		e.sent = true
		return copy(p, "{"), nil
	}
	return 0, errors.New("connection reset")
}

func TestReadBody(t *testing.T) {
	type result struct {
		Body string
		Err  *apiError
	}
	tooLarge := func(limit int64) *apiError {
		return errorf(CodeBodyTooLarge, "request body exceeds "+strconv.FormatInt(limit, 10)+" bytes")
	}
	tests := []struct {
		name  string
		limit int64
		// build makes the request; contentLength < -1 leaves httptest's value.
		build func() *http.Request
		want  result
	}{
		{
			name: "small body", limit: 10,
			build: func() *http.Request { return httptest.NewRequest(http.MethodPost, "/", strings.NewReader("{}")) },
			want:  result{Body: "{}"},
		},
		{
			name: "empty body", limit: 10,
			build: func() *http.Request { return httptest.NewRequest(http.MethodPost, "/", http.NoBody) },
			want:  result{Body: ""},
		},
		{
			name: "exactly the limit", limit: 10,
			build: func() *http.Request {
				return httptest.NewRequest(http.MethodPost, "/", strings.NewReader("0123456789"))
			},
			want: result{Body: "0123456789"},
		},
		{
			name: "one byte over", limit: 10,
			build: func() *http.Request {
				return httptest.NewRequest(http.MethodPost, "/", strings.NewReader("0123456789A"))
			},
			want: result{Err: tooLarge(10)},
		},
		{
			name: "declared length over the limit", limit: 10,
			build: func() *http.Request {
				r := httptest.NewRequest(http.MethodPost, "/", strings.NewReader("{}"))
				r.ContentLength = 11
				return r
			},
			want: result{Err: tooLarge(10)},
		},
		{
			name: "unknown length over the limit", limit: 10,
			build: func() *http.Request {
				r := httptest.NewRequest(http.MethodPost, "/", io.NopCloser(strings.NewReader(strings.Repeat("x", 100))))
				r.ContentLength = -1
				return r
			},
			want: result{Err: tooLarge(10)},
		},
		{
			name: "declared length under the truth", limit: 10,
			build: func() *http.Request {
				r := httptest.NewRequest(http.MethodPost, "/", strings.NewReader(strings.Repeat("x", 100)))
				r.ContentLength = 2
				return r
			},
			want: result{Err: tooLarge(10)},
		},
		{
			name: "read error", limit: 10,
			build: func() *http.Request { return httptest.NewRequest(http.MethodPost, "/", &errReader{}) },
			want:  result{Err: errorf(CodeInvalidRequest, "could not read request body: connection reset")},
		},
		{
			name: "MaxBytesReader below the limit", limit: 10,
			build: func() *http.Request {
				r := httptest.NewRequest(http.MethodPost, "/", strings.NewReader("0123456789"))
				r.Body = http.MaxBytesReader(httptest.NewRecorder(), r.Body, 5)
				return r
			},
			want: result{Err: tooLarge(10)},
		},
		{
			name: "zero limit, empty body", limit: 0,
			build: func() *http.Request { return httptest.NewRequest(http.MethodPost, "/", http.NoBody) },
			want:  result{Body: ""},
		},
		{
			name: "zero limit, one byte", limit: 0,
			build: func() *http.Request { return httptest.NewRequest(http.MethodPost, "/", strings.NewReader("x")) },
			want:  result{Err: tooLarge(0)},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			body, err := readBody(tc.build(), tc.limit)
			got := result{Body: string(body), Err: err}
			if diff := cmp.Diff(tc.want, got, cmp.AllowUnexported(apiError{})); diff != "" {
				t.Errorf("readBody mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

// TestReadBodyMaxInt64Limit: readBody computes limit+1, which once overflowed for math.MaxInt64 (a
// value --max-body-bytes accepts), so that io.LimitReader read nothing and every body was empty.
func TestReadBodyMaxInt64Limit(t *testing.T) {
	r := httptest.NewRequest(http.MethodPost, "/", strings.NewReader(minimal("")))
	body, err := readBody(r, math.MaxInt64)
	if err != nil {
		t.Fatalf("readBody: %v", err)
	}
	if diff := cmp.Diff(minimal(""), string(body)); diff != "" {
		t.Errorf("readBody mismatch (-want +got):\n%s", diff)
	}
}

func TestParseTraceparent(t *testing.T) {
	const (
		trace = "4bf92f3577b34da6a3ce929d0e0e4736"
		span  = "00f067aa0ba902b7"
	)
	valid := traceContext{TraceID: trace, SpanID: span}
	type result struct {
		TC traceContext
		OK bool
	}
	tests := []struct {
		name string
		h    string
		want result
	}{
		{"valid sampled", "00-" + trace + "-" + span + "-01", result{valid, true}},
		{"valid not sampled", "00-" + trace + "-" + span + "-00", result{valid, true}},
		{"valid other flags", "00-" + trace + "-" + span + "-ff", result{valid, true}},
		{"surrounding whitespace", " \t00-" + trace + "-" + span + "-01 ", result{valid, true}},
		{"trace id with one non-zero digit", "00-00000000000000000000000000000001-" + span + "-01", result{traceContext{"00000000000000000000000000000001", span}, true}},
		{"future version", "01-" + trace + "-" + span + "-01", result{valid, true}},
		{"future version with extra field", "01-" + trace + "-" + span + "-01-what-the-future-holds", result{valid, true}},
		{"future version with empty extra field", "cc-" + trace + "-" + span + "-01-", result{valid, true}},
		{"future version fe", "fe-" + trace + "-" + span + "-01-x", result{valid, true}},

		{"empty", "", result{}},
		{"garbage", "not a traceparent", result{}},
		{"dashes only", "---", result{}},
		{"uppercase trace id", "00-" + strings.ToUpper(trace) + "-" + span + "-01", result{}},
		{"uppercase span id", "00-" + trace + "-" + strings.ToUpper(span) + "-01", result{}},
		{"uppercase flags", "00-" + trace + "-" + span + "-0A", result{}},
		{"uppercase version", "0A-" + trace + "-" + span + "-01", result{}},
		{"all-zero trace id", "00-00000000000000000000000000000000-" + span + "-01", result{}},
		{"all-zero span id", "00-" + trace + "-0000000000000000-01", result{}},
		{"version ff", "ff-" + trace + "-" + span + "-01", result{}},
		{"version not hex", "0g-" + trace + "-" + span + "-01", result{}},
		{"version one char", "0-" + trace + "-" + span + "-01", result{}},
		{"version three chars", "000-" + trace + "-" + span + "-01", result{}},
		{"trace id 31 chars", "00-" + trace[:31] + "-" + span + "-01", result{}},
		{"trace id 33 chars", "00-" + trace + "a-" + span + "-01", result{}},
		{"span id 15 chars", "00-" + trace + "-" + span[:15] + "-01", result{}},
		{"span id 17 chars", "00-" + trace + "-" + span + "a-01", result{}},
		{"flags one char", "00-" + trace + "-" + span + "-1", result{}},
		{"flags three chars", "00-" + trace + "-" + span + "-001", result{}},
		{"flags not hex", "00-" + trace + "-" + span + "-0x", result{}},
		{"trace id not hex", "00-" + trace[:31] + "g-" + span + "-01", result{}},
		{"missing flags", "00-" + trace + "-" + span, result{}},
		{"version 00 with extra field", "00-" + trace + "-" + span + "-01-extra", result{}},
		{"version 00 with trailing dash", "00-" + trace + "-" + span + "-01-", result{}},
		{"future version, flags not followed by a dash", "01-" + trace + "-" + span + "-01x", result{}},
		{"future version, all-zero trace id", "01-00000000000000000000000000000000-" + span + "-01", result{}},
		{"underscores", "00_" + trace + "_" + span + "_01", result{}},
		{"inner space", "00- " + trace[1:] + "-" + span + "-01", result{}},
		{"non-ASCII", "00-" + trace[:30] + "é-" + span + "-01", result{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc2, ok := parseTraceparent(tc.h)
			if diff := cmp.Diff(tc.want, result{tc2, ok}); diff != "" {
				t.Errorf("parseTraceparent(%q) mismatch (-want +got):\n%s", tc.h, diff)
			}
		})
	}
}

func TestValidHeaderID(t *testing.T) {
	tests := []struct {
		name string
		v    string
		want bool
	}{
		{"empty", "", false},
		{"one char", "a", true},
		{"uuid", "0190b1a2-7c3d-7e4f-8a9b-0c1d2e3f4a5b", true},
		{"trace id", "4bf92f3577b34da6a3ce929d0e0e4736", true},
		{"punctuation", "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~", true},
		{"256 chars", strings.Repeat("x", 256), true},
		{"257 chars", strings.Repeat("x", 257), false},
		{"space", "a b", false},
		{"only space", " ", false},
		{"tab", "a\tb", false},
		{"newline", "a\n", false},
		{"CR", "a\r", false},
		{"NUL", "a\x00", false},
		{"DEL", "a\x7f", false},
		{"non-ASCII", "é", false},
		{"RTL override", "a\u202eb", false},
		{"emoji", "😀", false},
		{"invalid UTF-8", "\xff", false},
		{"high byte at the end of 256", strings.Repeat("x", 255) + "\x80", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if diff := cmp.Diff(tc.want, validHeaderID(tc.v)); diff != "" {
				t.Errorf("validHeaderID(%q) mismatch (-want +got):\n%s", tc.v, diff)
			}
		})
	}
}
