package app

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/custodyhq/custody/decisionlog"
	custodyjs "github.com/custodyhq/custody/decisionlog/jetstream"
	"github.com/custodyhq/custody/identity"
	"github.com/custodyhq/custody/internal/embeddednats"
	"github.com/custodyhq/custody/internal/natsauth"
	"github.com/custodyhq/custody/pdp"
	custodyhttp "github.com/custodyhq/custody/server"
)

// App is one running PDP: its data dir held, its policy set loaded, its NATS connection and
// stream checked, its HTTP listener open. New builds it, Run serves until its context ends,
// Close gives back what New took.
type App struct {
	cfg     Config
	log     zerolog.Logger // component=serve
	version string

	lock     *dataDirLock
	ns       *server.Server // nil with an external NATS
	nc       *nats.Conn
	natsURL  string
	guard    *custodyjs.Guard
	policy   *policySource
	rec      *recorder
	engine   *pdp.Engine
	instance string
	witness  *httpWitnesses     // nil without an https:// --checkpoint-witness
	verifier *identity.Verifier // nil without --issuer

	ln      net.Listener
	tls     *tls.Config
	srv     *http.Server
	debugLn net.Listener

	ran       bool
	closeOnce sync.Once
	closeErr  error
}

// Option sets an optional part of an App.
type Option func(*options)

type options struct {
	logger       zerolog.Logger
	version      string
	governMemory bool
}

// WithLogger sets the logger of the App and everything it builds (default: none).
func WithLogger(l zerolog.Logger) Option { return func(o *options) { o.logger = l } }

// WithVersion sets the version the App reports in its records and log (default: "devel").
func WithVersion(v string) Option { return func(o *options) { o.version = v } }

// WithMemoryGovernor lets the App set the garbage collector's settings (see memory.go). Only a
// process that is custody's own should: it changes them for the whole process.
func WithMemoryGovernor() Option { return func(o *options) { o.governMemory = true } }

