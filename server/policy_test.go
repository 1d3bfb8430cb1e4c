package server_test

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/custodyhq/custody/decisionlog"
	"github.com/custodyhq/custody/server"
)

func TestPolicyStatus(t *testing.T) {
	loadedAt := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	var status atomic.Pointer[server.PolicyStatus]
	status.Store(&server.PolicyStatus{})
	report := server.PolicyReporterFunc(func() server.PolicyStatus { return *status.Load() })
	h := server.New(engine(t), nil, decisionlog.NewIntentHasher(testKey), server.WithPolicyStatus(report)).Handler()

	tests := []struct {
		name        string
		status      server.PolicyStatus
		wantBody    string
		wantMetrics []string
	}{
		{
			name:        "nothing loaded yet",
			status:      server.PolicyStatus{Query: "data.custody.authz.decision"},
			wantBody:    `{"revision":"","source":"","query":"data.custody.authz.decision","reloads":0,"failures":0,"memo_hits":0,"memo_misses":0}`,
			wantMetrics: []string{"custody_policy_reloads_total 0", "custody_policy_reload_failures_total 0", "custody_decision_memo_hits_total 0"},
		},
		{
			name: "serving, after a refused reload",
			status: server.PolicyStatus{
				Revision: "v2", Source: "/etc/custody/bundle.tar.gz", Query: "data.custody.authz.decision",
				LoadedAt: loadedAt, LastError: "bundles: verify: bundle signature check failed", LastErrorAt: loadedAt.Add(time.Minute),
				Reloads: 1, Failures: 1,
				Memo: "on", InputPaths: []string{"input.subject.id", "type of input"}, MemoHits: 7, MemoMisses: 3,
			},
			wantBody: `{"revision":"v2","source":"/etc/custody/bundle.tar.gz","query":"data.custody.authz.decision",` +
				`"loaded_at":"2026-05-01T12:00:00Z","last_error":"bundles: verify: bundle signature check failed",` +
				`"last_error_at":"2026-05-01T12:01:00Z","reloads":1,"failures":1,` +
				`"memo":"on","input_paths":["input.subject.id","type of input"],"memo_hits":7,"memo_misses":3}`,
			wantMetrics: []string{"custody_policy_reloads_total 1", "custody_policy_reload_failures_total 1", "custody_decision_memo_hits_total 7", "custody_decision_memo_misses_total 3"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			status.Store(&tc.status)
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/v1/policy", nil))
			if rec.Code != http.StatusOK || rec.Header().Get("Cache-Control") != "no-store" {
				t.Fatalf("status %d, Cache-Control %q", rec.Code, rec.Header().Get("Cache-Control"))
			}
			var got, want any
			if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil {
				t.Fatal(err)
			}
			if err := json.Unmarshal([]byte(tc.wantBody), &want); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("body (-want +got):\n%s", diff)
			}

			rec = httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
			metrics, _ := io.ReadAll(rec.Body)
			for _, m := range tc.wantMetrics {
				if !strings.Contains(string(metrics), m+"\n") {
					t.Errorf("/metrics lacks %q", m)
				}
			}
		})
	}
}

func TestPolicyStatusNotConfigured(t *testing.T) {
	h := server.New(engine(t), nil, decisionlog.NewIntentHasher(testKey)).Handler()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/v1/policy", nil))
	if rec.Code != http.StatusNotFound {
		t.Fatalf("GET /v1/policy without a reporter: %d, want 404", rec.Code)
	}
}
