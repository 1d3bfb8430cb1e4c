package bundles

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/open-policy-agent/opa/v1/bundle"
	"github.com/open-policy-agent/opa/v1/loader"

	"github.com/custodyhq/custody/pdp"
)

// ErrLoad is returned, wrapped, for any policy set that cannot be read.
var ErrLoad = errors.New("cannot load policy set")

// skipTests leaves Rego unit tests out of a served policy set: they are for `opa test`, and a
// PDP has no use for them.
func skipTests(_ string, info fs.FileInfo, _ int) bool {
	return !info.IsDir() && strings.HasSuffix(info.Name(), "_test.rego")
}

// Load reads the policy set at path: a directory (Rego, data.json/data.yaml, .manifest) or an
// OPA bundle .tar.gz as `opa build` makes it. With WithVerification, the bundle must carry a
// valid .signatures.json; without it, a signed bundle is refused, as `opa run` refuses one it
// has no key for.
func Load(path string, opts ...LoadOption) (pdp.PolicySet, error) {
	o := newLoadOptions(opts)
	fi, err := os.Stat(path)
	if err != nil {
		return pdp.PolicySet{}, fmt.Errorf("bundles: stat %s: %w: %w", path, ErrLoad, err)
	}
	if !fi.IsDir() {
		// Read the tarball here rather than through OPA's file loader, which leaves the file
		// open: a watcher reloads many times.
		raw, err := os.ReadFile(path)
		if err != nil {
			return pdp.PolicySet{}, fmt.Errorf("bundles: read %s: %w: %w", path, ErrLoad, err)
		}
		return readTarball(raw, path, o)
	}
	// A directory reached through a symbolic link is read where the link points, so that a
	// multi-file policy set can be replaced at once by swapping the link.
	root := path
	if real, err := filepath.EvalSymlinks(path); err == nil {
		root = real
	}
	b, err := o.read(path, func(vc *bundle.VerificationConfig, skipVerify bool, filter loader.Filter) (*bundle.Bundle, error) {
		return loader.NewFileLoader().
			WithFilter(filter).
			WithBundleVerificationConfig(vc).
			WithSkipBundleVerification(skipVerify).
			AsBundle(root)
	})
	if err != nil {
		return pdp.PolicySet{}, err
	}
	return newSet(b, path, root)
}

// Read reads an OPA bundle .tar.gz from r; source names it in logs, errors and, when the bundle
// has no manifest revision, nowhere else. Options are those of Load.
func Read(r io.Reader, source string, opts ...LoadOption) (pdp.PolicySet, error) {
	raw, err := io.ReadAll(r)
	if err != nil {
		return pdp.PolicySet{}, fmt.Errorf("bundles: read %s: %w: %w", source, ErrLoad, err)
	}
	return readTarball(raw, source, newLoadOptions(opts))
}

func readTarball(raw []byte, source string, o loadOptions) (pdp.PolicySet, error) {
	b, err := o.read(source, func(vc *bundle.VerificationConfig, skipVerify bool, filter loader.Filter) (*bundle.Bundle, error) {
		tl := bundle.NewTarballLoaderWithBaseURL(bytes.NewReader(raw), source).WithFilter(filter)
		b, err := bundle.NewCustomReader(tl).
			WithBundleVerificationConfig(vc).
			WithSkipBundleVerification(skipVerify).
			WithBundleName(source).
			Read()
		return &b, err
	})
	if err != nil {
		return pdp.PolicySet{}, err
	}
	return newSet(b, source, source)
}

// LoadOption configures Load and Read.
type LoadOption func(*loadOptions)

type loadOptions struct {
	verify *bundle.VerificationConfig
	skip   bool
}

func newLoadOptions(opts []LoadOption) loadOptions {
	var o loadOptions
	for _, opt := range opts {
		opt(&o)
	}
	return o
}

// WithVerification requires every bundle to carry a .signatures.json that verifies with vc, as
// made by `opa build --signing-key` or `opa sign`. A nil vc is the same as no option. Build vc
// with VerifyConfig.Verification.
func WithVerification(vc *bundle.VerificationConfig) LoadOption {
	return func(o *loadOptions) { o.verify = vc }
}

// SkipVerification reads signed bundles without checking their signatures, as `opa eval` does.
// It is for offline tools such as `custody eval`, never for a server; WithVerification wins.
func SkipVerification() LoadOption {
	return func(o *loadOptions) { o.skip = true }
}

