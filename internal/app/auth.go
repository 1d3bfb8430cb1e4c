package app

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"

	"github.com/rs/zerolog"

	"github.com/custodyhq/custody/identity"
	custodyhttp "github.com/custodyhq/custody/server"
)

// buildAuth returns the server options that authenticate callers and, when TLS is configured,
// the TLS config.
func buildAuth(a AuthConfig, logger zerolog.Logger) ([]custodyhttp.Option, *tls.Config, error) {
	opts := []custodyhttp.Option{custodyhttp.WithRequireAuth(a.RequireAuth)}
	if len(a.Issuers) > 0 {
		cfg := identity.Config{Audience: a.Audience, Leeway: a.Leeway, JWKSRefresh: a.JWKSRefresh}
		for i := range a.Issuers {
			cfg.Issuers = append(cfg.Issuers, identity.Issuer{Issuer: a.Issuers[i], JWKS: a.JWKS[i]})
		}
		v, err := identity.NewVerifier(cfg, identity.WithLogger(logger))
		if err != nil {
			return nil, nil, fmt.Errorf("app: token verifier: %w", err)
		}
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
