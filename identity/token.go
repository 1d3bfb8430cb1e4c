package identity

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"time"

	"github.com/lestrrat-go/jwx/v3/jws"
	"github.com/lestrrat-go/jwx/v3/jwt"
	"github.com/rs/zerolog"
)

// Sentinel errors; each names a reason recorded on the stream for a refused token.
var (
	ErrTokenMalformed  = errors.New("malformed token")
	ErrTokenTooLarge   = errors.New("token too large")
	ErrAlgorithm       = errors.New("signature algorithm not allowed")
	ErrUnknownIssuer   = errors.New("issuer not trusted")
	ErrUnknownKey      = errors.New("unknown signing key")
	ErrTokenInvalid    = errors.New("token signature or claims invalid")
	ErrDelegationDepth = errors.New("delegation chain too deep")
	// ErrSubjectNotAllowed: the token's sub is not one its issuer may vouch for (Issuer.Subjects).
	ErrSubjectNotAllowed = errors.New("subject not allowed for its issuer")
	// ErrActorNotAllowed: an act claim names an actor its issuer may not vouch for (Issuer.Actors).
	ErrActorNotAllowed = errors.New("actor not allowed for its issuer")
)

// Limits on tokens. A delegation token is a few hundred bytes to a few KiB.
const (
	MaxTokenBytes      = 16 << 10
	MaxDelegationDepth = 16
	DefaultLeeway      = 30 * time.Second
)

// Issuer is one trusted token issuer.
type Issuer struct {
	// Issuer is the exact "iss" value.
	Issuer string
	// JWKS is a file path or an http(s) URL of the issuer's public keys.
	JWKS string
	// Subjects, when set, is a regular expression every sub this issuer signs must match in
	// full, such as `[^@]+@acme\.example`: with several trusted issuers, it stops one of them
	// from naming another's users. Empty accepts any subject.
	Subjects string
	// Actors is Subjects for the sub of every act claim (the agents) in this issuer's tokens.
	Actors string
}

// issuerRules are an issuer's compiled subject and actor patterns; nil accepts anything.
type issuerRules struct {
	subjects, actors *regexp.Regexp
}

// compileFull compiles pattern to match whole strings only; "" is nil.
func compileFull(pattern string) (*regexp.Regexp, error) {
	if pattern == "" {
		return nil, nil
	}
	return regexp.Compile(`^(?:` + pattern + `)$`)
}

// Config configures a Verifier.
type Config struct {
	Issuers []Issuer
	// Audience is the "aud" value tokens must carry: custody's own name as the issuer knows it.
	Audience string
	// Leeway is the clock skew tolerated on exp, nbf and iat.
	Leeway time.Duration
	// JWKSRefresh is how often JWKS are refetched.
	JWKSRefresh time.Duration
	// ClaimProperties maps token claims onto subject properties, such as "scope" -> "scopes".
	// A space-separated string claim (OAuth "scope") becomes a list.
	ClaimProperties map[string]string
}

// DefaultClaimProperties maps the usual OAuth claims onto what policies read.
func DefaultClaimProperties() map[string]string {
	return map[string]string{"scope": "scopes", "scp": "scopes", "roles": "roles", "groups": "groups", "email": "email", "name": "name"}
}

// SetDefaults fills unset fields.
func (c *Config) SetDefaults() {
	if c.Leeway == 0 {
		c.Leeway = DefaultLeeway
	}
	if c.JWKSRefresh == 0 {
		c.JWKSRefresh = DefaultJWKSRefresh
	}
	if c.ClaimProperties == nil {
		c.ClaimProperties = DefaultClaimProperties()
	}
}

// Validate reports the first field at fault.
func (c *Config) Validate() error {
	if len(c.Issuers) == 0 {
		return errors.New("identity: config: at least one issuer is required")
	}
	if c.Audience == "" {
		return errors.New("identity: config: audience is required: a token for another service must not work here")
	}
	seen := map[string]bool{}
	for i, is := range c.Issuers {
		if is.Issuer == "" || is.JWKS == "" {
			return fmt.Errorf("identity: config: issuer %d: issuer and jwks are both required", i)
		}
		if seen[is.Issuer] {
			return fmt.Errorf("identity: config: issuer %q listed twice", is.Issuer)
		}
		if _, err := compileFull(is.Subjects); err != nil {
			return fmt.Errorf("identity: config: issuer %q: subject pattern: %w", is.Issuer, err)
		}
		if _, err := compileFull(is.Actors); err != nil {
			return fmt.Errorf("identity: config: issuer %q: actor pattern: %w", is.Issuer, err)
		}
		seen[is.Issuer] = true
	}
	if c.Leeway < 0 || c.Leeway > 5*time.Minute {
		return errors.New("identity: config: leeway must be between 0 and 5m")
	}
	return nil
}

// Actor is one link of a delegation chain.
type Actor struct {
	Subject string `json:"id"`
	Issuer  string `json:"issuer,omitempty"`
	// Claims holds the actor's other claims from its act object, without nested act.
	Claims map[string]any `json:"-"`
}

