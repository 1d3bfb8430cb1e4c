package server_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/custodyhq/custody/decisionlog"
	custodyjs "github.com/custodyhq/custody/decisionlog/jetstream"
	"github.com/custodyhq/custody/internal/natstest"
	"github.com/custodyhq/custody/server"
)

// bigArgs is a native body for alice whose arguments hold n bytes of text the caller chose.
func bigArgs(n int) string {
	return `{"agent": {"id": "spiffe://acme.example/agents/reader"}, "user": {"id": "alice"}, "tool": {"name": "read_file", "arguments": {"blob": "` +
		strings.Repeat("x", n) + `"}}}`
}

// TestRefusedAttemptsCannotFillTheStream: under --require-auth, unauthenticated attempts were
// recorded with their whole body and without limit, so that they filled a bounded stream and every
// authenticated decision after them was a 503. Now an attempt is a small fixed summary, limited
// per source, and the authenticated call after the flood is decided and recorded.
func TestRefusedAttemptsCannotFillTheStream(t *testing.T) {
	ns := natstest.Start(t)
	js, err := jetstream.New(natstest.Connect(t, ns))
	if err != nil {
		t.Fatal(err)
	}
	stream, err := custodyjs.EnsureStream(context.Background(), js, custodyjs.StreamConfig{MaxBytes: 2 << 20})
	if err != nil {
		t.Fatal(err)
	}
	srv := server.New(engine(t), custodyjs.NewSink(js), decisionlog.NewIntentHasher(testKey),
		server.WithRequireAuth(true), server.WithAPIKeys(stubKeys{}))
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(hs.Close)

	body := bigArgs(200 << 10)
	for i := range 20 { // 4 MiB of refused bodies, twice the stream
		resp, err := http.Post(hs.URL+server.EndpointAuthorize, "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("attempt %d: status %d, want 401", i, resp.StatusCode)
		}
	}
	req, _ := http.NewRequest(http.MethodPost, hs.URL+server.EndpointAuthorize, strings.NewReader(bigArgs(10)))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-API-Key", "ck_good")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("authenticated decision after the flood: status %d, want 200", resp.StatusCode)
	}
	info, err := stream.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Bytes > 64<<10 {
		t.Errorf("the stream holds %d bytes after 20 refused attempts and one decision; want a few KiB", info.State.Bytes)
	}
}

// refusalServer is a server whose clock the test moves, recording in memory, with bob's tokens
// and the gateway's API key known.
func refusalServer(t *testing.T, mem *decisionlog.Memory, now *time.Time, opts ...server.Option) *server.Server {
	t.Helper()
	return server.New(engine(t), mem, decisionlog.NewIntentHasher(testKey), append([]server.Option{
		server.WithClock(func() time.Time { return *now }),
		server.WithTokenVerifier(stubTokens{}), server.WithAPIKeys(stubKeys{}),
	}, opts...)...)
}

