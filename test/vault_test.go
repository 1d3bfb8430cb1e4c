package test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"filippo.io/age"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/custodyhq/custody/decisionlog"
	"github.com/custodyhq/custody/decisionlog/vault"
	"github.com/custodyhq/custody/internal/natstest"
)

// vaultPrompt is the intent the test seals: a string that appears nowhere else, so finding it in
// any byte of the stream or the logs is a leak.
const vaultPrompt = "PROMPT-zebra-quartz-7781: wire the Q3 bonus pool to account 9"

// TestIntentVaultSealAndUnseal runs serve with --intent-vault and checks the whole path: the
// prompt never reaches the decision stream or the logs; the record carries intent_sha256 and a
// sealed reference under its hash; the reader credential cannot reach the vault in any way;
// unseal refuses anonymous callers and unknown decisions with JSON errors; with the right
// identity it prints the prompt, with a wrong one it fails and prints nothing of it, and each
// unseal leaves a chained custody.unseal.v1 record that custody verify accepts.
func TestIntentVaultSealAndUnseal(t *testing.T) {
	keys := t.TempDir()
	right, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	wrong, _ := age.GenerateX25519Identity()
	rightFile, wrongFile := filepath.Join(keys, "right.key"), filepath.Join(keys, "wrong.key")
	writeFile(t, rightFile, "# created: test\n"+right.String()+"\n")
	writeFile(t, wrongFile, wrong.String()+"\n")
	const apiKey = "inv-3f9a0c7e5b1d4a2c"
	sum := sha256.Sum256([]byte(apiKey))
	keysFile, keyFile := filepath.Join(keys, "api-keys"), filepath.Join(keys, "investigator.key")
	writeFile(t, keysFile, "investigator "+hex.EncodeToString(sum[:])+"\n")
	writeFile(t, keyFile, apiKey+"\n")

	dir := t.TempDir()
	c := startCustody(t, dir, "--intent-vault", right.Recipient().String(), "--api-keys-file", keysFile,
		"--checkpoint-every", "2", "--intent-vault-retention", "720h")
	body := func(corr, intent string) string {
		return fmt.Sprintf(`{"correlation_id":%q,"agent":{"id":"ops"},"user":{"id":"alice@acme.example"},
		  "tool":{"name":"write_file","arguments":{}},"task":{"id":"t-1","intent":%q}}`, corr, intent)
	}
	var sealed, plain struct {
		DecisionID string `json:"decision_id"`
	}
	if st := postJSON(t, c.HTTP+"/v1/authorize", body("req-vault", vaultPrompt), &sealed); st != http.StatusOK {
		t.Fatalf("authorize: status %d", st)
	}
	if st := postJSON(t, c.HTTP+"/v1/authorize", body("req-plain", ""), &plain); st != http.StatusOK {
		t.Fatalf("authorize without intent: status %d", st)
	}

	// The decision stream: no byte of any message holds the prompt; the record keeps the keyed
	// hash and the reference, and its hash covers the reference.
	var rec *decisionlog.Record
	for _, m := range readAll(t, c.NATS) {
		if strings.Contains(string(m.Data), "zebra-quartz") {
			t.Fatalf("the prompt is on the decision stream, on %s", m.Subject)
		}
		if m.Record.DecisionID == sealed.DecisionID && m.Record.Schema == decisionlog.SchemaDecisionV1 {
			r := m.Record
			rec = &r
			if h, err := decisionlog.BodyHash(m.Data); err != nil || h != r.Hash {
				t.Fatalf("the sealed decision's record does not hash: %v", err)
			}
		}
		if m.Record.DecisionID == plain.DecisionID && m.Record.Task != nil && m.Record.Task.IntentSealed != nil {
			t.Fatal("a decision without an intent names a sealed entry")
		}
	}
	if rec == nil || rec.Task == nil || rec.Task.IntentSHA256 == "" || rec.Task.IntentSealed == nil {
		t.Fatalf("decision record %+v: want task.intent_sha256 and task.intent_sealed", rec)
	}
	ref := rec.Task.IntentSealed
	if ref.Stream != vault.StreamName || !strings.HasPrefix(ref.Subject, vault.SubjectPrefix+".") || ref.Seq == 0 || len(ref.SHA256) != 64 {
		t.Fatalf("sealed reference %+v", ref)
	}

	readerCannotReachVault(t, c)

	// Unseal over HTTP: anonymous, unknown decision, and a decision with nothing sealed are JSON errors.
	if st, code := postUnseal(t, c.HTTP, "", sealed.DecisionID); st != http.StatusUnauthorized || code != "unauthenticated" {
		t.Errorf("anonymous unseal: %d %s, want 401 unauthenticated", st, code)
	}
	if st, code := postUnseal(t, c.HTTP, apiKey, "0190aaaa-0000-7000-8000-000000000000"); st != http.StatusNotFound || code != "unknown_decision" {
		t.Errorf("unknown decision: %d %s, want 404 unknown_decision", st, code)
	}
	out, err := runCustody(t, "unseal", "0190aaaa-0000-7000-8000-000000000000", "--identity", rightFile, "--reason", "INC-42",
		"--pdp-url", c.HTTP, "--api-key-file", keyFile)
	if err == nil || !strings.Contains(out, "unknown_decision") {
		t.Errorf("custody unseal of an unknown decision: %v\n%s", err, out)
	}

	// A wrong identity: the command fails and shows nothing of the prompt.
	out, err = runCustody(t, "unseal", sealed.DecisionID, "--identity", wrongFile, "--reason", "INC-42 wrong key",
		"--pdp-url", c.HTTP, "--api-key-file", keyFile)
	if err == nil || strings.Contains(out, "zebra") || !strings.Contains(out, "does not open") {
		t.Fatalf("unseal with a wrong identity: %v\n%s", err, out)
	}
	// The right identity prints the prompt.
	out, err = runCustody(t, "unseal", sealed.DecisionID, "--identity", rightFile, "--reason", "INC-42 review",
		"--pdp-url", c.HTTP, "--api-key-file", keyFile)
	if err != nil || !strings.Contains(out, vaultPrompt) {
		t.Fatalf("unseal with the right identity: %v\n%s", err, out)
	}

	// Both releases left an unseal record: chained, naming who, which decision, why and which entry.
	var unseals []decisionlog.Record
	for _, m := range readAll(t, c.NATS) {
		if strings.Contains(string(m.Data), "zebra-quartz") {
			t.Fatalf("the prompt is on the decision stream after unseal, on %s", m.Subject)
		}
		if m.Record.Schema == decisionlog.SchemaUnsealV1 {
			if want := decisionlog.UnsealSubject(&m.Record); m.Subject != want {
				t.Errorf("unseal record on %s, want %s", m.Subject, want)
			}
			unseals = append(unseals, m.Record)
		}
	}
	if len(unseals) != 2 {
		t.Fatalf("%d unseal records, want 2 (the wrong identity's release is recorded too)", len(unseals))
	}
	for i, u := range unseals {
		if u.DecisionID != sealed.DecisionID || u.CorrelationID != "req-vault" || u.Caller == nil || u.Caller.ID != "investigator" ||
			u.Unseal == nil || !strings.HasPrefix(u.Unseal.Reason, "INC-42") || u.Unseal.Sealed == nil || *u.Unseal.Sealed != *ref || u.Seq == 0 || u.PrevHash == "" {
			t.Errorf("unseal record %d: %+v", i, u)
		}
	}
	pub, err := runCustody(t, "keys", "--data-dir", dir)
	if err != nil {
		t.Fatal(err)
	}
	// The unseal records are checked like any record.
	if out, err := runCustody(t, "verify", "--nats-url", c.NATS, "--data-dir", dir, "--pubkey", strings.TrimSpace(pub)); err != nil {
		t.Fatalf("verify with unseal records: %v\n%s", err, out)
	}
	// The request's evidence extract holds the unseal records, and checks offline.
	extract := filepath.Join(t.TempDir(), "evidence.json")
	natstest.CheckFor(t, 20*time.Second, 100*time.Millisecond, func() error {
		out, err := runCustody(t, "evidence", "req-vault", "--out", extract, "--nats-url", c.NATS, "--data-dir", dir)
		if err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
		return nil
	})
	raw, err := os.ReadFile(extract)
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(raw), `"kind": "unseal"`); n != 2 || strings.Contains(string(raw), "zebra-quartz") {
		t.Errorf("extract has %d unseal records (want 2), or the prompt", n)
	}
	if out, err := runCustody(t, "verify", "--evidence", extract, "--pubkey", strings.TrimSpace(pub)); err != nil {
		t.Fatalf("verify --evidence: %v\n%s", err, out)
	}
	c.Stop(t)
	if strings.Contains(c.Logs(), "zebra-quartz") {
		t.Fatal("the prompt is in serve's logs")
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

// postUnseal asks POST /v1/unseal and returns the status and error code.
func postUnseal(t *testing.T, base, apiKey, decisionID string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, base+"/v1/unseal", strings.NewReader(fmt.Sprintf(`{"decision_id":%q,"reason":"test"}`, decisionID)))
	req.Header.Set("Content-Type", "application/json")
	if apiKey != "" {
		req.Header.Set("X-API-Key", apiKey)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var e struct {
		Error struct{ Code string } `json:"error"`
	}
	if err := json.Unmarshal(raw, &e); err != nil {
		t.Fatalf("unseal answer is not JSON: %q", raw)
	}
	return resp.StatusCode, e.Error.Code
}

// readerCannotReachVault: with DATA/nats/reader.creds, subscribing to the vault's subjects, its
// stream info, a message get, a direct get and a consumer on it all fail, while the same calls
// on CUSTODY work (so the failures are the permissions, not a broken connection).
func readerCannotReachVault(t *testing.T, c *custody) {
	t.Helper()
	violations := make(chan error, 8)
	nc, err := nats.Connect(c.NATS, nats.UserCredentials(c.Creds), nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
		violations <- err
	}))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	js, _ := jetstream.New(nc)
	if _, err := js.Stream(ctx, decisionlog.StreamName); err != nil {
		t.Fatalf("the reader cannot read CUSTODY either: %v", err)
	}

	sub, err := nc.SubscribeSync(vault.StreamSubjects)
	if err == nil {
		_ = nc.Flush()
		select {
		case err := <-violations:
			if !strings.Contains(strings.ToLower(err.Error()), "permissions violation") {
				t.Errorf("subscribe to %s: %v", vault.StreamSubjects, err)
			}
		case <-time.After(5 * time.Second):
			t.Errorf("the reader subscribed to %s", vault.StreamSubjects)
		}
		_ = sub.Unsubscribe()
	}
	short := func() (context.Context, context.CancelFunc) { return context.WithTimeout(ctx, 2*time.Second) }
	sctx, scancel := short()
	if _, err := js.Stream(sctx, vault.StreamName); err == nil {
		t.Error("the reader read the vault's stream info")
	}
	scancel()
	for _, subj := range []string{"$JS.API.STREAM.MSG.GET." + vault.StreamName, "$JS.API.DIRECT.GET." + vault.StreamName} {
		m, err := nc.Request(subj, []byte(`{"seq":1}`), 2*time.Second)
		if err == nil && m.Header.Get("Nats-Subject") != "" {
			t.Errorf("the reader got a vault entry through %s", subj)
		} else if err == nil && !strings.Contains(string(m.Data), "error") {
			t.Errorf("%s answered %q", subj, m.Data)
		}
	}
	sctx, scancel = short()
	if _, err := js.OrderedConsumer(sctx, vault.StreamName, jetstream.OrderedConsumerConfig{}); err == nil {
		t.Error("the reader made a consumer on the vault")
	}
	scancel()
	sctx, scancel = short()
	if _, err := js.CreateOrUpdateConsumer(sctx, vault.StreamName, jetstream.ConsumerConfig{AckPolicy: jetstream.AckNonePolicy}); err == nil {
		t.Error("the reader made a consumer on the vault")
	}
	scancel()
}
