package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/custodyhq/custody/decisionlog"
	custodyjs "github.com/custodyhq/custody/decisionlog/jetstream"
	"github.com/custodyhq/custody/decisionlog/spool"
	"github.com/custodyhq/custody/internal/embeddednats"
	"github.com/custodyhq/custody/internal/natsauth"
	"github.com/custodyhq/custody/pdp"
	custodyhttp "github.com/custodyhq/custody/server"
)

// Defaults of `custody serve`.
const (
	DefaultAddr            = "127.0.0.1:8181"
	DefaultDataDir         = "./data"
	DefaultNATSListen      = "127.0.0.1:4222"
	DefaultNATSURL         = "nats://127.0.0.1:4222"
	DefaultShutdownTimeout = 15 * time.Second
	// DefaultDecisionMemo bounds the remembered decisions: a few hundred bytes each.
	DefaultDecisionMemo = 10_000
)

type serveConfig struct {
	debugAddr          string
	configFile         string
	addr               string
	dataDir            string
	natsListen         string
	natsURL            string
	natsCreds          string
	policies           string
	policySource       policySourceConfig
	decision           string
	decisionMemo       int
	decisionMemoBytes  int64
	retention          time.Duration
	streamMaxBytes     int64
	streamReplicas     int
	streamApplyConfig  bool
	duplicateWindow    time.Duration
	publishTimeout     time.Duration
	intentKeyFile      string
	maxBodyBytes       int64
	shutdownTimeout    time.Duration
	logLevel           string
	logFormat          string
	signingKey         string
	natsSync           string
	recordMode         string
	spoolMaxBytes      int64
	checkpointEvery    uint64
	checkpointInterval time.Duration
	publicURL          string
	auth               authConfig
	receipt            receiptConfig
	evidence           evidenceConfig
	vault              vaultConfig
	// governMemory lets serve set the collector's defaults (see memory.go): the process is
	// custody's own, not a host it is embedded in.
	governMemory bool
}

