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
	"sync/atomic"
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
//
// No verification waits on a fetch it does not need: the keys are read from an atomic snapshot;
// a stale snapshot keeps serving while one background fetch replaces it; only a token whose key
// ID the snapshot lacks (or the first token, before any keys) waits, and every such token shares
// the one fetch in flight. A slow JWKS endpoint thus delays the tokens it must answer for, never
// the ones already verifiable.
type keySet struct {
	source  string // file path or https URL
	refresh time.Duration
	client  *http.Client
	now     func() time.Time
	logger  zerolog.Logger

	snap atomic.Pointer[keySnapshot]

	// ctx bounds every fetch; Close cancels it and waits for the fetch in flight.
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu       sync.Mutex // guards the fields below; never held across I/O
	inflight *keyFetch
	forcedAt time.Time
	closed   bool
}

// keySnapshot is one fetched JWKS.
type keySnapshot struct {
	keys      map[string]verificationKey // by kid
	fetchedAt time.Time
}

// keyFetch is one fetch of the JWKS, shared by everyone who asks while it runs; done is closed
// when it ends, with err set.
type keyFetch struct {
	done chan struct{}
	err  error
}

// errKeySetClosed is the error of a fetch asked for after Close.
var errKeySetClosed = errors.New("identity: key set closed")

func newKeySet(source string, refresh time.Duration, client *http.Client, now func() time.Time, logger zerolog.Logger) *keySet {
	ctx, cancel := context.WithCancel(context.Background())
	return &keySet{source: source, refresh: refresh, client: client, now: now, logger: logger, ctx: ctx, cancel: cancel}
}

func (s *keySet) isURL() bool {
	return strings.HasPrefix(s.source, "https://") || strings.HasPrefix(s.source, "http://")
}

// stale reports whether snap is due for a refetch: after the refresh interval, or after a second
// for a file (rereading a small local file catches same-size rewrites in the same tick).
func (s *keySet) stale(snap *keySnapshot, now time.Time) bool {
	age := now.Sub(snap.fetchedAt)
	return age >= s.refresh || (!s.isURL() && age >= time.Second)
}

// lookup returns the key for kid. A known kid is answered from the current snapshot at once,
// starting a background refetch when the snapshot is stale; an unknown kid waits for a refetch
// (shared and rate-limited); the first lookup waits for the first fetch.
func (s *keySet) lookup(ctx context.Context, kid string) (verificationKey, error) {
	now := s.now()
	snap := s.snap.Load()
	if snap == nil {
		if err := s.wait(ctx, s.start()); err != nil && s.snap.Load() == nil {
			return verificationKey{}, err
		}
		snap = s.snap.Load()
	} else if s.stale(snap, now) {
		s.start() // in the background: the cached keys serve meanwhile
	}
	if k, ok := snap.keys[kid]; ok {
		return k, nil
	}
	if s.mayForce(now) {
		if err := s.wait(ctx, s.start()); err != nil {
			s.logger.Warn().Err(err).Str("jwks", s.source).Msg("jwks refresh failed")
		}
		if k, ok := s.snap.Load().keys[kid]; ok {
			return k, nil
		}
	}
	return verificationKey{}, fmt.Errorf("%w: no key with kid %q", ErrUnknownKey, kid)
}

// mayForce rate-limits the refetches unknown key IDs trigger, so that tokens with made-up key
// IDs cannot turn custody into a flood of JWKS fetches.
func (s *keySet) mayForce(now time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if now.Sub(s.forcedAt) < minForcedRefresh {
		return false
	}
	s.forcedAt = now
	return true
}

// start returns the fetch in flight, starting one if there is none.
func (s *keySet) start() *keyFetch {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.inflight != nil {
		return s.inflight
	}
	f := &keyFetch{done: make(chan struct{})}
	if s.closed {
		f.err = errKeySetClosed
		close(f.done)
		return f
	}
	s.inflight = f
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		f.err = s.load(s.ctx)
		if f.err != nil && s.snap.Load() != nil {
			s.logger.Warn().Err(f.err).Str("jwks", s.source).Msg("jwks refresh failed; using cached keys")
		}
		s.mu.Lock()
		s.inflight = nil
		s.mu.Unlock()
		close(f.done)
	}()
	return f
}

// wait waits for f or for ctx: a caller that gives up does not cancel the fetch the others share.
func (s *keySet) wait(ctx context.Context, f *keyFetch) error {
	select {
	case <-f.done:
		return f.err
	case <-ctx.Done():
		return fmt.Errorf("identity: wait for jwks %s: %w", s.source, ctx.Err())
	}
}

// close cancels the fetch in flight and waits for it to end.
func (s *keySet) close() {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.cancel()
	s.wg.Wait()
}

// load fetches and parses the set, and makes it the current snapshot.
func (s *keySet) load(ctx context.Context) error {
	var raw []byte
	var err error
	if s.isURL() {
		raw, err = s.fetch(ctx)
	} else {
		raw, err = readLimited(s.source)
	}
	if err != nil {
		return fmt.Errorf("identity: read jwks %s: %w", s.source, err)
	}
	keys, err := parseJWKS(raw)
	if err != nil {
		return fmt.Errorf("identity: parse jwks %s: %w", s.source, err)
	}
	s.snap.Store(&keySnapshot{keys: keys, fetchedAt: s.now()})
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