// Delegation is what a verified token proves: the human (Subject) and the actors acting for them,
// Actors[0] the first to be delegated to and the last one the current actor.
type Delegation struct {
	Issuer    string
	Subject   string
	Claims    map[string]any // the token's claims
	Props     map[string]any // claims mapped onto subject properties
	Actors    []Actor
	ExpiresAt time.Time
}

// CurrentActor is the agent presenting the token, or nil when the token has no act claim.
func (d *Delegation) CurrentActor() *Actor {
	if len(d.Actors) == 0 {
		return nil
	}
	return &d.Actors[len(d.Actors)-1]
}

// Verifier checks delegation tokens against trusted issuers.
type Verifier struct {
	cfg     Config
	issuers map[string]*keySet
	rules   map[string]issuerRules
	now     func() time.Time
}

// Option configures a Verifier.
type Option func(*verifierOptions)

type verifierOptions struct {
	now    func() time.Time
	client *http.Client
	logger zerolog.Logger
}

// WithClock sets the clock tokens are checked against.
func WithClock(now func() time.Time) Option { return func(o *verifierOptions) { o.now = now } }

// WithHTTPClient sets the client JWKS URLs are fetched with.
func WithHTTPClient(c *http.Client) Option { return func(o *verifierOptions) { o.client = c } }

// WithLogger sets the logger. The default discards.
func WithLogger(l zerolog.Logger) Option { return func(o *verifierOptions) { o.logger = l } }

// NewVerifier returns a verifier for cfg. JWKS are fetched on first use.
func NewVerifier(cfg Config, opts ...Option) (*Verifier, error) {
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	o := verifierOptions{now: time.Now, client: &http.Client{Timeout: 10 * time.Second}, logger: zerolog.Nop()}
	for _, opt := range opts {
		opt(&o)
	}
	log := o.logger.With().Str("component", "identity").Logger()
	v := &Verifier{cfg: cfg, issuers: map[string]*keySet{}, rules: map[string]issuerRules{}, now: o.now}
	for _, is := range cfg.Issuers {
		v.issuers[is.Issuer] = newKeySet(is.JWKS, cfg.JWKSRefresh, o.client, o.now, log)
		subjects, _ := compileFull(is.Subjects) // Validate compiled them
		actors, _ := compileFull(is.Actors)
		v.rules[is.Issuer] = issuerRules{subjects: subjects, actors: actors}
	}
	return v, nil
}

// Close stops the verifier's background JWKS fetches and waits for them to end. Verify still
// works after Close with the keys already fetched, and refuses tokens that would need a fetch.
func (v *Verifier) Close() error {
	for _, ks := range v.issuers {
		ks.close()
	}
	return nil
}

// LooksLikeJWT reports whether s has the shape of a compact JWS, to tell tokens from API keys.
func LooksLikeJWT(s string) bool { return strings.Count(s, ".") == 2 }

type clockFunc func() time.Time

func (f clockFunc) Now() time.Time { return f() }

// Verify checks token's signature (with the key its kid names in its issuer's JWKS, under the
// algorithm that JWKS names), issuer, audience, expiry and not-before, and returns what it proves.
func (v *Verifier) Verify(ctx context.Context, token string) (*Delegation, error) {
	if len(token) > MaxTokenBytes {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrTokenTooLarge, len(token), MaxTokenBytes)
	}
	parts := strings.Split(token, ".")
	if len(parts) != 3 || parts[2] == "" {
		return nil, fmt.Errorf("%w: want a signed compact JWS", ErrTokenMalformed)
	}
	msg, err := jws.Parse([]byte(token))
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrTokenMalformed, err)
	}
	sigs := msg.Signatures()
	if len(sigs) != 1 {
		return nil, fmt.Errorf("%w: want exactly one signature", ErrTokenMalformed)
	}
	hdr := sigs[0].ProtectedHeaders()
	alg, ok := hdr.Algorithm()
	if !ok || !allowedAlgorithm(alg) {
		return nil, fmt.Errorf("%w: %q", ErrAlgorithm, alg.String())
	}
	kid, _ := hdr.KeyID()
	if kid == "" {
		return nil, fmt.Errorf("%w: token has no kid", ErrUnknownKey)
	}
	claims, err := decodeClaims(parts[1])
	if err != nil {
		return nil, err
	}
	iss, _ := claims["iss"].(string)
	keys, ok := v.issuers[iss]
	if !ok {
		return nil, fmt.Errorf("%w: %q", ErrUnknownIssuer, iss)
	}
	key, err := keys.lookup(ctx, kid)
	if err != nil {
		return nil, err
	}
	if key.alg != alg {
		// The JWKS fixes each key's algorithm; a token may not choose another (algorithm confusion).
		return nil, fmt.Errorf("%w: token says %s, key %q is for %s", ErrAlgorithm, alg, kid, key.alg)
	}
	_, err = jwt.Parse([]byte(token),
		jwt.WithKey(key.alg, key.key),
		jwt.WithValidate(true),
		jwt.WithIssuer(iss),
		jwt.WithAudience(v.cfg.Audience),
		jwt.WithAcceptableSkew(v.cfg.Leeway),
		jwt.WithClock(clockFunc(v.now)),
		jwt.WithRequiredClaim("exp"),
		jwt.WithRequiredClaim("sub"),
	)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrTokenInvalid, err)
	}
	sub, _ := claims["sub"].(string)
	if sub == "" {
		return nil, fmt.Errorf("%w: sub must be a non-empty string", ErrTokenInvalid)
	}
	rules := v.rules[iss]
	if rules.subjects != nil && !rules.subjects.MatchString(sub) {
		return nil, fmt.Errorf("%w: issuer %q may not name subject %q", ErrSubjectNotAllowed, iss, sub)
	}
	d := &Delegation{Issuer: iss, Subject: sub, Claims: claims, Props: v.properties(claims)}
	if exp, ok := claims["exp"].(json.Number); ok {
		if n, err := exp.Int64(); err == nil {
			d.ExpiresAt = time.Unix(n, 0).UTC()
		}
	}
	actors, err := actorChain(claims["act"], iss)
	if err != nil {
		return nil, err
	}
	if rules.actors != nil {
		// The token's issuer vouches for the whole chain, whatever iss an act claim names.
		for _, a := range actors {
			if !rules.actors.MatchString(a.Subject) {
				return nil, fmt.Errorf("%w: issuer %q may not name actor %q", ErrActorNotAllowed, iss, a.Subject)
			}
		}
	}
	d.Actors = actors
	return d, nil
}

