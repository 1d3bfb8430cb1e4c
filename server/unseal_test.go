package server_test

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"filippo.io/age"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/custodyhq/custody/decisionlog"
	"github.com/custodyhq/custody/decisionlog/vault"
	"github.com/custodyhq/custody/identity"
	"github.com/custodyhq/custody/internal/natstest"
	"github.com/custodyhq/custody/server"
)

const investigatorKey = "inv-key-0123456789"

// vaultServer is a server sealing into a vault on a real JetStream server, recording into mem,
// with one API key (investigator).
func vaultServer(t *testing.T, mem *decisionlog.Memory) (*server.Server, *age.X25519Identity, jetstream.JetStream) {
	t.Helper()
	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	js, err := jetstream.New(natstest.Connect(t, natstest.Start(t)))
	if err != nil {
		t.Fatal(err)
	}
	st, err := vault.EnsureStream(context.Background(), js, 0, 1)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256([]byte(investigatorKey))
	keys, err := identity.ParseAPIKeys(strings.NewReader("investigator "+hex.EncodeToString(sum[:])+"\n"), "test")
	if err != nil {
		t.Fatal(err)
	}
	srv := server.New(engine(t), mem, decisionlog.NewIntentHasher(testKey),
		server.WithIDFunc(sequentialIDs()),
		server.WithInstance(decisionlog.Instance{Instance: "test-instance", Version: "test"}),
		server.WithAPIKeys(keys),
		server.WithVault(vault.New(js, st, []age.Recipient{id.Recipient()}, "test-instance", 0)),
	)
	return srv, id, js
}

// TestVaultWriteFailureIsA503Deny: when the intent cannot be sealed (the vault stream is gone),
// the policy's allow is answered as a 503 deny and recorded as a deny that says why; the
// intent is in neither. A call without an intent does not need the vault.
func TestVaultWriteFailureIsA503Deny(t *testing.T) {
	mem := &decisionlog.Memory{}
	srv, _, js := vaultServer(t, mem)
	if err := js.DeleteStream(context.Background(), vault.StreamName); err != nil {
		t.Fatal(err)
	}
	r := do(t, srv.Handler(), http.MethodPost, "/v1/authorize", "application/json", exampleRequest)
	if r.Status != http.StatusServiceUnavailable || r.Body["allow"] != false || errCode(r) != server.CodeIntentVaultUnavailable {
		t.Fatalf("status %d: %s", r.Status, r.Raw)
	}
	recs := mem.Records()
	if len(recs) != 1 || recs[0].Allow || recs[0].Task.IntentSealed != nil || !contains(recs[0].Reasons, server.ReasonIntentVaultUnavailable) {
		t.Fatalf("records %+v", recs)
	}
	b, _ := json.Marshal(recs[0])
	if strings.Contains(string(b), "Q3 numbers") || strings.Contains(r.Raw, "Q3 numbers") {
		t.Fatal("the intent leaked into the record or the answer")
	}
	noIntent := strings.Replace(exampleRequest, `"intent": "email bob the Q3 numbers"`, `"intent": ""`, 1)
	if r := do(t, srv.Handler(), http.MethodPost, "/v1/authorize", "application/json", noIntent); r.Status != http.StatusOK {
		t.Fatalf("a call without an intent: status %d: %s", r.Status, r.Raw)
	}
}

