package main

import (
	"errors"
	"flag"
	"fmt"

	"github.com/custodyhq/custody/bundles"
	"github.com/custodyhq/custody/internal/app"
)

// verifyFlags are the bundle signature flags, named after `opa run`'s --verification-key,
// --verification-key-id, --signing-alg and --scope.
type verifyFlags struct{ bundles.VerifyConfig }

func (v *verifyFlags) flags(fs *flag.FlagSet) { verifyConfigFlags(fs, &v.VerifyConfig) }

func verifyConfigFlags(fs *flag.FlagSet, v *bundles.VerifyConfig) {
	fs.StringVar(&v.Key, "bundle-verification-key", "", "require signed bundles: PEM public key `file` (RS*, PS*, ES*), or the HS* secret (or a file holding it), as opa run --verification-key")
	fs.StringVar(&v.KeyID, "bundle-verification-key-id", bundles.DefaultKeyID, "name of the verification key, as opa run --verification-key-id")
	fs.StringVar(&v.Algorithm, "bundle-verification-alg", bundles.DefaultAlgorithm, "signature algorithm of the verification key, as opa run --signing-alg")
	fs.StringVar(&v.Scope, "bundle-verification-scope", "", "scope the bundle signature must carry, as opa run --scope")
}

// loadOptions turns the flags into bundles.LoadOptions (see app.LoadOptions); a bad key is a
// usage error.
func (v *verifyFlags) loadOptions(offline bool) ([]bundles.LoadOption, error) {
	opts, err := app.LoadOptions(v.VerifyConfig, offline)
	if errors.Is(err, app.ErrConfig) {
		return nil, fmt.Errorf("%w: %w", errUsage, err)
	}
	return opts, err
}

// policySourceFlags registers the flags of where `custody serve` takes its policy set from.
func policySourceFlags(fs *flag.FlagSet, c *app.PolicySourceConfig) {
	fs.StringVar(&c.Source, "bundle-source", c.Source, "where the policy set comes from: file (--policies, else the embedded policies) or nats (the --bundle-bucket Object Store bucket, following `custody bundle push`)")
	fs.DurationVar(&c.PollInterval, "policy-poll-interval", c.PollInterval, "how often --policies is checked for changes, which are then loaded without a restart")
	fs.StringVar(&c.Bucket, "bundle-bucket", c.Bucket, "NATS Object Store bucket of the policy bundle, with --bundle-source nats")
	fs.StringVar(&c.Object, "bundle-object", c.Object, "name of the policy bundle in --bundle-bucket")
	verifyConfigFlags(fs, &c.Verify)
	fs.BoolVar(&c.InsecureUnsigned, "insecure-unsigned-bundles", c.InsecureUnsigned, "with --bundle-source nats, accept unsigned bundles: anyone who can write to the bucket then sets the policy (for development only)")
}
