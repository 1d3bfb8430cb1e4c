package receipt_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v3/jwk"
	"github.com/lestrrat-go/jwx/v3/jwt"

	"github.com/custodyhq/custody/decisionlog"
	"github.com/custodyhq/custody/pdp"
	"github.com/custodyhq/custody/receipt"
)

func TestReceiptVerifiesWithJWKS(t *testing.T) {
	path := filepath.Join(t.TempDir(), "receipt.key")
	key, err := receipt.LoadOrCreateKey(path)
	if err != nil {
		t.Fatal(err)
	}
	again, err := receipt.LoadOrCreateKey(path)
	if err != nil {
		t.Fatal(err)
	}
	if !jwk.Equal(key, again) {
		t.Fatal("key not reloaded from the data dir")
	}
	iss, err := receipt.NewIssuer(key, "custody-test", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	rec := &decisionlog.Record{
		DecisionID: "d-1", CorrelationID: "c-1", Timestamp: now, Allow: true,
		Subject: pdp.Entity{Type: "user", ID: "alice"}, Action: pdp.Action{Name: "send_email"},
		Resource: pdp.Entity{Type: "mailbox", ID: "alice"}, Agent: &pdp.Agent{ID: "spiffe://a/mailer"},
	}
	tok, exp, err := iss.Sign(rec, receipt.Binding{})
	if err != nil {
		t.Fatal(err)
	}
	if d := exp.Sub(now); d > time.Minute || d < 58*time.Second {
		t.Errorf("expiry %v after the decision, want about a minute", d)
	}
	raw, err := iss.JWKS()
	if err != nil {
		t.Fatal(err)
	}
	set, err := jwk.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	if ok, _ := jwk.IsPrivateKey(mustKey(t, set)); ok {
		t.Fatal("JWKS publishes the private key")
	}
	got, err := jwt.Parse([]byte(tok), jwt.WithKeySet(set))
	if err != nil {
		t.Fatalf("verify: %v", err)
	}
	var decisionID string
	if err := got.Get(receipt.ClaimDecisionID, &decisionID); err != nil || decisionID != "d-1" {
		t.Errorf("decision_id = %q (%v), want d-1", decisionID, err)
	}
	if jti, _ := got.JwtID(); jti != "d-1" {
		t.Errorf("jti = %q", jti)
	}

	parts := strings.Split(tok, ".")
	tampered := parts[0] + "." + parts[1][:len(parts[1])-2] + "AA." + parts[2]
	if _, err := jwt.Parse([]byte(tampered), jwt.WithKeySet(set)); err == nil {
		t.Error("tampered receipt verified")
	}
	old := *rec
	old.Timestamp = now.Add(-2 * time.Minute)
	expired, _, err := iss.Sign(&old, receipt.Binding{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := jwt.Parse([]byte(expired), jwt.WithKeySet(set)); err == nil {
		t.Error("expired receipt verified")
	}
	if _, _, err := iss.Sign(&decisionlog.Record{DecisionID: "d-2"}, receipt.Binding{}); err == nil {
		t.Error("a deny got a receipt")
	}
}

func mustKey(t *testing.T, set jwk.Set) jwk.Key {
	t.Helper()
	k, ok := set.Key(0)
	if !ok {
		t.Fatal("empty key set")
	}
	return k
}

func BenchmarkSign(b *testing.B) {
	key, err := receipt.LoadOrCreateKey(filepath.Join(b.TempDir(), "receipt.key"))
	if err != nil {
		b.Fatal(err)
	}
	iss, err := receipt.NewIssuer(key, "bench", time.Minute)
	if err != nil {
		b.Fatal(err)
	}
	rec := &decisionlog.Record{
		DecisionID: "01a21bf7-a452-7799-86eb-18ff6501d7fe", CorrelationID: "req-q3-close", Timestamp: time.Now(), Allow: true,
		Subject: pdp.Entity{Type: "user", ID: "alice@acme.example"}, Action: pdp.Action{Name: "send_email"},
		Resource: pdp.Entity{Type: "mailbox", ID: "alice"}, Agent: &pdp.Agent{ID: "spiffe://acme.example/agents/mailer"},
		Task: &pdp.Task{ID: "t-mail"},
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := iss.Sign(rec, receipt.Binding{}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSignES256 is BenchmarkSign with a P-256 key, as data dirs made before Ed25519 hold.
func BenchmarkSignES256(b *testing.B) {
	pk, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	key, err := jwk.Import(pk)
	if err != nil {
		b.Fatal(err)
	}
	iss, err := receipt.NewIssuer(key, "bench", time.Minute)
	if err != nil {
		b.Fatal(err)
	}
	rec := &decisionlog.Record{
		DecisionID: "01a21bf7-a452-7799-86eb-18ff6501d7fe", CorrelationID: "req-q3-close", Timestamp: time.Now(), Allow: true,
		Subject: pdp.Entity{Type: "user", ID: "alice@acme.example"}, Action: pdp.Action{Name: "send_email"},
		Resource: pdp.Entity{Type: "mailbox", ID: "alice"}, Agent: &pdp.Agent{ID: "spiffe://acme.example/agents/mailer"},
		Task: &pdp.Task{ID: "t-mail"},
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := iss.Sign(rec, receipt.Binding{}); err != nil {
			b.Fatal(err)
		}
	}
}
