package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/custodyhq/custody/internal/natsauth"
)

// natsAuth is how a command authenticates to NATS: a credentials file (--nats-creds) and TLS
// (--nats-ca, --nats-cert, --nats-key).
type natsAuth struct{ file, ca, cert, key string }

// natsTLSFlags registers the TLS flags of a command that talks to NATS.
func natsTLSFlags(fs *flag.FlagSet, a *natsAuth) {
	fs.StringVar(&a.ca, "nats-ca", "", "PEM `file` of the CA that signed the NATS servers' certificates (default: the system's)")
	fs.StringVar(&a.cert, "nats-cert", "", "PEM client certificate `file` for NATS servers that require one (with --nats-key)")
	fs.StringVar(&a.key, "nats-key", "", "PEM private key `file` of --nats-cert")
}

// readerCredsFlags registers --data-dir and the TLS flags on a command that reads the stream:
// with no --nats-creds, the command uses the reader credential that serve wrote into that data
// dir.
func readerCredsFlags(fs *flag.FlagSet, dataDir *string, a *natsAuth) {
	fs.StringVar(dataDir, "data-dir", DefaultDataDir, "serve's data dir, whose nats/reader.creds is used when --nats-creds is not given")
	natsTLSFlags(fs, a)
}

// readerCreds picks the credentials file of a reading command: --nats-creds when given, else
// DATA/nats/reader.creds when it exists, else none (an external NATS without authentication). A
// --data-dir named explicitly must hold the credential.
func readerCreds(fs *flag.FlagSet, a natsAuth, dataDir string) (natsAuth, error) {
	file, err := readerCredsFile(fs, a.file, dataDir)
	a.file = file
	return a, err
}

func readerCredsFile(fs *flag.FlagSet, creds, dataDir string) (string, error) {
	if creds != "" {
		return creds, nil
	}
	path := filepath.Join(dataDir, "nats", natsauth.ReaderCredsFile)
	_, err := os.Stat(path)
	switch {
	case err == nil:
		return path, nil
	case !errors.Is(err, os.ErrNotExist):
		return "", fmt.Errorf("reader credential %s: %w", path, err)
	case flagSet(fs, "data-dir"):
		return "", fmt.Errorf("%w: --data-dir %s holds no reader credential (%s); start custody serve there first, or pass --nats-creds", errUsage, dataDir, path)
	}
	return "", nil
}

// flagSet reports whether name was given on the command line (or by config or environment).
func flagSet(fs *flag.FlagSet, name string) bool {
	found := false
	fs.Visit(func(f *flag.Flag) { found = found || f.Name == name })
	return found
}

// runNATSCreds mints a credential for the embedded NATS server from the keys in DATA/nats: the
// reader that serve writes on its own, or the bundle pusher, which serve never hands out.
func runNATSCreds(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("keys nats-creds", stderr)
	var dataDir, role, out string
	fs.StringVar(&dataDir, "data-dir", DefaultDataDir, "the data dir of the custody serve instance")
	fs.StringVar(&role, "role", "", "what the credential may do: "+strings.Join(natsauth.Roles(), " or "))
	fs.StringVar(&out, "out", "", "write the .creds file here (mode 0600); it must not exist")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	r, err := natsauth.ParseRole(role)
	if err != nil {
		return fmt.Errorf("%w: --role: %w", errUsage, err)
	}
	if out == "" {
		return fmt.Errorf("%w: --out is required", errUsage)
	}
	keys := filepath.Join(dataDir, "nats")
	if _, err := os.Stat(filepath.Join(keys, "account.nk")); err != nil {
		return fmt.Errorf("keys: no embedded NATS keys in %s (start custody serve there first): %w", keys, err)
	}
	trust, err := natsauth.LoadOrCreate(keys)
	if err != nil {
		return fmt.Errorf("keys: %w", err)
	}
	if err := trust.WriteCreds(out, r, "custody "+role, false); err != nil {
		return fmt.Errorf("keys: %w", err)
	}
	fmt.Fprintf(stdout, "wrote %s credential to %s\n", r, out)
	return nil
}
