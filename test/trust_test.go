package test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/custodyhq/custody/decisionlog"
	"github.com/custodyhq/custody/internal/natstest"
)

// TestEmbeddedNATSRequiresCredentials is the local attacker of the issue against a default
// serve: anonymous clients cannot connect at all; the reader credential that serve writes reads
// the stream (the nats CLI's way and custody's own commands, found through --data-dir) and every
// call that would erase, rewrite or forge the record is refused, so decisions keep being answered
// and verified.
func TestEmbeddedNATSRequiresCredentials(t *testing.T) {
	c := startCustody(t, "")
	client := &http.Client{Timeout: 10 * time.Second}
	if a, err := authorize(t, client, c.HTTP, allowBody); err != nil || a.Status != 200 {
		t.Fatalf("authorize: %+v %v", a, err)
	}

	if nc, err := nats.Connect(c.NATS, nats.Timeout(2*time.Second)); err == nil {
		nc.Close()
		t.Fatal("an anonymous client connected to the embedded NATS server")
	}

	nc, err := nats.Connect(c.NATS, nats.UserCredentials(c.Creds), nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {}))
	if err != nil {
		t.Fatalf("reader.creds: %v", err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx := t.Context()
	stream, err := js.Stream(ctx, decisionlog.StreamName)
	if err != nil {
		t.Fatalf("reader stream info: %v", err)
	}
	before := stream.CachedInfo()
	for name, attempt := range map[string]func() error{
		"stream rm": func() error { return js.DeleteStream(ctx, decisionlog.StreamName) },
		"stream edit --max-msgs 1": func() error {
			cfg := before.Config
			cfg.MaxMsgs = 1
			_, err := js.UpdateStream(ctx, cfg)
			return err
		},
		"js pub forged record": func() error {
			_, err := js.Publish(ctx, "custody.decision.allow.forged.transfer_funds.c1", []byte(`{"allow":true}`))
			return err
		},
	} {
		done := make(chan error, 1)
		go func() { done <- attempt() }()
		select {
		case err := <-done:
			if err == nil {
				t.Errorf("%s: succeeded with the reader credential", name)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("%s: no answer", name)
		}
	}
	info, err := stream.Info(ctx)
	if err != nil {
		t.Fatalf("stream after the attempts: %v", err)
	}
	if info.State.Msgs < before.State.Msgs || info.Config.MaxMsgs != before.Config.MaxMsgs || !info.Created.Equal(before.Created) {
		t.Fatalf("the reader changed the stream: before %+v, after %+v", before.State, info.State)
	}
	for _, m := range readStream(t, c.NATS) {
		if strings.Contains(m.Subject, "forged") {
			t.Fatal("a forged record reached the stream")
		}
	}
	if a, err := authorize(t, client, c.HTTP, allowBody); err != nil || a.Status != 200 {
		t.Fatalf("authorize after the attempts: %+v %v", a, err)
	}
	// custody's own readers find the credential through --data-dir alone.
	if out, err := runCustody(t, "verify", "--nats-url", c.NATS, "--data-dir", c.DataDir); err != nil {
		t.Fatalf("verify --data-dir: %v\n%s", err, out)
	}
	if out, err := runCustody(t, "tail", "--nats-url", c.NATS, "--data-dir", c.DataDir, "--all", "--limit", "1"); err != nil || !strings.Contains(out, "ALLOW") {
		t.Fatalf("tail --data-dir: %v\n%s", err, out)
	}
	// Without it, the reader is told why.
	out, err := runCustody(t, "verify", "--nats-url", c.NATS, "--data-dir", t.TempDir())
	if err == nil || !strings.Contains(out, "reader credential") {
		t.Fatalf("verify with a data dir holding no credential: %v\n%s", err, out)
	}
}

// TestNATSListenNone serves in-process only: no NATS port is open and decisions are recorded.
func TestNATSListenNone(t *testing.T) {
	c := startCustody(t, "", "--nats-listen", "none")
	if c.NATS != "none" {
		t.Fatalf("nats_url = %q, want none", c.NATS)
	}
	client := &http.Client{Timeout: 10 * time.Second}
	if a, err := authorize(t, client, c.HTTP, allowBody); err != nil || a.Status != 200 {
		t.Fatalf("authorize: %+v %v", a, err)
	}
	if strings.Contains(c.Logs(), "Listening for client connections") {
		t.Fatalf("the embedded server listens:\n%s", c.Logs())
	}
}

// TestSwappedStreamIsRefused is the attacker with write access to an external NATS: the stream
// is deleted and recreated without deny-delete while custody runs. custody stops recording into
// the look-alike (every answer a 503 deny, /readyz failing, custody_stream_changed 1) and,
// restarted, refuses to start on it, naming what differs.
func TestSwappedStreamIsRefused(t *testing.T) {
	ns := natstest.Start(t)
	dir := t.TempDir()
	c := startCustody(t, dir, "--nats-url", ns.ClientURL(), "--record-mode", "ack")
	client := &http.Client{Timeout: 10 * time.Second}
	if a, err := authorize(t, client, c.HTTP, allowBody); err != nil || a.Status != 200 {
		t.Fatalf("authorize: %+v %v", a, err)
	}
	js, _ := jetstream.New(natstest.Connect(t, ns))
	s, err := js.Stream(t.Context(), decisionlog.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	cfg := s.CachedInfo().Config
	if err := js.DeleteStream(t.Context(), decisionlog.StreamName); err != nil {
		t.Fatal(err)
	}
	cfg.DenyDelete, cfg.DenyPurge = false, false
	if _, err := js.CreateStream(t.Context(), cfg); err != nil {
		t.Fatal(err)
	}
	natstest.CheckFor(t, 20*time.Second, 100*time.Millisecond, func() error {
		resp, err := client.Get(c.HTTP + "/readyz")
		if err != nil {
			return err
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(body), "changed under this instance") {
			return fmt.Errorf("readyz = %d %s", resp.StatusCode, body)
		}
		return nil
	})
	a, err := authorize(t, client, c.HTTP, allowBody)
	if err != nil {
		t.Fatal(err)
	}
	if a.Status != http.StatusServiceUnavailable || a.Allow {
		t.Fatalf("authorize into a swapped stream: %+v, want a 503 deny", a)
	}
	if msgs := readStream(t, ns.ClientURL()); len(msgs) != 0 {
		t.Fatalf("%d records written into the look-alike stream", len(msgs))
	}
	resp, err := client.Get(c.HTTP + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(metrics), "custody_stream_changed 1") {
		t.Error("custody_stream_changed is not 1")
	}
	if !strings.Contains(c.Logs(), "decision stream changed under this instance") {
		t.Error("no error logged for the swapped stream")
	}
	c.Kill()

	if out := serveMustFail(t, "--data-dir", dir, "--nats-url", ns.ClientURL(), "--record-mode", "ack"); !strings.Contains(out, "deny_delete: stream has false") {
		t.Fatalf("serve on the look-alike stream:\n%s", out)
	}
}

// TestStartRefusesToRewriteTheStream: an instance started with a shorter --retention than the
// stream's used to delete every older record of every instance. It now refuses to start and
// names the difference; --stream-apply-config is the explicit way to change it.
func TestStartRefusesToRewriteTheStream(t *testing.T) {
	ns := natstest.Start(t)
	c := startCustody(t, "", "--nats-url", ns.ClientURL(), "--retention", "720h")
	client := &http.Client{Timeout: 10 * time.Second}
	for range 3 {
		if a, err := authorize(t, client, c.HTTP, allowBody); err != nil || a.Status != 200 {
			t.Fatalf("authorize: %+v %v", a, err)
		}
	}
	c.Stop(t)
	out := serveMustFail(t, "--data-dir", t.TempDir(), "--nats-url", ns.ClientURL(), "--retention", "30s")
	if !strings.Contains(out, "max_age: stream has 720h0m0s, this instance asks for 30s") || !strings.Contains(out, "--stream-apply-config") {
		t.Fatalf("serve with a shorter retention:\n%s", out)
	}
	if got := len(readStream(t, ns.ClientURL())); got != 3 {
		t.Fatalf("%d records left, want 3", got)
	}
	c2 := startCustody(t, "", "--nats-url", ns.ClientURL(), "--retention", "1440h", "--stream-apply-config")
	c2.Stop(t)
	js, _ := jetstream.New(natstest.Connect(t, ns))
	s, err := js.Stream(t.Context(), decisionlog.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	if got := s.CachedInfo().Config.MaxAge; got != 1440*time.Hour {
		t.Fatalf("max_age after --stream-apply-config = %v", got)
	}
}

// serveMustFail runs `custody serve` that is expected to refuse to start, and returns its output;
// a serve that starts anyway is killed after a while and fails the test.
func serveMustFail(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, binary, append([]string{"serve", "--addr", "127.0.0.1:0"}, args...)...)
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	var exit *exec.ExitError
	if ctx.Err() != nil || !errors.As(err, &exit) {
		t.Fatalf("serve %v did not refuse to start: %v\n%s", args, err, out.String())
	}
	return out.String()
}