// TestUnsealReleasesOnlyAfterRecording: the sealed entry comes back, decryptable, only with its
// unseal record durable; when the record cannot be made durable nothing is released.
func TestUnsealReleasesOnlyAfterRecording(t *testing.T) {
	mem := &decisionlog.Memory{}
	srv, id, _ := vaultServer(t, mem)
	r := do(t, srv.Handler(), http.MethodPost, "/v1/authorize", "application/json", exampleRequest)
	if r.Status != http.StatusOK {
		t.Fatalf("authorize: %d %s", r.Status, r.Raw)
	}
	decisionID := r.Body["decision_id"].(string)
	dec := mem.Records()[0]
	if dec.Task.IntentSealed == nil || dec.Task.IntentSealed.Subject != "custody_vault.test-instance."+decisionID {
		t.Fatalf("decision task %+v", dec.Task)
	}
	body := `{"decision_id":"` + decisionID + `","reason":"INC-7"}`

	if r := do(t, srv.Handler(), http.MethodPost, "/v1/unseal", "application/json", body); r.Status != http.StatusUnauthorized {
		t.Fatalf("anonymous unseal: %d %s", r.Status, r.Raw)
	}
	mem.Err = decisionlog.ErrUnavailable
	r = do(t, srv.Handler(), http.MethodPost, "/v1/unseal", "application/json", body, "X-API-Key", investigatorKey)
	if r.Status != http.StatusServiceUnavailable || r.Body["ciphertext"] != nil {
		t.Fatalf("unseal with the stream down: %d %s", r.Status, r.Raw)
	}
	mem.Err = nil
	r = do(t, srv.Handler(), http.MethodPost, "/v1/unseal", "application/json", body, "X-API-Key", investigatorKey)
	if r.Status != http.StatusOK {
		t.Fatalf("unseal: %d %s", r.Status, r.Raw)
	}
	recs := mem.Records()
	u := recs[len(recs)-1]
	if u.Schema != decisionlog.SchemaUnsealV1 || u.DecisionID != decisionID || u.UnsealID != r.Body["unseal_id"] ||
		u.Caller == nil || u.Caller.ID != "investigator" || u.Unseal.Reason != "INC-7" || *u.Unseal.Sealed != *dec.Task.IntentSealed {
		t.Fatalf("unseal record %+v", u)
	}
	ct, err := base64.StdEncoding.DecodeString(r.Body["ciphertext"].(string))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := vault.Decrypt(ct, id); err != nil || string(got) != "email bob the Q3 numbers" {
		t.Fatalf("decrypted %q, %v", got, err)
	}
	// The unseal record is not mistaken for the decision by a later unseal or execution report.
	if r := do(t, srv.Handler(), http.MethodPost, "/v1/unseal", "application/json", body, "X-API-Key", investigatorKey); r.Status != http.StatusOK {
		t.Fatalf("second unseal: %d %s", r.Status, r.Raw)
	}
}

// TestUnsealWithoutVault: an instance without --intent-vault says so.
func TestUnsealWithoutVault(t *testing.T) {
	srv := newServer(t, &decisionlog.Memory{})
	r := do(t, srv.Handler(), http.MethodPost, "/v1/unseal", "application/json", `{"decision_id":"x","reason":"y"}`)
	if r.Status != http.StatusNotFound || errCode(r) != server.CodeIntentVaultDisabled {
		t.Fatalf("status %d: %s", r.Status, r.Raw)
	}
}

func errCode(r response) string {
	e, _ := r.Body["error"].(map[string]any)
	s, _ := e["code"].(string)
	return s
}

func contains(list []string, s string) bool {
	for _, e := range list {
		if e == s {
			return true
		}
	}
	return false
}

// BenchmarkAuthorizeIntentVault is the vault's overhead per decision: the same /v1/authorize
// call (with a task intent) without and with --intent-vault, the vault on a real JetStream file
// stream. go test ./server -run '^$' -bench IntentVault
func BenchmarkAuthorizeIntentVault(b *testing.B) {
	run := func(b *testing.B, h http.Handler) {
		for b.Loop() {
			req := httptest.NewRequest(http.MethodPost, "/v1/authorize", strings.NewReader(exampleRequest))
			req.Header.Set("Content-Type", "application/json")
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			if rec.Code != http.StatusOK {
				b.Fatalf("status %d: %s", rec.Code, rec.Body)
			}
		}
	}
	b.Run("without", func(b *testing.B) { run(b, newServer(b, &decisionlog.Memory{}).Handler()) })
	b.Run("with", func(b *testing.B) {
		id, _ := age.GenerateX25519Identity()
		js, err := jetstream.New(natstest.Connect(b, natstest.Start(b)))
		if err != nil {
			b.Fatal(err)
		}
		st, err := vault.EnsureStream(context.Background(), js, 0, 1)
		if err != nil {
			b.Fatal(err)
		}
		srv := server.New(engine(b), &decisionlog.Memory{}, decisionlog.NewIntentHasher(testKey),
			server.WithVault(vault.New(js, st, []age.Recipient{id.Recipient()}, "bench", 0)))
		run(b, srv.Handler())
	})
}