// UnverifiedClaims reads the claims of a compact JWT without verifying anything: for naming who
// a token claims to be (to fill a request the PDP will check), never for trusting it. It is
// the one unverified decoder, the one Verify uses to choose an issuer's keys.
func UnverifiedClaims(token string) (map[string]any, error) {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return nil, fmt.Errorf("%w: want header.payload.signature", ErrTokenMalformed)
	}
	return decodeClaims(parts[1])
}

// decodeClaims reads the (not yet verified) payload, only to choose the issuer's keys.
func decodeClaims(seg string) (map[string]any, error) {
	raw, err := base64.RawURLEncoding.DecodeString(seg)
	if err != nil {
		return nil, fmt.Errorf("%w: payload is not base64url", ErrTokenMalformed)
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var claims map[string]any
	if err := dec.Decode(&claims); err != nil || claims == nil {
		return nil, fmt.Errorf("%w: payload is not a JSON object", ErrTokenMalformed)
	}
	return claims, nil
}

// actorChain unwinds RFC 8693 act claims. The outermost act is the current actor and each nested
// act a prior one, so the chain is built inside out: earliest actor first, current actor last.
func actorChain(act any, tokenIssuer string) ([]Actor, error) {
	var outerFirst []Actor
	for depth := 0; act != nil; depth++ {
		if depth == MaxDelegationDepth {
			return nil, fmt.Errorf("%w: more than %d nested act claims", ErrDelegationDepth, MaxDelegationDepth)
		}
		m, ok := act.(map[string]any)
		if !ok {
			return nil, fmt.Errorf("%w: act claim is not an object", ErrTokenInvalid)
		}
		sub, _ := m["sub"].(string)
		if sub == "" {
			return nil, fmt.Errorf("%w: act claim without sub", ErrTokenInvalid)
		}
		a := Actor{Subject: sub, Issuer: tokenIssuer, Claims: map[string]any{}}
		if iss, ok := m["iss"].(string); ok && iss != "" {
			a.Issuer = iss
		}
		for k, v := range m {
			if k != "act" && k != "sub" && k != "iss" {
				a.Claims[k] = v
			}
		}
		outerFirst = append(outerFirst, a)
		act = m["act"]
	}
	chain := make([]Actor, len(outerFirst))
	for i, a := range outerFirst {
		chain[len(outerFirst)-1-i] = a
	}
	return chain, nil
}

// properties maps claims onto subject properties. A space-separated "scope" string becomes a
// list; a string claim mapped to a list property (scopes, roles, groups) becomes a list too.
func (v *Verifier) properties(claims map[string]any) map[string]any {
	props := map[string]any{}
	for claim, prop := range v.cfg.ClaimProperties {
		val, ok := claims[claim]
		if !ok {
			continue
		}
		if s, ok := val.(string); ok && (prop == "scopes" || prop == "roles" || prop == "groups") {
			list := []any{}
			for _, f := range strings.Fields(s) {
				list = append(list, f)
			}
			val = list
		}
		if existing, ok := props[prop].([]any); ok {
			if more, ok := val.([]any); ok {
				val = append(existing, more...)
			}
		}
		props[prop] = val
	}
	return props
}
