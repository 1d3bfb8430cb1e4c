package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/custodyhq/custody/identity"
	custodyhttp "github.com/custodyhq/custody/server"
)

// stringList is a repeatable flag; one value may also list several, comma-separated, as
// CUSTODY_* variables do.
type stringList []string

func (l *stringList) String() string { return strings.Join(*l, ",") }

func (l *stringList) Set(v string) error {
	for _, part := range strings.Split(v, ",") {
		if part = strings.TrimSpace(part); part != "" {
			*l = append(*l, part)
		}
	}
	return nil
}

// authConfig is how `serve` authenticates callers.
type authConfig struct {
	issuers     stringList
	jwks        stringList
	audience    string
	jwksRefresh time.Duration
	leeway      time.Duration
	apiKeysFile string
	requireAuth bool
	tlsCert     string
	tlsKey      string
	clientCA    string
}

func (a *authConfig) flags(fs *flag.FlagSet) {
	fs.Var(&a.issuers, "issuer", "trusted token issuer (`iss`); repeat for several, each paired with a --jwks in the same order")
	fs.Var(&a.jwks, "jwks", "JWKS of the matching --issuer: a file or an https `URL`, cached and refreshed")
	fs.StringVar(&a.audience, "audience", "", "the aud value delegation tokens must carry (required with --issuer)")
	fs.DurationVar(&a.jwksRefresh, "jwks-refresh", identity.DefaultJWKSRefresh, "how often JWKS are refetched; an unknown kid refetches sooner")
	fs.DurationVar(&a.leeway, "token-leeway", identity.DefaultLeeway, "clock skew tolerated on exp and nbf")
	fs.StringVar(&a.apiKeysFile, "api-keys-file", "", "file of \"name sha256-hex\" lines for callers with API keys (see custody keys api-key)")
	fs.BoolVar(&a.requireAuth, "require-auth", false, "refuse unauthenticated decision requests with 401")
	fs.StringVar(&a.tlsCert, "tls-cert", "", "serve HTTPS with this certificate (PEM)")
	fs.StringVar(&a.tlsKey, "tls-key", "", "private key of --tls-cert (PEM)")
	fs.StringVar(&a.clientCA, "client-ca", "", "verify client certificates against these CAs (PEM); a certificate's SPIFFE ID becomes the caller's verified workload identity")
}

// Validate reports the first setting that cannot work.
func (a *authConfig) Validate() error {
	switch {
	case len(a.issuers) != len(a.jwks):
		return fmt.Errorf("--issuer given %d times but --jwks %d times: pair each issuer with its JWKS", len(a.issuers), len(a.jwks))
	case len(a.issuers) > 0 && a.audience == "":
		return errors.New("--audience is required with --issuer")
	case (a.tlsCert == "") != (a.tlsKey == ""):
		return errors.New("--tls-cert and --tls-key go together")
	case a.clientCA != "" && a.tlsCert == "":
		return errors.New("--client-ca needs --tls-cert and --tls-key")
	}
	return nil
}

// build returns the server options and, when TLS is configured, the TLS config.
func (a *authConfig) build(logger zerolog.Logger) ([]custodyhttp.Option, *tls.Config, error) {
	opts := []custodyhttp.Option{custodyhttp.WithRequireAuth(a.requireAuth)}
	if len(a.issuers) > 0 {
		cfg := identity.Config{Audience: a.audience, Leeway: a.leeway, JWKSRefresh: a.jwksRefresh}
		for i := range a.issuers {
			cfg.Issuers = append(cfg.Issuers, identity.Issuer{Issuer: a.issuers[i], JWKS: a.jwks[i]})
		}
		v, err := identity.NewVerifier(cfg, identity.WithLogger(logger))
		if err != nil {
			return nil, nil, err
		}
		opts = append(opts, custodyhttp.WithTokenVerifier(v))
	}
	if a.apiKeysFile != "" {
		keys, err := identity.LoadAPIKeys(a.apiKeysFile)
		if err != nil {
			return nil, nil, err
		}
		opts = append(opts, custodyhttp.WithAPIKeys(keys))
	}
	if a.tlsCert == "" {
		return opts, nil, nil
	}
	cert, err := tls.LoadX509KeyPair(a.tlsCert, a.tlsKey)
	if err != nil {
		return nil, nil, fmt.Errorf("serve: load TLS certificate: %w", err)
	}
	tc := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if a.clientCA != "" {
		pem, err := os.ReadFile(a.clientCA)
		if err != nil {
			return nil, nil, fmt.Errorf("serve: read client CA: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, nil, fmt.Errorf("serve: client CA %s holds no PEM certificates", a.clientCA)
		}
		// Optional at the TLS layer: callers may authenticate with a token instead. A certificate
		// that is presented must verify, or the handshake fails.
		tc.ClientCAs, tc.ClientAuth = pool, tls.VerifyClientCertIfGiven
	}
	return opts, tc, nil
}

// runKeys implements `custody keys`: the checkpoint verifier key to give to verifiers, or
// `custody keys api-key NAME` for a new API key.
func runKeys(args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "api-key" {
		if len(args) != 2 {
			return fmt.Errorf("%w: custody keys api-key NAME", errUsage)
		}
		key, line, err := identity.NewAPIKey(args[1])
		if err != nil {
			return fmt.Errorf("%w: %w", errUsage, err)
		}
		fmt.Fprintf(stdout, "api key (give it to the caller; custody keeps only its hash):\n  %s\nline for --api-keys-file:\n  %s\n", key, line)
		return nil
	}
	if len(args) > 0 && args[0] == "nats-creds" {
		return runNATSCreds(args[1:], stdout, stderr)
	}
	fs := newFlagSet("keys", stderr)
	var dataDir, signingKey string
	fs.StringVar(&dataDir, "data-dir", DefaultDataDir, "the data dir of the custody serve instance")
	fs.StringVar(&signingKey, "signing-key", "", "checkpoint signing key file, if serve was given one")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	instance, err := os.ReadFile(filepath.Join(dataDir, "instance.id"))
	if err != nil && signingKey == "" {
		return fmt.Errorf("keys: no custody instance in %s (start custody serve there first): %w", dataDir, err)
	}
	path := signingKey
	if path == "" {
		path = filepath.Join(dataDir, signingKeyFile)
	}
	if _, err := os.Stat(path); err != nil {
		return fmt.Errorf("keys: %w", err)
	}
	_, vkey, err := loadSigningKey(dataDir, path, strings.TrimSpace(string(instance)))
	if err != nil {
		return fmt.Errorf("keys: %w", err)
	}
	fmt.Fprintln(stdout, vkey)
	return nil
}
