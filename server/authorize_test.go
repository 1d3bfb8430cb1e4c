package server_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/custodyhq/custody/bundles"
	"github.com/custodyhq/custody/decisionlog"
	custodyjs "github.com/custodyhq/custody/decisionlog/jetstream"
	"github.com/custodyhq/custody/internal/natstest"
	"github.com/custodyhq/custody/pdp"
	"github.com/custodyhq/custody/policies"
	"github.com/custodyhq/custody/server"
)

const exampleRequest = `{
  "agent":    {"id": "spiffe://acme.example/agents/mailer", "properties": {}},
  "user":     {"id": "alice@acme.example", "properties": {"roles": ["employee"], "scopes": ["mail.send"]}},
  "tool":     {"name": "send_email", "server": "mail", "arguments": {"to": "bob@acme.example", "api_token": "sk-live-123"}},
  "resource": {"type": "mailbox", "id": "alice", "properties": {"owner": "alice@acme.example"}},
  "task":     {"id": "t-42", "parent_id": "t-41", "attempt": 1, "session_id": "s-7", "intent": "email bob the Q3 numbers"},
  "context":  {}
}`

var testKey = []byte("0123456789abcdef0123456789abcdef")

func engine(t testing.TB) *pdp.Engine {
	t.Helper()
	set, err := bundles.FromFS(policies.FS, "embedded")
	if err != nil {
		t.Fatal(err)
	}
	e, err := pdp.New(context.Background(), set)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// sequentialIDs makes IDs id-1, id-2, ... so records are deterministic.
func sequentialIDs() func() string {
	var n atomic.Int64
	return func() string { return fmt.Sprintf("id-%d", n.Add(1)) }
}

var fixedNow = time.Date(2026, 11, 27, 6, 0, 0, 0, time.UTC)

func newServer(t testing.TB, pub decisionlog.Publisher) *server.Server {
	t.Helper()
	return server.New(engine(t), pub, decisionlog.NewIntentHasher(testKey),
		server.WithIDFunc(sequentialIDs()),
		server.WithClock(func() time.Time { return fixedNow }),
		server.WithInstance(decisionlog.Instance{Instance: "test-instance", Version: "test"}),
	)
}

type response struct {
	Status int
	Header http.Header
	Body   map[string]any
	Raw    string
}

func do(t testing.TB, h http.Handler, method, path, contentType, body string, headers ...string) response {
	t.Helper()
	req := httptest.NewRequest(method, path, strings.NewReader(body))
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	r := response{Status: rec.Code, Header: rec.Header(), Raw: rec.Body.String()}
	if err := json.Unmarshal(rec.Body.Bytes(), &r.Body); err != nil {
		t.Fatalf("response is not a JSON object: %v: %q", err, rec.Body.String())
	}
	return r
}

func TestAuthorizeAllowRecordsBeforeAnswering(t *testing.T) {
	mem := &decisionlog.Memory{}
	srv := newServer(t, mem)
	r := do(t, srv.Handler(), http.MethodPost, "/v1/authorize", "application/json", exampleRequest,
		"X-Request-ID", "req-1", "X-Correlation-ID", "corr-1")
	if r.Status != http.StatusOK {
		t.Fatalf("status %d: %s", r.Status, r.Raw)
	}
	wantBody := map[string]any{
		"decision_id":    "id-1",
		"correlation_id": "corr-1",
		"allow":          true,
		"reasons":        []any{"allowed"},
		"obligations":    map[string]any{},
		"policy":         map[string]any{"revision": engine(t).Policy().Revision},
	}
	if diff := cmp.Diff(wantBody, r.Body); diff != "" {
		t.Errorf("body (-want +got):\n%s", diff)
	}
	if got := r.Header.Get("X-Request-ID"); got != "req-1" {
		t.Errorf("X-Request-ID = %q, want echoed req-1", got)
	}
	if got := r.Header.Get("X-Correlation-ID"); got != "corr-1" {
		t.Errorf("X-Correlation-ID = %q, want corr-1", got)
	}
	recs := mem.Records()
	if len(recs) != 1 {
		t.Fatalf("%d records, want 1", len(recs))
	}
	rec := recs[0]
	if rec.DecisionID != "id-1" || rec.CorrelationID != "corr-1" || rec.RequestID != "req-1" || !rec.Allow {
		t.Errorf("record IDs/outcome = %s %s %s %v", rec.DecisionID, rec.CorrelationID, rec.RequestID, rec.Allow)
	}
	if rec.Schema != decisionlog.SchemaDecisionV1 || rec.Endpoint != "/v1/authorize" || rec.PDP.Instance != "test-instance" {
		t.Errorf("record envelope = %s %s %+v", rec.Schema, rec.Endpoint, rec.PDP)
	}
	if rec.Task == nil || rec.Task.ID != "t-42" || rec.Task.ParentID != "t-41" || rec.Task.SessionID != "s-7" || rec.Task.Attempt != 1 {
		t.Errorf("record task = %+v", rec.Task)
	}
	if want := decisionlog.NewIntentHasher(testKey).Sum("email bob the Q3 numbers"); rec.Task.IntentSHA256 != want {
		t.Errorf("intent_sha256 = %q, want HMAC %q", rec.Task.IntentSHA256, want)
	}
	raw, _ := json.Marshal(rec)
	for _, secret := range []string{"Q3 numbers", "sk-live-123", `"intent"`} {
		if bytes.Contains(raw, []byte(secret)) {
			t.Errorf("record contains %q: %s", secret, raw)
		}
	}
}

func TestAuthorizeDenyCarriesReasons(t *testing.T) {
	mem := &decisionlog.Memory{}
	srv := newServer(t, mem)
	body := strings.Replace(exampleRequest, `"scopes": ["mail.send"]`, `"scopes": []`, 1)
	r := do(t, srv.Handler(), http.MethodPost, "/v1/authorize", "application/json", body)
	if r.Status != http.StatusOK || r.Body["allow"] != false {
		t.Fatalf("status %d body %s, want 200 deny", r.Status, r.Raw)
	}
	if diff := cmp.Diff([]any{"user_lacks_scope"}, r.Body["reasons"]); diff != "" {
		t.Errorf("reasons (-want +got):\n%s", diff)
	}
	if recs := mem.Records(); len(recs) != 1 || recs[0].Allow {
		t.Fatalf("records = %+v, want one deny", recs)
	}
}

func TestAuthorizeAnswers503DenyWhenRecordFails(t *testing.T) {
	mem := &decisionlog.Memory{Err: fmt.Errorf("test: %w", decisionlog.ErrUnavailable)}
	srv := newServer(t, mem)
	r := do(t, srv.Handler(), http.MethodPost, "/v1/authorize", "application/json", exampleRequest)
	if r.Status != http.StatusServiceUnavailable {
		t.Fatalf("status %d, want 503: %s", r.Status, r.Raw)
	}
	want := map[string]any{
		"error":          map[string]any{"code": "decision_log_unavailable", "message": "the decision could not be recorded on the decision stream, so it is a deny; retry later"},
		"allow":          false,
		"decision_id":    "id-3", // id-1 request ID, id-2 correlation ID
		"correlation_id": "id-2",
	}
	if diff := cmp.Diff(want, r.Body); diff != "" {
		t.Errorf("body (-want +got):\n%s", diff)
	}
}

func TestCorrelationIDSources(t *testing.T) {
	const tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	tests := []struct {
		name    string
		body    string
		headers []string
		want    string
	}{
		{"body wins", `{"correlation_id":"from-body",` + exampleRequest[1:], []string{"X-Correlation-ID", "from-header", "traceparent", tp}, "from-body"},
		{"header next", exampleRequest, []string{"X-Correlation-ID", "from-header", "traceparent", tp}, "from-header"},
		{"traceparent next", exampleRequest, []string{"traceparent", tp}, "4bf92f3577b34da6a3ce929d0e0e4736"},
		{"invalid traceparent ignored", exampleRequest, []string{"traceparent", "00-zz-yy-01"}, "id-2"},
		{"minted last", exampleRequest, nil, "id-2"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			mem := &decisionlog.Memory{}
			r := do(t, newServer(t, mem).Handler(), http.MethodPost, "/v1/authorize", "application/json", tc.body, tc.headers...)
			if r.Status != http.StatusOK {
				t.Fatalf("status %d: %s", r.Status, r.Raw)
			}
			if r.Body["correlation_id"] != tc.want || r.Header.Get("X-Correlation-ID") != tc.want {
				t.Fatalf("correlation = body %v header %q, want %q", r.Body["correlation_id"], r.Header.Get("X-Correlation-ID"), tc.want)
			}
			rec := mem.Records()[0]
			if rec.CorrelationID != tc.want {
				t.Fatalf("record correlation_id = %q, want %q", rec.CorrelationID, tc.want)
			}
			if strings.Contains(strings.Join(tc.headers, " "), tp) && (rec.TraceID != "4bf92f3577b34da6a3ce929d0e0e4736" || rec.SpanID != "00f067aa0ba902b7") {
				t.Errorf("trace = %q/%q, want the traceparent's", rec.TraceID, rec.SpanID)
			}
		})
	}
}

