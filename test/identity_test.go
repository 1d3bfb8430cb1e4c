package test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/custodyhq/custody/internal/tokentest"
)

const (
	idp      = "https://idp.acme.example"
	audience = "custody"
)

// TestTokenVerifiedDelegation drives the binary with --require-auth and a trusted issuer: a
// delegation token's identities reach the record as verified, a rotated JWKS is honoured without
// a restart, and no mix of body fields and headers yields a verified identity nobody signed.
func TestTokenVerifiedDelegation(t *testing.T) {
	issuer := tokentest.NewIssuer(t, idp)
	jwks := filepath.Join(t.TempDir(), "jwks.json")
	issuer.WriteJWKS(t, jwks)
	c := startCustody(t, "", "--issuer", idp, "--jwks", jwks, "--audience", audience, "--require-auth")
	client := &http.Client{Timeout: 30 * time.Second}
	bare := `{"agent":{"id":"` + mailer + `"},"tool":{"name":"send_email","server":"mail"},"task":{"intent":"` + intentText + `"}}`
	token := func(scope string) string {
		return issuer.Token(t, tokentest.Claims{"sub": "alice@acme.example", "aud": audience, "scope": scope, "act": map[string]any{"sub": mailer}})
	}

	verified := map[string]bool{} // decision ID -> verified, as the answers imply
	a, err := authorize(t, client, c.HTTP, bare, "Authorization", "Bearer "+token("mail.send"))
	if err != nil || a.Status != 200 || !a.Allow {
		t.Fatalf("valid token: %+v %v", a, err)
	}
	verified[a.DecisionID] = true

	issuer.Rotate(t, true)
	issuer.WriteJWKS(t, jwks)
	a, err = authorize(t, client, c.HTTP, bare, "Authorization", "Bearer "+token("mail.send"))
	if err != nil || a.Status != 200 || !a.Allow {
		t.Fatalf("token under a rotated key: %+v %v", a, err)
	}
	verified[a.DecisionID] = true

	// The attacker: no trusted key, but every other lever.
	forger := tokentest.NewIssuer(t, idp)
	forged := forger.Token(t, tokentest.Claims{"sub": "alice@acme.example", "aud": audience, "scope": "mail.send", "act": map[string]any{"sub": mailer}})
	claimsVerified := `{"agent":{"id":"` + mailer + `"},"user":{"id":"alice@acme.example","properties":{"scopes":["mail.send"]}},
	  "tool":{"name":"send_email","server":"mail"},"delegation":{"verified":true},"context":{"delegation":{"verified":true}}}`
	attacks := []struct {
		name    string
		body    string
		headers []string
	}{
		{"no credentials, body claims verified", claimsVerified, nil},
		{"token from an untrusted key", claimsVerified, []string{"Authorization", "Bearer " + forged}},
		{"token for another audience", bare, []string{"Authorization", "Bearer " + issuer.Token(t, tokentest.Claims{"sub": "alice@acme.example", "aud": "other", "act": map[string]any{"sub": mailer}})}},
		{"expired token", bare, []string{"Authorization", "Bearer " + issuer.Token(t, tokentest.Claims{"sub": "alice@acme.example", "aud": audience, "exp": time.Now().Add(-time.Hour).Unix()})}},
		{"alg none", bare, []string{"Authorization", "Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJhbGljZSJ9."}},
		{"valid token, body names another agent", strings.Replace(claimsVerified, mailer, "spiffe://acme.example/agents/ops", 1), []string{"Authorization", "Bearer " + token("mail.send")}},
		{"valid token, body names another user", strings.Replace(claimsVerified, "alice@acme.example", "bob@acme.example", 1), []string{"Authorization", "Bearer " + token("mail.send")}},
		{"headers that look like identity", claimsVerified, []string{"X-Forwarded-User", "alice@acme.example", "X-Client-Cert", "spiffe://acme.example/agents/mailer"}},
	}
	for _, at := range attacks {
		a, err := authorize(t, client, c.HTTP, at.body, at.headers...)
		if err != nil {
			t.Fatalf("%s: %v", at.name, err)
		}
		if a.Allow || a.Status == 200 {
			t.Fatalf("%s: answered %+v, want a refusal", at.name, a)
		}
	}

	// The two attempts without credentials send a top-level "delegation" member, which the
	// strict decoder refuses (400 unknown_field) before any decision, so they are not recorded.
	msgs := readStream(t, c.NATS)
	if want := 2 + len(attacks) - 2; len(msgs) != want {
		t.Fatalf("%d records, want %d: two decisions and one per refused attempt with credentials", len(msgs), want)
	}
	for _, m := range msgs {
		r := m.Record
		if r.Delegation.Verified != verified[r.DecisionID] {
			t.Fatalf("record %s: verified=%v, but only the two signed requests are verified (reasons %v, error %q)", r.DecisionID, r.Delegation.Verified, r.Reasons, r.Error)
		}
		if !verified[r.DecisionID] && r.Allow {
			t.Fatalf("refused attempt recorded as allow: %+v", r)
		}
		if strings.Contains(string(m.Data), "eyJ") || strings.Contains(string(m.Data), intentText) {
			t.Fatalf("record %s contains a token or the intent: %s", r.DecisionID, m.Data)
		}
	}
}

