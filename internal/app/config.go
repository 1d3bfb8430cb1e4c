package app

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"time"

	"github.com/custodyhq/custody/bundles"
	"github.com/custodyhq/custody/bundles/natsobj"
	custodyjs "github.com/custodyhq/custody/decisionlog/jetstream"
	"github.com/custodyhq/custody/decisionlog/spool"
	"github.com/custodyhq/custody/identity"
	"github.com/custodyhq/custody/internal/embeddednats"
	"github.com/custodyhq/custody/pdp"
	"github.com/custodyhq/custody/receipt"
	custodyhttp "github.com/custodyhq/custody/server"
)

// Defaults of the settings, which are also `custody serve`'s flag defaults.
const (
	DefaultAddr            = "127.0.0.1:8181"
	DefaultDataDir         = "./data"
	DefaultNATSListen      = "127.0.0.1:4222"
	DefaultNATSURL         = "nats://127.0.0.1:4222"
	DefaultShutdownTimeout = 15 * time.Second
	// DefaultDecisionMemo bounds the remembered decisions: a few hundred bytes each.
	DefaultDecisionMemo = 10_000
)

// Record modes: how a decision becomes durable before its answer.
const (
	// RecordSpool: fsynced to a local spool (group commit), then forwarded to JetStream in order.
	RecordSpool = "spool"
	// RecordAck: published to JetStream, answered once JetStream acked it.
	RecordAck = "ack"
	// RecordAuto: spool for an external NATS (it rides out outages), ack for the embedded server
	// (it is already a local disk store, so a spool would only write everything twice).
	RecordAuto = "auto"
)

// Values of PolicySourceConfig.Source.
const (
	SourceFile = "file" // Config.Policies, or the embedded policies
	SourceNATS = "nats" // a NATS Object Store bucket
)

// ErrConfig marks errors caused by a setting that cannot work, as opposed to the environment
// (a held data dir, an unreachable NATS): a command line reports them as usage errors. Test for
// it with errors.Is; the messages themselves do not repeat it.
var ErrConfig = errors.New("app: invalid setting")

// configError is an error that errors.Is reports as ErrConfig, with the message of its cause
// alone: it names the flag, which is all an operator needs.
type configError struct{ err error }

func (e configError) Error() string        { return e.err.Error() }
func (e configError) Unwrap() error        { return e.err }
func (e configError) Is(target error) bool { return target == ErrConfig }

func configErrorf(format string, args ...any) error {
	return configError{fmt.Errorf(format, args...)}
}

// Config is everything an App is built from. The messages of Validate name the `custody serve`
// flag of each field, which is how operators set them.
type Config struct {
	Addr               string // HTTP listen address; port 0 picks a free one (see App.Addr)
	DataDir            string
	NATSListen         string // embedded NATS client address, or embeddednats.ListenNone
	NATSURL            string // an external NATS server; empty runs the embedded one
	NATSCreds          string // credentials file for NATSURL
	NATSCA             string // CA of NATSURL's servers; empty is the system's
	NATSCert, NATSKey  string // client certificate for NATSURL's servers
	NATSSync           string // embedded JetStream fsync: "", "always" or a duration
	Policies           string // a policy directory or bundle; empty is the embedded policies
	PolicySource       PolicySourceConfig
	Decision           string // the decision rule
	DecisionMemo       int
	DecisionMemoBytes  int64
	Retention          time.Duration
	StreamMaxBytes     int64
	StreamReplicas     int
	StreamApplyConfig  bool
	DuplicateWindow    time.Duration // 0 picks one (see duplicateWindow)
	PublishTimeout     time.Duration
	IntentKeyFile      string
	RecordMode         string
	SpoolMaxBytes      int64
	SigningKey         string
	CheckpointEvery    uint64
	CheckpointInterval time.Duration
	MaxBodyBytes       int64
	ShutdownTimeout    time.Duration
	PublicURL          string
	DebugAddr          string // pprof listener; empty is none
	Auth               AuthConfig
	Receipt            ReceiptConfig
	Evidence           EvidenceConfig
	Vault              VaultConfig
	Approvals          ApprovalsConfig
}