func TestBadInputIsRejectedAndNeverAllowed(t *testing.T) {
	huge := `{"agent":{"id":"a"},"tool":{"name":"t"},"context":{"pad":"` + strings.Repeat("x", 1<<20) + `"}}`
	tests := []struct {
		name        string
		method      string
		path        string
		contentType string
		body        string
		headers     []string
		status      int
		code        string
		mentions    string
	}{
		{"malformed JSON", "POST", "/v1/authorize", "application/json", `{"agent":`, nil, 400, "invalid_json", "JSON"},
		{"not an object", "POST", "/v1/authorize", "application/json", `[1,2]`, nil, 400, "invalid_request", "object"},
		{"empty body", "POST", "/v1/authorize", "application/json", ``, nil, 400, "invalid_json", "empty"},
		{"trailing garbage", "POST", "/v1/authorize", "application/json", exampleRequest + `{}`, nil, 400, "invalid_json", "after"},
		{"agent id wrong type", "POST", "/v1/authorize", "application/json", `{"agent":{"id":7},"tool":{"name":"t"}}`, nil, 400, "invalid_request", "agent.id"},
		{"missing agent", "POST", "/v1/authorize", "application/json", `{"tool":{"name":"t"}}`, nil, 400, "invalid_request", "agent.id"},
		{"missing tool name", "POST", "/v1/authorize", "application/json", `{"agent":{"id":"a"},"tool":{}}`, nil, 400, "invalid_request", "tool.name"},
		{"tool wrong type", "POST", "/v1/authorize", "application/json", `{"agent":{"id":"a"},"tool":"send_email"}`, nil, 400, "invalid_request", "tool"},
		{"bad correlation header", "POST", "/v1/authorize", "application/json", exampleRequest, []string{"X-Correlation-ID", "has space"}, 400, "invalid_request", "X-Correlation-ID"},
		{"bad correlation in body", "POST", "/v1/authorize", "application/json", `{"correlation_id":"a\nb",` + exampleRequest[1:], nil, 400, "invalid_request", "correlation_id"},
		{"huge body", "POST", "/v1/authorize", "application/json", huge, nil, 413, "body_too_large", "exceeds"},
		{"form content type", "POST", "/v1/authorize", "application/x-www-form-urlencoded", exampleRequest, nil, 415, "unsupported_media_type", "application/json"},
		{"no content type", "POST", "/v1/authorize", "", exampleRequest, nil, 415, "unsupported_media_type", "none"},
		{"unknown path", "POST", "/v1/nope", "application/json", exampleRequest, nil, 404, "not_found", "/v1/nope"},
		{"wrong method", "GET", "/v1/authorize", "", "", nil, 405, "method_not_allowed", "GET"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			mem := &decisionlog.Memory{}
			r := do(t, newServer(t, mem).Handler(), tc.method, tc.path, tc.contentType, tc.body, tc.headers...)
			if r.Status != tc.status {
				t.Fatalf("status %d, want %d: %s", r.Status, tc.status, r.Raw)
			}
			e, _ := r.Body["error"].(map[string]any)
			if e["code"] != tc.code || !strings.Contains(fmt.Sprint(e["message"]), tc.mentions) {
				t.Fatalf("error = %v, want code %s mentioning %q", e, tc.code, tc.mentions)
			}
			if r.Body["allow"] == true {
				t.Fatal("bad input answered with an allow")
			}
			if r.Header.Get("X-Request-ID") == "" {
				t.Error("no X-Request-ID on an error response")
			}
			if n := len(mem.Records()); n != 0 {
				t.Fatalf("%d records for a request that was never decided", n)
			}
		})
	}
}

