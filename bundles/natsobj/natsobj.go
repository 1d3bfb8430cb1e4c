package natsobj

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/custodyhq/custody/bundles"
)

// Defaults for Config.
const (
	DefaultBucket         = "custody-bundles"
	DefaultObject         = "bundle.tar.gz"
	DefaultReplicas       = 1
	DefaultMaxBytes       = 64 << 20
	DefaultRetryInterval  = time.Second
	DefaultResyncInterval = 10 * time.Second
)

// MetadataRevision is the object metadata key Push stores the bundle's revision under, for
// operators listing the bucket (`nats object ls`).
const MetadataRevision = "custody-revision"

// MetadataSerial is the object metadata key Push stores the bundle's serial under (see
// bundles.MetadataSerial), so that the next push can tell a rollback before the fleet refuses
// it. Only the serial inside the signed bundle counts for the fleet: anyone who can write the
// object can write this.
const MetadataSerial = "custody-serial"

// Config names the object that holds the bundle and how it is loaded.
type Config struct {
	// Bucket is the Object Store bucket. Default DefaultBucket.
	Bucket string
	// Object is the name of the bundle in the bucket. Default DefaultObject.
	Object string
	// Replicas is used when the bucket has to be created. Default DefaultReplicas.
	Replicas int
	// MaxBytes bounds the bundle read from the bucket. Default DefaultMaxBytes.
	MaxBytes int64
	// RetryInterval is the wait before a failed watch or fetch is tried again. Default
	// DefaultRetryInterval.
	RetryInterval time.Duration
	// ResyncInterval is how often the object's digest is checked besides the watch, which can
	// take a while to notice that the NATS server it watched restarted. Default
	// DefaultResyncInterval.
	ResyncInterval time.Duration
	// LoadOptions are passed to bundles.Read, such as bundles.WithVerification.
	LoadOptions []bundles.LoadOption
}

// SetDefaults fills unset fields.
func (c *Config) SetDefaults() {
	if c.Bucket == "" {
		c.Bucket = DefaultBucket
	}
	if c.Object == "" {
		c.Object = DefaultObject
	}
	if c.Replicas == 0 {
		c.Replicas = DefaultReplicas
	}
	if c.MaxBytes == 0 {
		c.MaxBytes = DefaultMaxBytes
	}
	if c.RetryInterval == 0 {
		c.RetryInterval = DefaultRetryInterval
	}
	if c.ResyncInterval == 0 {
		c.ResyncInterval = DefaultResyncInterval
	}
}

// Validate reports the first field that cannot work.
func (c *Config) Validate() error {
	switch {
	case c.Bucket == "":
		return errors.New("natsobj: config: bucket is required")
	case c.Object == "":
		return errors.New("natsobj: config: object is required")
	case c.Replicas < 1 || c.Replicas > 5:
		return errors.New("natsobj: config: replicas must be between 1 and 5")
	case c.MaxBytes <= 0:
		return errors.New("natsobj: config: max bytes must be positive")
	case c.RetryInterval <= 0:
		return errors.New("natsobj: config: retry interval must be positive")
	case c.ResyncInterval <= 0:
		return errors.New("natsobj: config: resync interval must be positive")
	}
	return nil
}

// Source names the object in logs, errors and the policy status: nats:<bucket>/<object>.
func (c *Config) Source() string { return "nats:" + c.Bucket + "/" + c.Object }

// Buckets is what Bucket needs of a JetStream context. jetstream.JetStream implements it.
type Buckets interface {
	ObjectStore(ctx context.Context, bucket string) (jetstream.ObjectStore, error)
	CreateObjectStore(ctx context.Context, cfg jetstream.ObjectStoreConfig) (jetstream.ObjectStore, error)
}

var _ Buckets = (jetstream.JetStream)(nil)

