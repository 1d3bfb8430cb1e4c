package jetstream_test

import (
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/custodyhq/custody/decisionlog"
	custodyjs "github.com/custodyhq/custody/decisionlog/jetstream"
	"github.com/custodyhq/custody/internal/natstest"
)

// TestEnsureStreamNeverRewritesAnExistingStream: an instance started with other settings (the
// default replicas, a short retention) used to update the shared stream on start, deleting every
// record older than its --retention. Now it refuses and names each difference; the stream and
// its records are untouched.
func TestEnsureStreamNeverRewritesAnExistingStream(t *testing.T) {
	js, s := setup(t, custodyjs.StreamConfig{Retention: 720 * time.Hour, MaxBytes: 1 << 30})
	for i := range 5 {
		if _, err := js.Publish(t.Context(), "custody.decision.allow.a.t.c"+string(rune('0'+i)), []byte(`{}`)); err != nil {
			t.Fatal(err)
		}
	}
	cases := []struct {
		name string
		cfg  custodyjs.StreamConfig
		want []string
	}{
		{"short retention", custodyjs.StreamConfig{Retention: 30 * time.Second, MaxBytes: 1 << 30}, []string{"max_age: stream has 720h0m0s, this instance asks for 30s"}},
		{"default flags", custodyjs.StreamConfig{}, []string{"max_age", "max_bytes"}},
		{"smaller bound", custodyjs.StreamConfig{Retention: 720 * time.Hour, MaxBytes: 1 << 20}, []string{"max_bytes: stream has 1073741824, this instance asks for 1048576"}},
		{"duplicate window asked for", custodyjs.StreamConfig{Retention: 720 * time.Hour, MaxBytes: 1 << 30, DuplicateWindow: time.Second}, []string{"duplicate_window"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := custodyjs.EnsureStream(t.Context(), js, tc.cfg)
			var mismatch *custodyjs.ConfigMismatchError
			if !errors.As(err, &mismatch) {
				t.Fatalf("EnsureStream = %v, want a ConfigMismatchError", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not name %q", err, w)
				}
			}
		})
	}
	// A duplicate window not asked for explicitly is the stream's.
	if _, err := custodyjs.EnsureStream(t.Context(), js, custodyjs.StreamConfig{Retention: 720 * time.Hour, MaxBytes: 1 << 30, DuplicateWindow: time.Second, KeepDuplicateWindow: true}); err != nil {
		t.Fatalf("EnsureStream keeping the duplicate window: %v", err)
	}
	info, err := s.Info(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 5 || info.Config.MaxAge != 720*time.Hour || info.Config.MaxBytes != 1<<30 {
		t.Fatalf("stream changed: %d msgs, max_age %v, max_bytes %d", info.State.Msgs, info.Config.MaxAge, info.Config.MaxBytes)
	}

	// Changing it is an explicit act.
	s2, err := custodyjs.ApplyStreamConfig(t.Context(), js, custodyjs.StreamConfig{Retention: 1440 * time.Hour, MaxBytes: 1 << 30})
	if err != nil {
		t.Fatalf("ApplyStreamConfig: %v", err)
	}
	if got := s2.CachedInfo().Config.MaxAge; got != 1440*time.Hour {
		t.Fatalf("after ApplyStreamConfig max_age = %v", got)
	}
}

// TestEnsureStreamConvergesOnConcurrentFirstStarts: a fleet's instances starting together on a
// server without the stream all end up with one stream and no error.
func TestEnsureStreamConvergesOnConcurrentFirstStarts(t *testing.T) {
	ns := natstest.Start(t)
	const n = 8
	created := make([]time.Time, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		js, err := jetstream.New(natstest.Connect(t, ns))
		if err != nil {
			t.Fatal(err)
		}
		wg.Go(func() {
			s, err := custodyjs.EnsureStream(t.Context(), js, custodyjs.StreamConfig{Retention: time.Hour})
			errs[i] = err
			if err == nil {
				created[i] = s.CachedInfo().Created
			}
		})
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("instance %d: %v", i, errs[i])
		}
		if !created[i].Equal(created[0]) {
			t.Fatalf("instance %d sees a stream created %v, instance 0 one created %v", i, created[i], created[0])
		}
	}
	js, _ := jetstream.New(natstest.Connect(t, ns))
	names := js.StreamNames(t.Context())
	var all []string
	for name := range names.Name() {
		all = append(all, name)
	}
	if len(all) != 1 || all[0] != decisionlog.StreamName {
		t.Fatalf("streams = %v", all)
	}
}
