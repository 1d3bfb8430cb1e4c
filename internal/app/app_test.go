package app

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"go.uber.org/goleak"

	"github.com/custodyhq/custody/internal/embeddednats"
	"github.com/custodyhq/custody/internal/natstest"
	custodyhttp "github.com/custodyhq/custody/server"
)

const exampleRequest = `{
  "agent":    {"id": "spiffe://acme.example/agents/mailer", "properties": {}},
  "user":     {"id": "alice@acme.example", "properties": {"roles": ["employee"], "scopes": ["mail.send"]}},
  "tool":     {"name": "send_email", "server": "mail", "arguments": {"to": "bob@acme.example"}},
  "resource": {"type": "mailbox", "id": "alice", "properties": {"owner": "alice@acme.example"}},
  "task":     {"id": "t-42", "attempt": 1, "session_id": "s-7", "intent": "email bob the Q3 numbers"},
  "context":  {}
}`

// testConfig is the default config on a fresh data dir, a free port and an embedded NATS server
// that opens no port.
func testConfig(t testing.TB) Config {
	cfg := DefaultConfig()
	cfg.DataDir, cfg.Addr, cfg.NATSListen = t.TempDir(), "127.0.0.1:0", embeddednats.ListenNone
	cfg.ShutdownTimeout = 5 * time.Second
	return cfg
}

// modeConfig is testConfig in record mode: ack on the embedded server, spool forwarding to an
// external server, which it returns.
func modeConfig(t *testing.T, mode string) (Config, *server.Server) {
	cfg := testConfig(t)
	cfg.RecordMode = mode
	if mode != RecordSpool {
		return cfg, nil
	}
	ns := natstest.Start(t)
	cfg.NATSURL = ns.ClientURL()
	return cfg, ns
}

func shutdown(ns *server.Server) {
	if ns != nil {
		natstest.Shutdown(ns)
	}
}

// run runs a in the background and returns a function that stops it and returns Run's error.
func run(t testing.TB, a *App) (stop func() error) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	return func() error {
		cancel()
		return <-done
	}
}

func authorize(t testing.TB, client *http.Client, url string) map[string]any {
	t.Helper()
	resp, err := client.Post(url+"/v1/authorize", "application/json", strings.NewReader(exampleRequest))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("authorize: status %d, %v %v", resp.StatusCode, out, err)
	}
	return out
}

