package main

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/custodyhq/custody/bundles"
	"github.com/custodyhq/custody/bundles/natsobj"
	"github.com/custodyhq/custody/pdp"
	"github.com/custodyhq/custody/policies"
	custodyhttp "github.com/custodyhq/custody/server"
)

// Values of --bundle-source.
const (
	sourceFile = "file" // --policies, or the embedded policies
	sourceNATS = "nats" // a NATS Object Store bucket
)

// embeddedSource names the embedded default policies.
const embeddedSource = "embedded:policies"

// verifyFlags are the bundle signature flags, named after `opa run`'s --verification-key,
// --verification-key-id, --signing-alg and --scope.
type verifyFlags struct{ bundles.VerifyConfig }

func (v *verifyFlags) flags(fs interface {
	StringVar(*string, string, string, string)
}) {
	fs.StringVar(&v.Key, "bundle-verification-key", "", "require signed bundles: PEM public key `file` (RS*, PS*, ES*), or the HS* secret (or a file holding it), as opa run --verification-key")
	fs.StringVar(&v.KeyID, "bundle-verification-key-id", bundles.DefaultKeyID, "name of the verification key, as opa run --verification-key-id")
	fs.StringVar(&v.Algorithm, "bundle-verification-alg", bundles.DefaultAlgorithm, "signature algorithm of the verification key, as opa run --signing-alg")
	fs.StringVar(&v.Scope, "bundle-verification-scope", "", "scope the bundle signature must carry, as opa run --scope")
}

// loadOptions turns the flags into bundles.LoadOptions, parsing the key once. Without a key an
// offline command (eval, bundle push) reads a signed bundle unchecked, as opa eval does, while
// serve refuses it, as opa run does.
func (v *verifyFlags) loadOptions(offline bool) ([]bundles.LoadOption, error) {
	cfg := v.VerifyConfig
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("%w: --bundle-verification-key: %w", errUsage, err)
	}
	if !cfg.Enabled() {
		if offline {
			return []bundles.LoadOption{bundles.SkipVerification()}, nil
		}
		return nil, nil
	}
	vc, err := cfg.Verification()
	if err != nil {
		return nil, fmt.Errorf("%w: --bundle-verification-key: %w", errUsage, err)
	}
	return []bundles.LoadOption{bundles.WithVerification(vc)}, nil
}

// policySourceConfig says where `custody serve` takes its policy set from and how it follows
// changes.
type policySourceConfig struct {
	source       string
	pollInterval time.Duration
	bucket       string
	object       string
	verify       verifyFlags
	// insecureUnsigned lets --bundle-source nats run without a verification key: whoever can
	// write to the bucket then sets the policy.
	insecureUnsigned bool
	// dataDir is serve's --data-dir, where the ledger of signed bundles served is kept.
	dataDir string
}

// ledgerFile is the file, in the data dir, of the signed bundles served: see bundles.Ledger.
const ledgerFile = "bundle-ledger.json"

func (c *policySourceConfig) flags(fs interface {
	StringVar(*string, string, string, string)
	DurationVar(*time.Duration, string, time.Duration, string)
	BoolVar(*bool, string, bool, string)
}) {
	fs.StringVar(&c.source, "bundle-source", sourceFile, "where the policy set comes from: file (--policies, else the embedded policies) or nats (the --bundle-bucket Object Store bucket, following `custody bundle push`)")
	fs.DurationVar(&c.pollInterval, "policy-poll-interval", bundles.DefaultPollInterval, "how often --policies is checked for changes, which are then loaded without a restart")
	fs.StringVar(&c.bucket, "bundle-bucket", natsobj.DefaultBucket, "NATS Object Store bucket of the policy bundle, with --bundle-source nats")
	fs.StringVar(&c.object, "bundle-object", natsobj.DefaultObject, "name of the policy bundle in --bundle-bucket")
	c.verify.flags(fs)
	fs.BoolVar(&c.insecureUnsigned, "insecure-unsigned-bundles", false, "with --bundle-source nats, accept unsigned bundles: anyone who can write to the bucket then sets the policy (for development only)")
}

// Validate reports the first setting that cannot work; policies is the --policies flag.
func (c *policySourceConfig) Validate(policies string) error {
	switch c.source {
	case sourceFile:
	case sourceNATS:
		if policies != "" {
			return errors.New("--policies and --bundle-source nats are exclusive: the policy set comes from one place")
		}
		if c.verify.Key == "" && !c.insecureUnsigned {
			return errors.New("--bundle-source nats needs --bundle-verification-key: without it anyone who can write to the bundle bucket sets the policy; --insecure-unsigned-bundles accepts unsigned bundles anyway")
		}
	default:
		return fmt.Errorf("--bundle-source %q: want file or nats", c.source)
	}
	if c.pollInterval <= 0 {
		return errors.New("--policy-poll-interval must be positive")
	}
	if c.insecureUnsigned && (c.source != sourceNATS || c.verify.Key != "") {
		return errors.New("--insecure-unsigned-bundles is only for --bundle-source nats without --bundle-verification-key")
	}
	if c.bucket == "" || c.object == "" {
		return errors.New("--bundle-bucket and --bundle-object must not be empty")
	}
	v := c.verify.VerifyConfig
	v.SetDefaults()
	if err := v.Validate(); err != nil {
		return fmt.Errorf("--bundle-verification-key: %w", err)
	}
	return nil
}