// panicDecider proves a panic deep in a request becomes a 500 error, not a crash or an allow.
type panicDecider struct{}

func (panicDecider) Decide(context.Context, *pdp.Input) pdp.Decision { panic("boom") }

func TestPanicIsAnError(t *testing.T) {
	mem := &decisionlog.Memory{}
	srv := server.New(panicDecider{}, mem, decisionlog.NewIntentHasher(testKey))
	r := do(t, srv.Handler(), http.MethodPost, "/v1/authorize", "application/json", exampleRequest)
	if r.Status != http.StatusInternalServerError || r.Body["allow"] == true {
		t.Fatalf("status %d body %s, want a 500 error", r.Status, r.Raw)
	}
}

func TestHealthAndReadiness(t *testing.T) {
	failing := errors.New("nats down")
	var ready atomic.Bool
	srv := server.New(engine(t), &decisionlog.Memory{}, decisionlog.NewIntentHasher(testKey),
		server.WithReadyCheck("decision_log", func(context.Context) error {
			if ready.Load() {
				return nil
			}
			return failing
		}))
	if r := do(t, srv.Handler(), "GET", "/healthz", "", ""); r.Status != 200 {
		t.Fatalf("healthz %d", r.Status)
	}
	if r := do(t, srv.Handler(), "GET", "/readyz", "", ""); r.Status != 503 || !strings.Contains(r.Raw, "nats down") {
		t.Fatalf("readyz with a failing check = %d %s, want 503 naming it", r.Status, r.Raw)
	}
	ready.Store(true)
	if r := do(t, srv.Handler(), "GET", "/readyz", "", ""); r.Status != 200 {
		t.Fatalf("readyz %d %s", r.Status, r.Raw)
	}
}