func (c *serveConfig) flags(fs *flag.FlagSet) {
	fs.StringVar(&c.configFile, "config", "", "YAML file of flag settings (`path`); flags and CUSTODY_* variables override it")
	fs.StringVar(&c.addr, "addr", DefaultAddr, "HTTP listen address, `host:port` (port 0 picks a free one)")
	fs.StringVar(&c.dataDir, "data-dir", DefaultDataDir, "directory for JetStream storage, keys and the instance ID")
	fs.StringVar(&c.natsListen, "nats-listen", DefaultNATSListen, "embedded NATS client address, `host:port` (port 0 picks a free one), or none for in-process only; clients need a credential (DATA/nats/reader.creds reads the stream)")
	fs.StringVar(&c.natsURL, "nats-url", "", "use this external NATS server or cluster (`url`) instead of the embedded one")
	fs.StringVar(&c.natsCreds, "nats-creds", "", "NATS credentials file for --nats-url")
	fs.StringVar(&c.policies, "policies", "", "policy set: a directory of .rego and data files, or an OPA bundle .tar.gz (default: the embedded policies)")
	c.policySource.flags(fs)
	fs.StringVar(&c.decision, "decision", pdp.DefaultQuery, "the decision rule to evaluate")
	fs.IntVar(&c.decisionMemo, "decision-memo", DefaultDecisionMemo, "remember up to this many decisions, keyed by exactly the input fields the policy reads, and answer repeats without evaluating; 0 turns it off (see GET /v1/policy)")
	fs.Int64Var(&c.decisionMemoBytes, "decision-memo-bytes", pdp.DefaultMemoBytes, "bound the decision memo also by the bytes its keys, reasons and obligations hold; the least recently used decisions go first")
	fs.DurationVar(&c.retention, "retention", 0, "how long the stream keeps decisions; 0 keeps them forever")
	fs.Int64Var(&c.streamMaxBytes, "stream-max-bytes", -1, "stream size bound; when full, new decisions are refused (503 deny), never old ones evicted; -1 is unlimited")
	fs.IntVar(&c.streamReplicas, "stream-replicas", custodyjs.DefaultReplicas, "stream replicas in a JetStream cluster")
	fs.BoolVar(&c.streamApplyConfig, "stream-apply-config", false, "change an existing CUSTODY stream to this instance's --retention, --stream-max-bytes, --stream-replicas and --duplicate-window; without it, serve refuses to start when they differ (shrinking retention deletes history)")
	fs.DurationVar(&c.duplicateWindow, "duplicate-window", 0, "how long JetStream remembers a record's Nats-Msg-Id to drop a replay (default: 10s, at least twice --publish-timeout, for the embedded server in ack mode; else 2m)")
	fs.DurationVar(&c.publishTimeout, "publish-timeout", custodyjs.DefaultPublishTimeout, "how long to wait for JetStream to ack a decision before answering 503 deny")
	fs.StringVar(&c.intentKeyFile, "intent-key-file", "", "HMAC key for task intents, hex (default: generated into the data dir)")
	fs.StringVar(&c.recordMode, "record-mode", recordAuto, "how a decision is made durable before its answer: spool (local fsync, forwarded to JetStream), ack (JetStream's ack), or auto (spool with --nats-url, ack with the embedded server)")
	fs.Int64Var(&c.spoolMaxBytes, "spool-max-bytes", spool.DefaultMaxBytes, "spool size bound; when full, decisions are 503 denies")
	fs.StringVar(&c.natsSync, "nats-sync", "", "embedded JetStream fsync policy: always, or an interval such as 1s (default: the server's 2m)")
	fs.StringVar(&c.signingKey, "signing-key", "", "Ed25519 signed-note key for chain checkpoints (default: generated into the data dir; see custody keys)")
	fs.Uint64Var(&c.checkpointEvery, "checkpoint-every", custodyjs.DefaultCheckpointEvery, "publish a signed checkpoint every this many records")
	fs.DurationVar(&c.checkpointInterval, "checkpoint-interval", custodyjs.DefaultCheckpointInterval, "and at least this often while decisions flow")
	fs.Int64Var(&c.maxBodyBytes, "max-body-bytes", custodyhttp.DefaultMaxBodyBytes, "largest request body accepted")
	fs.DurationVar(&c.shutdownTimeout, "shutdown-timeout", DefaultShutdownTimeout, "how long shutdown waits for requests in flight and their records")
	fs.StringVar(&c.debugAddr, "debug-addr", "", "serve Go pprof profiles on this `host:port` (off by default; keep it on loopback)")
	fs.StringVar(&c.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&c.logFormat, "log-format", "json", "json or console")
	fs.StringVar(&c.publicURL, "public-url", "", "base `url` the AuthZEN metadata names as policy_decision_point, such as https://pdp.example.com (default: as each client reached it)")
	c.auth.flags(fs)
	c.receipt.flags(fs)
	c.evidence.flags(fs)
	c.vault.flags(fs)
}

