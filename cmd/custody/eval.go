package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"slices"

	"github.com/custodyhq/custody/decisionlog"
	"github.com/custodyhq/custody/internal/app"
	"github.com/custodyhq/custody/pdp"
	"github.com/custodyhq/custody/server"
)

// What `custody eval --input` may hold (--kind), and what its output's kind says it read.
const (
	evalKindAuto      = "auto"
	evalKindInput     = "input"     // a policy input, as the policy sees it
	evalKindAuthorize = "authorize" // a native POST /v1/authorize body
	evalKindAuthZEN   = "authzen"   // an AuthZEN POST /access/v1/evaluation body
	evalKindRecord    = "record"    // a decision record from the stream, re-decided
)

// evalKindNames are what each kind is called on stderr.
var evalKindNames = map[string]string{
	evalKindInput:     "a policy input",
	evalKindAuthorize: "a native /v1/authorize request body",
	evalKindAuthZEN:   "an AuthZEN evaluation request",
	evalKindRecord:    "a decision record",
}

// evalOutput is what `custody eval` prints.
type evalOutput struct {
	// Kind is what the input was read as: input, authorize, authzen or record.
	Kind        string         `json:"kind"`
	Allow       bool           `json:"allow"`
	Reasons     []string       `json:"reasons"`
	Obligations map[string]any `json:"obligations,omitempty"`
	Revision    string         `json:"revision"`
	Query       string         `json:"query"`
	Error       string         `json:"error,omitempty"`
	// Recorded and Changed are set for a record: the decision it recorded, and whether the
	// policy set evaluated now decides otherwise (allow, reasons or obligations).
	Recorded *recordedDecision `json:"recorded,omitempty"`
	Changed  *bool             `json:"changed,omitempty"`
}

// recordedDecision is the decision a record holds.
type recordedDecision struct {
	DecisionID  string         `json:"decision_id"`
	Allow       bool           `json:"allow"`
	Reasons     []string       `json:"reasons"`
	Obligations map[string]any `json:"obligations,omitempty"`
	Revision    string         `json:"revision"`
}

// errPolicy makes `custody eval` exit non-zero when the policy failed to evaluate.
var errPolicy = errors.New("policy error")