// New takes cfg.DataDir's lock (before anything in the data dir is touched), loads the policy
// set, starts or connects to NATS, checks the stream, recovers the decision chain and opens the
// HTTP listener, so that Addr is known before Run. It starts no goroutine of its own that Close
// does not stop; those that serve run from Run. On error, everything it took is given back.
func New(ctx context.Context, cfg Config, opts ...Option) (_ *App, err error) {
	o := options{logger: zerolog.Nop(), version: "devel"}
	for _, opt := range opts {
		opt(&o)
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("app: %w", err)
	}
	logger := o.logger
	a := &App{cfg: cfg, log: logger.With().Str("component", "serve").Logger(), version: o.version}
	defer func() {
		if err != nil {
			_ = a.Close(context.WithoutCancel(ctx))
		}
	}()
	a.lock, err = lockDataDir(cfg.DataDir)
	if err != nil {
		return nil, fmt.Errorf("app: %w", err)
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("app: create data dir: %w", err)
	}
	a.instance, err = loadOrCreate(filepath.Join(cfg.DataDir, "instance.id"), func() string { return custodyhttp.NewUUIDv7() })
	if err != nil {
		return nil, fmt.Errorf("app: instance id: %w", err)
	}
	intentKey, err := loadIntentKey(cfg)
	if err != nil {
		return nil, err
	}

	a.engine, err = pdp.NewEmpty(pdp.WithQuery(cfg.Decision), pdp.WithLogger(logger), pdp.WithMemo(cfg.DecisionMemo), pdp.WithMemoBytes(cfg.DecisionMemoBytes))
	if err != nil {
		return nil, fmt.Errorf("app: engine: %w", err)
	}
	var governor *memoryGovernor
	if o.governMemory {
		governor = newMemoryGovernor(a.log)
	}
	a.policy, err = newPolicySource(cfg.PolicySource, cfg.Policies, cfg.DataDir, a.engine, governor, logger)
	if err != nil {
		return nil, err
	}
	if err := a.policy.loadFile(ctx); err != nil {
		return nil, err
	}

	// NATS: the embedded server unless NATSURL names another.
	syncAlways, syncInterval, _ := parseNATSSync(cfg.NATSSync)
	a.natsURL = cfg.NATSURL
	var own []nats.Option
	if a.natsURL == "" {
		var readerCreds string
		a.ns, own, readerCreds, err = startEmbedded(cfg, a.instance, syncAlways, syncInterval, logger)
		if err != nil {
			return nil, err
		}
		a.natsURL = a.ns.ClientURL()
		a.log.Info().Str("reader_creds", readerCreds).Msg("embedded NATS requires credentials; readers use this file")
	}
	a.nc, err = connectNATS(a.natsURL, cfg.natsClient(), "custody serve "+a.instance, a.log, own...)
	if err != nil {
		return nil, err
	}
	// A record whose ack never comes (the server restarted under it) must not stay in the
	// client's table of pending async publishes forever: the sink gives up on it after
	// PublishTimeout, and the client forgets it a little later.
	js, err := jetstream.New(a.nc, jetstream.WithPublishAsyncTimeout(2*cfg.PublishTimeout))
	if err != nil {
		return nil, fmt.Errorf("app: jetstream: %w", err)
	}
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	stream, err := ensureStream(sctx, js, cfg, a.ns != nil)
	cancel()
	if err != nil {
		return nil, fmt.Errorf("app: %w", err)
	}
	// From here on the stream must stay the one just checked; the guard (run by Run) makes every
	// answer a 503 deny and /readyz fail the moment it is deleted, recreated or weakened.
	a.guard = custodyjs.NewGuard(stream, custodyjs.WithGuardLogger(a.log))
	js = a.guard.JetStream(js)
	signer, vkey, err := loadSigningKey(cfg.DataDir, cfg.SigningKey, a.instance)
	if err != nil {
		return nil, fmt.Errorf("app: %w", err)
	}
	rctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	head, tree, err := recoverChain(rctx, stream, a.instance, vkey, a.log)
	cancel()
	if err != nil {
		return nil, err
	}
	a.log.Info().Uint64("seq", head.Seq).Str("instance", a.instance).Msg("decision chain resumes")
	evidenceOpts, witness, err := cfg.Evidence.sinkOptions(tree, cfg.DataDir, a.log)
	if err != nil {
		return nil, err
	}
	a.witness = witness
	a.rec, err = newRecorder(recorderDeps{
		cfg: cfg, logger: logger, js: js, stream: stream, nc: a.nc,
		instance: a.instance, head: head, signer: signer, embedded: a.ns != nil,
		evidence: evidenceOpts,
	})
	if err != nil {
		return nil, err
	}
	if err := a.policy.prepare(ctx, js, cfg.StreamReplicas); err != nil {
		return nil, err
	}

	authOpts, tlsConfig, err := buildAuth(cfg.Auth, logger, &a.verifier)
	if err != nil {
		return nil, err
	}
	receiptOpts, err := receiptOptions(cfg.Receipt, cfg.DataDir, cfg.PublicURL, a.instance, stream)
	if err != nil {
		return nil, err
	}
	authOpts = append(authOpts, receiptOpts...)
	vaultOpts, err := cfg.Vault.build(ctx, js, cfg, a.instance, a.log)
	if err != nil {
		return nil, err
	}
	authOpts = append(authOpts, vaultOpts...)
	approvalOpts, err := approvalOptions(cfg.Approvals)
	if err != nil {
		return nil, err
	}
	authOpts = append(authOpts, approvalOpts...)
	reg := prometheus.NewRegistry()
	a.rec.register(reg)
	a.rec.publisher = a.guard.Publisher(a.rec.publisher)
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "custody_stream_changed",
		Help: "1 once the CUSTODY stream was deleted, recreated or weakened under this instance (every answer is then a 503 deny).",
	}, func() float64 {
		if a.guard.Tripped() {
			return 1
		}
		return 0
	}))
	engine, guard, rec := a.engine, a.guard, a.rec
	api := custodyhttp.New(engine, rec.publisher, decisionlog.NewIntentHasher(intentKey), append(authOpts,
		custodyhttp.WithLogger(logger),
		custodyhttp.WithInstance(decisionlog.Instance{Instance: a.instance, Version: a.version}),
		custodyhttp.WithMaxBodyBytes(cfg.MaxBodyBytes),
		custodyhttp.WithPublicURL(cfg.PublicURL),
		custodyhttp.WithRegistry(reg),
		// Refused attempts may not use the last tenth of a bounded stream: that is the decisions'.
		custodyhttp.WithRefusalRoom(func() bool { return guard.Room(refusalReserve) }),
		custodyhttp.WithPolicyStatus(a.policy),
		custodyhttp.WithReadyCheck("policy", func(context.Context) error {
			if engine.Policy().Revision == "" {
				return errors.New("no policy set loaded")
			}
			return nil
		}),
		custodyhttp.WithReadyCheck("decision_log", rec.ready),
		custodyhttp.WithReadyCheck("stream", func(context.Context) error { return guard.Err() }),
	)...)

	a.ln, err = net.Listen("tcp", cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("app: listen on %s: %w", cfg.Addr, err)
	}
	a.tls = tlsConfig
	a.srv = &http.Server{
		Handler:           api.Handler(),
		TLSConfig:         tlsConfig,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    64 << 10,
	}
	if cfg.DebugAddr != "" {
		if a.debugLn, err = net.Listen("tcp", cfg.DebugAddr); err != nil {
			return nil, fmt.Errorf("app: debug listener: %w", err)
		}
	}
	return a, nil
}