// TestAppServesAndStops: Addr and NATSURL are known once New returns, before Run; Run answers
// decisions and, once its context ends, stops every goroutine it started; Close gives the data
// dir back. In both record modes, since each runs its own goroutines (probe, forwarder).
func TestAppServesAndStops(t *testing.T) {
	for _, mode := range []string{RecordAck, RecordSpool} {
		t.Run(mode, func(t *testing.T) {
			defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
			cfg, ns := modeConfig(t, mode)
			defer shutdown(ns) // before VerifyNone: its goroutines are not the App's
			a, err := New(t.Context(), cfg)
			if err != nil {
				t.Fatal(err)
			}
			if _, port, _ := net.SplitHostPort(a.Addr()); port == "0" || port == "" {
				t.Fatalf("Addr %q: want the bound port", a.Addr())
			}
			wantNATS := embeddednats.ListenNone
			if ns != nil {
				wantNATS = ns.ClientURL()
			}
			if a.NATSURL() != wantNATS {
				t.Errorf("NATSURL %q, want %q", a.NATSURL(), wantNATS)
			}
			stop := run(t, a)
			client := &http.Client{Transport: &http.Transport{}}
			out := authorize(t, client, a.URL())
			if out["allow"] != true {
				t.Errorf("decision %v, want allow", out)
			}
			natstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
				resp, err := client.Get(a.URL() + "/readyz")
				if err != nil {
					return err
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					return errors.New(string(body))
				}
				return nil
			})
			client.CloseIdleConnections()
			if err := stop(); err != nil {
				t.Fatalf("Run: %v", err)
			}
			if err := a.Close(t.Context()); err != nil {
				t.Fatalf("Close: %v", err)
			}
			if err := a.Run(t.Context()); err == nil {
				t.Error("a second Run ran")
			}
			// The lock is given back: the same data dir serves again.
			again, err := New(t.Context(), cfg)
			if err != nil {
				t.Fatalf("New after Close: %v", err)
			}
			if err := again.Close(t.Context()); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestAppCloseWithoutRun: an App that is built and closed, never run (a caller that fails
// between the two), leaves no goroutine behind, and a spool it opened keeps its records for the
// next start instead of waiting for a forwarder that never ran.
func TestAppCloseWithoutRun(t *testing.T) {
	for _, mode := range []string{RecordAck, RecordSpool} {
		t.Run(mode, func(t *testing.T) {
			defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
			cfg, ns := modeConfig(t, mode)
			defer shutdown(ns)
			a, err := New(t.Context(), cfg)
			if err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			if err := a.Close(t.Context()); err != nil {
				t.Fatalf("Close: %v", err)
			}
			if err := a.Close(t.Context()); err != nil {
				t.Fatalf("second Close: %v", err)
			}
			if d := time.Since(start); d > 2*time.Second {
				t.Errorf("Close took %s", d)
			}
		})
	}
}

// TestAppNewFailsCleanly: a New that fails after it started the embedded NATS server (here: the
// HTTP port is taken) gives everything back: no goroutine stays, the data dir is free.
func TestAppNewFailsCleanly(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	held, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	cfg := testConfig(t)
	cfg.Addr = held.Addr().String()
	_, err = New(t.Context(), cfg)
	if err == nil || !strings.HasPrefix(err.Error(), "app: listen on ") {
		t.Fatalf("New: %v; want the listen error", err)
	}
	if _, err := os.Stat(filepath.Join(cfg.DataDir, "jetstream")); err != nil {
		t.Fatalf("the embedded server had not started: %v", err)
	}
	l, err := lockDataDir(cfg.DataDir)
	if err != nil {
		t.Fatalf("data dir still held: %v", err)
	}
	l.release()
}

// TestAppRefusesBadConfig: New validates what it is given, and says so as ErrConfig, before it
// touches the data dir.
func TestAppRefusesBadConfig(t *testing.T) {
	cfg := testConfig(t)
	cfg.RecordMode = "fast"
	_, err := New(t.Context(), cfg)
	if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), `--record-mode "fast"`) {
		t.Fatalf("New: %v; want ErrConfig naming --record-mode", err)
	}
	if entries, _ := os.ReadDir(cfg.DataDir); len(entries) != 0 {
		t.Fatalf("data dir holds %v after a refused config", entries)
	}
}

// BenchmarkAuthorizeHTTP sends allowed requests through the App as `custody serve` wires it:
// HTTP, the engine, the chained JetStream sink of ack mode on the embedded server, the stream
// guard and a signed receipt. serial is one request at a time (latency); parallel keeps
// GOMAXPROCS*4 in flight (throughput), the decision memo answering; distinct is parallel with
// every request new to the memo (a scope never sent before, as test/load's distinct shape).
func BenchmarkAuthorizeHTTP(b *testing.B) {
	cfg := testConfig(b)
	a, err := New(b.Context(), cfg)
	if err != nil {
		b.Fatal(err)
	}
	stop := run(b, a)
	b.Cleanup(func() {
		if err := stop(); err != nil {
			b.Error(err)
		}
		_ = a.Close(context.Background())
	})
	body := []byte(exampleRequest)
	url := a.URL() + "/v1/authorize"
	post := func(client *http.Client, body []byte) {
		resp, err := client.Post(url, "application/json", bytes.NewReader(body))
		if err != nil {
			b.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || resp.Header.Get(custodyhttp.HeaderReceipt) == "" {
			b.Fatalf("status %d, receipt %q", resp.StatusCode, resp.Header.Get(custodyhttp.HeaderReceipt))
		}
	}
	b.Run("serial", func(b *testing.B) {
		client := &http.Client{Transport: &http.Transport{}}
		defer client.CloseIdleConnections()
		b.ReportAllocs()
		for b.Loop() {
			post(client, body)
		}
	})
	parallel := func(b *testing.B, next func() []byte) {
		b.SetParallelism(4)
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1}}
			defer client.CloseIdleConnections()
			for pb.Next() {
				post(client, next())
			}
		})
	}
	b.Run("parallel", func(b *testing.B) { parallel(b, func() []byte { return body }) })
	var n atomic.Int64
	b.Run("distinct", func(b *testing.B) {
		parallel(b, func() []byte {
			scope := `"mail.send", "bench.` + strconv.FormatInt(n.Add(1), 10) + `"`
			return []byte(strings.Replace(exampleRequest, `"mail.send"`, scope, 1))
		})
	})
}
