package main

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/custodyhq/custody/internal/app"
	"github.com/custodyhq/custody/internal/natstest"
)

// parseServe parses args as `custody serve` does, without serving.
func parseServe(t *testing.T, args ...string) (serveConfig, error) {
	t.Helper()
	var cfg serveConfig
	fs := newFlagSet("serve", &strings.Builder{})
	cfg.flags(fs)
	err := parseFlags(fs, args)
	return cfg, err
}

// TestServeDefaultsAreTheApps: serve with no flags builds app.DefaultConfig(), so a flag left
// unset means what an unset setting means to every other user of the App.
func TestServeDefaultsAreTheApps(t *testing.T) {
	cfg, err := parseServe(t)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(app.DefaultConfig(), cfg.Config); diff != "" {
		t.Errorf("serve's defaults differ from app.DefaultConfig() (-app +serve):\n%s", diff)
	}
	if err := cfg.Validate(); err != nil {
		t.Errorf("the defaults do not validate: %v", err)
	}
	if cfg.logLevel != "info" || cfg.logFormat != "json" {
		t.Errorf("log %s/%s, want info/json", cfg.logLevel, cfg.logFormat)
	}
}

// TestServeFlagsMapToConfig: every serve flag lands in its app.Config field.
func TestServeFlagsMapToConfig(t *testing.T) {
	cfg, err := parseServe(t,
		"--addr", "127.0.0.1:9", "--data-dir", "/d", "--nats-listen", "none", "--nats-url", "nats://u:p@h:4222",
		"--nats-creds", "/c", "--nats-sync", "always", "--policies", "/p", "--decision", "data.x.y", "--decision-memo", "7",
		"--retention", "1h", "--stream-max-bytes", "100", "--stream-replicas", "3", "--stream-apply-config",
		"--duplicate-window", "3m", "--publish-timeout", "2s", "--intent-key-file", "/ik", "--record-mode", "spool",
		"--spool-max-bytes", "1000", "--signing-key", "/sk", "--checkpoint-every", "9", "--checkpoint-interval", "4s",
		"--max-body-bytes", "2048", "--shutdown-timeout", "5s", "--public-url", "https://pdp.example.com",
		"--debug-addr", "127.0.0.1:6060",
		"--issuer", "https://a", "--issuer", "https://b,https://c", "--jwks", "/j1,/j2", "--jwks", "/j3",
		"--audience", "aud", "--jwks-refresh", "1m", "--token-leeway", "2s", "--api-keys-file", "/ak", "--require-auth",
		"--tls-cert", "/crt", "--tls-key", "/key", "--client-ca", "/ca",
		"--receipt-key", "/rk", "--receipt-ttl", "10m",
		"--bundle-source", "nats", "--policy-poll-interval", "3s", "--bundle-bucket", "b", "--bundle-object", "o",
		"--bundle-verification-key", "/vk", "--bundle-verification-key-id", "kid", "--bundle-verification-alg", "ES256",
		"--bundle-verification-scope", "prod", "--insecure-unsigned-bundles",
		"--log-level", "debug", "--log-format", "console",
	)
	if err != nil {
		t.Fatal(err)
	}
	want := app.DefaultConfig()
	want.Addr, want.DataDir, want.NATSListen, want.NATSURL = "127.0.0.1:9", "/d", "none", "nats://u:p@h:4222"
	want.NATSCreds, want.NATSSync, want.Policies, want.Decision, want.DecisionMemo = "/c", "always", "/p", "data.x.y", 7
	want.Retention, want.StreamMaxBytes, want.StreamReplicas, want.StreamApplyConfig = time.Hour, 100, 3, true
	want.DuplicateWindow, want.PublishTimeout, want.IntentKeyFile, want.RecordMode = 3*time.Minute, 2*time.Second, "/ik", "spool"
	want.SpoolMaxBytes, want.SigningKey, want.CheckpointEvery, want.CheckpointInterval = 1000, "/sk", 9, 4*time.Second
	want.MaxBodyBytes, want.ShutdownTimeout, want.PublicURL, want.DebugAddr = 2048, 5*time.Second, "https://pdp.example.com", "127.0.0.1:6060"
	want.Auth = app.AuthConfig{
		Issuers: []string{"https://a", "https://b", "https://c"}, JWKS: []string{"/j1", "/j2", "/j3"},
		Audience: "aud", JWKSRefresh: time.Minute, Leeway: 2 * time.Second, APIKeysFile: "/ak", RequireAuth: true,
		TLSCert: "/crt", TLSKey: "/key", ClientCA: "/ca",
	}
	want.Receipt = app.ReceiptConfig{KeyFile: "/rk", TTL: 10 * time.Minute}
	want.PolicySource.Source, want.PolicySource.PollInterval = "nats", 3*time.Second
	want.PolicySource.Bucket, want.PolicySource.Object, want.PolicySource.InsecureUnsigned = "b", "o", true
	want.PolicySource.Verify.Key, want.PolicySource.Verify.KeyID = "/vk", "kid"
	want.PolicySource.Verify.Algorithm, want.PolicySource.Verify.Scope = "ES256", "prod"
	if diff := cmp.Diff(want, cfg.Config); diff != "" {
		t.Errorf("config (-want +got):\n%s", diff)
	}
	if cfg.logLevel != "debug" || cfg.logFormat != "console" {
		t.Errorf("log %s/%s, want debug/console", cfg.logLevel, cfg.logFormat)
	}
}

