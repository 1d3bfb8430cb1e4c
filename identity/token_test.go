package identity_test

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/lestrrat-go/jwx/v3/jwa"
	"github.com/lestrrat-go/jwx/v3/jwk"

	"github.com/custodyhq/custody/identity"
	"github.com/custodyhq/custody/internal/tokentest"
)

const (
	issuerName = "https://idp.acme.example"
	audience   = "custody"
	alice      = "alice@acme.example"
	mailer     = "spiffe://acme.example/agents/mailer"
	planner    = "spiffe://acme.example/agents/planner"
)

func newVerifier(t *testing.T, is *tokentest.Issuer) (*identity.Verifier, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "jwks.json")
	is.WriteJWKS(t, path)
	v, err := identity.NewVerifier(identity.Config{
		Issuers:  []identity.Issuer{{Issuer: is.Name, JWKS: path}},
		Audience: audience,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = v.Close() })
	return v, path
}

func b64(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }

func TestVerifyDelegationChain(t *testing.T) {
	is := tokentest.NewIssuer(t, issuerName)
	v, _ := newVerifier(t, is)
	tok := is.Token(t, tokentest.Claims{
		"sub": alice, "aud": audience, "scope": "mail.send mail.read", "roles": []string{"employee"},
		// planner was delegated to first, and delegated on to mailer, the current actor.
		"act": map[string]any{"sub": mailer, "act": map[string]any{"sub": planner}},
	})
	d, err := v.Verify(t.Context(), tok)
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if d.Subject != alice || d.Issuer != issuerName {
		t.Errorf("subject %q issuer %q", d.Subject, d.Issuer)
	}
	var chain []string
	for _, a := range d.Actors {
		chain = append(chain, a.Subject)
	}
	if diff := cmp.Diff([]string{planner, mailer}, chain); diff != "" {
		t.Errorf("actors, earliest first (-want +got):\n%s", diff)
	}
	if d.CurrentActor().Subject != mailer {
		t.Errorf("current actor %q, want the outermost act %q", d.CurrentActor().Subject, mailer)
	}
	wantProps := map[string]any{"scopes": []any{"mail.send", "mail.read"}, "roles": []any{"employee"}}
	if diff := cmp.Diff(wantProps, d.Props); diff != "" {
		t.Errorf("subject properties (-want +got):\n%s", diff)
	}
}

func TestVerifyRefusesBadTokens(t *testing.T) {
	is := tokentest.NewIssuer(t, issuerName)
	other := tokentest.NewIssuer(t, "https://evil.example")
	v, _ := newVerifier(t, is)
	good := tokentest.Claims{"sub": alice, "aud": audience, "act": map[string]any{"sub": mailer}}
	with := func(k string, val any) tokentest.Claims {
		c := tokentest.Claims{}
		for kk, vv := range good {
			c[kk] = vv
		}
		if val == nil {
			delete(c, k)
		} else {
			c[k] = val
		}
		return c
	}
	valid := is.Token(t, good)
	parts := strings.Split(valid, ".")

	// An attacker who knows the public key signs HS256 with it as the HMAC secret.
	pubJWKS := is.JWKS(t)
	hsHeader := b64(`{"alg":"HS256","kid":"` + is.KeyID() + `","typ":"JWT"}`)
	mac := hmac.New(sha256.New, pubJWKS)
	mac.Write([]byte(hsHeader + "." + parts[1]))
	hsToken := hsHeader + "." + parts[1] + "." + base64.RawURLEncoding.EncodeToString(mac.Sum(nil))

	// A validly signed token whose payload is swapped afterwards.
	forgedPayload := b64(`{"sub":"admin@acme.example","aud":"custody","iss":"` + issuerName + `","exp":9999999999}`)

	tests := []struct {
		name  string
		token string
		want  error
	}{
		{"expired", is.Token(t, with("exp", time.Now().Add(-time.Hour).Unix())), identity.ErrTokenInvalid},
		{"not yet valid", is.Token(t, with("nbf", time.Now().Add(time.Hour).Unix())), identity.ErrTokenInvalid},
		{"wrong audience", is.Token(t, with("aud", "someone-else")), identity.ErrTokenInvalid},
		{"no audience", is.Token(t, with("aud", nil)), identity.ErrTokenInvalid},
		{"no subject", is.Token(t, with("sub", nil)), identity.ErrTokenInvalid},
		{"untrusted issuer", other.Token(t, good), identity.ErrUnknownIssuer},
		{"issuer claims ours, signed by another key", other.Token(t, with("iss", issuerName)), identity.ErrUnknownKey},
		{"bad signature", parts[0] + "." + parts[1] + "." + strings.Repeat("A", len(parts[2])), identity.ErrTokenInvalid},
		{"payload swapped", parts[0] + "." + forgedPayload + "." + parts[2], identity.ErrTokenInvalid},
		{"alg none", b64(`{"alg":"none","kid":"`+is.KeyID()+`"}`) + "." + parts[1] + ".", identity.ErrTokenMalformed},
		{"alg none with a signature", b64(`{"alg":"none","kid":"`+is.KeyID()+`"}`) + "." + parts[1] + ".c2ln", identity.ErrAlgorithm},
		{"HS256 keyed with the public key", hsToken, identity.ErrAlgorithm},
		{"truncated", valid[:len(valid)/2], identity.ErrTokenMalformed},
		{"not a JWT", "hello", identity.ErrTokenMalformed},
		{"100 KB token", is.Token(t, with("pad", strings.Repeat("x", 100<<10))), identity.ErrTokenTooLarge},
		{"act without sub", is.Token(t, with("act", map[string]any{"client_id": "x"})), identity.ErrTokenInvalid},
		{"act not an object", is.Token(t, with("act", "mailer")), identity.ErrTokenInvalid},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d, err := v.Verify(t.Context(), tc.token)
			if !errors.Is(err, tc.want) {
				t.Fatalf("Verify = %+v, %v; want error %v", d, err, tc.want)
			}
			if strings.Contains(err.Error(), tc.token) && len(tc.token) > 10 {
				t.Error("error message contains the token")
			}
		})
	}
}