// Bucket opens the bucket cfg names, creating it (file storage, cfg.Replicas) when it does not
// exist, so that instances can watch it before the first push. Instances racing to create it
// all end up with the one bucket.
func Bucket(ctx context.Context, js Buckets, cfg Config) (jetstream.ObjectStore, error) {
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	store, err := js.ObjectStore(ctx, cfg.Bucket)
	if err == nil {
		return store, nil
	}
	if !errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil, fmt.Errorf("natsobj: open bucket %s: %w", cfg.Bucket, err)
	}
	store, err = js.CreateObjectStore(ctx, jetstream.ObjectStoreConfig{
		Bucket:      cfg.Bucket,
		Description: "custody policy bundles",
		Storage:     jetstream.FileStorage,
		Replicas:    cfg.Replicas,
	})
	if errors.Is(err, jetstream.ErrBucketExists) {
		store, err = js.ObjectStore(ctx, cfg.Bucket)
	}
	if err != nil {
		return nil, fmt.Errorf("natsobj: create bucket %s: %w", cfg.Bucket, err)
	}
	return store, nil
}

// Putter is what Push needs of a bucket. jetstream.ObjectStore implements it.
type Putter interface {
	Put(ctx context.Context, meta jetstream.ObjectMeta, r io.Reader) (*jetstream.ObjectInfo, error)
}

// PushOption configures Push.
type PushOption func(map[string]string)

// WithSerial records the bundle's serial in the object's metadata, under MetadataSerial.
func WithSerial(serial uint64) PushOption {
	return func(m map[string]string) { m[MetadataSerial] = strconv.FormatUint(serial, 10) }
}

// Push stores bundle as the object cfg names, replacing the one there: every Watcher of the
// object then loads it. revision is recorded in the object's metadata for operators.
func Push(ctx context.Context, store Putter, cfg Config, bundle []byte, revision string, opts ...PushOption) (*jetstream.ObjectInfo, error) {
	cfg.SetDefaults()
	meta := map[string]string{MetadataRevision: revision}
	for _, o := range opts {
		o(meta)
	}
	info, err := store.Put(ctx, jetstream.ObjectMeta{
		Name:        cfg.Object,
		Description: "custody policy bundle",
		Metadata:    meta,
	}, bytes.NewReader(bundle))
	if err != nil {
		return nil, fmt.Errorf("natsobj: put %s: %w", cfg.Source(), err)
	}
	return info, nil
}

// Store is what a Watcher needs of a bucket. jetstream.ObjectStore implements it.
type Store interface {
	GetInfo(ctx context.Context, name string, opts ...jetstream.GetObjectInfoOpt) (*jetstream.ObjectInfo, error)
	Get(ctx context.Context, name string, opts ...jetstream.GetObjectOpt) (jetstream.ObjectResult, error)
	Watch(ctx context.Context, opts ...jetstream.WatchOpt) (jetstream.ObjectWatcher, error)
}

var _ Store = (jetstream.ObjectStore)(nil)

// Watcher loads the bundle object into a bundles.Reloader, and again each time it is replaced.
type Watcher struct {
	store  Store
	cfg    Config
	r      *bundles.Reloader
	logger zerolog.Logger

	// Owned by the goroutine that calls Load, then Run.
	tried string // digest of the object last loaded or refused
}

// Option configures a Watcher.
type Option func(*Watcher)

// WithLogger sets the logger. The default discards.
func WithLogger(l zerolog.Logger) Option { return func(w *Watcher) { w.logger = l } }

// NewWatcher returns a Watcher of the object cfg names in store.
func NewWatcher(store Store, cfg Config, r *bundles.Reloader, opts ...Option) (*Watcher, error) {
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	w := &Watcher{store: store, cfg: cfg, r: r, logger: zerolog.Nop()}
	for _, o := range opts {
		o(w)
	}
	w.logger = w.logger.With().Str("component", "bundles.natsobj").Str("source", cfg.Source()).Logger()
	return w, nil
}

// Load loads the object as it is now, if there is one: call it before Run so that a server
// starts on the fleet's policy set. A missing object is no error (the server is not ready until
// one is pushed); a refused one is recorded in the Reloader's status and returned.
func (w *Watcher) Load(ctx context.Context) error {
	err := w.fetch(ctx)
	if errors.Is(err, jetstream.ErrObjectNotFound) {
		w.logger.Info().Msg("no policy bundle in the bucket yet")
		return nil
	}
	return err
}

