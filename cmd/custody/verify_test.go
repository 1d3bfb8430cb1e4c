package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/mod/sumdb/note"

	"github.com/custodyhq/custody/decisionlog"
	custodyjs "github.com/custodyhq/custody/decisionlog/jetstream"
	"github.com/custodyhq/custody/internal/natstest"
	"github.com/custodyhq/custody/pdp"
)

// chainMsg is one message of a test stream: where custody would publish it, and its body.
type chainMsg struct {
	subject string
	body    []byte
}

// testChain is what custody instance inst would publish: n sealed records, with a signed
// checkpoint after every third one. It returns the messages and the verifier key.
func testChain(t *testing.T, inst string, n int) ([]chainMsg, string) {
	t.Helper()
	skey, vkey, err := decisionlog.GenerateSigningKey(decisionlog.SigningKeyName(inst))
	if err != nil {
		t.Fatal(err)
	}
	signer, err := note.NewSigner(skey)
	if err != nil {
		t.Fatal(err)
	}
	at := time.Date(2026, 11, 27, 6, 0, 0, 0, time.UTC)
	var head decisionlog.ChainHead
	var out []chainMsg
	for i := 1; i <= n; i++ {
		r := &decisionlog.Record{
			Schema:        decisionlog.SchemaDecisionV1,
			DecisionID:    fmt.Sprintf("0190-%s-%d", inst, i),
			Timestamp:     at.Add(time.Duration(i) * time.Second),
			CorrelationID: fmt.Sprintf("corr-%d", i%2),
			Endpoint:      "/v1/authorize",
			Subject:       pdp.Entity{Type: "user", ID: "alice@acme.example"},
			Action:        pdp.Action{Name: "send_email"},
			Resource:      pdp.Entity{Type: "tool", ID: "send_email"},
			Agent:         &pdp.Agent{ID: "spiffe://acme.example/agents/mailer"},
			Delegation:    pdp.Delegation{Chain: []any{}},
			Allow:         i%3 != 0,
			Reasons:       []string{},
			PDP:           decisionlog.Instance{Instance: inst, Version: "test"},
		}
		head.Link(r)
		body, err := decisionlog.Seal(r)
		if err != nil {
			t.Fatal(err)
		}
		head = decisionlog.After(r)
		out = append(out, chainMsg{decisionlog.DecisionSubject(r), body})
		if i%3 == 0 {
			cp, err := decisionlog.NewCheckpoint(inst, head, at, signer)
			if err != nil {
				t.Fatal(err)
			}
			body, err := json.Marshal(cp)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, chainMsg{decisionlog.CheckpointSubject(inst), body})
		}
	}
	return out, vkey
}

