package forward_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/custodyhq/custody/decisionlog"
	"github.com/custodyhq/custody/decisionlog/forward"
	custodyjs "github.com/custodyhq/custody/decisionlog/jetstream"
	"github.com/custodyhq/custody/decisionlog/ocsf"
	"github.com/custodyhq/custody/decisionlog/ocsf/ocsftest"
	"github.com/custodyhq/custody/internal/natstest"
	"github.com/custodyhq/custody/pdp"
)

// fault is what the receiver does with one request.
type fault int

const (
	accept    fault = iota
	fail503         // 503 with Retry-After: 1 (capped by the forwarder's max backoff)
	reject400       // a 4xx that a retry does not obviously mend
	tooLarge        // 413 for any batch over 10 records
	hang            // read the body, then answer nothing until the client gives up
	storeHang       // store the batch, then hang: the answer is lost (for the crash test)
)

// receiver is a real HTTP SIEM endpoint that stores what it accepts and fails on a script.
type receiver struct {
	t      testing.TB
	mu     sync.Mutex
	script []fault // consumed one per request; accept when empty
	got    []ocsf.Event
	reqs   int
	bad    []string
	srv    *httptest.Server
	addr   string
	block  chan struct{}
}

func newReceiver(t testing.TB, script ...fault) *receiver {
	r := &receiver{t: t, script: script, block: make(chan struct{})}
	r.start("127.0.0.1:0")
	t.Cleanup(func() {
		r.mu.Lock()
		select {
		case <-r.block:
		default:
			close(r.block)
		}
		r.mu.Unlock()
		r.srv.Close()
	})
	return r
}

// start serves on addr; restart uses the same address, as a restarted SIEM would.
func (r *receiver) start(addr string) {
	var ln net.Listener
	natstest.CheckFor(r.t, 10*time.Second, 20*time.Millisecond, func() error {
		var err error
		ln, err = net.Listen("tcp", addr)
		return err
	})
	r.srv = httptest.NewUnstartedServer(http.HandlerFunc(r.serve))
	r.srv.Listener = ln
	r.srv.Start()
	r.addr = ln.Addr().String()
}

func (r *receiver) stop()    { r.srv.CloseClientConnections(); r.srv.Close() }
func (r *receiver) restart() { r.start(r.addr) }
func (r *receiver) url() string {
	return "http://" + r.addr + "/ingest"
}

func (r *receiver) serve(w http.ResponseWriter, req *http.Request) {
	body, err := io.ReadAll(req.Body)
	if err != nil {
		return
	}
	r.mu.Lock()
	r.reqs++
	f := accept
	if len(r.script) > 0 {
		f, r.script = r.script[0], r.script[1:]
	}
	if ct := req.Header.Get("Content-Type"); ct != "application/x-ndjson" {
		r.bad = append(r.bad, "Content-Type "+ct)
	}
	lines := bytes.Split(bytes.TrimSuffix(body, []byte("\n")), []byte("\n"))
	if f == tooLarge && len(lines) <= 10 {
		f = accept
	}
	store := func() {
		for _, l := range lines {
			var e ocsf.Event
			if err := json.Unmarshal(l, &e); err != nil {
				r.bad = append(r.bad, fmt.Sprintf("line not JSON: %q", l))
				continue
			}
			r.got = append(r.got, e)
		}
	}
	block := r.block
	switch f {
	case accept:
		store()
	case storeHang:
		store()
	}
	r.mu.Unlock()
	switch f {
	case accept:
		w.WriteHeader(http.StatusOK)
	case fail503:
		w.Header().Set("Retry-After", "1")
		http.Error(w, "busy", http.StatusServiceUnavailable)
	case reject400:
		http.Error(w, "bad event", http.StatusBadRequest)
	case tooLarge:
		http.Error(w, "too large", http.StatusRequestEntityTooLarge)
	case hang, storeHang:
		select {
		case <-req.Context().Done():
		case <-block:
		}
	}
}

func (r *receiver) events() []ocsf.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]ocsf.Event(nil), r.got...)
}

// env is a CUSTODY stream on a real embedded NATS server.
type env struct {
	t      testing.TB
	js     jetstream.JetStream
	stream jetstream.Stream
	n      int
	// timeout is the per-request timeout. A receiver that stores a batch and answers after it
	// gets the batch again (at least once), so it is long enough for a loaded CI machine.
	timeout time.Duration
}

