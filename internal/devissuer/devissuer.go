// Package devissuer signs delegation tokens for trying custody without an identity provider:
// an ES256 key, its JWKS, and RFC 8693-style tokens signed with it. `custody keys dev-issuer`
// and the tests' token issuer (internal/tokentest) both mint with it, so that what a newcomer
// pastes is what the tests prove custody accepts. It is not an identity provider: it signs
// whatever claims it is given.
package devissuer

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"time"

	"github.com/lestrrat-go/jwx/v3/jwa"
	"github.com/lestrrat-go/jwx/v3/jwk"
	"github.com/lestrrat-go/jwx/v3/jwt"

	"github.com/custodyhq/custody/internal/keyfile"
)

// NewKey returns a new ES256 signing key named kid. An empty kid names the key by its RFC 7638
// thumbprint, which stays the same however often the key is reloaded.
func NewKey(kid string) (jwk.Key, error) {
	raw, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("devissuer: generate key: %w", err)
	}
	return signingKey(raw, kid)
}

// signingKey wraps raw as a JWK with the kid, alg and use custody's verifier requires.
func signingKey(raw *ecdsa.PrivateKey, kid string) (jwk.Key, error) {
	k, err := jwk.Import(raw)
	if err != nil {
		return nil, fmt.Errorf("devissuer: import key: %w", err)
	}
	if kid == "" {
		tp, err := k.Thumbprint(crypto.SHA256)
		if err != nil {
			return nil, fmt.Errorf("devissuer: thumbprint: %w", err)
		}
		kid = "dev-" + fmt.Sprintf("%x", tp[:8])
	}
	for _, set := range []struct {
		name string
		v    any
	}{{jwk.KeyIDKey, kid}, {jwk.AlgorithmKey, jwa.ES256()}, {jwk.KeyUsageKey, "sig"}} {
		if err := k.Set(set.name, set.v); err != nil {
			return nil, fmt.Errorf("devissuer: set %s: %w", set.name, err)
		}
	}
	return k, nil
}

// LoadOrCreateKey returns the signing key in the PEM file at path, creating the file (mode
// 0600) with a new key when there is none: later runs reuse it, so tokens minted earlier stay
// valid against the JWKS written earlier.
func LoadOrCreateKey(path string) (jwk.Key, error) {
	raw, err := keyfile.LoadOrCreate(path, func() ([]byte, error) {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, err
		}
		der, err := x509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			return nil, err
		}
		return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
	})
	if err != nil {
		return nil, fmt.Errorf("devissuer: %w", err)
	}
	block, _ := pem.Decode(raw)
	if block == nil || block.Type != "PRIVATE KEY" {
		return nil, fmt.Errorf("devissuer: %s: want a PEM PRIVATE KEY block", path)
	}
	parsed, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("devissuer: %s: %w", path, err)
	}
	ec, ok := parsed.(*ecdsa.PrivateKey)
	if !ok || ec.Curve != elliptic.P256() {
		return nil, fmt.Errorf("devissuer: %s: want a P-256 EC key", path)
	}
	return signingKey(ec, "")
}

// JWKS is the JWKS document of keys' public halves, in order.
func JWKS(keys ...jwk.Key) ([]byte, error) {
	set := jwk.NewSet()
	for _, k := range keys {
		pub, err := k.PublicKey()
		if err != nil {
			return nil, fmt.Errorf("devissuer: public key: %w", err)
		}
		if err := set.AddKey(pub); err != nil {
			return nil, fmt.Errorf("devissuer: jwks: %w", err)
		}
	}
	raw, err := json.Marshal(set)
	if err != nil {
		return nil, fmt.Errorf("devissuer: jwks: %w", err)
	}
	return raw, nil
}

// Sign signs claims with key (ES256), as they are: no claim is added or checked.
func Sign(key jwk.Key, claims map[string]any) (string, error) {
	b := jwt.NewBuilder()
	for k, v := range claims {
		b = b.Claim(k, v)
	}
	tok, err := b.Build()
	if err != nil {
		return "", fmt.Errorf("devissuer: build token: %w", err)
	}
	signed, err := jwt.Sign(tok, jwt.WithKey(jwa.ES256(), key))
	if err != nil {
		return "", fmt.Errorf("devissuer: sign token: %w", err)
	}
	return string(signed), nil
}

// Delegation describes a delegation token: Subject (the human) delegated to Actor (the agent,
// in the act claim) with Scope, for Audience, valid for TTL from Now.
type Delegation struct {
	Issuer   string
	Audience string
	Subject  string
	Actor    string // "" for a token without act, which proves the subject only
	Scope    string // space-separated, as OAuth's scope claim
	TTL      time.Duration
	Now      time.Time
}

// Claims are the token's claims, the ones custody's verifier checks (iss, aud, sub, exp, nbf,
// iat) and maps (scope, act).
func (d Delegation) Claims() (map[string]any, error) {
	switch {
	case d.Issuer == "":
		return nil, errors.New("devissuer: claims: issuer is required")
	case d.Audience == "":
		return nil, errors.New("devissuer: claims: audience is required")
	case d.Subject == "":
		return nil, errors.New("devissuer: claims: subject is required")
	case d.TTL <= 0:
		return nil, errors.New("devissuer: claims: ttl must be positive")
	}
	now := d.Now.Truncate(time.Second)
	c := map[string]any{
		"iss": d.Issuer,
		"aud": d.Audience,
		"sub": d.Subject,
		"iat": now.Unix(),
		"nbf": now.Unix(),
		"exp": now.Add(d.TTL).Unix(),
	}
	if d.Scope != "" {
		c["scope"] = d.Scope
	}
	if d.Actor != "" {
		c["act"] = map[string]any{"sub": d.Actor}
	}
	return c, nil
}