// Validate reports the first setting that cannot work.
func (c *serveConfig) Validate() error {
	if _, _, err := net.SplitHostPort(c.addr); err != nil {
		return fmt.Errorf("--addr %q: %w", c.addr, err)
	}
	if c.natsURL == "" && c.natsListen != embeddednats.ListenNone {
		if _, _, err := net.SplitHostPort(c.natsListen); err != nil {
			return fmt.Errorf("--nats-listen %q: %w", c.natsListen, err)
		}
	}
	if c.dataDir == "" {
		return errors.New("--data-dir must not be empty")
	}
	if c.recordMode != recordAuto && c.recordMode != recordSpool && c.recordMode != recordAck {
		return fmt.Errorf("--record-mode %q: want auto, spool or ack", c.recordMode)
	}
	if c.spoolMaxBytes <= 0 {
		return errors.New("--spool-max-bytes must be positive")
	}
	if _, _, err := parseNATSSync(c.natsSync); err != nil {
		return err
	}
	if c.publishTimeout <= 0 {
		return errors.New("--publish-timeout must be positive")
	}
	if c.decisionMemo < 0 {
		return errors.New("--decision-memo must not be negative")
	}
	if c.decisionMemoBytes <= 0 {
		return errors.New("--decision-memo-bytes must be positive")
	}
	if c.duplicateWindow < 0 {
		return errors.New("--duplicate-window must not be negative")
	}
	if c.maxBodyBytes <= 0 {
		return errors.New("--max-body-bytes must be positive")
	}
	if c.shutdownTimeout <= 0 {
		return errors.New("--shutdown-timeout must be positive")
	}
	if err := c.policySource.Validate(c.policies); err != nil {
		return err
	}
	if err := checkPublicURL(c.publicURL); err != nil {
		return err
	}
	if err := c.evidence.Validate(); err != nil {
		return err
	}
	if err := c.vault.Validate(); err != nil {
		return err
	}
	return c.auth.Validate()
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
	cfg.governMemory = true
	return serve(ctx, cfg, logger)
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

func serve(ctx context.Context, cfg serveConfig, logger zerolog.Logger) error {
	log := logger.With().Str("component", "serve").Logger()
	lock, err := lockDataDir(cfg.dataDir) // before anything in the data dir is touched
	if err != nil {
		return fmt.Errorf("serve: %w", err)
	}
	defer lock.release()
	cfg.policySource.dataDir = cfg.dataDir
	if err := os.MkdirAll(cfg.dataDir, 0o700); err != nil {
		return fmt.Errorf("serve: create data dir: %w", err)
	}
	instanceID, err := loadOrCreate(filepath.Join(cfg.dataDir, "instance.id"), func() string { return custodyhttp.NewUUIDv7() })
	if err != nil {
		return fmt.Errorf("serve: instance id: %w", err)
	}
	intentKey, err := loadIntentKey(cfg)
	if err != nil {
		return err
	}

	engine, err := pdp.NewEmpty(pdp.WithQuery(cfg.decision), pdp.WithLogger(logger), pdp.WithMemo(cfg.decisionMemo), pdp.WithMemoBytes(cfg.decisionMemoBytes))
	if err != nil {
		return err
	}
	var governor *memoryGovernor
	if cfg.governMemory {
		governor = newMemoryGovernor(log)
	}
	policy, err := newPolicySource(cfg.policySource, cfg.policies, engine, governor, logger)
	if err != nil {
		return err
	}
	if err := policy.loadFile(ctx); err != nil {
		return err
	}

	// NATS: the embedded server unless --nats-url names another.
	syncAlways, syncInterval, _ := parseNATSSync(cfg.natsSync)
	natsURL := cfg.natsURL
	var ns *server.Server
	var own []nats.Option
	if natsURL == "" {
		var readerCreds string
		ns, own, readerCreds, err = startEmbedded(cfg, instanceID, syncAlways, syncInterval, logger)
		if err != nil {
			return err
		}
		defer func() { ns.Shutdown(); ns.WaitForShutdown() }()
		natsURL = ns.ClientURL()
		log.Info().Str("reader_creds", readerCreds).Msg("embedded NATS requires credentials; readers use this file")
	}
	nc, err := connectNATS(natsURL, cfg.natsCreds, "custody serve "+instanceID, log, own...)
	if err != nil {
		return err
	}
	defer nc.Close()
	// A record whose ack never comes (the server restarted under it) must not stay in the
	// client's table of pending async publishes forever: the sink gives up on it after
	// --publish-timeout, and the client forgets it a little later.
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncTimeout(2*cfg.publishTimeout))
	if err != nil {
		return fmt.Errorf("serve: jetstream: %w", err)
	}
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	stream, err := ensureStream(sctx, js, cfg, ns != nil)
	cancel()
	if err != nil {
		return fmt.Errorf("serve: %w", err)
	}
	// From here on the stream must stay the one just checked; the guard makes every answer a 503
	// deny and /readyz fail the moment it is deleted, recreated or weakened.
	guard := custodyjs.NewGuard(stream, custodyjs.WithGuardLogger(log))
	gctx, stopGuard := context.WithCancel(ctx)
	defer stopGuard()
	go guard.Run(gctx)
	js = guard.JetStream(js)
	signer, vkey, err := loadSigningKey(cfg.dataDir, cfg.signingKey, instanceID)
	if err != nil {
		return fmt.Errorf("serve: %w", err)
	}
	rctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	head, tree, err := recoverChain(rctx, stream, instanceID, vkey, log)
	cancel()
	if err != nil {
		return err
	}
	log.Info().Uint64("seq", head.Seq).Str("instance", instanceID).Msg("decision chain resumes")
	evidenceOpts, err := cfg.evidence.sinkOptions(tree, cfg.dataDir, log)
	if err != nil {
		return err
	}
	rec, err := newRecorder(recorderDeps{
		cfg: cfg, logger: logger, js: js, stream: stream, nc: nc,
		instance: instanceID, head: head, signer: signer, embedded: ns != nil,
		evidence: evidenceOpts,
	})
	if err != nil {
		return err
	}
	if err := policy.start(ctx, js, cfg.streamReplicas); err != nil {
		return err
	}
	defer policy.stop()

	authOpts, tlsConfig, err := cfg.auth.build(logger)
	if err != nil {
		return err
	}
	receiptOpts, err := cfg.receipt.serverOptions(cfg.dataDir, cfg.publicURL, instanceID, stream)
	if err != nil {
		return err
	}
	authOpts = append(authOpts, receiptOpts...)
	vaultOpts, err := cfg.vault.build(ctx, js, cfg, instanceID, log)
	if err != nil {
		return err
	}
	authOpts = append(authOpts, vaultOpts...)
	reg := prometheus.NewRegistry()
	rec.register(reg)
	rec.publisher = guard.Publisher(rec.publisher)
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "custody_stream_changed",
		Help: "1 once the CUSTODY stream was deleted, recreated or weakened under this instance (every answer is then a 503 deny).",
	}, func() float64 {
		if guard.Tripped() {
			return 1
		}
		return 0
	}))
	api := custodyhttp.New(engine, rec.publisher, decisionlog.NewIntentHasher(intentKey), append(authOpts,
		custodyhttp.WithLogger(logger),
		custodyhttp.WithInstance(decisionlog.Instance{Instance: instanceID, Version: version()}),
		custodyhttp.WithMaxBodyBytes(cfg.maxBodyBytes),
		custodyhttp.WithPublicURL(cfg.publicURL),
		custodyhttp.WithRegistry(reg),
		custodyhttp.WithPolicyStatus(policy),
		custodyhttp.WithReadyCheck("policy", func(context.Context) error {
			if engine.Policy().Revision == "" {
				return errors.New("no policy set loaded")
			}
			return nil
		}),
		custodyhttp.WithReadyCheck("decision_log", rec.ready),
		custodyhttp.WithReadyCheck("stream", func(context.Context) error { return guard.Err() }),
	)...)

	ln, err := net.Listen("tcp", cfg.addr)
	if err != nil {
		return fmt.Errorf("serve: listen on %s: %w", cfg.addr, err)
	}
	srv := &http.Server{
		Handler:           api.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    64 << 10,
	}
	stopDebug, err := startDebug(cfg.debugAddr, log)
	if err != nil {
		return fmt.Errorf("serve: debug listener: %w", err)
	}
	defer stopDebug()
	serveErr := make(chan error, 1)
	if tlsConfig != nil {
		srv.TLSConfig = tlsConfig
		go func() { serveErr <- srv.ServeTLS(ln, "", "") }()
	} else {
		go func() { serveErr <- srv.Serve(ln) }()
	}
	log.Info().
		Str("http_addr", ln.Addr().String()).
		Bool("tls", tlsConfig != nil).
		Bool("require_auth", cfg.auth.requireAuth).
		Str("nats_url", loggedNATSURL(cfg, natsURL)).
		Bool("nats_embedded", ns != nil).
		Str("policy_revision", engine.Policy().Revision).
		Str("record_mode", rec.mode).
		Str("policy_source", engine.Policy().Source).
		Str("instance", instanceID).
		Str("version", version()).
		Msg("custody serving")

	select {
	case err = <-serveErr:
		err = fmt.Errorf("serve: http: %w", err)
	case <-ctx.Done():
	}

	// Stop taking requests, let those in flight finish and their records be acked, then close
	// the connection and the embedded server.
	log.Info().Msg("shutting down")
	sdCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cfg.shutdownTimeout)
	defer cancel()
	if serr := srv.Shutdown(sdCtx); serr != nil {
		log.Error().Err(serr).Msg("http shutdown incomplete")
	}
	if serr := rec.close(sdCtx); serr != nil {
		log.Error().Err(serr).Msg("decision log close incomplete")
	}
	if derr := nc.Drain(); derr != nil {
		log.Error().Err(derr).Msg("nats drain")
	}
	log.Info().Msg("stopped")
	return err
}