func newEnv(t testing.TB) *env {
	ns := natstest.Start(t)
	nc := natstest.Connect(t, ns)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	st, err := custodyjs.EnsureStream(context.Background(), js, custodyjs.StreamConfig{})
	if err != nil {
		t.Fatal(err)
	}
	return &env{t: t, js: js, stream: st, timeout: time.Second}
}

// publish adds n sealed decision records, as custody publishes them.
func (e *env) publish(n int) {
	e.t.Helper()
	for range n {
		e.n++
		r := &decisionlog.Record{
			Schema: decisionlog.SchemaDecisionV1, DecisionID: fmt.Sprintf("dec-%05d", e.n), Timestamp: time.Now().UTC(),
			CorrelationID: "corr", Endpoint: "authorize", Subject: pdp.Entity{Type: "user", ID: "alice"},
			Action: pdp.Action{Name: "read_file"}, Resource: pdp.Entity{Type: "tool", ID: "read_file"},
			Agent: &pdp.Agent{ID: "spiffe://acme/agent"}, Delegation: pdp.Delegation{Chain: []any{}},
			Allow: e.n%3 != 0, Reasons: []string{"r"}, Policy: decisionlog.PolicyRef{Query: "q", Revision: "1"},
			PDP: decisionlog.Instance{Instance: "i", Version: "test"},
		}
		decisionlog.ChainHead{Seq: uint64(e.n - 1)}.Link(r)
		body, err := decisionlog.Seal(r)
		if err != nil {
			e.t.Fatal(err)
		}
		msg := &nats.Msg{Subject: decisionlog.DecisionSubject(r), Data: body, Header: nats.Header{}}
		msg.Header.Set(decisionlog.HeaderMsgID, r.DecisionID)
		if _, err := e.js.PublishMsg(context.Background(), msg); err != nil {
			e.t.Fatal(err)
		}
	}
}

func ocsfFormat(m forward.Msg) ([]byte, time.Time, error) {
	ev := ocsf.Map(ocsf.Msg{Seq: m.Seq, Subject: m.Subject, MsgID: m.MsgID, Time: m.Time, Data: m.Data})
	b, err := json.Marshal(ev)
	return b, time.UnixMilli(ev.Time), err
}

// run starts a forwarder; stop cancels it as a kill would, mid-whatever it is doing.
func (e *env) run(sink forward.Sink, cursor string, batch int) (f *forward.Forwarder, stop func()) {
	e.t.Helper()
	f, err := forward.New(forward.Config{
		Stream: e.stream, Sink: sink, Format: ocsfFormat, CursorFile: cursor, Batch: batch,
		MaxWait: 100 * time.Millisecond, Timeout: e.timeout,
		MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond, Logger: zerolog.Nop(),
	})
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx) }()
	stop = func() {
		cancel()
		if err := <-done; err != nil {
			e.t.Errorf("forwarder: %v", err)
		}
	}
	e.t.Cleanup(func() { cancel() })
	return f, stop
}

// account checks what the receiver holds against the stream: every record at least once,
// first deliveries in stream order, and returns the duplicates.
func account(t testing.TB, got []ocsf.Event, stored int) (dups int) {
	t.Helper()
	seen := map[string]bool{}
	var last uint64
	for _, e := range got {
		if seen[e.Metadata.UID] {
			dups++
			continue
		}
		seen[e.Metadata.UID] = true
		if e.Metadata.Sequence == nil || *e.Metadata.Sequence <= last {
			t.Errorf("record %s at stream seq %v after seq %d: out of order", e.Metadata.UID, e.Metadata.Sequence, last)
			continue
		}
		last = *e.Metadata.Sequence
	}
	if len(seen) != stored {
		t.Errorf("receiver holds %d distinct records, the stream %d: %d lost", len(seen), stored, stored-len(seen))
	}
	return dups
}

func waitDelivered(t testing.TB, r *receiver, n int) {
	t.Helper()
	natstest.CheckFor(t, 20*time.Second, 20*time.Millisecond, func() error {
		seen := map[string]bool{}
		for _, e := range r.events() {
			seen[e.Metadata.UID] = true
		}
		if len(seen) < n {
			return fmt.Errorf("receiver has %d of %d records", len(seen), n)
		}
		return nil
	})
}

