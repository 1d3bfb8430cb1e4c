package bundles

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/open-policy-agent/opa/v1/bundle"
	"github.com/open-policy-agent/opa/v1/keys"
)

// ErrSignature is returned, wrapped, for a bundle that fails signature verification: unsigned
// where a signature is required, signed with another key or scope, or altered after signing.
var ErrSignature = errors.New("bundle signature check failed")

// Defaults for VerifyConfig, as `opa run` has them.
const (
	DefaultKeyID     = "default"
	DefaultAlgorithm = "RS256"
)

// VerifyConfig says how bundle signatures are checked, with the meaning OPA gives its
// --verification-key, --verification-key-id, --signing-alg and --scope flags. A zero Key turns
// verification off.
type VerifyConfig struct {
	// Key is the path of a PEM file holding the public key (or certificate) for the RSA, PS and
	// EC algorithms, or, for the HS algorithms, the shared secret itself or a file holding it.
	Key string
	// KeyID names the key. As in OPA, the configured key verifies a signature whatever key ID
	// the signature names. Default DefaultKeyID.
	KeyID string
	// Algorithm is the JWS algorithm of the signatures, such as RS256, ES256 or HS256. Default
	// DefaultAlgorithm.
	Algorithm string
	// Scope, when set, must equal the scope claim of the signature.
	Scope string
}

// Enabled reports whether bundles must be signed.
func (c *VerifyConfig) Enabled() bool { return c.Key != "" }

// SetDefaults fills unset fields.
func (c *VerifyConfig) SetDefaults() {
	if c.KeyID == "" {
		c.KeyID = DefaultKeyID
	}
	if c.Algorithm == "" {
		c.Algorithm = DefaultAlgorithm
	}
}

// Validate reports the first field that cannot work. An asymmetric key is parsed here, so that a
// wrong path or a private key given by mistake fails at start rather than on the first bundle.
func (c *VerifyConfig) Validate() error {
	if !c.Enabled() {
		if c.Scope != "" {
			return errors.New("bundles: verify config: scope is set but no key")
		}
		return nil
	}
	if !keys.IsSupportedAlgorithm(c.Algorithm) {
		return fmt.Errorf("bundles: verify config: algorithm %q: want one of RS256/384/512, PS256/384/512, ES256/384/512, HS256/384/512", c.Algorithm)
	}
	if c.KeyID == "" {
		return errors.New("bundles: verify config: key id must not be empty")
	}
	if hmac(c.Algorithm) {
		return nil
	}
	raw, err := os.ReadFile(c.Key)
	if err != nil {
		return fmt.Errorf("bundles: verify config: read public key for %s: %w", c.Algorithm, err)
	}
	return checkPublicKey(raw)
}

// Verification returns OPA's verification config for c, or nil when verification is off.
func (c *VerifyConfig) Verification() (*bundle.VerificationConfig, error) {
	if !c.Enabled() {
		return nil, nil
	}
	cfg := *c
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	kc, err := keys.NewKeyConfig(cfg.Key, cfg.Algorithm, cfg.Scope) // reads the file, else takes the secret as given
	if err != nil {
		return nil, fmt.Errorf("bundles: verify config: key: %w", err)
	}
	return bundle.NewVerificationConfig(map[string]*bundle.KeyConfig{cfg.KeyID: kc}, cfg.KeyID, cfg.Scope, nil), nil
}

func hmac(alg string) bool { return strings.HasPrefix(alg, "HS") }

// checkPublicKey accepts what OPA accepts to verify with, except private keys: a verifier has no
// business holding one, and a private key given here is a sign of a mix-up.
func checkPublicKey(raw []byte) error {
	block, _ := pem.Decode(raw)
	if block == nil {
		return errors.New("bundles: verify config: public key: no PEM block found")
	}
	var err error
	switch block.Type {
	case "PUBLIC KEY":
		_, err = x509.ParsePKIXPublicKey(block.Bytes)
	case "RSA PUBLIC KEY":
		_, err = x509.ParsePKCS1PublicKey(block.Bytes)
	case "CERTIFICATE":
		_, err = x509.ParseCertificate(block.Bytes)
	case "PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY":
		return fmt.Errorf("bundles: verify config: public key: got a %s; give the public key (openssl pkey -pubout)", block.Type)
	default:
		return fmt.Errorf("bundles: verify config: public key: unsupported PEM block %q", block.Type)
	}
	if err != nil {
		return fmt.Errorf("bundles: verify config: public key: %w", err)
	}
	return nil
}