// loggedNATSURL is the NATS address serve reports: none when the embedded server opens no port.
func loggedNATSURL(cfg serveConfig, url string) string {
	if cfg.natsURL == "" && cfg.natsListen == embeddednats.ListenNone {
		return embeddednats.ListenNone
	}
	return redactURL(url)
}

// startEmbedded runs the embedded server in operator mode, with the keys and the reader
// credential under DATA/nats, and returns the options of custody's own connection: in process,
// with a service credential minted in memory, and an inbox prefix readers cannot subscribe to.
func startEmbedded(cfg serveConfig, instanceID string, syncAlways bool, syncInterval time.Duration, logger zerolog.Logger) (*server.Server, []nats.Option, string, error) {
	keysDir := filepath.Join(cfg.dataDir, "nats")
	trust, err := natsauth.LoadOrCreate(keysDir)
	if err != nil {
		return nil, nil, "", fmt.Errorf("serve: %w", err)
	}
	readerCreds, err := trust.EnsureReaderCreds()
	if err != nil {
		return nil, nil, "", fmt.Errorf("serve: %w", err)
	}
	creds, err := trust.Creds(natsauth.RoleService, "custody serve "+instanceID)
	if err != nil {
		return nil, nil, "", fmt.Errorf("serve: %w", err)
	}
	userJWT, seed, err := natsauth.JWTAndSeed(creds)
	if err != nil {
		return nil, nil, "", fmt.Errorf("serve: %w", err)
	}
	ns, err := embeddednats.Start(embeddednats.Config{
		Listen:       cfg.natsListen,
		StoreDir:     filepath.Join(cfg.dataDir, "jetstream"),
		ServerName:   "custody-" + instanceID,
		SyncAlways:   syncAlways,
		SyncInterval: syncInterval,
		Logger:       &logger,
		Accounts:     trust,
	})
	if err != nil {
		return nil, nil, "", fmt.Errorf("serve: %w", err)
	}
	return ns, []nats.Option{
		// The embedded server is reached through an in-memory pipe, not loopback TCP: every
		// record crosses this connection twice (publish and ack), and the socket syscalls were a
		// visible share of a decision's CPU. Other clients (nats CLI, tail) use the port.
		nats.InProcessServer(ns),
		nats.UserJWTAndSeed(userJWT, seed),
		nats.CustomInboxPrefix(natsauth.ServiceInboxPrefix),
	}, readerCreds, nil
}

