// Package tokentest issues real signed JWTs and JWKS for tests: an issuer with keys it generates,
// that can rotate them and mint tokens with any claims, including broken ones. It signs with
// internal/devissuer, as `custody keys dev-issuer` does.
package tokentest

import (
	"crypto/rand"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v3/jwk"

	"github.com/custodyhq/custody/internal/devissuer"
)

// Issuer signs tokens with an ES256 key it generated; Rotate replaces the key with a new one.
type Issuer struct {
	Name string

	mu   sync.Mutex
	keys []jwk.Key // private keys; the last one signs
	n    int
}

// NewIssuer returns an issuer named iss with one key.
func NewIssuer(t testing.TB, iss string) *Issuer {
	t.Helper()
	is := &Issuer{Name: iss}
	is.Rotate(t, false)
	return is
}

// Rotate adds a new signing key. With retire, the previous keys leave the JWKS.
func (is *Issuer) Rotate(t testing.TB, retire bool) {
	t.Helper()
	is.mu.Lock()
	defer is.mu.Unlock()
	is.n++
	suffix := make([]byte, 4)
	_, _ = rand.Read(suffix)
	k, err := devissuer.NewKey(fmt.Sprintf("key-%d-%x", is.n, suffix))
	must(t, err)
	if retire {
		is.keys = nil
	}
	is.keys = append(is.keys, k)
}

// KeyID is the kid of the current signing key.
func (is *Issuer) KeyID() string {
	is.mu.Lock()
	defer is.mu.Unlock()
	kid, _ := is.keys[len(is.keys)-1].KeyID()
	return kid
}

// JWKS returns the public keys as a JWKS document.
func (is *Issuer) JWKS(t testing.TB) []byte {
	t.Helper()
	is.mu.Lock()
	defer is.mu.Unlock()
	raw, err := devissuer.JWKS(is.keys...)
	must(t, err)
	return raw
}

// WriteJWKS writes the JWKS to path atomically.
func (is *Issuer) WriteJWKS(t testing.TB, path string) {
	t.Helper()
	tmp := path + ".tmp"
	must(t, os.WriteFile(tmp, is.JWKS(t), 0o600))
	must(t, os.Rename(tmp, path))
}

// Claims are a token's claims; Token fills iss, exp and iat when they are absent.
type Claims map[string]any

// Token signs claims with the current key.
func (is *Issuer) Token(t testing.TB, claims Claims) string {
	t.Helper()
	all := map[string]any{"iss": is.Name, "exp": time.Now().Add(5 * time.Minute), "iat": time.Now()}
	for k, v := range claims {
		all[k] = v
	}
	is.mu.Lock()
	key := is.keys[len(is.keys)-1]
	is.mu.Unlock()
	signed, err := devissuer.Sign(key, all)
	must(t, err)
	return signed
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