// writeExport writes msgs as custody export does, one body per line.
func writeExport(t *testing.T, msgs []chainMsg) string {
	t.Helper()
	var b bytes.Buffer
	for _, m := range msgs {
		b.Write(m.body)
		b.WriteByte('\n')
	}
	path := filepath.Join(t.TempDir(), "export.jsonl")
	if err := os.WriteFile(path, b.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestVerifyFile(t *testing.T) {
	msgs, vkey := testChain(t, "i1", 7) // r1 r2 r3 cp3 r4 r5 r6 cp6 r7
	_, otherKey := testChain(t, "i2", 1)
	keyFile := filepath.Join(t.TempDir(), "keys")
	if err := os.WriteFile(keyFile, []byte("# custody verifier keys\n"+otherKey+"\n\n"+vkey+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	edited := append([]chainMsg(nil), msgs...)
	edited[1].body = bytes.Replace(edited[1].body, []byte(`"allow":true`), []byte(`"allow":false`), 1)
	removedTail := msgs[:6]                                            // r6, cp6, r7 removed: the last checkpoint left is at seq 3
	truncated := append(append([]chainMsg(nil), msgs[:6]...), msgs[7]) // r6, r7 removed, cp6 kept
	crlf := filepath.Join(t.TempDir(), "crlf.jsonl")
	raw, err := os.ReadFile(writeExport(t, msgs))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(crlf, bytes.ReplaceAll(raw, []byte("\n"), []byte("\r\n")), 0o600); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name    string
		args    []string
		wantErr error    // nil, errVerifyFailed or errUsage
		wantOut []string // substrings of stdout
	}{
		{"intact, signed", []string{"--file", writeExport(t, msgs), "--pubkey", vkey}, nil,
			[]string{"signatures: verified", "checkpoints  2 (verified, signed by custody-i1)", "OK: no breaks"}},
		{"intact, keys from a file", []string{"--file", writeExport(t, msgs), "--pubkey", "@" + keyFile, "--require-signed"}, nil,
			[]string{"OK: no breaks"}},
		{"intact, unsigned", []string{"--file", writeExport(t, msgs)}, nil,
			[]string{"NOT CHECKED", "OK: no breaks"}},
		{"intact, CRLF line ends", []string{"--file", crlf, "--pubkey", vkey}, nil,
			[]string{"OK: no breaks"}},
		{"edited record", []string{"--file", writeExport(t, edited), "--pubkey", vkey}, errVerifyFailed,
			[]string{"FAIL: 1 break", "edited              instance=i1 seq=2 message=2:"}},
		{"tail removed with its checkpoint: not detectable", []string{"--file", writeExport(t, removedTail), "--pubkey", vkey}, nil,
			[]string{"unattested   2 records after the last checkpoint", "OK: no breaks"}},
		{"tail removed, checkpoint kept", []string{"--file", writeExport(t, truncated), "--pubkey", vkey}, errVerifyFailed,
			[]string{"truncated           instance=i1 seq=6 message=7:"}},
		{"checkpoints signed by a key not given", []string{"--file", writeExport(t, msgs), "--pubkey", otherKey}, errVerifyFailed,
			[]string{"bad_checkpoint      instance=i1 seq=3", "bad_checkpoint      instance=i1 seq=6"}},
		{"require signed, none verifiable", []string{"--file", writeExport(t, msgs[:3]), "--pubkey", vkey, "--require-signed"}, errVerifyFailed,
			[]string{"FAIL: 1 break", "unsigned            instance=i1 seq=0 message=0: no checkpoint of this instance verifies"}},
		{"require signed without a key", []string{"--file", writeExport(t, msgs), "--require-signed"}, errUsage, nil},
		{"malformed key", []string{"--file", writeExport(t, msgs), "--pubkey", "custody-i1+zz"}, errUsage, nil},
		{"missing key file", []string{"--file", writeExport(t, msgs), "--pubkey", "@" + filepath.Join(t.TempDir(), "nope")}, errUsage, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			err := run(t.Context(), append([]string{"verify"}, tc.args...), &out, &errOut)
			switch {
			case tc.wantErr == nil && err != nil:
				t.Fatalf("verify failed: %v\n%s%s", err, out.String(), errOut.String())
			case tc.wantErr != nil && !errors.Is(err, tc.wantErr):
				t.Fatalf("verify returned %v, want %v\n%s%s", err, tc.wantErr, out.String(), errOut.String())
			}
			if tc.wantErr == errVerifyFailed && exitCode(err, &errOut) != 1 {
				t.Errorf("exit code %d, want 1", exitCode(err, &errOut))
			}
			for _, w := range tc.wantOut {
				if !strings.Contains(out.String(), w) {
					t.Errorf("stdout lacks %q:\n%s", w, out.String())
				}
			}
		})
	}
}

// streamWith starts a NATS server with the CUSTODY stream holding msgs and returns its URL.
func streamWith(t *testing.T, msgs ...chainMsg) (string, jetstream.JetStream) {
	t.Helper()
	ns := natstest.Start(t)
	js, err := jetstream.New(natstest.Connect(t, ns))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := custodyjs.EnsureStream(t.Context(), js, custodyjs.StreamConfig{}); err != nil {
		t.Fatal(err)
	}
	publish(t, js, msgs...)
	return ns.ClientURL(), js
}

func publish(t *testing.T, js jetstream.JetStream, msgs ...chainMsg) {
	t.Helper()
	for _, m := range msgs {
		if _, err := js.PublishMsg(t.Context(), &nats.Msg{Subject: m.subject, Data: m.body}); err != nil {
			t.Fatal(err)
		}
	}
}

func lines(msgs []chainMsg) string {
	var b strings.Builder
	for _, m := range msgs {
		b.Write(m.body)
		b.WriteByte('\n')
	}
	return b.String()
}

func TestExportThenVerify(t *testing.T) {
	a, akey := testChain(t, "i1", 5)
	b, bkey := testChain(t, "i2", 4)
	var all []chainMsg
	for i := range max(len(a), len(b)) { // interleaved, as two instances publish
		if i < len(a) {
			all = append(all, a[i])
		}
		if i < len(b) {
			all = append(all, b[i])
		}
	}
	url, _ := streamWith(t, all...)

	t.Run("whole stream to a file", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "custody.jsonl")
		var out, errOut bytes.Buffer
		if err := run(t.Context(), []string{"export", "--nats-url", url, "--out", path}, &out, &errOut); err != nil {
			t.Fatalf("export: %v\n%s", err, errOut.String())
		}
		got, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != lines(all) {
			t.Errorf("export file differs from the stream:\n got %q\nwant %q", got, lines(all))
		}
		if out.Len() != 0 || !strings.Contains(errOut.String(), fmt.Sprintf("%d messages to %s", len(all), path)) {
			t.Errorf("stdout %q, stderr %q", out.String(), errOut.String())
		}
		out.Reset()
		if err := run(t.Context(), []string{"verify", "--file", path, "--pubkey", akey, "--pubkey", bkey, "--require-signed"}, &out, &errOut); err != nil {
			t.Errorf("verify --file: %v\n%s", err, out.String())
		}
	})
	t.Run("to standard output", func(t *testing.T) {
		var out, errOut bytes.Buffer
		if err := run(t.Context(), []string{"export", "--nats-url", url}, &out, &errOut); err != nil {
			t.Fatalf("export: %v\n%s", err, errOut.String())
		}
		if out.String() != lines(all) {
			t.Errorf("export differs from the stream:\n got %q\nwant %q", out.String(), lines(all))
		}
	})
	t.Run("one correlation ID", func(t *testing.T) {
		var want []chainMsg
		for _, m := range all {
			if strings.HasSuffix(m.subject, ".corr-1") {
				want = append(want, m)
			}
		}
		var out, errOut bytes.Buffer
		if err := run(t.Context(), []string{"export", "--nats-url", url, "--correlation-id", "corr-1"}, &out, &errOut); err != nil {
			t.Fatalf("export: %v\n%s", err, errOut.String())
		}
		if out.String() != lines(want) {
			t.Errorf("filtered export:\n got %q\nwant %q", out.String(), lines(want))
		}
		if !strings.Contains(errOut.String(), "cannot be chain-verified") {
			t.Errorf("stderr does not warn that the export cannot be verified: %q", errOut.String())
		}
	})
	t.Run("nothing matches", func(t *testing.T) {
		for _, args := range [][]string{{"--correlation-id", "nobody"}, {"--since", "1ns"}} {
			var out, errOut bytes.Buffer
			start := time.Now()
			if err := run(t.Context(), append([]string{"export", "--nats-url", url}, args...), &out, &errOut); err != nil {
				t.Fatalf("export %v: %v\n%s", args, err, errOut.String())
			}
			if out.Len() != 0 || time.Since(start) > 2*time.Second {
				t.Errorf("export %v wrote %q in %s, want nothing at once", args, out.String(), time.Since(start))
			}
		}
	})
	t.Run("live stream", func(t *testing.T) {
		var out, errOut bytes.Buffer
		if err := run(t.Context(), []string{"verify", "--nats-url", url, "--pubkey", akey + "," + bkey}, &out, &errOut); err != nil {
			t.Fatalf("verify --nats-url: %v\n%s%s", err, out.String(), errOut.String())
		}
		if !strings.Contains(out.String(), fmt.Sprintf("read %d messages", len(all))) {
			t.Errorf("summary:\n%s", out.String())
		}
	})
	t.Run("live stream with a forged record", func(t *testing.T) {
		// A record re-using i1's seq 2, published on the stream by someone else.
		var r decisionlog.Record
		if err := json.Unmarshal(a[1].body, &r); err != nil {
			t.Fatal(err)
		}
		r.DecisionID, r.Allow = "forged", true
		body, err := decisionlog.Seal(&r)
		if err != nil {
			t.Fatal(err)
		}
		url, js := streamWith(t, all...)
		publish(t, js, chainMsg{decisionlog.DecisionSubject(&r), body})
		var out, errOut bytes.Buffer
		err = run(t.Context(), []string{"verify", "--nats-url", url, "--pubkey", akey, "--pubkey", bkey}, &out, &errOut)
		if !errors.Is(err, errVerifyFailed) || !strings.Contains(out.String(), "inserted            instance=i1 seq=2") {
			t.Errorf("verify = %v, want a failure naming the forged record:\n%s", err, out.String())
		}
	})
}