func TestUnknownKidAndDepth(t *testing.T) {
	is := tokentest.NewIssuer(t, issuerName)
	v, _ := newVerifier(t, is)
	// A key the JWKS never had.
	stranger := tokentest.NewIssuer(t, issuerName)
	if _, err := v.Verify(t.Context(), stranger.Token(t, tokentest.Claims{"sub": alice, "aud": audience})); !errors.Is(err, identity.ErrUnknownKey) {
		t.Fatalf("unknown kid: %v", err)
	}
	act := map[string]any{"sub": "agent-0"}
	for i := 1; i <= identity.MaxDelegationDepth; i++ {
		act = map[string]any{"sub": "agent", "act": act}
	}
	if _, err := v.Verify(t.Context(), is.Token(t, tokentest.Claims{"sub": alice, "aud": audience, "act": act})); !errors.Is(err, identity.ErrDelegationDepth) {
		t.Fatalf("deep chain: %v", err)
	}
}

func TestKeyRotationFromFile(t *testing.T) {
	is := tokentest.NewIssuer(t, issuerName)
	v, path := newVerifier(t, is)
	claims := tokentest.Claims{"sub": alice, "aud": audience}
	if _, err := v.Verify(t.Context(), is.Token(t, claims)); err != nil {
		t.Fatal(err)
	}
	is.Rotate(t, true) // the old key leaves the JWKS
	is.WriteJWKS(t, path)
	if _, err := v.Verify(t.Context(), is.Token(t, claims)); err != nil {
		t.Fatalf("token under the rotated key: %v", err)
	}
}

func TestKeyRotationFromURL(t *testing.T) {
	is := tokentest.NewIssuer(t, issuerName)
	var fetches atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fetches.Add(1)
		w.Header().Set("Content-Type", "application/jwk-set+json")
		_, _ = w.Write(is.JWKS(t))
	}))
	t.Cleanup(srv.Close)
	v, err := identity.NewVerifier(identity.Config{
		Issuers:  []identity.Issuer{{Issuer: issuerName, JWKS: srv.URL}},
		Audience: audience,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = v.Close() })
	claims := tokentest.Claims{"sub": alice, "aud": audience}
	for range 5 {
		if _, err := v.Verify(t.Context(), is.Token(t, claims)); err != nil {
			t.Fatal(err)
		}
	}
	if n := fetches.Load(); n != 1 {
		t.Fatalf("%d JWKS fetches for 5 tokens, want 1 (cached)", n)
	}
	is.Rotate(t, true)
	if _, err := v.Verify(t.Context(), is.Token(t, claims)); err != nil {
		t.Fatalf("token under the rotated key: %v", err)
	}
	// Made-up key IDs must not make custody refetch every time.
	stranger := tokentest.NewIssuer(t, issuerName)
	for range 10 {
		_, _ = v.Verify(t.Context(), stranger.Token(t, claims))
	}
	if n := fetches.Load(); n > 3 {
		t.Fatalf("%d JWKS fetches: unknown kids are not rate-limited", n)
	}
}

