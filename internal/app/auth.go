package app

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"regexp"
	"strings"

	"github.com/rs/zerolog"

	"github.com/custodyhq/custody/identity"
	custodyhttp "github.com/custodyhq/custody/server"
)

// buildAuth returns the server options that authenticate callers and, when TLS is configured,
// the TLS config. A token verifier, when there is one, goes to *verifier: its background JWKS
// fetch is the App's to stop in Close.
func buildAuth(a AuthConfig, logger zerolog.Logger, verifier **identity.Verifier) ([]custodyhttp.Option, *tls.Config, error) {
	opts := []custodyhttp.Option{custodyhttp.WithRequireAuth(a.RequireAuth), custodyhttp.WithAllowedHosts(a.AllowedHosts...)}
	if len(a.Issuers) > 0 {
		cfg := identity.Config{Audience: a.Audience, Leeway: a.Leeway, JWKSRefresh: a.JWKSRefresh}
		for i, iss := range a.Issuers {
			cfg.Issuers = append(cfg.Issuers, identity.Issuer{Issuer: iss, JWKS: a.JWKS[i], Subjects: a.IssuerSubjects[iss], Actors: a.IssuerActors[iss]})
		}
		v, err := identity.NewVerifier(cfg, identity.WithLogger(logger))
		if err != nil {
			return nil, nil, fmt.Errorf("app: token verifier: %w", err)
		}
		*verifier = v
		opts = append(opts, custodyhttp.WithTokenVerifier(v))
	}
	if a.APIKeysFile != "" {
		keys, err := identity.LoadAPIKeys(a.APIKeysFile)
		if err != nil {
			return nil, nil, fmt.Errorf("app: api keys: %w", err)
		}
		opts = append(opts, custodyhttp.WithAPIKeys(keys))
	}
	if a.TLSCert == "" {
		return opts, nil, nil
	}
	cert, err := tls.LoadX509KeyPair(a.TLSCert, a.TLSKey)
	if err != nil {
		return nil, nil, fmt.Errorf("app: load TLS certificate: %w", err)
	}
	tc := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if a.ClientCA != "" {
		pem, err := os.ReadFile(a.ClientCA)
		if err != nil {
			return nil, nil, fmt.Errorf("app: read client CA: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, nil, fmt.Errorf("app: client CA %s holds no PEM certificates", a.ClientCA)
		}
		// Optional at the TLS layer: callers may authenticate with a token instead. A certificate
		// that is presented must verify, or the handshake fails.
		tc.ClientCAs, tc.ClientAuth = pool, tls.VerifyClientCertIfGiven
	}
	return opts, tc, nil
}

// validateIssuerPatterns checks --issuer-subjects and --issuer-actors: each names a --issuer and
// a regular expression that compiles.
func (a *AuthConfig) validateIssuerPatterns() error {
	trusted := map[string]bool{}
	for _, iss := range a.Issuers {
		trusted[iss] = true
	}
	for _, f := range []struct {
		flag     string
		patterns map[string]string
	}{{"--issuer-subjects", a.IssuerSubjects}, {"--issuer-actors", a.IssuerActors}} {
		for iss, pattern := range f.patterns {
			if !trusted[iss] {
				return fmt.Errorf("%s %q: not a --issuer", f.flag, iss)
			}
			if _, err := regexp.Compile(pattern); err != nil {
				return fmt.Errorf("%s %q: %w", f.flag, iss, err)
			}
		}
	}
	for _, h := range a.AllowedHosts {
		if strings.ContainsAny(h, "/ @") {
			return fmt.Errorf("--allowed-host %q: want a host name, optionally with :port", h)
		}
	}
	return nil
}
