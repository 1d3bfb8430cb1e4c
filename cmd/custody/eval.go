package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/custodyhq/custody/internal/app"
	"github.com/custodyhq/custody/pdp"
)

// evalOutput is what `custody eval` prints.
type evalOutput struct {
	Allow       bool           `json:"allow"`
	Reasons     []string       `json:"reasons"`
	Obligations map[string]any `json:"obligations,omitempty"`
	Revision    string         `json:"revision"`
	Query       string         `json:"query"`
	Error       string         `json:"error,omitempty"`
}

// errPolicy makes `custody eval` exit non-zero when the policy failed to evaluate.
var errPolicy = errors.New("policy error")

func runEval(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("eval", stderr)
	var policiesPath, decision, inputPath string
	fs.StringVar(&policiesPath, "policies", "", "policy set directory or bundle .tar.gz (default: the embedded policies)")
	fs.StringVar(&decision, "decision", pdp.DefaultQuery, "the decision rule to evaluate")
	fs.StringVar(&inputPath, "input", "-", "policy input JSON file, or - for stdin")
	var verify verifyFlags
	verify.flags(fs)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	// Offline, like opa eval: a signed bundle is read without checking its signature unless a
	// key is given, so that CI can check signing too.
	loadOpts, err := verify.loadOptions(true)
	if err != nil {
		return err
	}
	var raw []byte
	if inputPath == "-" {
		raw, err = io.ReadAll(os.Stdin)
	} else {
		raw, err = os.ReadFile(inputPath)
	}
	if err != nil {
		return fmt.Errorf("eval: read input: %w", err)
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	dec.DisallowUnknownFields() // a native /v1/authorize body ("user", "tool") would otherwise evaluate as an empty input
	var in pdp.Input
	if err := dec.Decode(&in); err != nil {
		return fmt.Errorf("%w: eval: input is not a policy input object (subject, action, resource, context, agent, delegation, task, correlation_id): %w", errUsage, err)
	}
	if dec.More() {
		return fmt.Errorf("%w: eval: input holds more than one JSON value", errUsage)
	}
	set, err := app.LoadPolicySet(policiesPath, loadOpts...)
	if err != nil {
		return err
	}
	engine, err := pdp.New(ctx, set, pdp.WithQuery(decision))
	if err != nil {
		return err
	}
	d := engine.Decide(ctx, &in)
	out := evalOutput{Allow: d.Allow, Reasons: d.Reasons, Obligations: d.Obligations, Revision: d.Policy.Revision, Query: d.Policy.Query}
	if d.Err != nil {
		out.Error = d.Err.Error()
	}
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(out); err != nil {
		return err
	}
	if d.Err != nil {
		return fmt.Errorf("eval: %w: %w", errPolicy, d.Err)
	}
	return nil
}
