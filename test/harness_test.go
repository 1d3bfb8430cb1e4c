package test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/custodyhq/custody/decisionlog"
	custodyjs "github.com/custodyhq/custody/decisionlog/jetstream"
	"github.com/custodyhq/custody/internal/natstest"
)

// binary is the custody binary built once for all tests.
var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "custody-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "custody")
	build := exec.Command("go", "build", "-o", binary, "github.com/custodyhq/custody/cmd/custody")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build custody:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// custody is one running `custody serve` process.
type custody struct {
	cmd     *exec.Cmd
	HTTP    string // base URL
	NATS    string
	DataDir string
	Creds   string // the reader credential serve wrote into DataDir

	mu     sync.Mutex
	logs   bytes.Buffer
	exited chan struct{}
}

// startCustody runs `custody serve` on free ports with its data in dataDir (a new temp dir when
// empty) and returns once it logged that it is serving.
func startCustody(t *testing.T, dataDir string, args ...string) *custody {
	t.Helper()
	c, err := launchCustody(t, dataDir, args...)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// launchCustody is startCustody for any goroutine: it reports a failed start as an error.
func launchCustody(t *testing.T, dataDir string, args ...string) (*custody, error) {
	if dataDir == "" {
		dataDir = t.TempDir()
	}
	full := append([]string{"serve", "--addr", "127.0.0.1:0", "--nats-listen", "127.0.0.1:0", "--data-dir", dataDir, "--log-level", "debug"}, args...)
	c := &custody{cmd: exec.Command(binary, full...), DataDir: dataDir, exited: make(chan struct{})}
	stderr, err := c.cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := c.cmd.Start(); err != nil {
		return nil, err
	}
	started := make(chan map[string]any, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			line := sc.Bytes()
			c.mu.Lock()
			c.logs.Write(line)
			c.logs.WriteByte('\n')
			c.mu.Unlock()
			var entry map[string]any
			if json.Unmarshal(line, &entry) == nil && entry["message"] == "custody serving" {
				started <- entry
			}
		}
		_, _ = io.Copy(io.Discard, stderr)
	}()
	go func() { _ = c.cmd.Wait(); close(c.exited) }()
	t.Cleanup(func() { c.Kill() })
	select {
	case entry := <-started:
		c.HTTP = "http://" + entry["http_addr"].(string)
		c.NATS = entry["nats_url"].(string)
		// With --nats-url there is no embedded server and no credential: the test's own NATS
		// server takes anyone.
		if creds := filepath.Join(dataDir, "nats", "reader.creds"); fileExists(creds) {
			c.Creds = creds
			rememberReaderCreds(t, c.NATS, c.Creds)
		}
	case <-c.exited:
		return nil, fmt.Errorf("custody exited before serving:\n%s", c.Logs())
	case <-time.After(60 * time.Second):
		return nil, fmt.Errorf("custody did not start:\n%s", c.Logs())
	}
	return c, nil
}

// Logs returns everything the process logged so far.
func (c *custody) Logs() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.logs.String()
}

// Stop sends SIGTERM and waits for a graceful exit.
func (c *custody) Stop(t *testing.T) {
	t.Helper()
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.exited:
		if code := c.cmd.ProcessState.ExitCode(); code != 0 {
			t.Errorf("custody exited with %d after SIGTERM:\n%s", code, c.Logs())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("custody did not stop after SIGTERM")
	}
}

// Kill ends the process at once, as a crash would.
func (c *custody) Kill() {
	_ = c.cmd.Process.Kill()
	<-c.exited
}

// answer is what a caller learned from one POST /v1/authorize.
type answer struct {
	Status        int
	DecisionID    string `json:"decision_id"`
	CorrelationID string `json:"correlation_id"`
	Allow         bool   `json:"allow"`
	Reasons       []string
	Error         *struct{ Code, Message string }
}

func authorize(t testing.TB, client *http.Client, base, body string, headers ...string) (answer, error) {
	req, err := http.NewRequest(http.MethodPost, base+"/v1/authorize", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := client.Do(req)
	if err != nil {
		return answer{}, err
	}
	defer resp.Body.Close()
	var a answer
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return answer{}, err
	}
	if err := json.Unmarshal(raw, &a); err != nil {
		return answer{}, fmt.Errorf("status %d, body not JSON: %q", resp.StatusCode, raw)
	}
	a.Status = resp.StatusCode
	if hc := resp.Header.Get("X-Correlation-ID"); a.Status == http.StatusOK && hc != a.CorrelationID {
		return a, fmt.Errorf("X-Correlation-ID %q differs from body %q", hc, a.CorrelationID)
	}
	return a, nil
}

// streamMsg is one message read back from the CUSTODY stream.
type streamMsg struct {
	Subject string
	Header  nats.Header
	Data    []byte
	Record  decisionlog.Record
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// readerCreds maps the NATS URL of each custody started by a test to its reader credential, so
// that a test reading a stream needs only the URL.
var readerCreds sync.Map

// rememberReaderCreds maps url to creds until t ends: a later test's server may get the same
// port, and must not be dialled with this one's credential.
func rememberReaderCreds(t *testing.T, url, creds string) {
	readerCreds.Store(url, creds)
	t.Cleanup(func() { readerCreds.CompareAndDelete(url, creds) })
}

// connectReader connects to natsURL with the reader credential of the custody serving it, if any.
func connectReader(t *testing.T, natsURL string) *nats.Conn {
	t.Helper()
	var opts []nats.Option
	if creds, ok := readerCreds.Load(natsURL); ok {
		opts = append(opts, nats.UserCredentials(creds.(string)))
	}
	nc, err := nats.Connect(natsURL, opts...)
	if err != nil {
		t.Fatalf("connect to %s: %v", natsURL, err)
	}
	return nc
}

// readStream returns every decision record in the CUSTODY stream, in order. Checkpoints and
// other record kinds are left out; readAll keeps them.
func readStream(t *testing.T, natsURL string) []streamMsg {
	t.Helper()
	var out []streamMsg
	for _, m := range readAll(t, natsURL) {
		if strings.HasPrefix(m.Subject, decisionlog.DecisionPrefix+".") {
			out = append(out, m)
		}
	}
	return out
}

// readAll returns every message in the CUSTODY stream, in order.
func readAll(t *testing.T, natsURL string) []streamMsg {
	t.Helper()
	nc := connectReader(t, natsURL)
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var stream jetstream.Stream
	natstest.CheckFor(t, 30*time.Second, 100*time.Millisecond, func() (err error) { // a cluster may still be electing the stream's leader
		stream, err = js.Stream(ctx, decisionlog.StreamName)
		return err
	})
	// The project's one stream reader: to the end as of now, riding out transient errors.
	var out []streamMsg
	_, err = custodyjs.Read(ctx, stream, custodyjs.ReadOptions{}, func(msg *custodyjs.Msg) error {
		m := streamMsg{Subject: msg.Subject, Header: msg.Header, Data: msg.Data}
		if err := json.Unmarshal(msg.Data, &m.Record); err != nil {
			return fmt.Errorf("record on %s is not JSON: %w", m.Subject, err)
		}
		out = append(out, m)
		return nil
	})
	if err != nil {
		t.Fatalf("read the stream: %v", err)
	}
	return out
}
