package main

import (
	"net"
	"strings"
	"testing"
	"time"
)

// TestServeNATSPortInUse: a clash on the NATS port fails serve at once as "address already in
// use", not after the embedded server's ready timeout as "not ready".
func TestServeNATSPortInUse(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	start := time.Now()
	err = runServe(t.Context(), []string{"--data-dir", t.TempDir(), "--addr", "127.0.0.1:0", "--nats-listen", ln.Addr().String()}, nil, &strings.Builder{})
	if err == nil || !strings.Contains(err.Error(), "address already in use") {
		t.Fatalf("serve on a busy NATS port: %v; want address already in use", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("took %s to fail; want at once", took)
	}
}

// TestServeCleanStopIsQuiet: stopping serve closes its own NATS connection, which is no
// disconnection to warn about.
func TestServeCleanStopIsQuiet(t *testing.T) {
	stop, stderr := serveUntilServing(t, "--data-dir", t.TempDir(), "--addr", "127.0.0.1:0", "--nats-listen", "127.0.0.1:0")
	if err := stop(); err != nil {
		t.Fatalf("serve: %v", err)
	}
	time.Sleep(200 * time.Millisecond) // nats.go calls its disconnect handler asynchronously
	if out := stderr.String(); strings.Contains(out, "nats disconnected") || strings.Contains(out, `"level":"warn"`) {
		t.Errorf("a clean stop warned:\n%s", out)
	}
}

// TestCount: counts printed by the CLI agree with their number ("1 record", not "1 records").
func TestCount(t *testing.T) {
	for _, tc := range []struct {
		n    int
		want string
	}{{0, "0 records"}, {1, "1 record"}, {2, "2 records"}} {
		if got := count(tc.n, "record"); got != tc.want {
			t.Errorf("count(%d) = %q, want %q", tc.n, got, tc.want)
		}
	}
}
