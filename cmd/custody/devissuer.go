package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/custodyhq/custody/internal/devissuer"
)

// Files `custody keys dev-issuer` writes in --out.
const (
	devIssuerKeyFile  = "issuer-key.pem"
	devIssuerJWKSFile = "jwks.json"
)

// devIssuerWarning is said on every run and in --help: the key is a plain file and the command
// signs whatever it is asked to, so a serve that trusts it trusts anyone who can run it.
const devIssuerWarning = "for trying custody only, not for production: it signs any subject, agent and scope it is asked to with a key kept in a plain file; in production custody trusts your identity provider's JWKS"

// runDevIssuer implements `custody keys dev-issuer`: a JWKS and private key in --out (the key
// made once and reused, so earlier tokens stay valid) and a delegation token signed with it on
// stdout, for `custody serve --issuer ISS --jwks DIR/jwks.json --audience AUD`.
func runDevIssuer(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("keys dev-issuer", stderr)
	var (
		out   string
		d     = devissuer.Delegation{TTL: time.Hour}
		quiet bool
	)
	fs.StringVar(&out, "out", "", "directory for "+devIssuerJWKSFile+" and "+devIssuerKeyFile+" (required; the key is made on the first run and reused)")
	fs.StringVar(&d.Issuer, "issuer", "https://idp.acme.example", "the token's iss: pass the same `URL` to serve --issuer")
	fs.StringVar(&d.Audience, "audience", "custody", "the token's aud: pass the same value to serve --audience")
	fs.StringVar(&d.Subject, "sub", "alice@acme.example", "the human who delegates (sub)")
	fs.StringVar(&d.Actor, "act", "spiffe://acme.example/agents/mailer", "the agent acting for them (act.sub); empty for a token that proves the subject only")
	fs.StringVar(&d.Scope, "scope", "mail.send files.read", "space-separated scopes delegated (scope)")
	fs.DurationVar(&d.TTL, "ttl", d.TTL, "how long the token is valid (exp)")
	fs.BoolVar(&quiet, "quiet", false, "print only the token; the warning and the serve command are not repeated on stderr")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: custody keys dev-issuer --out DIR [flags]\n\nA development token issuer, %s.\n\nflags:\n", devIssuerWarning)
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if out == "" {
		return fmt.Errorf("%w: keys dev-issuer: --out DIR is required", errUsage)
	}
	d.Now = time.Now()
	claims, err := d.Claims()
	if err != nil {
		return fmt.Errorf("%w: keys dev-issuer: %w", errUsage, err)
	}
	key, err := devissuer.LoadOrCreateKey(filepath.Join(out, devIssuerKeyFile))
	if err != nil {
		return fmt.Errorf("keys dev-issuer: %w", err)
	}
	jwks, err := devissuer.JWKS(key)
	if err != nil {
		return fmt.Errorf("keys dev-issuer: %w", err)
	}
	jwksPath := filepath.Join(out, devIssuerJWKSFile)
	if err := writeFileAtomic(jwksPath, append(jwks, '\n'), 0o644); err != nil {
		return fmt.Errorf("keys dev-issuer: write %s: %w", jwksPath, err)
	}
	token, err := devissuer.Sign(key, claims)
	if err != nil {
		return fmt.Errorf("keys dev-issuer: %w", err)
	}
	if !quiet {
		fmt.Fprintf(stderr, "custody keys dev-issuer: %s.\ntrust it with:\n  custody serve --issuer %s --jwks %s --audience %s\n", devIssuerWarning, d.Issuer, jwksPath, d.Audience)
	}
	fmt.Fprintln(stdout, token)
	return nil
}

// writeFileAtomic replaces path with data, so that a serve refetching the JWKS never reads half
// a file.
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*.tmp")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	_, werr := tmp.Write(data)
	if cerr := tmp.Close(); werr == nil {
		werr = cerr
	}
	if werr == nil {
		werr = os.Chmod(tmp.Name(), perm)
	}
	if werr != nil {
		return werr
	}
	return os.Rename(tmp.Name(), path)
}