// Run watches the bucket until ctx is done and loads each new version of the object. A watch
// that fails, as when NATS is unreachable, is set up again after the retry interval, and the
// object's digest is checked every resync interval in case the watch missed a change. It
// returns nil.
func (w *Watcher) Run(ctx context.Context) error {
	for {
		err := w.watch(ctx)
		if ctx.Err() != nil {
			return nil
		}
		w.logger.Warn().Err(err).Dur("retry_in", w.cfg.RetryInterval).Msg("policy bundle watch interrupted")
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(w.cfg.RetryInterval):
		}
	}
}

// watch delivers the latest version of every object, then each update, until it fails.
func (w *Watcher) watch(ctx context.Context) error {
	ow, err := w.store.Watch(ctx)
	if err != nil {
		return fmt.Errorf("natsobj: watch %s: %w", w.cfg.Bucket, err)
	}
	defer func() { _ = ow.Stop() }()
	resync := time.NewTicker(w.cfg.ResyncInterval)
	defer resync.Stop()
	var retry <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-resync.C:
			info, err := w.store.GetInfo(ctx, w.cfg.Object)
			if err != nil || info.Digest == w.tried {
				continue // absent, unchanged, or NATS unreachable: the watch or the next resync will tell
			}
			w.logger.Info().Str("digest", info.Digest).Msg("policy bundle change found by resync")
		case info, ok := <-ow.Updates():
			if !ok {
				return fmt.Errorf("natsobj: watch %s: closed", w.cfg.Bucket)
			}
			if info == nil || info.Name != w.cfg.Object {
				continue // nil marks the end of the initial values
			}
			if info.Deleted {
				w.logger.Warn().Msg("policy bundle deleted from the bucket; the serving policy set stays")
				continue
			}
			if info.Digest == w.tried {
				continue
			}
		case <-retry:
		}
		retry = nil
		if err := w.fetch(ctx); err != nil && !errors.Is(err, bundles.ErrLoad) && !errors.Is(err, bundles.ErrSignature) && !errors.Is(err, errTooLarge) {
			// Not the bundle's fault: NATS or the network. Try again, even without a new push.
			w.logger.Warn().Err(err).Dur("retry_in", w.cfg.RetryInterval).Msg("policy bundle fetch failed")
			retry = time.After(w.cfg.RetryInterval)
		}
	}
}

var errTooLarge = errors.New("bundle too large")

// fetch reads the object as it is now and hands it to the Reloader unless it is the version
// tried last. Errors from the bundle itself (bundles.ErrLoad, bundles.ErrSignature, too large,
// or refused by the engine) are recorded in the status; others are for the caller to retry.
func (w *Watcher) fetch(ctx context.Context) error {
	res, err := w.store.Get(ctx, w.cfg.Object)
	if err != nil {
		return fmt.Errorf("natsobj: get %s: %w", w.cfg.Source(), err)
	}
	defer res.Close()
	info, err := res.Info()
	if err != nil {
		return fmt.Errorf("natsobj: get %s: %w", w.cfg.Source(), err)
	}
	if info.Digest != "" && info.Digest == w.tried {
		return nil
	}
	if info.Size > uint64(w.cfg.MaxBytes) {
		w.tried = info.Digest
		err := fmt.Errorf("natsobj: get %s: %w: %d bytes, limit %d", w.cfg.Source(), errTooLarge, info.Size, w.cfg.MaxBytes)
		w.r.Fail(w.cfg.Source(), err)
		return err
	}
	raw, err := io.ReadAll(res) // the object store checks the digest at the end
	if err != nil {
		return fmt.Errorf("natsobj: read %s: %w", w.cfg.Source(), err)
	}
	w.tried = info.Digest
	set, err := bundles.Read(bytes.NewReader(raw), w.cfg.Source(), w.cfg.LoadOptions...)
	if err != nil {
		w.r.Fail(w.cfg.Source(), err)
		return err
	}
	if _, err := w.r.Apply(ctx, set); err != nil {
		return fmt.Errorf("natsobj: load %s: %w: %w", w.cfg.Source(), bundles.ErrLoad, err)
	}
	w.logger.Debug().Str("revision", set.Revision).Str("digest", info.Digest).Msg("policy bundle fetched")
	return nil
}