// TestRefusalRecordIsAFixedSummary: a refused attempt is recorded as endpoint, reason, caller
// kind, source and keyed hashes of the IDs it claimed, never its body: once a refused body
// nested near the depth limit or holding 1e400 made a record that verify failed on forever.
func TestRefusalRecordIsAFixedSummary(t *testing.T) {
	now := fixedNow
	bodies := map[string]string{
		"big":     bigArgs(256 << 10),
		"1e400":   `{"agent": {"id": "a"}, "user": {"id": "alice"}, "tool": {"name": "read_file", "arguments": {"n": 1e400}}}`,
		"deep":    `{"agent": {"id": "a"}, "tool": {"name": "t", "arguments": ` + strings.Repeat(`{"a":`, 9990) + "1" + strings.Repeat("}", 9990) + `}}`,
		"garbage": `{"agent": `,
	}
	for name, body := range bodies {
		t.Run(name, func(t *testing.T) {
			mem := &decisionlog.Memory{}
			srv := refusalServer(t, mem, &now)
			r := do(t, srv.Handler(), http.MethodPost, server.EndpointAuthorize, "application/json", body, "X-API-Key", "ck_wrong")
			if r.Status != http.StatusUnauthorized {
				t.Fatalf("status %d, want 401: %s", r.Status, r.Raw)
			}
			recs := mem.Records()
			if len(recs) != 1 {
				t.Fatalf("%d records, want 1", len(recs))
			}
			rec := recs[0]
			b, err := json.Marshal(rec)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("refusal record: %d bytes", len(b))
			if len(b) > 2048 {
				t.Errorf("refusal record of %d bytes, want a fixed summary under 2 KiB", len(b))
			}
			var back decisionlog.Record // what verify and trace do with it
			if err := json.Unmarshal(b, &back); err != nil {
				t.Errorf("refusal record does not read back: %v", err)
			}
			for _, leak := range []string{"xxxx", "1e400", `"a":{"a"`, "alice", "read_file"} {
				if strings.Contains(string(b), leak) {
					t.Errorf("refusal record holds body content %q: %.300s", leak, b)
				}
			}
			if rec.Allow || rec.Refusal == nil || rec.Refusal.Code != server.CodeInvalidCredentials ||
				rec.Refusal.CallerKind != server.AuthAPIKey || rec.Refusal.Source == "" || rec.Refusal.Count != 1 {
				t.Errorf("refusal summary %+v, want invalid_credentials by an api_key caller from a source, count 1", rec.Refusal)
			}
			if name == "big" && (rec.Refusal.Claimed == nil || rec.Refusal.Claimed.Subject == "" || rec.Refusal.Claimed.Action == "") {
				t.Errorf("claimed IDs %+v, want keyed hashes of the subject and action", rec.Refusal.Claimed)
			}
		})
	}
}

// TestRefusalsAreRateLimitedPerSourceAndCounted: a flood from one source is recorded up to its
// burst; the rest are counted in one aggregate record per interval, never dropped unseen.
func TestRefusalsAreRateLimitedPerSourceAndCounted(t *testing.T) {
	now := fixedNow
	mem := &decisionlog.Memory{}
	srv := refusalServer(t, mem, &now, server.WithRefusalLimits(server.RefusalLimits{
		PerSourceBurst: 3, PerSourceEvery: time.Minute, GlobalBurst: 100, GlobalEvery: time.Second, Interval: time.Minute,
	}))
	attempt := func(addr string) {
		req := httptest.NewRequest(http.MethodPost, server.EndpointAuthorize, strings.NewReader(minimalNative))
		req.RemoteAddr = addr
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("X-API-Key", "ck_wrong")
		rec := httptest.NewRecorder()
		srv.Handler().ServeHTTP(rec, req)
		if rec.Code != http.StatusUnauthorized {
			t.Fatalf("status %d, want 401", rec.Code)
		}
	}
	for range 50 {
		attempt("192.0.2.7:4000")
	}
	attempt("192.0.2.8:4000") // another source has its own bucket
	if n := len(mem.Records()); n != 4 {
		t.Fatalf("%d records after 50 attempts from one source and 1 from another, want 3 + 1", n)
	}
	now = now.Add(2 * time.Minute)
	attempt("192.0.2.8:4000") // the next attempt after the interval flushes the aggregate first
	recs := mem.Records()
	var agg *decisionlog.Refusal
	for _, r := range recs {
		if r.Refusal != nil && r.Refusal.Count > 1 {
			agg = r.Refusal
		}
	}
	if agg == nil || agg.Count != 47 || agg.Sources != 1 {
		t.Fatalf("aggregate %+v, want 47 dropped attempts from 1 source; records %d", agg, len(recs))
	}
}

const minimalNative = `{"agent": {"id": "a"}, "tool": {"name": "read_file"}}`

