package jetstream_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/custodyhq/custody/decisionlog"
	custodyjs "github.com/custodyhq/custody/decisionlog/jetstream"
	"github.com/custodyhq/custody/internal/natstest"
	"github.com/custodyhq/custody/pdp"
)

func record(id string, allow bool) *decisionlog.Record {
	return &decisionlog.Record{
		Schema:        decisionlog.SchemaDecisionV1,
		DecisionID:    id,
		Timestamp:     time.Date(2026, 11, 27, 6, 0, 0, 0, time.UTC),
		CorrelationID: "corr." + id,
		Endpoint:      "/v1/authorize",
		Subject:       pdp.Entity{Type: "user", ID: "alice@acme.example"},
		Action:        pdp.Action{Name: "send_email"},
		Resource:      pdp.Entity{Type: "tool", ID: "send_email"},
		Agent:         &pdp.Agent{ID: "spiffe://acme.example/agents/mailer", Type: "agent"},
		Delegation:    pdp.Delegation{Chain: []any{}},
		Allow:         allow,
		Reasons:       []string{},
	}
}

func setup(t *testing.T, cfg custodyjs.StreamConfig) (jetstream.JetStream, jetstream.Stream) {
	t.Helper()
	ns := natstest.Start(t)
	js, err := jetstream.New(natstest.Connect(t, ns))
	if err != nil {
		t.Fatal(err)
	}
	s, err := custodyjs.EnsureStream(t.Context(), js, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return js, s
}

func TestEnsureStreamIsIdempotentAndProtective(t *testing.T) {
	js, first := setup(t, custodyjs.StreamConfig{Retention: time.Hour})
	s, err := custodyjs.EnsureStream(t.Context(), js, custodyjs.StreamConfig{Retention: time.Hour})
	if err != nil {
		t.Fatalf("second EnsureStream with the same settings: %v", err)
	}
	info, err := s.Info(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	c := info.Config
	got := fmt.Sprintf("subjects=%v storage=%v discard=%v deny_delete=%v deny_purge=%v max_age=%v",
		c.Subjects, c.Storage, c.Discard, c.DenyDelete, c.DenyPurge, c.MaxAge)
	want := "subjects=[custody.>] storage=File discard=DiscardNew deny_delete=true deny_purge=true max_age=1h0m0s"
	if got != want {
		t.Fatalf("stream config:\n got %s\nwant %s", got, want)
	}
	if !info.Created.Equal(first.CachedInfo().Created) {
		t.Fatal("EnsureStream recreated an existing stream")
	}
	if err := s.Purge(t.Context()); err == nil {
		t.Fatal("purge succeeded on a deny-purge stream")
	}
}

func TestPublishWaitsForAckAndSetsHeaders(t *testing.T) {
	js, s := setup(t, custodyjs.StreamConfig{})
	sink := custodyjs.NewSink(js)
	rec := record("01J0000000000000000000000A", true)
	if err := sink.Publish(t.Context(), rec); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	// Publish returned, so the record must already be stored: no polling needed.
	msg, err := s.GetLastMsgForSubject(t.Context(), "custody.decision.>")
	if err != nil {
		t.Fatalf("record not in stream after Publish returned: %v", err)
	}
	wantSubject := "custody.decision.allow.spiffe___acme_example_agents_mailer.send_email.corr_01J0000000000000000000000A"
	if msg.Subject != wantSubject {
		t.Errorf("subject = %s, want %s", msg.Subject, wantSubject)
	}
	for h, want := range map[string]string{
		decisionlog.HeaderMsgID:         rec.DecisionID,
		decisionlog.HeaderCorrelationID: rec.CorrelationID,
		decisionlog.HeaderDecision:      "allow",
	} {
		if got := msg.Header.Get(h); got != want {
			t.Errorf("header %s = %q, want %q", h, got, want)
		}
	}
	var got decisionlog.Record
	if err := json.Unmarshal(msg.Data, &got); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(*rec, got); diff != "" {
		t.Errorf("stored record (-want +got):\n%s", diff)
	}
}

func TestRepublishIsDeduplicated(t *testing.T) {
	js, s := setup(t, custodyjs.StreamConfig{})
	sink := custodyjs.NewSink(js)
	rec := record("dup-1", false)
	for range 3 {
		if err := sink.Publish(t.Context(), rec); err != nil {
			t.Fatal(err)
		}
	}
	info, err := s.Info(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 1 {
		t.Fatalf("stream holds %d messages after 3 publishes of one decision, want 1", info.State.Msgs)
	}
}

func TestPublishFailsWhenStreamFull(t *testing.T) {
	js, _ := setup(t, custodyjs.StreamConfig{MaxBytes: 2048})
	sink := custodyjs.NewSink(js, custodyjs.WithPublishTimeout(time.Second))
	var err error
	for i := 0; i < 100 && err == nil; i++ {
		err = sink.Publish(t.Context(), record(fmt.Sprintf("full-%d", i), true))
	}
	if !errors.Is(err, decisionlog.ErrUnavailable) {
		t.Fatalf("Publish into a full stream = %v, want ErrUnavailable", err)
	}
	if !strings.Contains(err.Error(), "maximum bytes") {
		t.Logf("error does not mention the limit: %v", err)
	}
}

func TestPublishTimesOutWhenNATSIsDown(t *testing.T) {
	ns := natstest.Start(t)
	nc := natstest.Connect(t, ns)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := custodyjs.EnsureStream(t.Context(), js, custodyjs.StreamConfig{}); err != nil {
		t.Fatal(err)
	}
	natstest.Shutdown(ns)
	sink := custodyjs.NewSink(js, custodyjs.WithPublishTimeout(300*time.Millisecond))
	start := time.Now()
	err = sink.Publish(t.Context(), record("down-1", true))
	if !errors.Is(err, decisionlog.ErrUnavailable) {
		t.Fatalf("Publish with NATS down = %v, want ErrUnavailable", err)
	}
	// Not a speed assertion: Publish must give up on its own rather than hang.
	if time.Since(start) > 30*time.Second {
		t.Fatalf("Publish took %s, its timeout is not honoured", time.Since(start))
	}
}

func TestPublishIsDetachedFromCallerCancel(t *testing.T) {
	js, s := setup(t, custodyjs.StreamConfig{})
	sink := custodyjs.NewSink(js)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := sink.Publish(ctx, record("cancelled-caller", true)); err != nil {
		t.Fatalf("Publish after the caller hung up = %v, want the record recorded anyway", err)
	}
	if _, err := s.GetLastMsgForSubject(t.Context(), "custody.decision.>"); err != nil {
		t.Fatal(err)
	}
}

func TestCloseRefusesNewRecords(t *testing.T) {
	js, _ := setup(t, custodyjs.StreamConfig{})
	sink := custodyjs.NewSink(js)
	if err := sink.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := sink.Publish(t.Context(), record("late", true)); !errors.Is(err, decisionlog.ErrUnavailable) {
		t.Fatalf("Publish after Close = %v, want ErrUnavailable", err)
	}
}

func TestStreamConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		cfg  custodyjs.StreamConfig
		ok   bool
	}{
		{"defaults", custodyjs.StreamConfig{}, true},
		{"negative retention", custodyjs.StreamConfig{Retention: -1}, false},
		{"zero max bytes after defaults is unlimited", custodyjs.StreamConfig{MaxBytes: 0}, true},
		{"max bytes below -1", custodyjs.StreamConfig{MaxBytes: -2}, false},
		{"too many replicas", custodyjs.StreamConfig{Replicas: 7}, false},
		{"short retention shortens the default dedup window", custodyjs.StreamConfig{Retention: time.Minute}, true},
		{"dedup window longer than retention", custodyjs.StreamConfig{Retention: time.Minute, DuplicateWindow: time.Hour}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := tc.cfg
			cfg.SetDefaults()
			if err := cfg.Validate(); (err == nil) != tc.ok {
				t.Fatalf("Validate() = %v, want ok=%v", err, tc.ok)
			}
		})
	}
}
