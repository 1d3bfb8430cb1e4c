package receipt

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/lestrrat-go/jwx/v3/jwa"
	"github.com/lestrrat-go/jwx/v3/jwk"

	"github.com/custodyhq/custody/decisionlog"
	"github.com/custodyhq/custody/internal/keyfile"
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
	signer *ecdsa.PrivateKey
	// header is the receipt's protected header, encoded once: it never changes for a key.
	header string
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
	var signer ecdsa.PrivateKey
	if err := jwk.Export(key, &signer); err != nil {
		return nil, fmt.Errorf("receipt: key: %w", err)
	}
	if signer.Curve != elliptic.P256() {
		return nil, errors.New("receipt: key: not an ECDSA P-256 key")
	}
	kid, _ := key.KeyID()
	header, err := json.Marshal(struct {
		Alg string `json:"alg"`
		Kid string `json:"kid"`
		Typ string `json:"typ"`
	}{Algorithm.String(), kid, "JWT"})
	if err != nil {
		return nil, fmt.Errorf("receipt: header: %w", err)
	}
	return &Issuer{
		signer: &signer,
		header: base64.RawURLEncoding.EncodeToString(header),
		public: set,
		issuer: iss,
		ttl:    ttl,
	}, nil
}

// claims is a receipt's payload. A struct rather than a generic JWT builder: a receipt is signed
// for every allow, and building it through the JOSE library's token model cost as much as the
// signature itself.
type claims struct {
	Iss           string      `json:"iss"`
	Sub           string      `json:"sub,omitempty"`
	Iat           int64       `json:"iat"`
	Exp           int64       `json:"exp"`
	Jti           string      `json:"jti"`
	DecisionID    string      `json:"decision_id"`
	CorrelationID string      `json:"correlation_id"`
	Action        string      `json:"action"`
	Resource      resourceRef `json:"resource"`
	Act           *actorClaim `json:"act,omitempty"`
	TaskID        string      `json:"task_id,omitempty"`
}

type resourceRef struct {
	Type string `json:"type"`
	ID   string `json:"id"`
}

type actorClaim struct {
	Sub string `json:"sub"`
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
	c := claims{
		Iss:           i.issuer,
		Sub:           r.Subject.ID,
		Iat:           iat.Unix(),
		Exp:           exp.Unix(),
		Jti:           r.DecisionID,
		DecisionID:    r.DecisionID,
		CorrelationID: r.CorrelationID,
		Action:        r.Action.Name,
		Resource:      resourceRef{Type: r.Resource.Type, ID: r.Resource.ID},
	}
	if r.Agent != nil {
		c.Act = &actorClaim{Sub: r.Agent.ID}
	}
	if r.Task != nil {
		c.TaskID = r.Task.ID
	}
	payload, err := json.Marshal(c)
	if err != nil {
		return "", time.Time{}, fmt.Errorf("receipt: encode claims: %w", err)
	}
	// Compact JWS (RFC 7515): header.payload.signature, ES256 as RFC 7518 section 3.4 defines
	// it: the signature is R and S, each 32 bytes big-endian, not ASN.1.
	enc := base64.RawURLEncoding
	n := len(i.header) + 1 + enc.EncodedLen(len(payload))
	tok := make([]byte, n, n+1+enc.EncodedLen(64))
	copy(tok, i.header)
	tok[len(i.header)] = '.'
	enc.Encode(tok[len(i.header)+1:], payload)
	digest := sha256.Sum256(tok)
	rs, ss, err := ecdsa.Sign(rand.Reader, i.signer, digest[:])
	if err != nil {
		return "", time.Time{}, fmt.Errorf("receipt: sign: %w", err)
	}
	var sig [64]byte
	rs.FillBytes(sig[:32])
	ss.FillBytes(sig[32:])
	tok = append(tok, '.')
	tok = enc.AppendEncode(tok, sig[:])
	return string(tok), exp, nil
}

// LoadOrCreateKey reads the private JWK at path, or generates an ECDSA P-256 key and writes it
// there (mode 0600, durably, and only if no other process did first) when the file does not
// exist.
func LoadOrCreateKey(path string) (jwk.Key, error) {
	raw, err := keyfile.LoadOrCreate(path, newKey)
	if err != nil {
		return nil, fmt.Errorf("receipt: key: %w", err)
	}
	key, err := jwk.ParseKey(raw)
	if err != nil {
		return nil, fmt.Errorf("receipt: read key %s: %w", path, err)
	}
	if ok, _ := jwk.IsPrivateKey(key); !ok {
		return nil, fmt.Errorf("receipt: key %s: not a private key", path)
	}
	return key, nil
}

// newKey generates a private JWK with its thumbprint as key ID.
func newKey() ([]byte, error) {
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
	return out, nil
}

// Type is the receipt's JOSE header typ.
const Type = "custody-receipt+jwt"
