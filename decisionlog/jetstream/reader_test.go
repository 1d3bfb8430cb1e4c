package jetstream_test

import (
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	custodyjs "github.com/custodyhq/custody/decisionlog/jetstream"
	"github.com/custodyhq/custody/internal/natstest"
)

// TestReadRidesOutAServerRestart: the NATS server restarts in the middle of a read of 3,000
// messages. Read retries where it was and delivers each message once, in order, to the end.
func TestReadRidesOutAServerRestart(t *testing.T) {
	dir, outer := t.TempDir(), t
	ns := natstest.StartAt(t, "127.0.0.1:0", dir)
	addr := ns.Addr().(*net.TCPAddr).String()
	js, err := jetstream.New(natstest.ConnectURL(t, ns.ClientURL()))
	if err != nil {
		t.Fatal(err)
	}
	stream, err := custodyjs.EnsureStream(t.Context(), js, custodyjs.StreamConfig{})
	if err != nil {
		t.Fatal(err)
	}
	const total = 3000
	for i := range total {
		if _, err := js.PublishAsync(fmt.Sprintf("custody.decision.allow.a.t.c%d", i%7), fmt.Appendf(nil, `{"n":%d}`, i)); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(30 * time.Second):
		t.Fatal("publishes not acked")
	}
	for _, tc := range []struct {
		name    string
		filters []string
		want    int
	}{
		{"unfiltered", nil, total},
		{"filtered", []string{"custody.decision.*.*.*.c3"}, (total + 7 - 3 - 1) / 7}, // i%7 == 3
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got []uint64
			st, err := custodyjs.Read(t.Context(), stream, custodyjs.ReadOptions{Filters: tc.filters, Batch: 100}, func(m *custodyjs.Msg) error {
				got = append(got, m.Seq)
				if len(got) == tc.want/3 {
					natstest.Shutdown(ns)
					ns = natstest.StartAt(outer, addr, dir) // outlives this subtest
				}
				return nil
			})
			if err != nil {
				t.Fatalf("read across a server restart: %v (after %d messages)", err, len(got))
			}
			if len(got) != tc.want || st.Delivered != tc.want {
				t.Fatalf("read %d messages (stats %+v), want %d", len(got), st, tc.want)
			}
			for i := 1; i < len(got); i++ {
				if got[i] <= got[i-1] {
					t.Fatalf("message %d has stream seq %d after %d: out of order or repeated", i, got[i], got[i-1])
				}
			}
			if st.Retries == 0 {
				t.Errorf("no retry recorded across a restart: %+v", st)
			}
			if st.Missing != 0 {
				t.Errorf("reported %d missing", st.Missing)
			}
		})
	}
}

// TestReadStopsAtTheEndOfTheStart: messages published during a read are not waited for, and a
// filter that matches nothing returns at once.
func TestReadStopsAtTheEndOfTheStart(t *testing.T) {
	js, stream := setup(t, custodyjs.StreamConfig{})
	for i := range 10 {
		if _, err := js.Publish(t.Context(), "custody.decision.allow.a.t.c", fmt.Appendf(nil, "%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	n := 0
	start := time.Now()
	st, err := custodyjs.Read(t.Context(), stream, custodyjs.ReadOptions{Batch: 3}, func(m *custodyjs.Msg) error {
		n++
		_, err := js.Publish(t.Context(), "custody.decision.allow.a.t.c", []byte("later"))
		return err
	})
	if err != nil || n != 10 || st.End != 10 {
		t.Fatalf("read %d (end %d), err %v; want the 10 there at the start", n, st.End, err)
	}
	if _, err := custodyjs.Read(t.Context(), stream, custodyjs.ReadOptions{Filters: []string{"custody.checkpoint.none"}}, func(*custodyjs.Msg) error {
		t.Fatal("delivered a message that does not match")
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > time.Second {
		t.Errorf("reads took %s: something waited for nothing", took)
	}
}
