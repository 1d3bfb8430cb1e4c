package test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/custodyhq/custody/decisionlog/ocsf"
	"github.com/custodyhq/custody/decisionlog/ocsf/ocsftest"
	"github.com/custodyhq/custody/internal/natstest"
)

// forwarder is one running `custody forward` process.
type forwarder struct {
	cmd    *exec.Cmd
	listen string
	mu     sync.Mutex
	logs   bytes.Buffer
	exited chan struct{}
}

func startForward(t *testing.T, args ...string) *forwarder {
	t.Helper()
	f := &forwarder{cmd: exec.Command(binary, append([]string{"forward", "--listen", "127.0.0.1:0"}, args...)...), exited: make(chan struct{})}
	stderr, err := f.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := f.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	started := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			f.mu.Lock()
			f.logs.Write(append(sc.Bytes(), '\n'))
			f.mu.Unlock()
			var e map[string]any
			if json.Unmarshal(sc.Bytes(), &e) == nil && e["message"] == "custody forwarding" {
				started <- e["listen"].(string)
			}
		}
	}()
	go func() { _ = f.cmd.Wait(); close(f.exited) }()
	t.Cleanup(func() { _ = f.cmd.Process.Kill(); <-f.exited })
	select {
	case f.listen = <-started:
	case <-f.exited:
		t.Fatalf("custody forward exited:\n%s", f.Logs())
	case <-time.After(30 * time.Second):
		t.Fatalf("custody forward did not start:\n%s", f.Logs())
	}
	return f
}

func (f *forwarder) Logs() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.logs.String()
}

// TestForwardKilledMidBatch runs `custody forward` against a real HTTP receiver, SIGKILLs it
// while the receiver holds a batch it stored but never answered, and starts it again on the same
// data dir: every message of the stream (decisions and checkpoints) reaches the receiver as a
// valid OCSF event, first deliveries in stream order, and the only duplicates are the batch in
// flight at the kill, recognisable by metadata.uid. `custody export --format ocsf` gives the
// same events.
func TestForwardKilledMidBatch(t *testing.T) {
	c := startCustody(t, "", "--checkpoint-every", "20")
	client := &http.Client{Timeout: 10 * time.Second}
	for i := range 60 {
		body := allowBody
		if i%4 == 3 {
			body = denyBody
		}
		if _, err := authorize(t, client, c.HTTP, body); err != nil {
			t.Fatal(err)
		}
	}

	var mu sync.Mutex
	var got []ocsf.Event
	var lines [][]byte
	reqs, firstBatch := 0, 0
	rcv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		reqs++
		n := reqs
		if n == 2 {
			firstBatch = len(got)
		}
		for _, l := range bytes.Split(bytes.TrimSuffix(body, []byte("\n")), []byte("\n")) {
			var e ocsf.Event
			if err := json.Unmarshal(l, &e); err != nil {
				t.Errorf("line not JSON: %q", l)
			}
			got = append(got, e)
			lines = append(lines, l)
		}
		mu.Unlock()
		if n == 2 { // stored, and the answer never comes: the forwarder dies waiting
			<-r.Context().Done()
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(rcv.Close) // after the forwarders are killed, which frees the hung request
	requests := func() int { mu.Lock(); defer mu.Unlock(); return reqs }

	args := []string{"--to", rcv.URL + "/ingest", "--nats-url", c.NATS, "--data-dir", c.DataDir, "--batch", "20", "--max-wait", "100ms", "--timeout", "60s"}
	f := startForward(t, args...)
	natstest.CheckFor(t, 20*time.Second, 10*time.Millisecond, func() error {
		if n := requests(); n < 2 {
			return fmt.Errorf("receiver has %d requests", n)
		}
		return nil
	})
	_ = f.cmd.Process.Signal(syscall.SIGKILL)
	<-f.exited
	mu.Lock()
	inFlight := len(got) - firstBatch
	mu.Unlock()

	stream := readAll(t, c.NATS)
	f = startForward(t, args...)
	natstest.CheckFor(t, 30*time.Second, 20*time.Millisecond, func() error {
		resp, err := http.Get("http://" + f.listen + "/metrics")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		m, _ := io.ReadAll(resp.Body)
		if !strings.Contains(string(m), "custody_forward_lag_records 0") || !strings.Contains(string(m), fmt.Sprintf("custody_forward_cursor_seq %d", len(stream))) {
			return fmt.Errorf("not caught up (stream holds %d): %s", len(stream), m)
		}
		return nil
	})
	if resp, err := http.Get("http://" + f.listen + "/healthz"); err != nil || resp.StatusCode != http.StatusOK {
		t.Errorf("healthz: %v %v", resp, err)
	}
	_ = f.cmd.Process.Signal(syscall.SIGTERM)
	<-f.exited

	mu.Lock()
	defer mu.Unlock()
	seen := map[string]int{}
	var order []uint64
	dups := 0
	for _, e := range got {
		if seen[e.Metadata.UID]++; seen[e.Metadata.UID] > 1 {
			dups++
			continue
		}
		order = append(order, *e.Metadata.Sequence)
	}
	for i, seq := range order {
		if seq != uint64(i+1) {
			t.Fatalf("first deliveries out of order or with a gap at %d: seq %d", i, seq)
		}
	}
	if len(order) != len(stream) {
		t.Errorf("%d distinct events delivered, stream holds %d: %d lost", len(order), len(stream), len(stream)-len(order))
	}
	if dups != inFlight {
		t.Errorf("%d duplicates, want the %d of the batch in flight at the kill", dups, inFlight)
	}
	kinds := map[int]int{}
	schema := ocsftest.Load(t)
	for i, l := range lines {
		schema.Check(t, l)
		kinds[got[i].ClassUID]++
	}
	if kinds[ocsf.ClassAPIActivity] == 0 || kinds[ocsf.ClassBaseEvent] == 0 {
		t.Errorf("events by class %v: want decisions and checkpoints", kinds)
	}
	t.Logf("forward killed mid-batch: stream %d, delivered %d, lost %d, duplicated %d (the batch in flight, by metadata.uid)", len(stream), len(got), len(stream)-len(order), dups)

	out, err := runCustody(t, "export", "--format", "ocsf", "--nats-url", c.NATS, "--data-dir", c.DataDir)
	if err != nil {
		t.Fatalf("export: %v\n%s", err, out)
	}
	n := 0
	for _, l := range strings.Split(out, "\n") {
		if !strings.HasPrefix(l, "{") {
			continue
		}
		schema.Check(t, []byte(l))
		n++
	}
	if n != len(stream) {
		t.Errorf("export --format ocsf wrote %d events, stream holds %d", n, len(stream))
	}
}
