package main

import (
	"strings"
	"testing"

	"github.com/custodyhq/custody/internal/bundletest"
)

func TestPolicySourceValidate(t *testing.T) {
	key := bundletest.RSAKey(t)
	tests := []struct {
		name     string
		args     []string
		policies string
		errText  string // "" for valid
	}{
		{name: "defaults"},
		{name: "nats without a key", args: []string{"--bundle-source", "nats"}, errText: "--bundle-source nats needs --bundle-verification-key"},
		{name: "nats unsigned, loudly", args: []string{"--bundle-source", "nats", "--insecure-unsigned-bundles"}},
		{name: "unsigned with a key", args: []string{"--bundle-source", "nats", "--insecure-unsigned-bundles", "--bundle-verification-key", key.Verify}, errText: "--insecure-unsigned-bundles is only"},
		{name: "unsigned files", args: []string{"--insecure-unsigned-bundles"}, errText: "--insecure-unsigned-bundles is only"},
		{name: "nats with a signing key", args: []string{"--bundle-source", "nats", "--bundle-verification-key", key.Verify}},
		{name: "file with HMAC", args: []string{"--bundle-verification-key", "secret", "--bundle-verification-alg", "HS256"}, policies: "p"},
		{name: "nats and --policies", args: []string{"--bundle-source", "nats", "--insecure-unsigned-bundles"}, policies: "p", errText: "exclusive"},
		{name: "unknown source", args: []string{"--bundle-source", "s3"}, errText: `--bundle-source "s3"`},
		{name: "poll interval", args: []string{"--policy-poll-interval", "0s"}, errText: "--policy-poll-interval"},
		{name: "empty bucket", args: []string{"--bundle-bucket", ""}, errText: "--bundle-bucket"},
		{name: "missing key file", args: []string{"--bundle-verification-key", "/nonexistent.pem"}, errText: "--bundle-verification-key"},
		{name: "scope without key", args: []string{"--bundle-verification-scope", "prod"}, errText: "no key"},
		{name: "bad algorithm", args: []string{"--bundle-verification-key", key.Verify, "--bundle-verification-alg", "RS1"}, errText: `algorithm "RS1"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var cfg serveConfig
			fs := newFlagSet("test", &strings.Builder{})
			cfg.flags(fs)
			args := tc.args
			if tc.policies != "" {
				args = append(args, "--policies", tc.policies)
			}
			if err := fs.Parse(args); err != nil {
				t.Fatal(err)
			}
			err := cfg.Validate()
			if (err == nil) != (tc.errText == "") || (err != nil && !strings.Contains(err.Error(), tc.errText)) {
				t.Fatalf("Validate: %v, want error containing %q", err, tc.errText)
			}
		})
	}
}