// TestServeConfigPrecedence: a setting comes from the command line, else its CUSTODY_* variable,
// else the --config file, else the default; each source fills only what the ones above left.
func TestServeConfigPrecedence(t *testing.T) {
	file := filepath.Join(t.TempDir(), "custody.yaml")
	if err := os.WriteFile(file, []byte(strings.Join([]string{
		"addr: 127.0.0.1:1001",
		"data-dir: /from-file",
		"decision-memo: 11",
		"require-auth: true",
		"publish-timeout: 7s",
		"issuer: https://file",
	}, "\n")), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("CUSTODY_ADDR", "127.0.0.1:2002")
	t.Setenv("CUSTODY_DATA_DIR", "/from-env")
	t.Setenv("CUSTODY_RECORD_MODE", "spool")
	t.Setenv("CUSTODY_ISSUER", "https://env1,https://env2")
	t.Setenv("CUSTODY_CONFIG", file) // --config itself may come from the environment

	cfg, err := parseServe(t, "--addr", "127.0.0.1:3003")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ name, got, want string }{
		{"addr: flag over env and file", cfg.Addr, "127.0.0.1:3003"},
		{"data-dir: env over file", cfg.DataDir, "/from-env"},
		{"record-mode: env over default", cfg.RecordMode, "spool"},
		{"issuer: env list over file", strings.Join(cfg.Auth.Issuers, " "), "https://env1 https://env2"},
		{"nats-listen: default", cfg.NATSListen, app.DefaultNATSListen},
	} {
		if c.got != c.want {
			t.Errorf("%s: %q, want %q", c.name, c.got, c.want)
		}
	}
	if cfg.DecisionMemo != 11 || !cfg.Auth.RequireAuth || cfg.PublishTimeout != 7*time.Second {
		t.Errorf("file settings: memo %d, require-auth %v, publish-timeout %s; want 11, true, 7s",
			cfg.DecisionMemo, cfg.Auth.RequireAuth, cfg.PublishTimeout)
	}
}

// TestServeConfigErrors: a bad value from any source is a usage error naming its source.
func TestServeConfigErrors(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, tc := range []struct {
		name, env, envValue string
		args                []string
		want                string
	}{
		{name: "bad flag", args: []string{"--decision-memo", "x"}, want: "invalid value"},
		{name: "unknown flag", args: []string{"--no-such"}, want: "no-such"},
		{name: "argument", args: []string{"extra"}, want: `unexpected argument "extra"`},
		{name: "bad env", env: "CUSTODY_PUBLISH_TIMEOUT", envValue: "soon", want: "CUSTODY_PUBLISH_TIMEOUT"},
		{name: "missing file", args: []string{"--config", filepath.Join(dir, "none.yaml")}, want: "read config file"},
		{name: "unknown setting", args: []string{"--config", write("u.yaml", "colour: blue")}, want: `unknown setting "colour"`},
		{name: "config in config", args: []string{"--config", write("c.yaml", "config: other.yaml")}, want: `unknown setting "config"`},
		{name: "nested value", args: []string{"--config", write("n.yaml", "issuer: [a, b]")}, want: "want a single value"},
		{name: "bad yaml", args: []string{"--config", write("y.yaml", "addr: [")}, want: "config file"},
		{name: "bad file value", args: []string{"--config", write("v.yaml", "retention: forever")}, want: "retention"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.env != "" {
				t.Setenv(tc.env, tc.envValue)
			}
			_, err := parseServe(t, tc.args...)
			if !errors.Is(err, errUsage) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("parse: %v; want a usage error containing %q", err, tc.want)
			}
		})
	}
}