// TestMutualTLSWorkloadIdentity serves HTTPS with --client-ca: a client certificate's SPIFFE ID is
// the verified agent, and a body naming another agent is refused.
func TestMutualTLSWorkloadIdentity(t *testing.T) {
	dir := t.TempDir()
	ca, caKey := newCA(t)
	writePEM(t, filepath.Join(dir, "ca.pem"), "CERTIFICATE", ca.Raw)
	serverCert := issueCert(t, ca, caKey, "", []net.IP{net.ParseIP("127.0.0.1")})
	writeKeyPair(t, dir, "server", serverCert)
	clientCert := issueCert(t, ca, caKey, mailer, nil)

	c := startCustody(t, "", "--tls-cert", filepath.Join(dir, "server.pem"), "--tls-key", filepath.Join(dir, "server-key.pem"),
		"--client-ca", filepath.Join(dir, "ca.pem"), "--require-auth")
	base := strings.Replace(c.HTTP, "http://", "https://", 1)
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{
		RootCAs: pool, Certificates: []tls.Certificate{clientCert},
	}}}
	body := allowBody
	a, err := authorize(t, client, base, body)
	if err != nil || a.Status != 200 || !a.Allow {
		t.Fatalf("mTLS caller: %+v %v", a, err)
	}
	a, err = authorize(t, client, base, strings.Replace(body, mailer, "spiffe://acme.example/agents/ops", 1))
	if err != nil || a.Status != 400 || a.Error == nil || a.Error.Code != "identity_mismatch" {
		t.Fatalf("body naming another agent: %+v %v", a, err)
	}
	noCert := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	a, err = authorize(t, noCert, base, body)
	if err != nil || a.Status != 401 {
		t.Fatalf("no client certificate with --require-auth: %+v %v", a, err)
	}
	msgs := readStream(t, c.NATS)
	if len(msgs) != 3 {
		t.Fatalf("%d records, want 3", len(msgs))
	}
	first := msgs[0].Record
	if first.Caller == nil || first.Caller.Method != "mtls" || first.Caller.ID != mailer {
		t.Fatalf("caller %+v, want mtls %s", first.Caller, mailer)
	}
}

func newCA(t *testing.T) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "custody test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert, key
}

func issueCert(t *testing.T, ca *x509.Certificate, caKey *ecdsa.PrivateKey, spiffeID string, ips []net.IP) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber: serial, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, IPAddresses: ips,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	if spiffeID != "" {
		u, _ := url.Parse(spiffeID)
		tmpl.URIs = []*url.URL{u}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func writeKeyPair(t *testing.T, dir, name string, c tls.Certificate) {
	t.Helper()
	writePEM(t, filepath.Join(dir, name+".pem"), "CERTIFICATE", c.Certificate[0])
	der, err := x509.MarshalPKCS8PrivateKey(c.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	writePEM(t, filepath.Join(dir, name+"-key.pem"), "PRIVATE KEY", der)
}

func writePEM(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}