// Addr is the address the HTTP API listens on, host:port: the one bound when Config.Addr asked
// for port 0.
func (a *App) Addr() string { return a.ln.Addr().String() }

// URL is the base URL of the HTTP API, https when TLS is configured.
func (a *App) URL() string {
	if a.tls != nil {
		return "https://" + a.Addr()
	}
	return "http://" + a.Addr()
}

// NATSURL is the NATS server the App records to, credentials redacted: the embedded server's
// client URL, or embeddednats.ListenNone when it opens no port.
func (a *App) NATSURL() string {
	if a.cfg.NATSURL == "" && a.cfg.NATSListen == embeddednats.ListenNone {
		return embeddednats.ListenNone
	}
	return RedactURL(a.natsURL)
}

// Run serves until ctx ends or the HTTP server fails, then stops taking requests, lets those in
// flight finish and their records become durable (within Config.ShutdownTimeout), and stops
// every goroutine it started before it returns. Run may be called once; Close still follows.
func (a *App) Run(ctx context.Context) error {
	if a.ran {
		return errors.New("app: run: already run")
	}
	a.ran = true
	var wg sync.WaitGroup
	bg, stopBG := context.WithCancel(ctx)
	wg.Go(func() { a.guard.Run(bg) })
	wg.Go(func() { a.policy.runWatchers(bg) })
	if a.witness != nil {
		a.witness.start()
	}
	a.rec.start()
	var debugSrv *http.Server
	if a.debugLn != nil {
		debugSrv = newDebugServer()
		ln := a.debugLn
		wg.Go(func() { _ = debugSrv.Serve(ln) })
		a.log.Info().Str("debug_addr", ln.Addr().String()).Msg("pprof serving")
	}
	serveErr := make(chan error, 1)
	wg.Go(func() {
		if a.tls != nil {
			serveErr <- a.srv.ServeTLS(a.ln, "", "")
		} else {
			serveErr <- a.srv.Serve(a.ln)
		}
	})
	a.log.Info().
		Str("http_addr", a.Addr()).
		Bool("tls", a.tls != nil).
		Bool("require_auth", a.cfg.Auth.RequireAuth).
		Str("nats_url", a.NATSURL()).
		Bool("nats_embedded", a.ns != nil).
		Str("policy_revision", a.engine.Policy().Revision).
		Str("record_mode", a.rec.mode).
		Str("policy_source", a.engine.Policy().Source).
		Str("instance", a.instance).
		Str("version", a.version).
		Msg("custody serving")

	var err error
	select {
	case err = <-serveErr:
		err = fmt.Errorf("app: http: %w", err)
	case <-ctx.Done():
	}

	// Stop taking requests, let those in flight finish and their records be acked, then drain
	// the connection; Close shuts the embedded server down.
	a.log.Info().Msg("shutting down")
	sdCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), a.cfg.ShutdownTimeout)
	defer cancel()
	if serr := a.srv.Shutdown(sdCtx); serr != nil {
		a.log.Error().Err(serr).Msg("http shutdown incomplete")
	}
	if serr := a.rec.close(sdCtx); serr != nil {
		a.log.Error().Err(serr).Msg("decision log close incomplete")
	}
	if debugSrv != nil {
		_ = debugSrv.Close()
	}
	stopBG()
	wg.Wait()
	if derr := a.nc.Drain(); derr != nil {
		a.log.Error().Err(derr).Msg("nats drain")
	}
	a.log.Info().Msg("stopped")
	return err
}