// ensureStream creates the CUSTODY stream or checks the existing one against this instance's
// settings, and changes an existing stream only with --stream-apply-config. A duplicate window
// that was not set explicitly is whatever the stream already has.
func ensureStream(ctx context.Context, js jetstream.JetStream, cfg serveConfig, embedded bool) (jetstream.Stream, error) {
	sc := custodyjs.StreamConfig{
		Retention:           cfg.retention,
		MaxBytes:            cfg.streamMaxBytes,
		Replicas:            cfg.streamReplicas,
		DuplicateWindow:     duplicateWindow(cfg, embedded),
		KeepDuplicateWindow: cfg.duplicateWindow == 0,
	}
	if cfg.streamApplyConfig {
		return custodyjs.ApplyStreamConfig(ctx, js, sc)
	}
	s, err := custodyjs.EnsureStream(ctx, js, sc)
	var mismatch *custodyjs.ConfigMismatchError
	if errors.As(err, &mismatch) {
		return nil, fmt.Errorf("%w; start with the stream's settings, or with --stream-apply-config to change the stream (every instance of a fleet must agree)", err)
	}
	return s, err
}

// embeddedAckDuplicateWindow is the stream's duplicate window for the embedded server in ack
// mode. There a record is only ever resent while its request waits (--publish-timeout), so two
// minutes of remembered IDs (JetStream's default) bought nothing, and under load the map of
// IDs was the largest thing in memory that kept growing: at 3,400 decisions/s, 30 s of IDs held
// about 20 MB. A spool replays records after a restart, so it keeps the longer default.
const embeddedAckDuplicateWindow = 10 * time.Second

