package receipt

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/lestrrat-go/jwx/v3/jwa"
	"github.com/lestrrat-go/jwx/v3/jwk"
	"github.com/lestrrat-go/jwx/v3/jwt"

	"github.com/custodyhq/custody/decisionlog"
)

// Header is the HTTP header that carries a receipt: custody sets it on an allow answer, and the
// agent forwards it, unchanged, to the system it calls.
const Header = "Custody-Receipt"

// DefaultTTL is how long a receipt is valid after its decision.
const DefaultTTL = 5 * time.Minute

// Algorithm signs receipts: ECDSA P-256 with SHA-256, which every JOSE library verifies.
var Algorithm = jwa.ES256()

// Claims are the receipt's claims beyond the registered ones (iss, sub, iat, exp, jti).
const (
	ClaimAct           = "act"
	ClaimDecisionID    = "decision_id"
	ClaimCorrelationID = "correlation_id"
	ClaimAction        = "action"
	ClaimResource      = "resource"
	ClaimTaskID        = "task_id"
)

// Issuer signs receipts with one private key.
type Issuer struct {
	key    jwk.Key
	public jwk.Set
	issuer string
	ttl    time.Duration
}

// NewIssuer returns an issuer signing with key (a private ECDSA P-256 JWK with a kid), naming
// itself iss and issuing receipts valid for ttl (DefaultTTL when 0).
func NewIssuer(key jwk.Key, iss string, ttl time.Duration) (*Issuer, error) {
	if ttl <= 0 {
		ttl = DefaultTTL
	}
	if _, ok := key.KeyID(); !ok {
		if err := jwk.AssignKeyID(key); err != nil {
			return nil, fmt.Errorf("receipt: key id: %w", err)
		}
	}
	if err := key.Set(jwk.AlgorithmKey, Algorithm); err != nil {
		return nil, fmt.Errorf("receipt: key alg: %w", err)
	}
	pub, err := jwk.PublicKeyOf(key)
	if err != nil {
		return nil, fmt.Errorf("receipt: public key: %w", err)
	}
	if err := pub.Set(jwk.KeyUsageKey, jwk.ForSignature); err != nil {
		return nil, fmt.Errorf("receipt: key use: %w", err)
	}
	set := jwk.NewSet()
	if err := set.AddKey(pub); err != nil {
		return nil, fmt.Errorf("receipt: key set: %w", err)
	}
	return &Issuer{key: key, public: set, issuer: iss, ttl: ttl}, nil
}

// TTL is how long receipts are valid.
func (i *Issuer) TTL() time.Duration { return i.ttl }

// JWKS returns the public key set, as served at /.well-known/jwks.json.
func (i *Issuer) JWKS() ([]byte, error) { return json.Marshal(i.public) }

// Sign returns the compact JWS receipt of an allow decision and its expiry.
func (i *Issuer) Sign(r *decisionlog.Record) (string, time.Time, error) {
	if !r.Allow {
		return "", time.Time{}, errors.New("receipt: a deny gets no receipt")
	}
	iat := r.Timestamp.Truncate(time.Second)
	exp := iat.Add(i.ttl)
	b := jwt.NewBuilder().
		Issuer(i.issuer).
		Subject(r.Subject.ID).
		IssuedAt(iat).
		Expiration(exp).
		JwtID(r.DecisionID).
		Claim(ClaimDecisionID, r.DecisionID).
		Claim(ClaimCorrelationID, r.CorrelationID).
		Claim(ClaimAction, r.Action.Name).
		Claim(ClaimResource, map[string]string{"type": r.Resource.Type, "id": r.Resource.ID})
	if r.Agent != nil {
		b = b.Claim(ClaimAct, map[string]string{"sub": r.Agent.ID})
	}
	if r.Task != nil && r.Task.ID != "" {
		b = b.Claim(ClaimTaskID, r.Task.ID)
	}
	tok, err := b.Build()
	if err != nil {
		return "", time.Time{}, fmt.Errorf("receipt: build: %w", err)
	}
	signed, err := jwt.Sign(tok, jwt.WithKey(Algorithm, i.key))
	if err != nil {
		return "", time.Time{}, fmt.Errorf("receipt: sign: %w", err)
	}
	return string(signed), exp, nil
}

// LoadOrCreateKey reads the private JWK at path, or generates an ECDSA P-256 key and writes it
// there (mode 0600) when the file does not exist.
func LoadOrCreateKey(path string) (jwk.Key, error) {
	raw, err := os.ReadFile(path)
	switch {
	case err == nil:
		key, err := jwk.ParseKey(raw)
		if err != nil {
			return nil, fmt.Errorf("receipt: read key %s: %w", path, err)
		}
		if ok, _ := jwk.IsPrivateKey(key); !ok {
			return nil, fmt.Errorf("receipt: key %s: not a private key", path)
		}
		return key, nil
	case !errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("receipt: read key: %w", err)
	}
	pk, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("receipt: generate key: %w", err)
	}
	key, err := jwk.Import(pk)
	if err != nil {
		return nil, fmt.Errorf("receipt: import key: %w", err)
	}
	if err := jwk.AssignKeyID(key); err != nil {
		return nil, fmt.Errorf("receipt: key id: %w", err)
	}
	out, err := json.Marshal(key)
	if err != nil {
		return nil, fmt.Errorf("receipt: encode key: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("receipt: write key: %w", err)
	}
	if err := os.WriteFile(path, out, 0o600); err != nil {
		return nil, fmt.Errorf("receipt: write key: %w", err)
	}
	return key, nil
}
