package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/rs/zerolog"

	"github.com/custodyhq/custody/internal/app"
)

// Defaults of `custody serve` that other commands share: where serve keeps its data and where
// its embedded NATS server listens.
const (
	DefaultDataDir = app.DefaultDataDir
	DefaultNATSURL = app.DefaultNATSURL
)

// serveConfig is `custody serve`'s command line: the App's settings and how to log.
type serveConfig struct {
	app.Config
	configFile string
	logLevel   string
	logFormat  string
}

func (c *serveConfig) flags(fs *flag.FlagSet) {
	// The defaults are the App's, so that a flag left unset means what an unset field means.
	c.Config = app.DefaultConfig()
	d := c.Config
	fs.StringVar(&c.configFile, "config", "", "YAML file of flag settings (`path`); flags and CUSTODY_* variables override it")
	fs.StringVar(&c.Addr, "addr", d.Addr, "HTTP listen address, `host:port` (port 0 picks a free one)")
	fs.StringVar(&c.DataDir, "data-dir", d.DataDir, "directory for JetStream storage, keys and the instance ID")
	fs.StringVar(&c.NATSListen, "nats-listen", d.NATSListen, "embedded NATS client address, `host:port` (port 0 picks a free one), or none for in-process only; clients need a credential (DATA/nats/reader.creds reads the stream)")
	fs.StringVar(&c.NATSURL, "nats-url", d.NATSURL, "use this external NATS server or cluster (`url`) instead of the embedded one")
	fs.StringVar(&c.NATSCreds, "nats-creds", d.NATSCreds, "NATS credentials file for --nats-url")
	fs.StringVar(&c.NATSCA, "nats-ca", d.NATSCA, "PEM `file` of the CA that signed --nats-url's server certificates (default: the system's)")
	fs.StringVar(&c.NATSCert, "nats-cert", d.NATSCert, "PEM client certificate `file` for --nats-url servers that require one (with --nats-key)")
	fs.StringVar(&c.NATSKey, "nats-key", d.NATSKey, "PEM private key `file` of --nats-cert")
	fs.StringVar(&c.Policies, "policies", d.Policies, "policy set: a directory of .rego and data files, or an OPA bundle .tar.gz (default: the embedded policies)")
	policySourceFlags(fs, &c.PolicySource)
	fs.StringVar(&c.Decision, "decision", d.Decision, "the decision rule to evaluate")
	fs.IntVar(&c.DecisionMemo, "decision-memo", d.DecisionMemo, "remember up to this many decisions, keyed by exactly the input fields the policy reads, and answer repeats without evaluating; 0 turns it off (see GET /v1/policy)")
	fs.Int64Var(&c.DecisionMemoBytes, "decision-memo-bytes", d.DecisionMemoBytes, "bound the decision memo also by the bytes its keys, reasons and obligations hold; the least recently used decisions go first")
	fs.DurationVar(&c.Retention, "retention", d.Retention, "how long the stream keeps decisions; 0 keeps them forever")
	fs.Int64Var(&c.StreamMaxBytes, "stream-max-bytes", d.StreamMaxBytes, "stream size bound; when full, new decisions are refused (503 deny), never old ones evicted; -1 is unlimited")
	fs.IntVar(&c.StreamReplicas, "stream-replicas", d.StreamReplicas, "stream replicas in a JetStream cluster")
	fs.BoolVar(&c.StreamApplyConfig, "stream-apply-config", d.StreamApplyConfig, "change an existing CUSTODY stream to this instance's --retention, --stream-max-bytes, --stream-replicas and --duplicate-window; without it, serve refuses to start when they differ (shrinking retention deletes history)")
	fs.DurationVar(&c.DuplicateWindow, "duplicate-window", d.DuplicateWindow, "how long JetStream remembers a record's Nats-Msg-Id to drop a replay (default: 10s, at least twice --publish-timeout, for the embedded server in ack mode; else 2m)")
	fs.DurationVar(&c.PublishTimeout, "publish-timeout", d.PublishTimeout, "how long to wait for JetStream to ack a decision before answering 503 deny")
	fs.StringVar(&c.IntentKeyFile, "intent-key-file", d.IntentKeyFile, "HMAC key for task intents, hex (default: generated into the data dir)")
	fs.StringVar(&c.RecordMode, "record-mode", d.RecordMode, "how a decision is made durable before its answer: spool (local fsync, forwarded to JetStream), ack (JetStream's ack), or auto (spool with --nats-url, ack with the embedded server)")
	fs.Int64Var(&c.SpoolMaxBytes, "spool-max-bytes", d.SpoolMaxBytes, "spool size bound; when full, decisions are 503 denies")
	fs.StringVar(&c.NATSSync, "nats-sync", d.NATSSync, "embedded JetStream fsync policy: always, or an interval such as 1s (default: the server's 2m)")
	fs.StringVar(&c.SigningKey, "signing-key", d.SigningKey, "Ed25519 signed-note key for chain checkpoints (default: generated into the data dir; see custody keys)")
	fs.Uint64Var(&c.CheckpointEvery, "checkpoint-every", d.CheckpointEvery, "publish a signed checkpoint every this many records")
	fs.DurationVar(&c.CheckpointInterval, "checkpoint-interval", d.CheckpointInterval, "and at least this often while decisions flow")
	fs.Int64Var(&c.MaxBodyBytes, "max-body-bytes", d.MaxBodyBytes, "largest request body accepted")
	fs.DurationVar(&c.ShutdownTimeout, "shutdown-timeout", d.ShutdownTimeout, "how long shutdown waits for requests in flight and their records")
	fs.StringVar(&c.DebugAddr, "debug-addr", d.DebugAddr, "serve Go pprof profiles on this `host:port` (off by default; keep it on loopback)")
	fs.StringVar(&c.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&c.logFormat, "log-format", "json", "json or console")
	fs.StringVar(&c.PublicURL, "public-url", d.PublicURL, "base `url` the AuthZEN metadata names as policy_decision_point, such as https://pdp.example.com (default: as each client reached it)")
	authFlags(fs, &c.Auth)
	receiptFlags(fs, &c.Receipt)
	approvalFlags(fs, &c.Approvals)
	fs.Var((*stringList)(&c.Evidence.Witnesses), "checkpoint-witness", "also append each checkpoint to `file:PATH` (a file of JSON lines, or a directory of one file per checkpoint) kept where the stream's operator cannot rewrite it, or send it to a C2SP tlog-witness at https://URL and keep its cosignatures in DATA/witness/; repeatable; custody verify --witness reads either")
	fs.Var((*stringList)(&c.Vault.Recipients), "intent-vault", "seal each task's intent to this age X25519 `recipient` (age1...) or @file of them, one a line, into the CUSTODY_VAULT stream; repeatable; unseal with custody unseal (default: intents are only hashed, never kept)")
	fs.DurationVar(&c.Vault.Retention, "intent-vault-retention", d.Vault.Retention, "how long CUSTODY_VAULT keeps sealed intents; 0 keeps them forever")
}

