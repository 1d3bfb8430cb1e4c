package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/custodyhq/custody/identity"
	"github.com/custodyhq/custody/internal/app"
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

// issuerPatterns is a repeatable ISS=REGEX flag. Values are not split on commas: a regular
// expression may hold one.
type issuerPatterns struct{ m *map[string]string }

func (p issuerPatterns) String() string {
	if p.m == nil || *p.m == nil {
		return ""
	}
	parts := make([]string, 0, len(*p.m))
	for iss, re := range *p.m {
		parts = append(parts, iss+"="+re)
	}
	return strings.Join(parts, " ")
}

func (p issuerPatterns) Set(v string) error {
	iss, re, ok := strings.Cut(v, "=")
	if !ok || iss == "" || re == "" {
		return fmt.Errorf("want ISS=REGEX, got %q", v)
	}
	if *p.m == nil {
		*p.m = map[string]string{}
	}
	if _, dup := (*p.m)[iss]; dup {
		return fmt.Errorf("issuer %q given twice", iss)
	}
	(*p.m)[iss] = re
	return nil
}

// authFlags registers the flags of how `serve` authenticates callers.
func authFlags(fs *flag.FlagSet, a *app.AuthConfig) {
	fs.Var((*stringList)(&a.Issuers), "issuer", "trusted token issuer (`iss`); repeat for several, each paired with a --jwks in the same order")
	fs.Var((*stringList)(&a.JWKS), "jwks", "JWKS of the matching --issuer: a file or an https `URL`, cached and refreshed")
	fs.StringVar(&a.Audience, "audience", a.Audience, "the aud value delegation tokens must carry (required with --issuer)")
	fs.DurationVar(&a.JWKSRefresh, "jwks-refresh", a.JWKSRefresh, "how often JWKS are refetched; an unknown kid refetches sooner")
	fs.DurationVar(&a.Leeway, "token-leeway", a.Leeway, "clock skew tolerated on exp and nbf")
	fs.StringVar(&a.APIKeysFile, "api-keys-file", a.APIKeysFile, "file of \"name sha256-hex\" lines for callers with API keys (see custody keys api-key)")
	fs.BoolVar(&a.RequireAuth, "require-auth", a.RequireAuth, "refuse unauthenticated decision requests with 401")
	fs.StringVar(&a.TLSCert, "tls-cert", a.TLSCert, "serve HTTPS with this certificate (PEM)")
	fs.StringVar(&a.TLSKey, "tls-key", a.TLSKey, "private key of --tls-cert (PEM)")
	fs.Var(issuerPatterns{&a.IssuerSubjects}, "issuer-subjects", "`ISS=REGEX`: every sub in tokens of --issuer ISS must match REGEX in full, so that one issuer cannot name another's users; repeatable")
	fs.Var(issuerPatterns{&a.IssuerActors}, "issuer-actors", "`ISS=REGEX`: every act sub (agent) in tokens of --issuer ISS must match REGEX in full; repeatable")
	fs.Var((*stringList)(&a.AllowedHosts), "allowed-host", "a `host[:port]` the API answers to besides its listen address and --public-url (others get 421, against DNS rebinding); repeatable")
	fs.StringVar(&a.ClientCA, "client-ca", a.ClientCA, "verify client certificates against these CAs (PEM); a certificate's SPIFFE ID becomes the caller's verified workload identity")
}

// runKeys implements `custody keys`: the checkpoint verifier key to give to verifiers, or
// `custody keys api-key NAME` for a new API key, or `custody keys dev-issuer` for a development
// token issuer.
func runKeys(args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "api-key" {
		if len(args) != 2 || strings.HasPrefix(args[1], "-") {
			// "-h" is a request for help, never a key's name.
			fmt.Fprintln(stderr, "usage: custody keys api-key NAME\n\nMakes an API key for the caller NAME and prints the line for --api-keys-file; custody keeps only its hash.")
			return fmt.Errorf("%w: custody keys api-key NAME", errUsage)
		}
		key, line, err := identity.NewAPIKey(args[1])
		if err != nil {
			return fmt.Errorf("%w: %w", errUsage, err)
		}
		fmt.Fprintf(stdout, "api key (give it to the caller; custody keeps only its hash):\n  %s\nline for --api-keys-file:\n  %s\n", key, line)
		return nil
	}
	if len(args) > 0 && args[0] == "dev-issuer" {
		return runDevIssuer(args[1:], stdout, stderr)
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
		path = filepath.Join(dataDir, app.SigningKeyFile)
	}
	if _, err := os.Stat(path); err != nil {
		return fmt.Errorf("keys: %w", err)
	}
	vkey, err := app.VerifierKey(dataDir, path, strings.TrimSpace(string(instance)))
	if err != nil {
		return fmt.Errorf("keys: %w", err)
	}
	fmt.Fprintln(stdout, vkey)
	return nil
}
