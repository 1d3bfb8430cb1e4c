package main

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/custodyhq/custody/internal/natsauth"
)

// TestAPIKeyHelpIsNotAName: `custody keys api-key -h` made an API key named "-h".
func TestAPIKeyHelpIsNotAName(t *testing.T) {
	for _, arg := range []string{"-h", "--help", "-x"} {
		var out, errOut bytes.Buffer
		err := runKeys([]string{"api-key", arg}, &out, &errOut)
		if !errors.Is(err, errUsage) || strings.Contains(out.String(), "api key") || !strings.Contains(errOut.String(), "usage: custody keys api-key NAME") {
			t.Errorf("keys api-key %s: err %v, stdout %q, stderr %q", arg, err, out.String(), errOut.String())
		}
	}
	var out bytes.Buffer
	if err := runKeys([]string{"api-key", "gateway"}, &out, &bytes.Buffer{}); err != nil || !strings.Contains(out.String(), "api key") {
		t.Fatalf("keys api-key gateway: %v %q", err, out.String())
	}
}

// TestNATSCredsForARole mints the bundle pusher's credential from a data dir's keys (0600, never
// over an existing file), and refuses a data dir without keys and the service role.
func TestNATSCredsForARole(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "p.creds")
	args := []string{"--data-dir", dir, "--role", "bundle-pusher", "--out", out}
	if err := runNATSCreds(args, &bytes.Buffer{}, &bytes.Buffer{}); err == nil {
		t.Fatal("minted a credential from a data dir without NATS keys")
	}
	if _, err := natsauth.LoadOrCreate(filepath.Join(dir, "nats")); err != nil {
		t.Fatal(err)
	}
	if err := runNATSCreds(args, &bytes.Buffer{}, &bytes.Buffer{}); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(out)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("credential file: %v %v", fi, err)
	}
	if err := runNATSCreds(args, &bytes.Buffer{}, &bytes.Buffer{}); err == nil {
		t.Fatal("replaced an existing credential file")
	}
	service := []string{"--data-dir", dir, "--role", "service", "--out", filepath.Join(dir, "s.creds")}
	if err := runNATSCreds(service, &bytes.Buffer{}, &bytes.Buffer{}); !errors.Is(err, errUsage) {
		t.Fatalf("the service role: %v, want a usage error", err)
	}
}