func get(t testing.TB, h http.Handler, path string) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	return rec.Code, rec.Body.String()
}

// TestReceiverFaults runs the forwarder against a receiver that answers 503, 400 (six times) and 413, hangs
// past the per-request timeout, and goes away and comes back on the same address: every record
// arrives, in order, with no duplicates (no crash happened), while /healthz and the lag metric
// tell the truth along the way.
func TestReceiverFaults(t *testing.T) {
	e := newEnv(t)
	e.publish(120)
	rcv := newReceiver(t, fail503, reject400, reject400, reject400, reject400, reject400, reject400, tooLarge, hang, fail503)
	f, stop := e.run(&forward.HTTPSink{URL: rcv.url(), Client: &http.Client{}}, filepath.Join(t.TempDir(), "cursor"), 40)

	// While the 4xx answers come, the forwarder is unhealthy and holds its place.
	natstest.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
		if code, body := get(t, f.Handler(), "/healthz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "rejected") {
			return fmt.Errorf("healthz %d %s", code, body)
		}
		return nil
	})
	waitDelivered(t, rcv, 120)
	if code, body := get(t, f.Handler(), "/healthz"); code != http.StatusOK {
		t.Errorf("healthz after catching up: %d %s", code, body)
	}

	// The receiver goes away; records published meanwhile wait, counted as lag.
	rcv.stop()
	e.publish(60)
	natstest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		_, m := get(t, f.Handler(), "/metrics")
		if !strings.Contains(m, "custody_forward_lag_records 60") {
			return fmt.Errorf("lag not 60:\n%s", grep(m, "custody_forward_lag"))
		}
		if code, _ := get(t, f.Handler(), "/healthz"); code != http.StatusServiceUnavailable {
			return fmt.Errorf("healthz %d while the receiver is down", code)
		}
		return nil
	})
	rcv.restart()
	waitDelivered(t, rcv, 180)
	natstest.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
		if c := f.Cursor(); c != 180 {
			return fmt.Errorf("cursor %d, want 180", c)
		}
		return nil
	})
	stop()

	got := rcv.events()
	if dups := account(t, got, 180); dups != 0 {
		t.Errorf("%d duplicates without a crash", dups)
	}
	if len(rcv.bad) > 0 {
		t.Errorf("receiver saw: %v", rcv.bad)
	}
	_, m := get(t, f.Handler(), "/metrics")
	for _, want := range []string{`custody_forward_delivered_total 180`, `custody_forward_delivery_failures_total{kind="rejected"} 6`, `custody_forward_lag_records 0`} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %q:\n%s", want, grep(m, "custody_forward"))
		}
	}
	schema := ocsftest.Load(t)
	for _, ev := range got {
		b, _ := json.Marshal(ev)
		schema.Check(t, b)
	}
	t.Logf("receiver faults: %d records stored, %d delivered, 0 lost, 0 duplicated, %d requests", 180, len(got), rcv.reqs)
}

// TestCrashMidBatch stops the forwarder while the receiver holds a batch it already stored but
// never answered, and starts a new one on the same cursor: it resumes at that batch, so the
// receiver has every record, in order, and the only duplicates are that batch's records,
// recognisable by metadata.uid.
func TestCrashMidBatch(t *testing.T) {
	e := newEnv(t)
	e.publish(100)
	cursor := filepath.Join(t.TempDir(), "cursor")
	rcv := newReceiver(t, accept, storeHang)
	f1, stop := e.run(&forward.HTTPSink{URL: rcv.url(), Client: &http.Client{}}, cursor, 25)
	natstest.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
		if n := len(rcv.events()); n < 50 {
			return fmt.Errorf("receiver stored %d", n)
		}
		return nil
	})
	stop() // killed with the second batch stored but unanswered
	if c := f1.Cursor(); c != 25 {
		t.Fatalf("cursor %d after the crash, want 25 (the first batch)", c)
	}
	f2, stop2 := e.run(&forward.HTTPSink{URL: rcv.url(), Client: &http.Client{}}, cursor, 25)
	waitDelivered(t, rcv, 100)
	natstest.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
		if c := f2.Cursor(); c != 100 {
			return fmt.Errorf("cursor %d, want 100", c)
		}
		return nil
	})
	stop2()
	dups := account(t, rcv.events(), 100)
	if dups != 25 {
		t.Errorf("%d duplicates, want exactly the 25 of the batch in flight at the crash", dups)
	}
	t.Logf("crash mid-batch: 100 records stored, %d delivered, 0 lost, %d duplicated (the batch in flight)", len(rcv.events()), dups)
}