// policySource loads the policy set into the engine and keeps it current: a --policies path is
// polled, a NATS bucket watched; the embedded policies never change.
type policySource struct {
	cfg      policySourceConfig
	path     string // --policies
	engine   *pdp.Engine
	reloader *bundles.Reloader
	logger   zerolog.Logger
	loadOpts []bundles.LoadOption

	run    []func(context.Context) error // watchers to run until stop
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

func newPolicySource(cfg policySourceConfig, path string, engine *pdp.Engine, governor *memoryGovernor, logger zerolog.Logger) (*policySource, error) {
	opts, err := cfg.verify.loadOptions(false)
	if err != nil {
		return nil, err
	}
	var loader bundles.Loader = governedLoader{engine: engine, governor: governor}
	ropts := []bundles.ReloaderOption{bundles.WithLogger(logger)}
	switch {
	case cfg.verify.Enabled() && cfg.dataDir != "":
		// Signed bundles are ordered by their serial, and the highest served is kept in the
		// data dir, so that neither a replayed old bundle nor a restart rolls the policy back.
		ledger, err := bundles.OpenLedger(filepath.Join(cfg.dataDir, ledgerFile))
		if err != nil {
			return nil, fmt.Errorf("serve: %w", err)
		}
		ropts = append(ropts, bundles.WithLedger(ledger))
	case cfg.insecureUnsigned:
		loader = unsignedLoader{Loader: loader, logger: logger, source: natsSourceName(cfg)}
	}
	return &policySource{
		cfg:      cfg,
		path:     path,
		engine:   engine,
		reloader: bundles.NewReloader(loader, ropts...),
		logger:   logger,
		loadOpts: opts,
	}, nil
}

func natsSourceName(cfg policySourceConfig) string {
	c := natsobj.Config{Bucket: cfg.bucket, Object: cfg.object}
	return c.Source()
}

// insecureWarning is logged at start and on every load with --insecure-unsigned-bundles, so
// that nobody runs so by accident for long.
const insecureWarning = "--insecure-unsigned-bundles: policy bundles are not verified; anyone who can write to the bundle bucket sets the policy"

// unsignedLoader warns on every policy set it loads unverified.
type unsignedLoader struct {
	bundles.Loader
	logger zerolog.Logger
	source string
}

func (l unsignedLoader) Load(ctx context.Context, set pdp.PolicySet) error {
	if err := l.Loader.Load(ctx, set); err != nil {
		return err
	}
	l.logger.Warn().Str("source", l.source).Str("revision", set.Revision).Msg(insecureWarning)
	return nil
}

// loadFile loads a file source now, so that a policy set that does not load stops the server
// before it starts. A NATS source waits for start.
func (p *policySource) loadFile(ctx context.Context) error {
	if p.cfg.source != sourceFile {
		return nil
	}
	if p.path == "" { // the embedded policies: nothing to watch
		set, err := loadPolicySet("")
		if err != nil {
			return err
		}
		_, err = p.reloader.Apply(ctx, set)
		return err
	}
	w, err := bundles.NewWatcher(bundles.WatchConfig{Path: p.path, PollInterval: p.cfg.pollInterval, LoadOptions: p.loadOpts}, p.reloader)
	if err != nil {
		return err
	}
	if err := w.Load(ctx); err != nil {
		return err
	}
	p.run = append(p.run, w.Run)
	return nil
}

// start loads from a NATS source, whose bucket is created if missing, then runs the watchers
// until stop. A NATS source that has no bundle yet, or a refused one, leaves the server running
// and not ready until a good one is pushed.
func (p *policySource) start(ctx context.Context, js jetstream.JetStream, replicas int) error {
	if p.cfg.source == sourceNATS {
		if p.cfg.insecureUnsigned {
			p.logger.Warn().Str("source", natsSourceName(p.cfg)).Msg(insecureWarning)
		}
		ncfg := natsobj.Config{Bucket: p.cfg.bucket, Object: p.cfg.object, Replicas: replicas, LoadOptions: p.loadOpts}
		bctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		store, err := natsobj.Bucket(bctx, js, ncfg)
		cancel()
		if err != nil {
			return fmt.Errorf("serve: policy bundle bucket: %w", err)
		}
		w, err := natsobj.NewWatcher(store, ncfg, p.reloader, natsobj.WithLogger(p.logger))
		if err != nil {
			return err
		}
		_ = w.Load(ctx) // logged and shown by GET /v1/policy; Run tries each new push
		p.run = append(p.run, w.Run)
	}
	rctx, cancel := context.WithCancel(ctx)
	p.cancel = cancel
	for _, run := range p.run {
		p.wg.Go(func() { _ = run(rctx) })
	}
	return nil
}

// stop ends the watchers and waits for them.
func (p *policySource) stop() {
	if p.cancel != nil {
		p.cancel()
	}
	p.wg.Wait()
}

// PolicyStatus reports the policy set serving, for GET /v1/policy and the reload metrics.
func (p *policySource) PolicyStatus() custodyhttp.PolicyStatus {
	st := p.reloader.Status()
	info := p.engine.Policy()
	hits, misses := p.engine.MemoStats()
	return custodyhttp.PolicyStatus{
		MemoHits:    hits,
		MemoMisses:  misses,
		Revision:    st.Revision,
		Source:      st.Source,
		Query:       info.Query,
		Memo:        info.Memo,
		InputPaths:  info.InputPaths,
		LoadedAt:    st.LoadedAt,
		LastError:   st.LastError,
		LastErrorAt: st.LastErrorAt,
		Reloads:     st.Reloads,
		Failures:    st.Failures,
	}
}

var _ custodyhttp.PolicyReporter = (*policySource)(nil)

// loadPolicySet reads the policy set at path, or the embedded policies when path is empty.
func loadPolicySet(path string, opts ...bundles.LoadOption) (pdp.PolicySet, error) {
	if path == "" {
		return bundles.FromFS(policies.FS, embeddedSource)
	}
	return bundles.Load(path, opts...)
}
