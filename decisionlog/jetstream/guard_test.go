package jetstream_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/custodyhq/custody/decisionlog"
	custodyjs "github.com/custodyhq/custody/decisionlog/jetstream"
	"github.com/custodyhq/custody/internal/natstest"
)

// TestGuardTripsOnAChangedStream does to the stream what anyone with write access to an
// unauthenticated NATS could: delete it and recreate a look-alike without deny-delete, or edit
// it to keep one message or one second. Each time the guard trips, the sink refuses to publish
// (a 503 deny for the caller), and nothing is written into the changed stream.
func TestGuardTripsOnAChangedStream(t *testing.T) {
	cases := []struct {
		name   string
		attack func(t *testing.T, js jetstream.JetStream, cfg jetstream.StreamConfig)
		want   string
	}{
		{"deleted and recreated", func(t *testing.T, js jetstream.JetStream, cfg jetstream.StreamConfig) {
			if err := js.DeleteStream(t.Context(), decisionlog.StreamName); err != nil {
				t.Fatal(err)
			}
			cfg.DenyDelete, cfg.DenyPurge = false, false
			if _, err := js.CreateStream(t.Context(), cfg); err != nil {
				t.Fatal(err)
			}
		}, "recreated"},
		{"deleted", func(t *testing.T, js jetstream.JetStream, _ jetstream.StreamConfig) {
			if err := js.DeleteStream(t.Context(), decisionlog.StreamName); err != nil {
				t.Fatal(err)
			}
		}, "deleted"},
		{"edit --max-msgs 1", func(t *testing.T, js jetstream.JetStream, cfg jetstream.StreamConfig) {
			cfg.MaxMsgs = 1
			if _, err := js.UpdateStream(t.Context(), cfg); err != nil {
				t.Fatal(err)
			}
		}, "max_msgs"},
		{"edit --max-age 1s", func(t *testing.T, js jetstream.JetStream, cfg jetstream.StreamConfig) {
			cfg.MaxAge, cfg.Duplicates = time.Second, time.Second
			if _, err := js.UpdateStream(t.Context(), cfg); err != nil {
				t.Fatal(err)
			}
		}, "max_age"},
		{"edit --allow-msg-ttl", func(t *testing.T, js jetstream.JetStream, cfg jetstream.StreamConfig) {
			cfg.AllowMsgTTL = true
			if _, err := js.UpdateStream(t.Context(), cfg); err != nil {
				t.Fatal(err)
			}
		}, "allow_msg_ttl"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			js, s := setup(t, custodyjs.StreamConfig{})
			g := custodyjs.NewGuard(s)
			sink := custodyjs.NewSink(g.JetStream(js), custodyjs.WithPublishTimeout(time.Second))
			if err := g.Check(t.Context()); err != nil {
				t.Fatalf("guard on an untouched stream: %v", err)
			}
			if err := sink.Publish(t.Context(), record("guard-1", true)); err != nil {
				t.Fatal(err)
			}
			tc.attack(t, js, s.CachedInfo().Config)
			err := g.Check(t.Context())
			if !errors.Is(err, custodyjs.ErrStreamChanged) || !errors.Is(err, decisionlog.ErrUnavailable) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Check after %s = %v, want ErrStreamChanged naming %q", tc.name, err, tc.want)
			}
			err = sink.Publish(t.Context(), record("guard-2", true))
			if !errors.Is(err, decisionlog.ErrUnavailable) {
				t.Fatalf("Publish into a changed stream = %v, want ErrUnavailable", err)
			}
			if after, err := js.Stream(t.Context(), decisionlog.StreamName); err == nil {
				info, _ := after.Info(t.Context())
				for seq := uint64(1); seq <= info.State.LastSeq; seq++ {
					if m, err := after.GetMsg(t.Context(), seq); err == nil && m.Header.Get("Nats-Msg-Id") == "guard-2" {
						t.Fatal("a record was written into the changed stream")
					}
				}
			}
			// Tripped for good, even if the setting is put back.
			if g.Err() == nil || !g.Tripped() {
				t.Fatal("guard untripped")
			}
		})
	}
}

// TestGuardIgnoresAnUnreachableServer: NATS being down is not a changed stream (publishes fail
// on their own then, and recover when it is back).
func TestGuardIgnoresAnUnreachableServer(t *testing.T) {
	ns := natstest.Start(t)
	js, err := jetstream.New(natstest.Connect(t, ns))
	if err != nil {
		t.Fatal(err)
	}
	s, err := custodyjs.EnsureStream(t.Context(), js, custodyjs.StreamConfig{})
	if err != nil {
		t.Fatal(err)
	}
	g := custodyjs.NewGuard(s)
	natstest.Shutdown(ns)
	ctx, cancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
	defer cancel()
	if err := g.Check(ctx); err != nil || g.Tripped() {
		t.Fatalf("Check with NATS down = %v, tripped %v", err, g.Tripped())
	}
}

// TestGuardChecksAfterAPublishError: a failed publish makes Run check at once rather than at its
// next tick.
func TestGuardChecksAfterAPublishError(t *testing.T) {
	js, s := setup(t, custodyjs.StreamConfig{})
	g := custodyjs.NewGuard(s, custodyjs.WithGuardInterval(time.Hour))
	go g.Run(t.Context())
	sink := g.Publisher(custodyjs.NewSink(g.JetStream(js), custodyjs.WithPublishTimeout(500*time.Millisecond)))
	if err := js.DeleteStream(t.Context(), decisionlog.StreamName); err != nil {
		t.Fatal(err)
	}
	if err := sink.Publish(t.Context(), record("poke-1", true)); err == nil {
		t.Fatal("publish to a deleted stream succeeded")
	}
	natstest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if !g.Tripped() {
			return errors.New("guard not tripped after a failed publish")
		}
		return nil
	})
}

// TestGuardRoomKeepsAReserve: Room follows the stream's size as the last check saw it, and is
// false once less than the reserve is left; an unbounded stream always has room.
func TestGuardRoomKeepsAReserve(t *testing.T) {
	js, s := setup(t, custodyjs.StreamConfig{MaxBytes: 64 << 10})
	g := custodyjs.NewGuard(s)
	if !g.Room(0.1) {
		t.Fatal("an empty stream has no room")
	}
	body := make([]byte, 4<<10)
	for i := 0; i < 15; i++ {
		if _, err := js.Publish(t.Context(), "custody.decision.allow.a.t.c", body); err != nil {
			t.Fatalf("publish %d: %v", i, err)
		}
	}
	if !g.Room(0.1) {
		t.Fatal("Room changed before a check saw the stream")
	}
	if err := g.Check(t.Context()); err != nil {
		t.Fatal(err)
	}
	if g.Room(0.1) {
		t.Fatal("a stream 15/16 full still has room above a 10% reserve")
	}
	_, unbounded := setup(t, custodyjs.StreamConfig{})
	if !custodyjs.NewGuard(unbounded).Room(0.1) {
		t.Fatal("an unbounded stream has no room")
	}
}
