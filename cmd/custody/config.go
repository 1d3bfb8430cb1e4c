package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"go.yaml.in/yaml/v3"
)

// EnvPrefix prefixes the environment variable of each flag: --nats-url is CUSTODY_NATS_URL.
const EnvPrefix = "CUSTODY_"

// newFlagSet returns a flag set that reports errors instead of exiting.
func newFlagSet(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("custody "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}

// parseFlags parses args, then fills each flag not given on the command line from its CUSTODY_*
// environment variable, then from the YAML file named by --config (when fs defines one).
// Precedence: command line, environment, config file, default.
func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return fmt.Errorf("%w: %w", errUsage, err)
	}
	if fs.NArg() > 0 && fs.Name() != "custody trace" && fs.Name() != "custody evidence" && fs.Name() != "custody unseal" { // these take one positional argument
		return fmt.Errorf("%w: unexpected argument %q", errUsage, fs.Arg(0))
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })

	var fromEnv []string
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		if set[f.Name] || err != nil {
			return
		}
		env := EnvPrefix + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if v, ok := os.LookupEnv(env); ok {
			if serr := fs.Set(f.Name, v); serr != nil {
				err = fmt.Errorf("%w: %s: %w", errUsage, env, serr)
			}
			fromEnv = append(fromEnv, f.Name)
		}
	})
	if err != nil {
		return err
	}
	for _, n := range fromEnv {
		set[n] = true
	}
	cf := fs.Lookup("config")
	if cf == nil || cf.Value.String() == "" {
		return nil
	}
	return applyConfigFile(fs, cf.Value.String(), set)
}

// applyConfigFile sets flags from a YAML mapping of flag names to values, skipping those set.
func applyConfigFile(fs *flag.FlagSet, path string, set map[string]bool) error {
	raw, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("%w: read config file: %w", errUsage, err)
	}
	var values map[string]any
	if err := yaml.Unmarshal(raw, &values); err != nil {
		return fmt.Errorf("%w: config file %s: %w", errUsage, path, err)
	}
	for name, v := range values {
		f := fs.Lookup(name)
		if f == nil || name == "config" {
			return fmt.Errorf("%w: config file %s: unknown setting %q", errUsage, path, name)
		}
		if set[name] {
			continue
		}
		switch v.(type) {
		case map[string]any, []any:
			return fmt.Errorf("%w: config file %s: %s: want a single value", errUsage, path, name)
		}
		if err := fs.Set(name, fmt.Sprint(v)); err != nil {
			return fmt.Errorf("%w: config file %s: %s: %w", errUsage, path, name, err)
		}
	}
	return nil
}