func TestExportRefusesLineBreaks(t *testing.T) {
	url, _ := streamWith(t, chainMsg{"custody.junk", []byte("two\nlines")})
	path := filepath.Join(t.TempDir(), "custody.jsonl")
	var out, errOut bytes.Buffer
	err := run(t.Context(), []string{"export", "--nats-url", url, "--out", path}, &out, &errOut)
	if err == nil || !strings.Contains(err.Error(), "line break") {
		t.Fatalf("export = %v, want a refusal", err)
	}
	if entries, _ := os.ReadDir(filepath.Dir(path)); len(entries) != 0 {
		t.Errorf("a failed export left files behind: %v", entries)
	}
}

func TestParseSince(t *testing.T) {
	now := time.Date(2026, 11, 27, 6, 0, 0, 0, time.UTC)
	tests := []struct {
		in      string
		want    time.Time
		wantErr bool
	}{
		{"", time.Time{}, false},
		{"90m", now.Add(-90 * time.Minute), false},
		{"2026-11-26T00:00:00Z", time.Date(2026, 11, 26, 0, 0, 0, 0, time.UTC), false},
		{"-5m", time.Time{}, true},
		{"yesterday", time.Time{}, true},
		{"2100-01-01T00:00:00Z", time.Time{}, true},
	}
	for _, tc := range tests {
		got, err := parseSince(tc.in, now)
		if (err != nil) != tc.wantErr || !got.Equal(tc.want) {
			t.Errorf("parseSince(%q) = %v, %v; want %v, error %v", tc.in, got, err, tc.want, tc.wantErr)
		}
	}
}