// TestRefusedBatchIsOneRecord: a batch whose items name someone other than the token's subject
// was one identity_mismatch record per item (1,000 for one request); it is now refused whole,
// as one record.
func TestRefusedBatchIsOneRecord(t *testing.T) {
	now := fixedNow
	mem := &decisionlog.Memory{}
	srv := refusalServer(t, mem, &now)
	var items []string
	for i := range server.MaxBatchEvaluations {
		items = append(items, fmt.Sprintf(`{"resource": {"type": "file", "id": "f%d"}}`, i))
	}
	body := `{"subject": {"type": "user", "id": "alice"}, "action": {"name": "read_file"}, "evaluations": [` + strings.Join(items, ",") + `]}`
	r := do(t, srv.Handler(), http.MethodPost, server.EndpointEvaluations, "application/json", body, "Authorization", "Bearer aaaa.bbbb.cccc")
	if r.Status != http.StatusBadRequest {
		t.Errorf("status %d, want 400 identity_mismatch: %.300s", r.Status, r.Raw)
	}
	recs := mem.Records()
	if len(recs) != 1 || recs[0].Allow || recs[0].Reasons[0] != server.ReasonIdentityMismatch {
		t.Fatalf("%d records, want one identity_mismatch record", len(recs))
	}
	if recs[0].Subject.ID != "alice" || recs[0].Caller == nil || recs[0].Caller.ID != "bob" {
		t.Errorf("impersonation record %+v, want the claimed subject and the proven caller in full", recs[0])
	}
}

// TestImpersonationRecordIsBounded: an authenticated caller's impersonation attempt stays a full
// decision record (it is evidence), but its free-form parts are bounded.
func TestImpersonationRecordIsBounded(t *testing.T) {
	now := fixedNow
	mem := &decisionlog.Memory{}
	srv := refusalServer(t, mem, &now)
	r := do(t, srv.Handler(), http.MethodPost, server.EndpointAuthorize, "application/json", bigArgs(512<<10), "Authorization", "Bearer aaaa.bbbb.cccc")
	if r.Status != http.StatusBadRequest {
		t.Fatalf("status %d, want 400: %.300s", r.Status, r.Raw)
	}
	recs := mem.Records()
	if len(recs) != 1 {
		t.Fatalf("%d records, want 1", len(recs))
	}
	b, _ := json.Marshal(recs[0])
	if len(b) > 80<<10 {
		t.Errorf("impersonation record of %d bytes, want at most 80 KiB", len(b))
	}
	if recs[0].Subject.ID != "alice" || recs[0].Agent == nil || recs[0].Action.Name != "read_file" {
		t.Errorf("impersonation record lost the claimed call: %+v", recs[0])
	}
}

// TestRefusalsLeaveTheStreamsReserveToDecisions: once the stream is near its byte limit (room
// reports false), refused attempts are only counted, however few; when there is room again, one
// aggregate records them all.
func TestRefusalsLeaveTheStreamsReserveToDecisions(t *testing.T) {
	now := fixedNow
	mem := &decisionlog.Memory{}
	room := false
	srv := refusalServer(t, mem, &now, server.WithRefusalRoom(func() bool { return room }))
	attempt := func() {
		req := httptest.NewRequest(http.MethodPost, server.EndpointAuthorize, strings.NewReader(minimalNative))
		req.RemoteAddr = "192.0.2.9:4000"
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("X-API-Key", "ck_wrong")
		rec := httptest.NewRecorder()
		srv.Handler().ServeHTTP(rec, req)
		if rec.Code != http.StatusUnauthorized {
			t.Fatalf("status %d, want 401", rec.Code)
		}
	}
	for range 5 {
		attempt()
	}
	if n := len(mem.Records()); n != 0 {
		t.Fatalf("%d refusal records written into the stream's reserve, want 0", n)
	}
	now = now.Add(2 * time.Minute)
	attempt() // the interval is over, but there is still no room: the aggregate waits
	if n := len(mem.Records()); n != 0 {
		t.Fatalf("%d records while the stream has no room, want 0", n)
	}
	room = true
	now = now.Add(2 * time.Minute)
	attempt()
	var total uint64
	for _, r := range mem.Records() {
		if r.Refusal != nil {
			total += r.Refusal.Count
		}
	}
	if total != 7 {
		t.Fatalf("refusals counted in records: %d, want all 7", total)
	}
}