// DefaultConfig returns the settings `custody serve` runs with when given no flags.
func DefaultConfig() Config {
	return Config{
		Addr:               DefaultAddr,
		DataDir:            DefaultDataDir,
		NATSListen:         DefaultNATSListen,
		Decision:           pdp.DefaultQuery,
		DecisionMemo:       DefaultDecisionMemo,
		DecisionMemoBytes:  pdp.DefaultMemoBytes,
		StreamMaxBytes:     -1,
		StreamReplicas:     custodyjs.DefaultReplicas,
		PublishTimeout:     custodyjs.DefaultPublishTimeout,
		RecordMode:         RecordAuto,
		SpoolMaxBytes:      spool.DefaultMaxBytes,
		CheckpointEvery:    custodyjs.DefaultCheckpointEvery,
		CheckpointInterval: custodyjs.DefaultCheckpointInterval,
		MaxBodyBytes:       custodyhttp.DefaultMaxBodyBytes,
		ShutdownTimeout:    DefaultShutdownTimeout,
		PolicySource: PolicySourceConfig{
			Source:       SourceFile,
			PollInterval: bundles.DefaultPollInterval,
			Bucket:       natsobj.DefaultBucket,
			Object:       natsobj.DefaultObject,
			Verify:       bundles.VerifyConfig{KeyID: bundles.DefaultKeyID, Algorithm: bundles.DefaultAlgorithm},
		},
		Auth:    AuthConfig{JWKSRefresh: identity.DefaultJWKSRefresh, Leeway: identity.DefaultLeeway},
		Receipt: ReceiptConfig{TTL: receipt.DefaultTTL},
	}
}

// AuthConfig is how the App authenticates callers.
type AuthConfig struct {
	Issuers     []string // trusted token issuers, each paired with the JWKS at the same index
	JWKS        []string
	Audience    string
	JWKSRefresh time.Duration
	Leeway      time.Duration
	APIKeysFile string
	RequireAuth bool
	TLSCert     string
	TLSKey      string
	ClientCA    string
	// IssuerSubjects and IssuerActors map a trusted issuer to the pattern every sub (or act
	// sub) in its tokens must match in full; see identity.Issuer.
	IssuerSubjects map[string]string
	IssuerActors   map[string]string
	// AllowedHosts are Host names the API answers to besides its address and public URL.
	AllowedHosts []string
}

// ReceiptConfig is how the App signs decision receipts.
type ReceiptConfig struct {
	KeyFile string // default: receipt.key in the data dir
	TTL     time.Duration
}

// PolicySourceConfig says where the App takes its policy set from and how it follows changes.
type PolicySourceConfig struct {
	Source       string // SourceFile or SourceNATS
	PollInterval time.Duration
	Bucket       string
	Object       string
	Verify       bundles.VerifyConfig
	// InsecureUnsigned lets SourceNATS run without a verification key: whoever can write to the
	// bucket then sets the policy.
	InsecureUnsigned bool
}

// Validate reports the first setting that cannot work, wrapped in ErrConfig.
func (c *Config) Validate() error {
	if err := c.validate(); err != nil {
		return configError{err}
	}
	return nil
}