// TestFileSink forwards to rotating files and reads them back in name order.
func TestFileSink(t *testing.T) {
	e := newEnv(t)
	e.publish(50)
	dir := t.TempDir()
	sink := &forward.FileSink{Dir: dir, MaxBytes: 8 << 10}
	f, stop := e.run(sink, filepath.Join(t.TempDir(), "cursor"), 10)
	natstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if f.Cursor() != 50 {
			return fmt.Errorf("cursor %d", f.Cursor())
		}
		return nil
	})
	stop()
	sink.Close()
	files, _ := filepath.Glob(filepath.Join(dir, "custody-*.ndjson"))
	if len(files) < 2 {
		t.Errorf("%d files: want rotation at 8 KiB", len(files))
	}
	var got []ocsf.Event
	for _, name := range files { // Glob sorts: names sort in stream order
		fh, err := os.Open(name)
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(fh)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			var ev ocsf.Event
			if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
				t.Fatal(err)
			}
			got = append(got, ev)
		}
		fh.Close()
	}
	if dups := account(t, got, 50); dups != 0 {
		t.Errorf("%d duplicates", dups)
	}
}

// TestSplunkHEC checks the HEC request: the token header, and one HEC event per record with
// the OCSF event inside.
func TestSplunkHEC(t *testing.T) {
	e := newEnv(t)
	e.publish(5)
	var mu sync.Mutex
	var auth []string
	var events []map[string]json.RawMessage
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		auth = append(auth, r.Header.Get("Authorization"))
		dec := json.NewDecoder(r.Body)
		for dec.More() {
			var ev map[string]json.RawMessage
			if err := dec.Decode(&ev); err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			events = append(events, ev)
		}
		_, _ = io.WriteString(w, `{"text":"Success","code":0}`)
	}))
	defer srv.Close()
	f, stop := e.run(&forward.HTTPSink{URL: srv.URL + "/services/collector/event", Client: srv.Client(), SplunkToken: "s3cret", SourceType: "ocsf:custody"}, filepath.Join(t.TempDir(), "cursor"), 100)
	natstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if f.Cursor() != 5 {
			return fmt.Errorf("cursor %d", f.Cursor())
		}
		return nil
	})
	stop()
	mu.Lock()
	defer mu.Unlock()
	if len(events) != 5 || auth[0] != "Splunk s3cret" {
		t.Fatalf("%d events, auth %q", len(events), auth)
	}
	for _, ev := range events {
		var inner ocsf.Event
		if err := json.Unmarshal(ev["event"], &inner); err != nil || inner.ClassUID != ocsf.ClassAPIActivity {
			t.Errorf("event %s: %v", ev["event"], err)
		}
		if string(ev["sourcetype"]) != `"ocsf:custody"` || len(ev["time"]) == 0 {
			t.Errorf("HEC fields %v", ev)
		}
	}
}

func grep(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) && !strings.HasPrefix(l, "#") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestThroughput forwards 5000 records in OCSF form to an accepting receiver and reports the
// rate, the figure docs/siem.md quotes; it fails only if a record is lost or reordered.
func TestThroughput(t *testing.T) {
	e := newEnv(t)
	const n = 5000
	e.publish(n)
	e.timeout = 10 * time.Second
	rcv := newReceiver(t)
	start := time.Now()
	f, stop := e.run(&forward.HTTPSink{URL: rcv.url(), Client: &http.Client{}}, filepath.Join(t.TempDir(), "cursor"), 500)
	natstest.CheckFor(t, 30*time.Second, 5*time.Millisecond, func() error {
		if c := f.Cursor(); c != n {
			return fmt.Errorf("cursor %d of %d", c, n)
		}
		return nil
	})
	elapsed := time.Since(start)
	stop()
	if dups := account(t, rcv.events(), n); dups != 0 {
		t.Errorf("%d duplicates", dups)
	}
	t.Logf("throughput: %d records in %s: %.0f records/s (OCSF, batches of 500, one HTTP receiver)", n, elapsed.Round(time.Millisecond), float64(n)/elapsed.Seconds())
}
