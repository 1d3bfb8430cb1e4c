package app

import (
	"context"
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

// EmbeddedSource names the embedded default policies.
const EmbeddedSource = "embedded:policies"

// LoadOptions turns a bundle verification config into bundles.LoadOptions, parsing the key
// once. Without a key an offline command (eval, bundle push) reads a signed bundle unchecked, as
// opa eval does, while the App refuses it, as opa run does.
func LoadOptions(v bundles.VerifyConfig, offline bool) ([]bundles.LoadOption, error) {
	v.SetDefaults()
	if err := v.Validate(); err != nil {
		return nil, configErrorf("--bundle-verification-key: %w", err)
	}
	if !v.Enabled() {
		if offline {
			return []bundles.LoadOption{bundles.SkipVerification()}, nil
		}
		return nil, nil
	}
	vc, err := v.Verification()
	if err != nil {
		return nil, configErrorf("--bundle-verification-key: %w", err)
	}
	return []bundles.LoadOption{bundles.WithVerification(vc)}, nil
}

// ledgerFile is the file, in the data dir, of the signed bundles served: see bundles.Ledger.
const ledgerFile = "bundle-ledger.json"

// policySource loads the policy set into the engine and keeps it current: a --policies path is
// polled, a NATS bucket watched; the embedded policies never change.
type policySource struct {
	cfg      PolicySourceConfig
	path     string // Config.Policies
	engine   *pdp.Engine
	reloader *bundles.Reloader
	logger   zerolog.Logger
	loadOpts []bundles.LoadOption

	run []func(context.Context) error // watchers for runWatchers
}

func newPolicySource(cfg PolicySourceConfig, path, dataDir string, engine *pdp.Engine, governor *memoryGovernor, logger zerolog.Logger) (*policySource, error) {
	opts, err := LoadOptions(cfg.Verify, false)
	if err != nil {
		return nil, err
	}
	var loader bundles.Loader = governedLoader{engine: engine, governor: governor}
	ropts := []bundles.ReloaderOption{bundles.WithLogger(logger)}
	switch {
	case cfg.Verify.Enabled() && dataDir != "":
		// Signed bundles are ordered by their serial, and the highest served is kept in the
		// data dir, so that neither a replayed old bundle nor a restart rolls the policy back.
		ledger, err := bundles.OpenLedger(filepath.Join(dataDir, ledgerFile))
		if err != nil {
			return nil, fmt.Errorf("app: %w", err)
		}
		ropts = append(ropts, bundles.WithLedger(ledger))
	case cfg.InsecureUnsigned:
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

func natsSourceName(cfg PolicySourceConfig) string {
	c := natsobj.Config{Bucket: cfg.Bucket, Object: cfg.Object}
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
	if p.cfg.Source != SourceFile {
		return nil
	}
	if p.path == "" { // the embedded policies: nothing to watch
		set, err := LoadPolicySet("")
		if err != nil {
			return err
		}
		_, err = p.reloader.Apply(ctx, set)
		return err
	}
	w, err := bundles.NewWatcher(bundles.WatchConfig{Path: p.path, PollInterval: p.cfg.PollInterval, LoadOptions: p.loadOpts}, p.reloader)
	if err != nil {
		return err
	}
	if err := w.Load(ctx); err != nil {
		return err
	}
	p.run = append(p.run, w.Run)
	return nil
}

// prepare loads from a NATS source, whose bucket is created if missing. A NATS source that has
// no bundle yet, or a refused one, leaves the server running and not ready until a good one is
// pushed.
func (p *policySource) prepare(ctx context.Context, js jetstream.JetStream, replicas int) error {
	if p.cfg.Source != SourceNATS {
		return nil
	}
	if p.cfg.InsecureUnsigned {
		p.logger.Warn().Str("source", natsSourceName(p.cfg)).Msg(insecureWarning)
	}
	ncfg := natsobj.Config{Bucket: p.cfg.Bucket, Object: p.cfg.Object, Replicas: replicas, LoadOptions: p.loadOpts}
	bctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	store, err := natsobj.Bucket(bctx, js, ncfg)
	cancel()
	if err != nil {
		return fmt.Errorf("app: policy bundle bucket: %w", err)
	}
	w, err := natsobj.NewWatcher(store, ncfg, p.reloader, natsobj.WithLogger(p.logger))
	if err != nil {
		return fmt.Errorf("app: policy bundle watcher: %w", err)
	}
	_ = w.Load(ctx) // logged and shown by GET /v1/policy; Run tries each new push
	p.run = append(p.run, w.Run)
	return nil
}

// runWatchers runs the watchers that follow the policy source until ctx ends, and returns once
// they all stopped.
func (p *policySource) runWatchers(ctx context.Context) {
	var wg sync.WaitGroup
	for _, run := range p.run {
		wg.Go(func() { _ = run(ctx) })
	}
	wg.Wait()
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

// LoadPolicySet reads the policy set at path, or the embedded policies when path is empty.
func LoadPolicySet(path string, opts ...bundles.LoadOption) (pdp.PolicySet, error) {
	if path == "" {
		return bundles.FromFS(policies.FS, EmbeddedSource)
	}
	return bundles.Load(path, opts...)
}