// readFunc reads a bundle once, checking signatures with vc unless skipVerify, leaving out the
// files filter matches.
type readFunc func(vc *bundle.VerificationConfig, skipVerify bool, filter loader.Filter) (*bundle.Bundle, error)

// read reads a bundle with OPA's reader, which checks signatures, and tells a signature failure
// from a bundle that cannot be read at all by reading again without the check.
func (o loadOptions) read(source string, read readFunc) (*bundle.Bundle, error) {
	// A signature covers every file in the bundle, Rego tests included, so a verified read
	// takes them all and drops the tests after.
	var filter loader.Filter = skipTests
	if o.verify != nil {
		filter = nil
	}
	b, err := read(o.verify, o.skip && o.verify == nil, filter)
	if err == nil {
		dropTests(b)
		return b, nil
	}
	if _, rerr := read(nil, true, filter); rerr == nil {
		if o.verify == nil {
			return nil, fmt.Errorf("bundles: verify %s: %w: the bundle is signed (.signatures.json) but no verification key is configured", source, ErrSignature)
		}
		return nil, fmt.Errorf("bundles: verify %s: %w: %w", source, ErrSignature, err)
	}
	return nil, fmt.Errorf("bundles: read %s: %w: %w", source, ErrLoad, err)
}

func dropTests(b *bundle.Bundle) {
	mods := b.Modules[:0]
	for _, m := range b.Modules {
		if !strings.HasSuffix(m.Path, "_test.rego") {
			mods = append(mods, m)
		}
	}
	b.Modules = mods
}

// FromFS reads a policy set laid out as a bundle directory in fsys, such as the embedded default
// policies. source names it in logs and records.
func FromFS(fsys fs.FS, source string) (pdp.PolicySet, error) {
	dl, err := bundle.NewFSLoader(fsys)
	if err != nil {
		return pdp.PolicySet{}, fmt.Errorf("bundles: open %s: %w: %w", source, ErrLoad, err)
	}
	b, err := bundle.NewCustomReader(dl.WithFilter(skipTests)).WithBundleName(source).Read()
	if err != nil {
		return pdp.PolicySet{}, fmt.Errorf("bundles: read %s: %w: %w", source, ErrLoad, err)
	}
	return newSet(&b, source, source)
}

// newSet names b by its manifest revision, else by its content hash, its module paths taken
// relative to root.
func newSet(b *bundle.Bundle, source, root string) (pdp.PolicySet, error) {
	if len(b.Modules) == 0 {
		return pdp.PolicySet{}, fmt.Errorf("bundles: read %s: %w: no Rego modules", source, ErrLoad)
	}
	rev := b.Manifest.Revision
	if rev == "" {
		h, err := ContentHash(b, root)
		if err != nil {
			return pdp.PolicySet{}, fmt.Errorf("bundles: hash %s: %w", source, err)
		}
		rev = h
	}
	return pdp.PolicySet{Bundle: b, Revision: rev, Source: source}, nil
}

// ContentHash names a policy set by its content: SHA-256 over each module's path (relative to
// root, where the set was loaded from) and source in path order, then the data as canonical JSON. Two loads of the
// same files give the same revision wherever they are loaded from.
func ContentHash(b *bundle.Bundle, root string) (string, error) {
	type module struct {
		path string
		raw  []byte
	}
	mods := make([]module, 0, len(b.Modules))
	for _, m := range b.Modules {
		rel := strings.TrimPrefix(strings.TrimPrefix(m.Path, root), "/")
		mods = append(mods, module{rel, m.Raw})
	}
	sort.Slice(mods, func(i, j int) bool { return mods[i].path < mods[j].path })
	h := sha256.New()
	for _, m := range mods {
		fmt.Fprintf(h, "module %d:%s\n%d:", len(m.path), m.path, len(m.raw))
		h.Write(m.raw)
		h.Write([]byte{'\n'})
	}
	data, err := json.Marshal(b.Data) // encoding/json sorts map keys: canonical enough for naming
	if err != nil {
		return "", err
	}
	fmt.Fprintf(h, "data %d:", len(data))
	h.Write(data)
	return "sha256:" + hex.EncodeToString(h.Sum(nil)), nil
}