func runEval(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("eval", stderr)
	var policiesPath, decision, inputPath, kind string
	fs.StringVar(&policiesPath, "policies", "", "policy set directory or bundle .tar.gz (default: the embedded policies)")
	fs.StringVar(&decision, "decision", pdp.DefaultQuery, "the decision rule to evaluate")
	fs.StringVar(&inputPath, "input", "-", "JSON file, or - for stdin: a policy input, a /v1/authorize body, an AuthZEN evaluation request, or a decision record")
	fs.StringVar(&kind, "kind", evalKindAuto, "what --input holds: auto, input, authorize, authzen or record")
	var verify verifyFlags
	verify.flags(fs)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if _, ok := evalKindNames[kind]; !ok && kind != evalKindAuto {
		return fmt.Errorf("%w: eval: --kind %q: want auto, input, authorize, authzen or record", errUsage, kind)
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
	if kind == evalKindAuto {
		if kind, err = evalKindOf(raw); err != nil {
			return err
		}
	}
	in, rec, err := evalInput(kind, raw)
	if err != nil {
		return err
	}
	if rec != nil {
		fmt.Fprintf(stderr, "custody eval: read %s (decision %s, revision %s); re-deciding it\n", evalKindNames[kind], rec.DecisionID, rec.Policy.Revision)
	} else {
		fmt.Fprintf(stderr, "custody eval: read %s\n", evalKindNames[kind])
	}
	set, err := app.LoadPolicySet(policiesPath, loadOpts...)
	if err != nil {
		return err
	}
	engine, err := pdp.New(ctx, set, pdp.WithQuery(decision))
	if err != nil {
		return err
	}
	d := engine.Decide(ctx, in)
	out := evalOutput{Kind: kind, Allow: d.Allow, Reasons: d.Reasons, Obligations: d.Obligations, Revision: d.Policy.Revision, Query: d.Policy.Query}
	if d.Err != nil {
		out.Error = d.Err.Error()
	}
	if rec != nil {
		out.Recorded = &recordedDecision{DecisionID: rec.DecisionID, Allow: rec.Allow, Reasons: rec.Reasons, Obligations: rec.Obligations, Revision: rec.Policy.Revision}
		changed := rec.Allow != d.Allow || !slices.Equal(orNoReasons(rec.Reasons), orNoReasons(d.Reasons)) || !sameJSON(rec.Obligations, d.Obligations)
		out.Changed = &changed
		if changed {
			fmt.Fprintf(stderr, "custody eval: the decision changed: %s %v then, %s %v now\n", outcome(rec.Allow), rec.Reasons, outcome(d.Allow), d.Reasons)
		} else {
			fmt.Fprintln(stderr, "custody eval: the decision is unchanged")
		}
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

// evalKindOf tells what raw holds from its top-level keys. A record has a schema; a native body
// a tool or user; an AuthZEN request options or evaluations, or an agent envelope
// (context.agent, context.task, context.correlation_id) that the server lifts out of the
// context; a policy input its own agent, delegation, task or correlation_id. A bare subject,
// action, resource and context is read as a policy input: as an AuthZEN request without an
// envelope it would map to the same input.
func evalKindOf(raw []byte) (string, error) {
	var top map[string]json.RawMessage
	if err := json.Unmarshal(raw, &top); err != nil || top == nil {
		why := "want one JSON object"
		if err != nil {
			why = err.Error()
		}
		return "", fmt.Errorf("%w: eval: input is not a policy input object (nor a /v1/authorize body, an AuthZEN evaluation request or a decision record): %s", errUsage, why)
	}
	has := func(keys ...string) bool {
		for _, k := range keys {
			if _, ok := top[k]; ok {
				return true
			}
		}
		return false
	}
	switch {
	case has("schema", "decision_id"):
		return evalKindRecord, nil
	case has("tool", "user"):
		return evalKindAuthorize, nil
	case has("options", "evaluations"):
		return evalKindAuthZEN, nil
	case has("agent", "delegation", "task", "correlation_id"):
		return evalKindInput, nil
	}
	var ctx map[string]json.RawMessage
	if json.Unmarshal(top["context"], &ctx) == nil {
		for _, k := range []string{"agent", "task", "correlation_id"} {
			if _, ok := ctx[k]; ok {
				return evalKindAuthZEN, nil
			}
		}
	}
	return evalKindInput, nil
}

// evalInput is the policy input raw holds as kind, and the record it came from for a record.
// Request bodies are read and mapped by the server's own decoder (server.DecodeInput) and
// agentcall, as an unauthenticated call: what the body claims is what the policy sees, with
// delegation.verified false. The task intent is not hashed (the server's key is not here).
func evalInput(kind string, raw []byte) (*pdp.Input, *decisionlog.Record, error) {
	switch kind {
	case evalKindAuthorize, evalKindAuthZEN:
		endpoint := server.EndpointAuthorize
		if kind == evalKindAuthZEN {
			endpoint = server.EndpointEvaluation
			if err := singleEvaluation(raw); err != nil {
				return nil, nil, err
			}
		}
		in, err := server.DecodeInput(endpoint, raw)
		if err != nil {
			return nil, nil, fmt.Errorf("%w: eval: %s: %w", errUsage, evalKindNames[kind], err)
		}
		return in, nil, nil
	case evalKindRecord:
		rec, err := decisionlog.DecodeRecord(raw)
		if err != nil {
			return nil, nil, fmt.Errorf("%w: eval: %w", errUsage, err)
		}
		in, err := recordInput(rec)
		if err != nil {
			return nil, nil, err
		}
		return in, rec, nil
	default:
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.UseNumber()
		dec.DisallowUnknownFields() // a misspelled field would otherwise evaluate as an empty one
		var in pdp.Input
		if err := dec.Decode(&in); err != nil {
			return nil, nil, fmt.Errorf("%w: eval: input is not a policy input object (subject, action, resource, context, agent, delegation, task, correlation_id): %w", errUsage, err)
		}
		if dec.More() {
			return nil, nil, fmt.Errorf("%w: eval: input holds more than one JSON value", errUsage)
		}
		return &in, nil, nil
	}
}

// singleEvaluation refuses an AuthZEN batch: eval decides one call, and a batch read as its
// top-level defaults would decide something the server never would.
func singleEvaluation(raw []byte) error {
	var top struct {
		Evaluations []json.RawMessage `json:"evaluations"`
	}
	if json.Unmarshal(raw, &top) == nil && len(top.Evaluations) > 0 {
		return fmt.Errorf("%w: eval: the AuthZEN request holds an evaluations batch of %d; eval decides one evaluation", errUsage, len(top.Evaluations))
	}
	return nil
}

// recordInput is the input a decision record was decided on, as far as the record keeps it:
// the identity as it was proven then (delegation.verified included), the action, resource,
// agent and task. A record keeps no input.context, and masked properties stay masked.
func recordInput(rec *decisionlog.Record) (*pdp.Input, error) {
	switch {
	case rec.Schema == decisionlog.SchemaExecutionV1:
		return nil, fmt.Errorf("%w: eval: an execution record reports an outcome, it is not a decision: give the record of its decision (%s)", errUsage, rec.DecisionID)
	case rec.Schema != decisionlog.SchemaDecisionV1:
		return nil, fmt.Errorf("%w: eval: schema %q is not a decision record (%s)", errUsage, rec.Schema, decisionlog.SchemaDecisionV1)
	case rec.Error != "" && !slices.Contains(rec.Reasons, pdp.ReasonPolicyError):
		// Only a refusal (a failed credential, an identity mismatch, an unreadable batch item)
		// carries an error that is not a policy's.
		return nil, fmt.Errorf("%w: eval: decision %s is a refusal (%v) that no policy decided: there is nothing to re-decide", errUsage, rec.DecisionID, rec.Reasons)
	}
	return &pdp.Input{
		Subject:       rec.Subject,
		Action:        rec.Action,
		Resource:      rec.Resource,
		Agent:         rec.Agent,
		Delegation:    rec.Delegation,
		Task:          rec.Task,
		CorrelationID: rec.CorrelationID,
	}, nil
}

func orNoReasons(r []string) []string {
	if r == nil {
		return []string{}
	}
	return r
}

// sameJSON reports whether a and b are the same JSON value, compared as JSON text decoded
// alike: a record's numbers are json.Number, the policy's may be other types, and a number no
// float64 holds (1e400) must still compare.
func sameJSON(a, b map[string]any) bool {
	if len(a) == 0 && len(b) == 0 {
		return true
	}
	norm := func(v map[string]any) (any, bool) {
		raw, err := json.Marshal(v)
		if err != nil {
			return nil, false
		}
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.UseNumber()
		var out any
		err = dec.Decode(&out)
		return out, err == nil
	}
	na, okA := norm(a)
	nb, okB := norm(b)
	return okA && okB && reflect.DeepEqual(na, nb)
}

func outcome(allow bool) string {
	if allow {
		return "allow"
	}
	return "deny"
}