func TestJWKSRefusesSymmetricAndAlgLessKeys(t *testing.T) {
	oct, err := jwk.Import([]byte("a-shared-secret-that-must-not-verify"))
	if err != nil {
		t.Fatal(err)
	}
	_ = oct.Set(jwk.KeyIDKey, "oct")
	_ = oct.Set(jwk.AlgorithmKey, jwa.HS256())
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	noAlg, err := jwk.Import(&rsaKey.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	_ = noAlg.Set(jwk.KeyIDKey, "no-alg")
	set := jwk.NewSet()
	_ = set.AddKey(oct)
	_ = set.AddKey(noAlg)
	path := filepath.Join(t.TempDir(), "jwks.json")
	buf, _ := jsonMarshal(set)
	writeFile(t, path, buf)
	v, err := identity.NewVerifier(identity.Config{Issuers: []identity.Issuer{{Issuer: issuerName, JWKS: path}}, Audience: audience})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = v.Close() })
	hsHeader := b64(`{"alg":"HS256","kid":"oct"}`)
	if _, err := v.Verify(t.Context(), hsHeader+"."+b64(`{"sub":"x"}`)+".c2ln"); err == nil {
		t.Fatal("a JWKS with only a symmetric key verified a token")
	}
}

// TestIssuerSubjectPatterns: with two trusted issuers, each names only the subjects and actors
// its patterns allow, matched in full (issue 16: a token from the second issuer with sub
// alice@acme.example was alice).
func TestIssuerSubjectPatterns(t *testing.T) {
	acme := tokentest.NewIssuer(t, issuerName)
	partner := tokentest.NewIssuer(t, "https://idp.partner.example")
	dir := t.TempDir()
	acme.WriteJWKS(t, filepath.Join(dir, "acme.json"))
	partner.WriteJWKS(t, filepath.Join(dir, "partner.json"))
	v, err := identity.NewVerifier(identity.Config{
		Issuers: []identity.Issuer{
			{Issuer: issuerName, JWKS: filepath.Join(dir, "acme.json"), Subjects: `[^@]+@acme\.example`},
			{Issuer: partner.Name, JWKS: filepath.Join(dir, "partner.json"), Subjects: `[^@]+@partner\.example`, Actors: `spiffe://partner\.example/.+`},
		},
		Audience: audience,
	})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		issuer *tokentest.Issuer
		claims tokentest.Claims
		want   error
	}{
		{"own subject", acme, tokentest.Claims{"sub": alice, "act": map[string]any{"sub": mailer}}, nil},
		{"partner's own subject and actor", partner, tokentest.Claims{"sub": "carol@partner.example", "act": map[string]any{"sub": "spiffe://partner.example/agents/x"}}, nil},
		{"partner names alice", partner, tokentest.Claims{"sub": alice}, identity.ErrSubjectNotAllowed},
		{"suffix is not a match", partner, tokentest.Claims{"sub": "carol@partner.example.evil"}, identity.ErrSubjectNotAllowed},
		{"prefix is not a match", acme, tokentest.Claims{"sub": "x@evil@acme.example"}, identity.ErrSubjectNotAllowed},
		{"partner names acme's agent", partner, tokentest.Claims{"sub": "carol@partner.example", "act": map[string]any{"sub": mailer}}, identity.ErrActorNotAllowed},
		{"earlier actor checked too", partner, tokentest.Claims{"sub": "carol@partner.example", "act": map[string]any{
			"sub": "spiffe://partner.example/agents/x", "act": map[string]any{"sub": planner, "iss": issuerName}}}, identity.ErrActorNotAllowed},
		{"no actor pattern, any actor", acme, tokentest.Claims{"sub": alice, "act": map[string]any{"sub": "spiffe://partner.example/agents/x"}}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.claims["aud"] = audience
			_, err := v.Verify(t.Context(), tt.issuer.Token(t, tt.claims))
			if !errors.Is(err, tt.want) || (tt.want == nil && err != nil) {
				t.Fatalf("Verify: %v, want %v", err, tt.want)
			}
		})
	}
}

func TestIssuerPatternMustCompile(t *testing.T) {
	for _, is := range []identity.Issuer{
		{Issuer: issuerName, JWKS: "x.json", Subjects: `(`},
		{Issuer: issuerName, JWKS: "x.json", Actors: `[a-`},
	} {
		if _, err := identity.NewVerifier(identity.Config{Issuers: []identity.Issuer{is}, Audience: audience}); err == nil {
			t.Errorf("%+v: a bad pattern was accepted", is)
		}
	}
}