func duplicateWindow(cfg serveConfig, embedded bool) time.Duration {
	switch {
	case cfg.duplicateWindow > 0:
		return cfg.duplicateWindow
	case embedded && recordModeFor(cfg.recordMode, embedded) == recordAck:
		w := max(embeddedAckDuplicateWindow, 2*cfg.publishTimeout)
		if cfg.retention > 0 && cfg.retention < w {
			w = cfg.retention
		}
		return w
	default:
		return 0 // the stream's default
	}
}

func connectNATS(url, creds, name string, log zerolog.Logger, extra ...nats.Option) (*nats.Conn, error) {
	nc, err := dialNATS(url, creds, name, append([]nats.Option{
		nats.MaxReconnects(-1), // keep trying: while disconnected, decisions are 503 denies
		nats.ReconnectWait(250 * time.Millisecond),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			log.Warn().Err(err).Msg("nats disconnected")
		}),
		nats.ReconnectHandler(func(c *nats.Conn) {
			log.Info().Str("url", c.ConnectedUrlRedacted()).Msg("nats reconnected")
		}),
	}, extra...)...)
	if err != nil {
		return nil, fmt.Errorf("serve: %w", err)
	}
	return nc, nil
}

// redactURL drops credentials from a NATS URL before it is logged or returned.
func redactURL(u string) string {
	if i := strings.Index(u, "@"); i >= 0 {
		if j := strings.Index(u, "://"); j >= 0 && j < i {
			return u[:j+3] + "[redacted]" + u[i:]
		}
	}
	return u
}

// loadIntentKey reads the HMAC key for task intents, generating one into the data dir on first
// start. A missing configured file is an error, not a reason to invent a key.
func loadIntentKey(cfg serveConfig) ([]byte, error) {
	path := cfg.intentKeyFile
	if path == "" {
		path = filepath.Join(cfg.dataDir, "intent.key")
		if _, err := loadOrCreate(path, func() string {
			b := make([]byte, 32)
			_, _ = rand.Read(b) // crypto/rand.Read never fails on supported platforms
			return hex.EncodeToString(b)
		}); err != nil {
			return nil, fmt.Errorf("serve: intent key: %w", err)
		}
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("serve: read intent key: %w", err)
	}
	key, err := hex.DecodeString(strings.TrimSpace(string(raw)))
	if err != nil || len(key) < 16 {
		return nil, fmt.Errorf("serve: intent key %s: want at least 16 bytes, hex encoded", path)
	}
	return key, nil
}

// loadOrCreate returns the trimmed content of path, first writing make() there (mode 0600) if the
// file does not exist.
func loadOrCreate(path string, make func() string) (string, error) {
	raw, err := os.ReadFile(path)
	if err == nil {
		if v := strings.TrimSpace(string(raw)); v != "" {
			return v, nil
		}
		return "", fmt.Errorf("%s is empty", path)
	}
	if !errors.Is(err, os.ErrNotExist) {
		return "", err
	}
	v := make()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return "", err
	}
	if _, err := f.WriteString(v + "\n"); err != nil {
		f.Close()
		return "", err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return "", err
	}
	return v, f.Close()
}

// checkPublicURL accepts an empty --public-url or an absolute http(s) URL without query or
// fragment, as the AuthZEN policy_decision_point identifier must be.
func checkPublicURL(raw string) error {
	if raw == "" {
		return nil
	}
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return fmt.Errorf("--public-url %q: want an absolute http or https URL without credentials, query or fragment", raw)
	}
	return nil
}

// parseNATSSync reads --nats-sync: "" (the server's default), "always", or a positive interval.
func parseNATSSync(v string) (always bool, interval time.Duration, err error) {
	switch v {
	case "":
		return false, 0, nil
	case "always":
		return true, 0, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		return false, 0, fmt.Errorf("--nats-sync %q: want always or a positive duration such as 1s", v)
	}
	return false, d, nil
}