func (c *Config) validate() error {
	if _, _, err := net.SplitHostPort(c.Addr); err != nil {
		return fmt.Errorf("--addr %q: %w", c.Addr, err)
	}
	if c.NATSURL == "" && c.NATSListen != embeddednats.ListenNone {
		if _, _, err := net.SplitHostPort(c.NATSListen); err != nil {
			return fmt.Errorf("--nats-listen %q: %w", c.NATSListen, err)
		}
	}
	if c.DataDir == "" {
		return errors.New("--data-dir must not be empty")
	}
	if c.RecordMode != RecordAuto && c.RecordMode != RecordSpool && c.RecordMode != RecordAck {
		return fmt.Errorf("--record-mode %q: want auto, spool or ack", c.RecordMode)
	}
	if c.SpoolMaxBytes <= 0 {
		return errors.New("--spool-max-bytes must be positive")
	}
	if _, _, err := parseNATSSync(c.NATSSync); err != nil {
		return err
	}
	if c.PublishTimeout <= 0 {
		return errors.New("--publish-timeout must be positive")
	}
	if c.DecisionMemo < 0 {
		return errors.New("--decision-memo must not be negative")
	}
	if err := c.natsClient().Validate(); err != nil {
		return err
	}
	if c.DecisionMemoBytes <= 0 {
		return errors.New("--decision-memo-bytes must be positive")
	}
	if err := c.Evidence.Validate(); err != nil {
		return err
	}
	if err := c.Vault.Validate(); err != nil {
		return err
	}
	if c.DuplicateWindow < 0 {
		return errors.New("--duplicate-window must not be negative")
	}
	if c.MaxBodyBytes <= 0 {
		return errors.New("--max-body-bytes must be positive")
	}
	if c.ShutdownTimeout <= 0 {
		return errors.New("--shutdown-timeout must be positive")
	}
	if c.Receipt.TTL <= 0 {
		return errors.New("--receipt-ttl must be positive")
	}
	if err := c.PolicySource.validate(c.Policies); err != nil {
		return err
	}
	if err := checkPublicURL(c.PublicURL); err != nil {
		return err
	}
	return c.Auth.validate()
}

func (a *AuthConfig) validate() error {
	switch {
	case len(a.Issuers) != len(a.JWKS):
		return fmt.Errorf("--issuer given %d times but --jwks %d times: pair each issuer with its JWKS", len(a.Issuers), len(a.JWKS))
	case len(a.Issuers) > 0 && a.Audience == "":
		return errors.New("--audience is required with --issuer")
	case (a.TLSCert == "") != (a.TLSKey == ""):
		return errors.New("--tls-cert and --tls-key go together")
	case a.ClientCA != "" && a.TLSCert == "":
		return errors.New("--client-ca needs --tls-cert and --tls-key")
	}
	return a.validateIssuerPatterns()
}

// validate reports the first setting that cannot work; policies is Config.Policies.
func (c *PolicySourceConfig) validate(policies string) error {
	switch c.Source {
	case SourceFile:
	case SourceNATS:
		if policies != "" {
			return errors.New("--policies and --bundle-source nats are exclusive: the policy set comes from one place")
		}
		if c.Verify.Key == "" && !c.InsecureUnsigned {
			return errors.New("--bundle-source nats needs --bundle-verification-key: without it anyone who can write to the bundle bucket sets the policy; --insecure-unsigned-bundles accepts unsigned bundles anyway")
		}
	default:
		return fmt.Errorf("--bundle-source %q: want file or nats", c.Source)
	}
	if c.PollInterval <= 0 {
		return errors.New("--policy-poll-interval must be positive")
	}
	if c.InsecureUnsigned && (c.Source != SourceNATS || c.Verify.Key != "") {
		return errors.New("--insecure-unsigned-bundles is only for --bundle-source nats without --bundle-verification-key")
	}
	if c.Bucket == "" || c.Object == "" {
		return errors.New("--bundle-bucket and --bundle-object must not be empty")
	}
	v := c.Verify
	v.SetDefaults()
	if err := v.Validate(); err != nil {
		return fmt.Errorf("--bundle-verification-key: %w", err)
	}
	return nil
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

func (c Config) natsClient() NATSClient {
	return NATSClient{Creds: c.NATSCreds, CA: c.NATSCA, Cert: c.NATSCert, Key: c.NATSKey}
}