// Close gives back what New took: the decision log (when Run did not close it), the NATS
// connection, the embedded server and its goroutines, the listeners and the data dir's lock,
// in that order. It is safe to call more than once, and after a failed New.
func (a *App) Close(ctx context.Context) error {
	a.closeOnce.Do(func() {
		var errs []error
		if a.rec != nil && !a.ran {
			errs = append(errs, a.rec.close(ctx))
		}
		if a.witness != nil {
			a.witness.stop() // after the recorder's last checkpoint
		}
		if a.verifier != nil {
			_ = a.verifier.Close() // a JWKS fetch in flight
		}
		if a.ln != nil {
			_ = a.ln.Close() // already closed by Run's Shutdown
		}
		if a.debugLn != nil {
			_ = a.debugLn.Close()
		}
		if a.nc != nil {
			a.nc.Close()
		}
		if a.ns != nil {
			a.ns.Shutdown()
			a.ns.WaitForShutdown()
		}
		a.lock.release()
		if err := errors.Join(errs...); err != nil {
			a.closeErr = fmt.Errorf("app: close: %w", err)
		}
	})
	return a.closeErr
}

// refusalReserve is the fraction of a bounded stream that refused attempts never use.
const refusalReserve = 0.1

// startEmbedded runs the embedded server in operator mode, with the keys and the reader
// credential under DATA/nats, and returns the options of custody's own connection: in process,
// with a service credential minted in memory, and an inbox prefix readers cannot subscribe to.
func startEmbedded(cfg Config, instanceID string, syncAlways bool, syncInterval time.Duration, logger zerolog.Logger) (*server.Server, []nats.Option, string, error) {
	keysDir := filepath.Join(cfg.DataDir, "nats")
	trust, err := natsauth.LoadOrCreate(keysDir)
	if err != nil {
		return nil, nil, "", fmt.Errorf("app: %w", err)
	}
	readerCreds, err := trust.EnsureReaderCreds()
	if err != nil {
		return nil, nil, "", fmt.Errorf("app: %w", err)
	}
	creds, err := trust.Creds(natsauth.RoleService, "custody serve "+instanceID)
	if err != nil {
		return nil, nil, "", fmt.Errorf("app: %w", err)
	}
	userJWT, seed, err := natsauth.JWTAndSeed(creds)
	if err != nil {
		return nil, nil, "", fmt.Errorf("app: %w", err)
	}
	ns, err := embeddednats.Start(embeddednats.Config{
		Listen:       cfg.NATSListen,
		StoreDir:     filepath.Join(cfg.DataDir, "jetstream"),
		ServerName:   "custody-" + instanceID,
		SyncAlways:   syncAlways,
		SyncInterval: syncInterval,
		Logger:       &logger,
		Accounts:     trust,
	})
	if err != nil {
		return nil, nil, "", fmt.Errorf("app: %w", err)
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
// settings, and changes an existing stream only with StreamApplyConfig. A duplicate window
// that was not set explicitly is whatever the stream already has.
func ensureStream(ctx context.Context, js jetstream.JetStream, cfg Config, embedded bool) (jetstream.Stream, error) {
	sc := custodyjs.StreamConfig{
		Retention:           cfg.Retention,
		MaxBytes:            cfg.StreamMaxBytes,
		Replicas:            cfg.StreamReplicas,
		DuplicateWindow:     duplicateWindow(cfg, embedded),
		KeepDuplicateWindow: cfg.DuplicateWindow == 0,
	}
	if cfg.StreamApplyConfig {
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
// mode. There a record is only ever resent while its request waits (PublishTimeout), so two
// minutes of remembered IDs (JetStream's default) bought nothing, and under load the map of
// IDs was the largest thing in memory that kept growing: at 3,400 decisions/s, 30 s of IDs held
// about 20 MB. A spool replays records after a restart, so it keeps the longer default.
const embeddedAckDuplicateWindow = 10 * time.Second

func duplicateWindow(cfg Config, embedded bool) time.Duration {
	switch {
	case cfg.DuplicateWindow > 0:
		return cfg.DuplicateWindow
	case embedded && recordModeFor(cfg.RecordMode, embedded) == RecordAck:
		w := max(embeddedAckDuplicateWindow, 2*cfg.PublishTimeout)
		if cfg.Retention > 0 && cfg.Retention < w {
			w = cfg.Retention
		}
		return w
	default:
		return 0 // the stream's default
	}
}

func connectNATS(url string, client NATSClient, name string, log zerolog.Logger, extra ...nats.Option) (*nats.Conn, error) {
	opts := []nats.Option{
		nats.Name(name),
		nats.Timeout(5 * time.Second),
		nats.MaxReconnects(-1), // keep trying: while disconnected, decisions are 503 denies
		nats.ReconnectWait(250 * time.Millisecond),
		nats.DisconnectErrHandler(func(c *nats.Conn, err error) {
			if c.IsClosed() {
				return // custody closed it: a clean stop, not an outage
			}
			log.Warn().Err(err).Msg("nats disconnected")
		}),
		nats.ReconnectHandler(func(c *nats.Conn) {
			log.Info().Str("url", c.ConnectedUrlRedacted()).Msg("nats reconnected")
		}),
	}
	nc, err := DialNATS(url, client, append(opts, extra...)...)
	if err != nil {
		return nil, fmt.Errorf("app: %w", err)
	}
	return nc, nil
}

// RedactURL drops credentials from a NATS URL before it is logged or returned.
func RedactURL(u string) string {
	if i := strings.Index(u, "@"); i >= 0 {
		if j := strings.Index(u, "://"); j >= 0 && j < i {
			return u[:j+3] + "[redacted]" + u[i:]
		}
	}
	return u
}

// loadIntentKey reads the HMAC key for task intents, generating one into the data dir on first
// start. A missing configured file is an error, not a reason to invent a key.
func loadIntentKey(cfg Config) ([]byte, error) {
	path := cfg.IntentKeyFile
	if path == "" {
		path = filepath.Join(cfg.DataDir, "intent.key")
		if _, err := loadOrCreate(path, func() string {
			b := make([]byte, 32)
			_, _ = rand.Read(b) // crypto/rand.Read never fails on supported platforms
			return hex.EncodeToString(b)
		}); err != nil {
			return nil, fmt.Errorf("app: intent key: %w", err)
		}
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("app: read intent key: %w", err)
	}
	key, err := hex.DecodeString(strings.TrimSpace(string(raw)))
	if err != nil || len(key) < 16 {
		return nil, fmt.Errorf("app: intent key %s: want at least 16 bytes, hex encoded", path)
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

// NATSClient is how a client authenticates to NATS: a credentials file, and TLS with a private
// CA or a client certificate. Every command dials through DialNATS with one.
type NATSClient struct {
	Creds string // a .creds file (user JWT and seed)
	CA    string // PEM CA bundle the servers' certificates must chain to; empty is the system's
	Cert  string // PEM client certificate, with Key, for servers that verify clients
	Key   string
}

// Validate reports a client setting that cannot work.
func (c NATSClient) Validate() error {
	if (c.Cert == "") != (c.Key == "") {
		return configErrorf("--nats-cert and --nats-key go together")
	}
	return nil
}

// DialNATS connects to url as c says; extra options come after custody's own.
func DialNATS(url string, c NATSClient, extra ...nats.Option) (*nats.Conn, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	var opts []nats.Option
	if c.Creds != "" {
		opts = append(opts, nats.UserCredentials(c.Creds))
	}
	if c.CA != "" {
		opts = append(opts, nats.RootCAs(c.CA))
	}
	if c.Cert != "" {
		opts = append(opts, nats.ClientCert(c.Cert, c.Key))
	}
	nc, err := nats.Connect(url, append(opts, extra...)...)
	if err != nil {
		return nil, fmt.Errorf("connect to NATS at %s: %w", RedactURL(url), err)
	}
	return nc, nil
}
