package receipt_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v3/jwa"
	"github.com/lestrrat-go/jwx/v3/jwk"
	"github.com/lestrrat-go/jwx/v3/jws"
	"github.com/lestrrat-go/jwx/v3/jwt"

	"github.com/custodyhq/custody/decisionlog"
	"github.com/custodyhq/custody/pdp"
	"github.com/custodyhq/custody/receipt"
)

var decided = time.Date(2026, 11, 27, 6, 0, 0, 0, time.UTC)

func testIssuer(t *testing.T) (*receipt.Issuer, jwk.Key) {
	t.Helper()
	key, err := receipt.LoadOrCreateKey(filepath.Join(t.TempDir(), "receipt.key"))
	if err != nil {
		t.Fatal(err)
	}
	iss, err := receipt.NewIssuer(key, "custody-test", 5*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	return iss, key
}

func mailRecord() *decisionlog.Record {
	return &decisionlog.Record{
		DecisionID: "d-1", CorrelationID: "c-1", Timestamp: decided, Allow: true,
		Subject: pdp.Entity{Type: "user", ID: "alice@acme.example"}, Action: pdp.Action{Name: "send_email"},
		Resource: pdp.Entity{Type: "mailbox", ID: "alice"}, Agent: &pdp.Agent{ID: "spiffe://a/mailer"},
		Caller: &decisionlog.Caller{Method: "jwt", ID: "alice@acme.example"},
	}
}

func mailCall() receipt.Call {
	return receipt.Call{
		Tool: "send_email", Server: "mail", Subject: "alice@acme.example", Agent: "spiffe://a/mailer",
		Resource:  receipt.Resource{Type: "mailbox", ID: "alice"},
		Arguments: map[string]any{"to": "bob@acme.example", "body": "Q3"},
	}
}

// TestVerify: the helper accepts exactly the call the receipt was signed for, and names why it
// refuses any other.
func TestVerify(t *testing.T) {
	iss, _ := testIssuer(t)
	sign := func(mod func(*decisionlog.Record, *receipt.Binding)) string {
		rec := mailRecord()
		b := receipt.Binding{Server: "mail", Arguments: map[string]any{"body": "Q3", "to": "bob@acme.example"}, DelegationVerified: true}
		if mod != nil {
			mod(rec, &b)
		}
		tok, _, err := iss.Sign(rec, b)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	good := sign(nil)
	at := decided.Add(time.Minute)
	for _, tc := range []struct {
		name  string
		token string
		want  func(*receipt.Expected)
		err   error
	}{
		{name: "the call it was signed for", token: good},
		{name: "other arguments", token: good, want: func(e *receipt.Expected) { e.Arguments["to"] = "eve@evil.example" }, err: receipt.ErrCallMismatch},
		{name: "an extra argument", token: good, want: func(e *receipt.Expected) { e.Arguments["bcc"] = "eve@evil.example" }, err: receipt.ErrCallMismatch},
		{name: "other server", token: good, want: func(e *receipt.Expected) { e.Server = "evil-mail" }, err: receipt.ErrCallMismatch},
		{name: "other tool", token: good, want: func(e *receipt.Expected) { e.Tool = "delete_file" }, err: receipt.ErrCallMismatch},
		{name: "other resource", token: good, want: func(e *receipt.Expected) { e.Resource.ID = "bob" }, err: receipt.ErrCallMismatch},
		{name: "other subject", token: good, want: func(e *receipt.Expected) { e.Subject = "bob@acme.example" }, err: receipt.ErrCallMismatch},
		{name: "other agent", token: good, want: func(e *receipt.Expected) { e.Agent = "spiffe://a/other" }, err: receipt.ErrCallMismatch},
		{name: "no subject expected", token: good, want: func(e *receipt.Expected) { e.Subject = "" }, err: receipt.ErrCallMismatch},
		{name: "expired", token: good, want: func(e *receipt.Expected) { e.Now = decided.Add(6 * time.Minute) }, err: receipt.ErrExpired},
		{name: "not yet valid", token: good, want: func(e *receipt.Expected) { e.Now = decided.Add(-time.Minute) }, err: receipt.ErrNotYetValid},
		{name: "other issuer", token: good, want: func(e *receipt.Expected) { e.Issuer = "custody-prod" }, err: receipt.ErrIssuer},
		{name: "for this audience", token: sign(func(_ *decisionlog.Record, b *receipt.Binding) { b.Audience = "mail-gw" }),
			want: func(e *receipt.Expected) { e.Audience = "mail-gw" }},
		{name: "for another audience", token: sign(func(_ *decisionlog.Record, b *receipt.Binding) { b.Audience = "files-gw" }),
			want: func(e *receipt.Expected) { e.Audience = "mail-gw" }, err: receipt.ErrAudience},
		{name: "audience-bound, checked by no one", token: sign(func(_ *decisionlog.Record, b *receipt.Binding) { b.Audience = "files-gw" }), err: receipt.ErrAudience},
		{name: "no audience, expected one", token: good, want: func(e *receipt.Expected) { e.Audience = "mail-gw" }, err: receipt.ErrAudience},
		{name: "asserted delegation", token: sign(func(_ *decisionlog.Record, b *receipt.Binding) { b.DelegationVerified = false }), err: receipt.ErrUnverifiedDelegation},
		{name: "asserted delegation, accepted", token: sign(func(_ *decisionlog.Record, b *receipt.Binding) { b.DelegationVerified = false }),
			want: func(e *receipt.Expected) { e.AllowUnverified = true }},
		{name: "require_approval not carried out", token: sign(func(r *decisionlog.Record, _ *receipt.Binding) {
			r.Obligations = map[string]any{"require_approval": true}
		}), err: receipt.ErrObligation},
		{name: "require_approval carried out", token: sign(func(r *decisionlog.Record, _ *receipt.Binding) {
			r.Obligations = map[string]any{"require_approval": true}
		}), want: func(e *receipt.Expected) { e.Obligations = []string{"require_approval"} }},
		{name: "tampered", token: tamper(good), err: receipt.ErrSignature},
		{name: "not a JWS", token: "eyJ.x", err: receipt.ErrMalformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			want := receipt.Expected{Call: mailCall(), Now: at}
			if tc.want != nil {
				tc.want(&want)
			}
			c, err := receipt.Verify(tc.token, iss.Keys(), want)
			if !errors.Is(err, tc.err) || (tc.err != nil) == (err == nil) {
				t.Fatalf("Verify: %v, want %v", err, tc.err)
			}
			if err == nil && c.DecisionID != "d-1" {
				t.Errorf("decision_id %q", c.DecisionID)
			}
		})
	}
}

func tamper(tok string) string {
	parts := strings.Split(tok, ".")
	raw, _ := base64.RawURLEncoding.DecodeString(parts[1])
	raw = []byte(strings.Replace(string(raw), "send_email", "send_money", 1))
	return parts[0] + "." + base64.RawURLEncoding.EncodeToString(raw) + "." + parts[2]
}

// TestVerifyRefusesOtherJWTs: a JWT signed by the receipt key but not typed as a receipt (say an
// ID token a confused deployment signs with the same key) is not a receipt.
func TestVerifyRefusesOtherJWTs(t *testing.T) {
	iss, key := testIssuer(t)
	tok := jwt.New()
	for k, v := range map[string]any{"decision_id": "d-1", "exp": decided.Add(time.Hour).Unix(), "delegation_verified": true,
		"sub": "alice@acme.example", "action": "send_email", "server": "mail"} {
		if err := tok.Set(k, v); err != nil {
			t.Fatal(err)
		}
	}
	alg, _ := key.Algorithm()
	signed, err := jwt.Sign(tok, jwt.WithKey(alg, key))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := receipt.Verify(string(signed), iss.Keys(), receipt.Expected{Call: mailCall(), Now: decided}); !errors.Is(err, receipt.ErrType) {
		t.Errorf("Verify: %v, want %v", err, receipt.ErrType)
	}
}

// TestEd25519AndES256: new keys sign EdDSA (RFC 8037), which a standard JOSE library verifies
// from the JWKS; a P-256 key from an older data dir still signs ES256.
func TestEd25519AndES256(t *testing.T) {
	iss, _ := testIssuer(t)
	pk, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ecKey, err := jwk.Import(pk)
	if err != nil {
		t.Fatal(err)
	}
	es, err := receipt.NewIssuer(ecKey, "custody-test", 5*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		iss  *receipt.Issuer
		alg  jwa.SignatureAlgorithm
	}{{"generated key", iss, jwa.EdDSA()}, {"P-256 key", es, jwa.ES256()}} {
		t.Run(tc.name, func(t *testing.T) {
			tok, _, err := tc.iss.Sign(mailRecord(), receipt.Binding{DelegationVerified: true})
			if err != nil {
				t.Fatal(err)
			}
			raw, err := tc.iss.JWKS()
			if err != nil {
				t.Fatal(err)
			}
			set, err := jwk.Parse(raw)
			if err != nil {
				t.Fatal(err)
			}
			msg, err := jws.Parse([]byte(tok))
			if err != nil {
				t.Fatal(err)
			}
			if got, _ := msg.Signatures()[0].ProtectedHeaders().Algorithm(); got != tc.alg {
				t.Errorf("alg %v, want %v", got, tc.alg)
			}
			if _, err := jwt.Parse([]byte(tok), jwt.WithKeySet(set), jwt.WithClock(jwt.ClockFunc(func() time.Time { return decided }))); err != nil {
				t.Errorf("a standard JOSE library does not verify the receipt: %v", err)
			}
		})
	}
}

// TestParseCall: the --call file is read strictly, as the receipt's arguments hash needs.
func TestParseCall(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		ok       bool
	}{
		{"full", `{"tool":"send_email","server":"mail","arguments":{"to":"bob"},"resource":{"type":"mailbox","id":"alice"},"subject":"alice","agent":"a"}`, true},
		{"duplicate argument", `{"tool":"send_email","arguments":{"to":"bob","to":"eve"},"subject":"alice"}`, false},
		{"duplicate field", `{"tool":"send_email","tool":"delete_file","subject":"alice"}`, false},
		{"unknown field", `{"tool":"send_email","subject":"alice","resources":{}}`, false},
		{"case-folded field", `{"TOOL":"send_email","subject":"alice"}`, false},
		{"wrong type", `{"tool":1,"subject":"alice"}`, false},
		{"not finite", `{"tool":"x","subject":"alice","arguments":{"n":1e400}}`, false},
		{"not an object", `[]`, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := receipt.ParseCall([]byte(tc.in))
			if (err == nil) != tc.ok {
				t.Errorf("ParseCall: %v, want ok=%v", err, tc.ok)
			}
		})
	}
}

func FuzzParseCall(f *testing.F) {
	f.Add([]byte(`{"tool":"send_email","server":"mail","arguments":{"to":"bob"},"resource":{"type":"mailbox","id":"alice"},"subject":"alice"}`))
	f.Add([]byte(`{"tool":"t","subject":"s","arguments":{"a":[1,2,{"b":null}]}}`))
	f.Fuzz(func(t *testing.T, in []byte) {
		c, err := receipt.ParseCall(in)
		if err != nil {
			return
		}
		if _, err := receipt.ArgumentsSHA256(c.Arguments); err != nil {
			t.Fatalf("a parsed call's arguments do not hash: %v", err)
		}
	})
}
