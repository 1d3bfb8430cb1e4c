package test

import (
	"bytes"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/custodyhq/custody/decisionlog"
	"github.com/custodyhq/custody/internal/natstest"
)

func runCustody(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	cmd := exec.Command(binary, args...)
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	return out.String() + errOut.String(), err
}

// TestChainVerifiesAcrossCrashAndCatchesTampering: decisions under load, a SIGKILL, a restart on
// the same data dir, more decisions, a clean stop. `custody verify` passes on the live stream and
// on an export, with the instance's public key; then edited, removed and forged lines each fail.
func TestChainVerifiesAcrossCrashAndCatchesTampering(t *testing.T) {
	dir := t.TempDir()
	c := startCustody(t, dir, "--checkpoint-every", "25")
	client := &http.Client{Timeout: 10 * time.Second}
	load := func(c *custody, n int) {
		var wg sync.WaitGroup
		for range 4 {
			wg.Go(func() {
				for range n / 4 {
					if _, err := authorize(t, client, c.HTTP, allowBody); err != nil {
						return
					}
				}
			})
		}
		wg.Wait()
	}
	load(c, 120)
	c.Kill()
	c = startCustody(t, dir, "--checkpoint-every", "25")
	load(c, 80)
	natsURL := c.NATS

	pub, err := runCustody(t, "keys", "--data-dir", dir)
	if err != nil {
		t.Fatalf("custody keys: %v: %s", err, pub)
	}
	pubkey := strings.TrimSpace(pub)

	// Stop cleanly so the last checkpoint covers everything, then serve the same data read-only
	// for verification.
	c.Stop(t)
	c = startCustody(t, dir)
	natsURL = c.NATS
	if out, err := runCustody(t, "verify", "--nats-url", natsURL, "--data-dir", dir, "--pubkey", pubkey, "--require-signed"); err != nil {
		t.Fatalf("verify of the live stream failed: %v\n%s", err, out)
	}
	export := filepath.Join(t.TempDir(), "export.jsonl")
	if out, err := runCustody(t, "export", "--nats-url", natsURL, "--data-dir", dir, "--out", export); err != nil {
		t.Fatalf("export: %v\n%s", err, out)
	}
	if out, err := runCustody(t, "verify", "--file", export, "--pubkey", pubkey, "--require-signed"); err != nil {
		t.Fatalf("verify of the export failed: %v\n%s", err, out)
	}

	raw, err := os.ReadFile(export)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(string(raw), "\n"), "\n")
	decisionLine := func(from int) int {
		for i := from; i < len(lines); i++ {
			if strings.Contains(lines[i], `"schema":"custody.decision.v1"`) {
				return i
			}
		}
		t.Fatal("no decision line")
		return -1
	}
	i := decisionLine(len(lines) / 2)
	tamper := []struct {
		name  string
		lines func() []string
		want  string
	}{
		{"edited", func() []string {
			l := append([]string(nil), lines...)
			l[i] = strings.Replace(l[i], `"allow":true`, `"allow":false`, 1)
			return l
		}, "edited"},
		{"removed", func() []string {
			return append(append([]string(nil), lines[:i]...), lines[i+1:]...)
		}, "missing"},
		{"forged", func() []string {
			l := append([]string(nil), lines...)
			return append(l[:i+1], append([]string{l[i]}, l[i+1:]...)...)
		}, "duplicate"},
		{"truncated", func() []string {
			var l []string
			for j, line := range lines {
				if j < len(lines)-10 || !strings.Contains(line, `"schema":"custody.decision.v1"`) {
					l = append(l, line)
				}
			}
			return l
		}, "truncated"},
	}
	for _, tc := range tamper {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "tampered.jsonl")
			if err := os.WriteFile(path, []byte(strings.Join(tc.lines(), "\n")+"\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			out, err := runCustody(t, "verify", "--file", path, "--pubkey", pubkey)
			if err == nil {
				t.Fatalf("verify passed a %s export:\n%s", tc.name, out)
			}
			if !strings.Contains(out, tc.want) {
				t.Fatalf("verify output does not name %q:\n%s", tc.want, out)
			}
		})
	}
}

// TestVerifyRequireSignedIsStrict: `verify --require-signed --pubkey K` exited 0 on a forged,
// unchained record of an invented instance; and with the keys, an instance whose last
// checkpoint commits to a record no longer on the stream (the stream cut to its last messages,
// as `nats stream edit --max-msgs` does) verified OK.
//
// Forging and cutting the stream need write access to it, which the embedded server gives to
// nobody: this runs against a NATS server that takes anyone.
func TestVerifyRequireSignedIsStrict(t *testing.T) {
	dir := t.TempDir()
	ns := natstest.Start(t)
	c := startCustody(t, dir, "--checkpoint-every", "5", "--nats-url", ns.ClientURL(), "--record-mode", "ack")
	client := &http.Client{Timeout: 10 * time.Second}
	for range 7 { // a checkpoint at seq 5, then two records it does not cover
		if a, err := authorize(t, client, c.HTTP, allowBody); err != nil || a.Status != 200 {
			t.Fatalf("authorize: %+v %v", a, err)
		}
	}
	c.Kill() // no checkpoint on the way out
	c = startCustody(t, dir, "--nats-url", ns.ClientURL(), "--record-mode", "ack")
	pub, err := runCustody(t, "keys", "--data-dir", dir)
	if err != nil {
		t.Fatalf("custody keys: %v: %s", err, pub)
	}
	pubkey := strings.TrimSpace(pub)
	if out, err := runCustody(t, "verify", "--nats-url", c.NATS, "--pubkey", pubkey, "--require-signed"); err != nil {
		t.Fatalf("verify of the untouched stream: %v\n%s", err, out)
	}

	t.Run("forged unchained record", func(t *testing.T) {
		r := forgedRecord("forged-verify", "inst-invented")
		body, _ := json.Marshal(r)
		publishForged(t, c.NATS, r, r.DecisionID, body)
		out, err := runCustody(t, "verify", "--nats-url", c.NATS, "--pubkey", pubkey, "--require-signed")
		if err == nil || !strings.Contains(out, "inst-invented") {
			t.Fatalf("verify --require-signed passed a forged record of an invented instance (err %v):\n%s", err, out)
		}
		out, err = runCustody(t, "verify", "--nats-url", c.NATS, "--pubkey", pubkey)
		if !strings.Contains(out, "WARNING") || !strings.Contains(out, "inst-invented") {
			t.Errorf("plain verify does not point out the unattested record (err %v):\n%s", err, out)
		}
	})

	t.Run("checkpointed records gone", func(t *testing.T) {
		nc, err := nats.Connect(c.NATS)
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		js, err := jetstream.New(nc)
		if err != nil {
			t.Fatal(err)
		}
		s, err := js.Stream(t.Context(), decisionlog.StreamName)
		if err != nil {
			t.Fatal(err)
		}
		info, err := s.Info(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		cfg := info.Config
		// Keep the last four messages (the checkpoint at 5, records 6 and 7, the forged record):
		// record 5, which the checkpoint commits to, is gone.
		cfg.MaxMsgs, cfg.Discard = 4, jetstream.DiscardOld
		if _, err := js.UpdateStream(t.Context(), cfg); err != nil {
			t.Fatal(err)
		}
		out, err := runCustody(t, "verify", "--nats-url", c.NATS, "--pubkey", pubkey)
		if err == nil || !strings.Contains(out, "no longer on the stream") {
			t.Fatalf("verify passed a stream whose last checkpoint's record is gone (err %v):\n%s", err, out)
		}
	})
}
