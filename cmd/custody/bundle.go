package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/custodyhq/custody/bundles"
	"github.com/custodyhq/custody/bundles/natsobj"
	"github.com/custodyhq/custody/pdp"
)

const bundleUsage = `usage: custody bundle push FILE [flags]

Stores the OPA bundle FILE (a .tar.gz as 'opa build' makes it) in a NATS Object Store bucket;
every 'custody serve --bundle-source nats' watching the bucket loads it. The bundle is read,
its signature checked (with --bundle-verification-key) and its policy compiled first: a bundle
that would be refused is not pushed. A signed bundle must carry a serial in its .manifest,
{"metadata": {"custody_serial": N}}, above that of the bundle in the bucket: instances refuse an
older one as a rollback.
`

// pushTimeout bounds connecting, checking and storing a bundle.
const pushTimeout = 60 * time.Second

func runBundle(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "push" {
		fmt.Fprint(stderr, bundleUsage+"\nRun 'custody bundle push -h' for its flags.\n")
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help" || args[0] == "help") {
			return nil
		}
		return fmt.Errorf("%w: bundle: want 'custody bundle push FILE'", errUsage)
	}
	return runBundlePush(ctx, args[1:], stdout, stderr)
}

func runBundlePush(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("bundle push", stderr)
	var (
		natsURL, decision string
		cfg               natsobj.Config
		verify            verifyFlags
	)
	fs.StringVar(&natsURL, "nats-url", DefaultNATSURL, "NATS server `url`")
	var creds natsAuth
	fs.StringVar(&creds.file, "nats-creds", "", "NATS credentials file")
	natsTLSFlags(fs, &creds)
	fs.StringVar(&cfg.Bucket, "bucket", natsobj.DefaultBucket, "Object Store bucket, as serve --bundle-bucket (created if missing)")
	fs.StringVar(&cfg.Object, "name", natsobj.DefaultObject, "object name of the bundle, as serve --bundle-object")
	fs.IntVar(&cfg.Replicas, "replicas", natsobj.DefaultReplicas, "replicas of the bucket, if it has to be created")
	fs.StringVar(&decision, "decision", pdp.DefaultQuery, "the decision rule the bundle is compiled with before it is pushed")
	verify.flags(fs)
	fs.Usage = func() {
		fmt.Fprint(stderr, bundleUsage+"\nflags:\n")
		fs.PrintDefaults()
	}

	// FILE may come before or after the flags.
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return fmt.Errorf("%w: %w", errUsage, err)
	}
	if fs.NArg() == 0 {
		return fmt.Errorf("%w: bundle push: want a bundle file: custody bundle push FILE", errUsage)
	}
	file := fs.Arg(0)
	flagArgs := append(append([]string{}, args[:len(args)-fs.NArg()]...), fs.Args()[1:]...)
	if err := parseFlags(fs, flagArgs); err != nil {
		return err
	}
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("%w: bundle push: %w", errUsage, err)
	}
	loadOpts, err := verify.loadOptions(true)
	if err != nil {
		return err
	}

	ctx, cancel := context.WithTimeout(ctx, pushTimeout)
	defer cancel()
	if fi, err := os.Stat(file); err == nil && fi.IsDir() {
		return fmt.Errorf("%w: bundle push: %s is a directory; push a bundle built with 'opa build -b %s'", errUsage, file, file)
	}
	raw, err := os.ReadFile(file)
	if err != nil {
		return fmt.Errorf("bundle push: %w", err)
	}
	set, err := bundles.Read(bytes.NewReader(raw), file, loadOpts...)
	if err != nil {
		return fmt.Errorf("bundle push: not pushed: %w", err)
	}
	if _, err := pdp.New(ctx, set, pdp.WithQuery(decision)); err != nil {
		return fmt.Errorf("bundle push: not pushed: %w", err)
	}
	serial, err := bundles.Serial(set.Bundle)
	if err != nil {
		return fmt.Errorf("bundle push: not pushed: %s: %w", file, err)
	}
	if serial == 0 && len(set.Bundle.Signatures.Signatures) > 0 {
		return fmt.Errorf("bundle push: not pushed: %s is signed but its .manifest has no metadata.%s, so instances verifying signatures refuse it: add {\"metadata\": {\"%s\": N}} to the .manifest, N above the last bundle's, and build it again", file, bundles.MetadataSerial, bundles.MetadataSerial)
	}

	nc, err := dialNATS(natsURL, creds, "custody bundle push")
	if err != nil {
		return fmt.Errorf("bundle push: %w", err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("bundle push: jetstream: %w", err)
	}
	store, err := natsobj.Bucket(ctx, js, cfg)
	if err != nil {
		return fmt.Errorf("bundle push: %w", err)
	}
	var opts []natsobj.PushOption
	if serial > 0 {
		if err := checkNewer(ctx, store, cfg, file, serial); err != nil {
			return err
		}
		opts = append(opts, natsobj.WithSerial(serial))
	}
	info, err := natsobj.Push(ctx, store, cfg, raw, set.Revision, opts...)
	if err != nil {
		return fmt.Errorf("bundle push: %w", err)
	}
	fmt.Fprintf(stdout, "pushed %s to %s: revision %s, %d bytes, %s\n", file, cfg.Source(), set.Revision, info.Size, info.Digest)
	return nil
}

// checkNewer refuses to push a bundle whose serial is not above that of the bundle in the
// bucket, as recorded by the push that put it there: every instance that served that one would
// refuse this one as a rollback.
func checkNewer(ctx context.Context, store jetstream.ObjectStore, cfg natsobj.Config, file string, serial uint64) error {
	info, err := store.GetInfo(ctx, cfg.Object)
	if errors.Is(err, jetstream.ErrObjectNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("bundle push: read %s: %w", cfg.Source(), err)
	}
	cur, err := strconv.ParseUint(info.Metadata[natsobj.MetadataSerial], 10, 64)
	if err != nil || cur < serial {
		return nil // pushed without a serial, or older: nothing to compare with
	}
	return fmt.Errorf("bundle push: not pushed: %s has serial %d, not above serial %d (revision %s) in %s: instances that served that one refuse this one as a rollback; give it a higher %s", file, serial, cur, info.Metadata[natsobj.MetadataRevision], cfg.Source(), bundles.MetadataSerial)
}
