package bundles

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
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
// OPA bundle .tar.gz as `opa build` makes it.
func Load(path string) (pdp.PolicySet, error) {
	if _, err := os.Stat(path); err != nil {
		return pdp.PolicySet{}, fmt.Errorf("bundles: stat %s: %w: %w", path, ErrLoad, err)
	}
	b, err := loader.NewFileLoader().WithFilter(skipTests).AsBundle(path)
	if err != nil {
		return pdp.PolicySet{}, fmt.Errorf("bundles: read %s: %w: %w", path, ErrLoad, err)
	}
	return newSet(b, path)
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
	return newSet(&b, source)
}

func newSet(b *bundle.Bundle, source string) (pdp.PolicySet, error) {
	if len(b.Modules) == 0 {
		return pdp.PolicySet{}, fmt.Errorf("bundles: read %s: %w: no Rego modules", source, ErrLoad)
	}
	rev := b.Manifest.Revision
	if rev == "" {
		h, err := ContentHash(b, source)
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