func runServe(ctx context.Context, args []string, _ io.Writer, stderr io.Writer) error {
	var cfg serveConfig
	fs := newFlagSet("serve", stderr)
	cfg.flags(fs)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("%w: %w", errUsage, err)
	}
	logger, err := newLogger(stderr, cfg.logLevel, cfg.logFormat)
	if err != nil {
		return fmt.Errorf("%w: %w", errUsage, err)
	}
	return serve(ctx, cfg.Config, logger, app.WithMemoryGovernor())
}

func newLogger(w io.Writer, level, format string) (zerolog.Logger, error) {
	lvl, err := zerolog.ParseLevel(level)
	if err != nil || level == "" {
		return zerolog.Nop(), fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	switch format {
	case "json":
	case "console":
		w = zerolog.ConsoleWriter{Out: w, TimeFormat: time.RFC3339}
	default:
		return zerolog.Nop(), fmt.Errorf("--log-format %q: want json or console", format)
	}
	return zerolog.New(w).Level(lvl).With().Timestamp().Logger(), nil
}

// serve runs an App until ctx ends: the whole of `custody serve` after its flags.
func serve(ctx context.Context, cfg app.Config, logger zerolog.Logger, opts ...app.Option) error {
	a, err := app.New(ctx, cfg, append([]app.Option{app.WithLogger(logger), app.WithVersion(version())}, opts...)...)
	if err != nil {
		return err
	}
	err = a.Run(ctx)
	if cerr := a.Close(context.WithoutCancel(ctx)); err == nil {
		err = cerr
	}
	return err
}