func TestMetricsCountDecisions(t *testing.T) {
	srv := newServer(t, &decisionlog.Memory{})
	do(t, srv.Handler(), http.MethodPost, "/v1/authorize", "application/json", exampleRequest)
	req := httptest.NewRequest("GET", "/metrics", nil)
	rec := httptest.NewRecorder()
	srv.Handler().ServeHTTP(rec, req)
	if !strings.Contains(rec.Body.String(), `custody_decisions_total{endpoint="/v1/authorize",outcome="allow"} 1`) {
		t.Fatalf("metrics do not count the decision:\n%s", rec.Body.String())
	}
}

// jetstreamServer serves the API over real HTTP, recording to a real embedded JetStream.
func jetstreamServer(t testing.TB) (*httptest.Server, jetstream.Stream) {
	t.Helper()
	return jetstreamServerWith(t, engine(t))
}

// jetstreamServerWith serves d over HTTP, recording on a real embedded JetStream.
func jetstreamServerWith(t testing.TB, d server.Decider, opts ...server.Option) (*httptest.Server, jetstream.Stream) {
	t.Helper()
	ns := natstest.Start(t)
	js, err := jetstream.New(natstest.Connect(t, ns))
	if err != nil {
		t.Fatal(err)
	}
	stream, err := custodyjs.EnsureStream(context.Background(), js, custodyjs.StreamConfig{})
	if err != nil {
		t.Fatal(err)
	}
	srv := server.New(d, custodyjs.NewSink(js), decisionlog.NewIntentHasher(testKey), opts...)
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(hs.Close)
	return hs, stream
}

func TestAuthorizeOverJetStream(t *testing.T) {
	hs, stream := jetstreamServer(t)
	resp, err := http.Post(hs.URL+"/v1/authorize", "application/json", strings.NewReader(exampleRequest))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatal(err)
	}
	// The answer came back, so its record must already be in the stream.
	msg, err := stream.GetLastMsgForSubject(t.Context(), "custody.decision.allow.>")
	if err != nil {
		t.Fatalf("no record for an answered decision: %v", err)
	}
	if got := msg.Header.Get("Nats-Msg-Id"); got != out["decision_id"] {
		t.Fatalf("Nats-Msg-Id %q, want decision_id %v", got, out["decision_id"])
	}
}

// TestRecordMasksEveryPropertyMap: the record shares a property map only when nothing in it is
// masked (decisionlog.MaskMapShared), so a secret at any depth of the subject's, the agent's,
// the resource's properties or the arguments still reaches the stream masked, while the clean
// maps beside them are recorded as sent.
func TestRecordMasksEveryPropertyMap(t *testing.T) {
	mem := &decisionlog.Memory{}
	srv := newServer(t, mem)
	body := `{
	  "agent":    {"id": "spiffe://acme.example/agents/mailer", "properties": {"team": "mail", "deep": [{"session_token": "st-1"}]}},
	  "user":     {"id": "alice@acme.example", "properties": {"roles": ["employee"], "scopes": ["mail.send"], "password": "pw-1"}},
	  "tool":     {"name": "send_email", "server": "mail", "arguments": {"to": "bob@acme.example", "opts": {"headers": {"Authorization": "a-1"}}, "note": ["Bearer 0a1b2c3d4e5f6a7b8c9d"]}},
	  "resource": {"type": "mailbox", "id": "alice", "properties": {"owner": "alice@acme.example", "cookie": "c-1"}},
	  "context":  {}
	}`
	if r := do(t, srv.Handler(), http.MethodPost, "/v1/authorize", "application/json", body); r.Status != http.StatusOK {
		t.Fatalf("status %d: %s", r.Status, r.Raw)
	}
	recs := mem.Records()
	if len(recs) != 1 {
		t.Fatalf("%d records, want 1", len(recs))
	}
	raw, err := json.Marshal(recs[0])
	if err != nil {
		t.Fatal(err)
	}
	for _, secret := range []string{"st-1", "pw-1", "a-1", "0a1b2c3d4e5f6a7b8c9d", "c-1"} {
		if bytes.Contains(raw, []byte(secret)) {
			t.Errorf("record holds %q: %s", secret, raw)
		}
	}
	if n := bytes.Count(raw, []byte(`"`+decisionlog.Masked+`"`)); n != 5 {
		t.Errorf("record masks %d values, want 5: %s", n, raw)
	}
	for _, kept := range []string{`"team":"mail"`, `"roles":["employee"]`, `"to":"bob@acme.example"`, `"owner":"alice@acme.example"`} {
		if !bytes.Contains(raw, []byte(kept)) {
			t.Errorf("record lost %s: %s", kept, raw)
		}
	}
}