// TestServeValidate: settings that parse but cannot work are refused before anything starts,
// with exit status 2.
func TestServeValidate(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--addr", "nowhere"}, "--addr"},
		{[]string{"--nats-listen", "nowhere"}, "--nats-listen"},
		{[]string{"--data-dir", ""}, "--data-dir must not be empty"},
		{[]string{"--record-mode", "fast"}, "--record-mode"},
		{[]string{"--spool-max-bytes", "0"}, "--spool-max-bytes"},
		{[]string{"--nats-sync", "sometimes"}, "--nats-sync"},
		{[]string{"--publish-timeout", "0s"}, "--publish-timeout"},
		{[]string{"--decision-memo", "-1"}, "--decision-memo"},
		{[]string{"--duplicate-window", "-1s"}, "--duplicate-window"},
		{[]string{"--max-body-bytes", "0"}, "--max-body-bytes"},
		{[]string{"--shutdown-timeout", "0s"}, "--shutdown-timeout"},
		{[]string{"--receipt-ttl", "0s"}, "--receipt-ttl"},
		{[]string{"--public-url", "ftp://x"}, "--public-url"},
		{[]string{"--issuer", "https://a"}, "pair each issuer"},
		{[]string{"--issuer", "https://a", "--jwks", "/j"}, "--audience is required"},
		{[]string{"--tls-cert", "/c"}, "go together"},
		{[]string{"--client-ca", "/ca"}, "--client-ca needs"},
		{[]string{"--log-level", "loud"}, "--log-level"},
		{[]string{"--log-format", "xml"}, "--log-format"},
	} {
		t.Run(tc.want, func(t *testing.T) {
			// A data dir first, so that nothing is written to ./data should a case pass Validate.
			err := runServe(t.Context(), append([]string{"--data-dir", t.TempDir()}, tc.args...), nil, &strings.Builder{})
			if !errors.Is(err, errUsage) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("serve %v: %v; want a usage error containing %q", tc.args, err, tc.want)
			}
			if code := exitCode(err, &strings.Builder{}); code != 2 {
				t.Fatalf("exit code %d, want 2", code)
			}
		})
	}
}

// TestServeRunsTheApp: runServe builds and runs the App on the flags it was given, and returns
// nil once its context ends: the data dir it was told to use holds what the App writes there.
func TestServeRunsTheApp(t *testing.T) {
	dir := t.TempDir()
	stop, stderr := serveUntilServing(t, "--data-dir", dir, "--addr", "127.0.0.1:0", "--nats-listen", "none", "--log-level", "info")
	if err := stop(); err != nil {
		t.Fatalf("serve: %v", err)
	}
	for _, f := range []string{"instance.id", "intent.key", "checkpoint.key", "receipt.key", "LOCK"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Errorf("data dir: %v", err)
		}
	}
	if !strings.Contains(stderr.String(), `"message":"stopped"`) {
		t.Errorf("no stopped line:\n%s", stderr.String())
	}
}

// serveUntilServing runs runServe with args until it logs that it is serving, and returns the
// function that stops it (and returns what runServe returned) and its stderr.
func serveUntilServing(t *testing.T, args ...string) (stop func() error, stderr *syncBuffer) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	t.Cleanup(cancel)
	done := make(chan error, 1)
	stderr = &syncBuffer{}
	go func() { done <- runServe(ctx, args, nil, stderr) }()
	natstest.CheckFor(t, 30*time.Second, 10*time.Millisecond, func() error {
		select {
		case err := <-done:
			t.Fatalf("serve returned before serving: %v\n%s", err, stderr.String())
		default:
		}
		if !strings.Contains(stderr.String(), `"message":"custody serving"`) {
			return errors.New("not serving yet")
		}
		return nil
	})
	return func() error { cancel(); return <-done }, stderr
}
