package identity

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/lestrrat-go/jwx/v3/jwa"
	"github.com/lestrrat-go/jwx/v3/jwk"
	"github.com/rs/zerolog"
)

// maxJWKSBytes bounds a JWKS document; real ones are a few KiB.
const maxJWKSBytes = 1 << 20

// Defaults for refreshing a JWKS.
const (
	DefaultJWKSRefresh = 5 * time.Minute
	// minForcedRefresh rate-limits the refresh an unknown key ID triggers, so that tokens with
	// made-up key IDs cannot turn custody into a flood of JWKS fetches.
	minForcedRefresh = 5 * time.Second
)

// verificationKey is one usable key from a JWKS: asymmetric, with the algorithm the JWKS names.
type verificationKey struct {
	alg jwa.SignatureAlgorithm
	key jwk.Key
}

// keySet is a cached JWKS from a file or URL. Keys are refetched every refresh interval, and
// early (rate-limited) when a token names a key ID the cache lacks: that is how rotated keys are
// honoured without a restart.
type keySet struct {
	source  string // file path or https URL
	refresh time.Duration
	client  *http.Client
	now     func() time.Time
	logger  zerolog.Logger

	mu        sync.Mutex
	keys      map[string]verificationKey // by kid
	fetchedAt time.Time
	forcedAt  time.Time
}

func newKeySet(source string, refresh time.Duration, client *http.Client, now func() time.Time, logger zerolog.Logger) *keySet {
	return &keySet{source: source, refresh: refresh, client: client, now: now, logger: logger}
}

func (s *keySet) isURL() bool {
	return strings.HasPrefix(s.source, "https://") || strings.HasPrefix(s.source, "http://")
}

// lookup returns the key for kid, refreshing the set when it is stale or lacks kid.
func (s *keySet) lookup(ctx context.Context, kid string) (verificationKey, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	if s.keys == nil || now.Sub(s.fetchedAt) >= s.refresh || (!s.isURL() && now.Sub(s.fetchedAt) >= time.Second) {
		if err := s.load(ctx); err != nil && s.keys == nil {
			return verificationKey{}, err
		} else if err != nil {
			s.logger.Warn().Err(err).Str("jwks", s.source).Msg("jwks refresh failed; using cached keys")
		}
	}
	if k, ok := s.keys[kid]; ok {
		return k, nil
	}
	if now.Sub(s.forcedAt) >= minForcedRefresh {
		s.forcedAt = now
		if err := s.load(ctx); err != nil {
			s.logger.Warn().Err(err).Str("jwks", s.source).Msg("jwks refresh failed")
		}
		if k, ok := s.keys[kid]; ok {
			return k, nil
		}
	}
	return verificationKey{}, fmt.Errorf("%w: no key with kid %q", ErrUnknownKey, kid)
}

// load fetches and parses the set. Called with mu held.
func (s *keySet) load(ctx context.Context) error {
	var raw []byte
	var err error
	if s.isURL() {
		raw, err = s.fetch(ctx)
	} else {
		raw, err = readLimited(s.source) // small, and rereading catches same-size rewrites in the same tick
	}
	if err != nil {
		return fmt.Errorf("identity: read jwks %s: %w", s.source, err)
	}
	keys, err := parseJWKS(raw)
	if err != nil {
		return fmt.Errorf("identity: parse jwks %s: %w", s.source, err)
	}
	s.keys, s.fetchedAt = keys, s.now()
	return nil
}

func (s *keySet) fetch(ctx context.Context) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.source, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/jwk-set+json, application/json")
	resp, err := s.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("status %s", resp.Status)
	}
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxJWKSBytes+1))
	if err != nil {
		return nil, err
	}
	if len(raw) > maxJWKSBytes {
		return nil, errors.New("jwks larger than 1 MiB")
	}
	return raw, nil
}

func readLimited(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	raw, err := io.ReadAll(io.LimitReader(f, maxJWKSBytes+1))
	if err != nil {
		return nil, err
	}
	if len(raw) > maxJWKSBytes {
		return nil, errors.New("jwks larger than 1 MiB")
	}
	return raw, nil
}

// parseJWKS keeps the keys custody may verify with: public asymmetric keys with a key ID and an
// asymmetric signature algorithm named in the JWKS. A symmetric key is never usable: anyone
// who can read the JWKS could mint tokens with it.
func parseJWKS(raw []byte) (map[string]verificationKey, error) {
	set, err := jwk.Parse(raw)
	if err != nil {
		return nil, err
	}
	keys := map[string]verificationKey{}
	for i := range set.Len() {
		k, ok := set.Key(i)
		if !ok {
			continue
		}
		kid, _ := k.KeyID()
		ka, hasAlg := k.Algorithm()
		if kid == "" || !hasAlg {
			continue
		}
		alg, ok := jwa.LookupSignatureAlgorithm(ka.String())
		if !ok || !allowedAlgorithm(alg) {
			continue
		}
		switch k.KeyType() {
		case jwa.RSA(), jwa.EC(), jwa.OKP():
		default:
			continue
		}
		if use, ok := k.KeyUsage(); ok && use != "" && use != "sig" {
			continue
		}
		pub, err := k.PublicKey() // a JWKS that leaks private keys still only verifies
		if err != nil {
			continue
		}
		keys[kid] = verificationKey{alg: alg, key: pub}
	}
	if len(keys) == 0 {
		return nil, errors.New("no usable keys: want asymmetric signing keys with kid and alg")
	}
	return keys, nil
}

// allowedAlgorithm admits asymmetric signature algorithms only.
func allowedAlgorithm(alg jwa.SignatureAlgorithm) bool {
	switch alg {
	case jwa.RS256(), jwa.RS384(), jwa.RS512(),
		jwa.PS256(), jwa.PS384(), jwa.PS512(),
		jwa.ES256(), jwa.ES384(), jwa.ES512(),
		jwa.EdDSA():
		return true
	}
	return false
}
