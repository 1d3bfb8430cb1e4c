package pdp

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync/atomic"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/bundle"
	"github.com/open-policy-agent/opa/v1/metrics"
	"github.com/open-policy-agent/opa/v1/rego"
	"github.com/open-policy-agent/opa/v1/storage"
	"github.com/open-policy-agent/opa/v1/storage/inmem"
	"github.com/open-policy-agent/opa/v1/topdown"
	"github.com/rs/zerolog"
)

// DefaultQuery is the decision rule custody evaluates unless told otherwise.
const DefaultQuery = "data.custody.authz.decision"

// Reasons the engine itself gives when the policy could not decide.
const (
	// ReasonNoDecision: the decision rule was undefined for this input. Default-deny.
	ReasonNoDecision = "no_decision"
	// ReasonPolicyError: evaluation failed or the rule produced an unusable value.
	ReasonPolicyError = "policy_error"
)

// ErrInvalidPolicySet is returned when a policy set cannot be compiled or prepared.
var ErrInvalidPolicySet = errors.New("invalid policy set")

// PolicySet is a loaded set of Rego modules and data, with the revision that names it.
type PolicySet struct {
	Bundle   *bundle.Bundle
	Revision string // the manifest's revision, else a content hash
	Source   string // where it came from, for operators
}

// PolicyInfo describes the policy set an engine is serving.
type PolicyInfo struct {
	Query    string
	Revision string
	Source   string
	LoadedAt time.Time
	// Memo says whether repeated decisions are remembered (see WithMemo): "on", "off" when the
	// engine has no memo, or "off: " and why this policy set cannot have one.
	Memo string
	// InputPaths are the places in the input the policy set reads, when the memo is on:
	// "subject.id", or "type of input" for a path only type-tested.
	InputPaths []string
}

// Decision is the outcome of one evaluation. A zero Decision is a deny.
type Decision struct {
	Allow       bool
	Reasons     []string
	Obligations map[string]any
	Policy      PolicyInfo
	// Err is set when the policy failed; the decision is then a deny with ReasonPolicyError.
	Err error
	// Duration is the time spent evaluating.
	Duration time.Duration
}

// Engine decides requests against the policy set it last loaded. It is safe for concurrent use;
// Load prepares a new policy set beside the current one and swaps it in atomically, so requests in
// flight finish on the engine they started with.
type Engine struct {
	query     string
	memoSize  int
	memoBytes int64
	// memoHits and memoMisses count decisions answered from the memo and evaluated with it on.
	memoHits, memoMisses atomic.Uint64
	logger               zerolog.Logger
	now                  func() time.Time
	cur                  atomic.Pointer[prepared]
}

type prepared struct {
	pq   rego.PreparedEvalQuery
	info PolicyInfo
	// search holds one prepared query per SearchKind, on the same policy set as pq.
	search map[SearchKind]rego.PreparedEvalQuery
	// proj and memo remember decisions by the part of the input the policy reads; nil when off.
	proj projection
	memo *memo
	// obs builds the input as the policy observes it (see observer); nil without a memo.
	obs *observer
}

// Option configures an Engine.
type Option func(*Engine)

// WithQuery sets the decision rule to evaluate, such as "data.custody.authz.decision".
func WithQuery(q string) Option { return func(e *Engine) { e.query = q } }

// WithLogger sets the engine's logger. The default discards.
func WithLogger(l zerolog.Logger) Option { return func(e *Engine) { e.logger = l } }

// WithMemo remembers up to size decisions of a policy set, keyed by exactly the parts of the
// input its rules and the decision query read, and answers a repeated one without evaluating it
// (see memo.go). It is exact: a policy set that could decide the same input differently (clock,
// randomness, network, `with`) or that reads the input whole gets no memo. 0, the default, turns
// it off. The memo holds at most size decisions and at most WithMemoBytes of them.
func WithMemo(size int) Option { return func(e *Engine) { e.memoSize = size } }

// DefaultMemoBytes bounds the bytes a memo holds unless WithMemoBytes says otherwise: 10,000
// decisions of the default policy set take about 5 MB.
const DefaultMemoBytes = 16 << 20

// WithMemoBytes bounds the memo by an estimate of the bytes its decisions hold: keys, reasons
// and obligations. 0 or less means DefaultMemoBytes.
func WithMemoBytes(n int64) Option { return func(e *Engine) { e.memoBytes = n } }

// WithClock sets the clock used to stamp loads and time evaluations.
func WithClock(now func() time.Time) Option { return func(e *Engine) { e.now = now } }

// New compiles set and returns an engine serving it.
func New(ctx context.Context, set PolicySet, opts ...Option) (*Engine, error) {
	e, err := NewEmpty(opts...)
	if err != nil {
		return nil, err
	}
	if err := e.Load(ctx, set); err != nil {
		return nil, err
	}
	return e, nil
}

// NewEmpty returns an engine with no policy set loaded, for a policy set that arrives later,
// such as from an object store. Until Load succeeds it denies every request with
// ReasonPolicyError and Policy().Revision is empty.
func NewEmpty(opts ...Option) (*Engine, error) {
	e := &Engine{query: DefaultQuery, logger: zerolog.Nop(), now: time.Now}
	for _, o := range opts {
		o(e)
	}
	e.logger = e.logger.With().Str("component", "pdp").Logger()
	if e.memoBytes <= 0 {
		e.memoBytes = DefaultMemoBytes
	}
	if _, err := ast.ParseRef(e.query); err != nil {
		return nil, fmt.Errorf("pdp: parse decision query %q: %w", e.query, err)
	}
	return e, nil
}

// Load compiles and prepares set, then makes it the engine's current policy set. On error the
// previous policy set keeps serving.
func (e *Engine) Load(ctx context.Context, set PolicySet) error {
	if set.Bundle == nil {
		return fmt.Errorf("pdp: load policy set: %w: no bundle", ErrInvalidPolicySet)
	}
	c, store, err := compileSet(ctx, set)
	if err != nil {
		return err
	}
	pq, err := prepareQuery(ctx, c, store, e.query)
	if err != nil {
		return fmt.Errorf("pdp: prepare policy set %s: %w: %w", set.Source, ErrInvalidPolicySet, err)
	}
	search, err := prepareSearch(ctx, c, store, set)
	if err != nil {
		return err
	}
	p := &prepared{pq: pq, search: search, info: PolicyInfo{
		Query:    e.query,
		Revision: set.Revision,
		Source:   set.Source,
		LoadedAt: e.now().UTC(),
		Memo:     "off",
	}}
	if e.memoSize > 0 {
		proj, err := analyzeInputUse(c, e.query)
		if err != nil {
			p.info.Memo = "off: " + err.Error()
		} else {
			p.proj, p.memo, p.obs = proj, newMemo(e.memoSize, e.memoBytes), newObserver(proj)
			p.info.Memo = "on"
			p.info.InputPaths = proj.names()
		}
	}
	e.cur.Store(p)
	ev := e.logger.Info()
	if strings.HasPrefix(p.info.Memo, "off: ") { // asked for and refused: an operator should know why
		ev = e.logger.Warn()
	}
	ev.Str("revision", set.Revision).Str("source", set.Source).Str("query", e.query).Str("memo", p.info.Memo).Strs("input_paths", p.info.InputPaths).Msg("policy set loaded")
	return nil
}

// compileSet compiles set once into a compiler and a store holding its data, which every query
// of the policy set is then prepared on (see prepareQuery). Preparing each query from the bundle
// compiled the whole set again per query: five compiles per load, four times the memory.
// The compiler is configured as rego configures its own, so decisions are unchanged. The store
// holds the data as OPA values (OPA's --read-ast-values-from-store, off by default in its
// server): converted once at load, instead of what each decision reads converted again for it.
// It costs memory at load (about 40 MB more live heap for a catalog of 100,000 tools), which the
// memory governor sees, against allocations on every decision.
func compileSet(ctx context.Context, set PolicySet) (*ast.Compiler, storage.Store, error) {
	store := inmem.NewWithOpts(inmem.OptReturnASTValuesOnRead(true))
	txn, err := store.NewTransaction(ctx, storage.WriteParams)
	if err != nil {
		return nil, nil, fmt.Errorf("pdp: open store of policy set %s: %w", set.Source, err)
	}
	c := ast.NewCompiler().WithUseTypeCheckAnnotations(true).WithPathConflictsCheck(storage.NonEmpty(ctx, store, txn))
	err = bundle.Activate(&bundle.ActivateOpts{
		Ctx:      ctx,
		Store:    store,
		Txn:      txn,
		Compiler: c,
		Metrics:  metrics.NoOp(),
		Bundles:  map[string]*bundle.Bundle{"custody": set.Bundle},
	})
	if err != nil {
		store.Abort(ctx, txn)
		return nil, nil, fmt.Errorf("pdp: compile policy set %s: %w: %w", set.Source, ErrInvalidPolicySet, err)
	}
	if err := store.Commit(ctx, txn); err != nil {
		return nil, nil, fmt.Errorf("pdp: commit policy set %s: %w", set.Source, err)
	}
	return c, store, nil
}

// prepareQuery prepares query on a policy set compiled by compileSet, compiling only the query.
func prepareQuery(ctx context.Context, c *ast.Compiler, store storage.Store, query string) (rego.PreparedEvalQuery, error) {
	return rego.New(rego.Query(query), rego.Compiler(c), rego.Store(store)).PrepareForEval(ctx)
}

// MemoStats counts decisions answered from the memo (hits) and decisions evaluated while the
// memo was on (misses), since the engine started.
func (e *Engine) MemoStats() (hits, misses uint64) {
	return e.memoHits.Load(), e.memoMisses.Load()
}

// MemoUsage reports how many decisions the current policy set's memo holds and an estimate of
// their bytes (see WithMemoBytes); 0 and 0 when it has none.
func (e *Engine) MemoUsage() (entries int, bytes int64) {
	if p := e.cur.Load(); p != nil && p.memo != nil {
		return p.memo.usage()
	}
	return 0, 0
}

// Policy describes the policy set currently served.
func (e *Engine) Policy() PolicyInfo {
	if p := e.cur.Load(); p != nil {
		return p.info
	}
	return PolicyInfo{Query: e.query}
}

// Decide evaluates in against the current policy set. It never returns an allow unless the
// policy produced one: undefined is a deny with ReasonNoDecision, and any error a deny with
// ReasonPolicyError and Err set.
func (e *Engine) Decide(ctx context.Context, in *Input) Decision {
	p := e.cur.Load()
	if p == nil {
		return Decision{Reasons: []string{ReasonPolicyError}, Err: errors.New("pdp: no policy set loaded")}
	}
	start := e.now()
	d := p.decide(ctx, in, e)
	d.Duration = e.now().Sub(start)
	d.Policy = p.info
	return d
}

func (p *prepared) decide(ctx context.Context, in *Input, e *Engine) Decision {
	if err := ctx.Err(); err != nil { // OPA checks cancellation only between steps
		return policyError(fmt.Errorf("pdp: evaluate %s: %w", p.info.Query, err))
	}
	var (
		value ast.Value
		key   string
		keyed bool
	)
	convert := func() error {
		var err error
		value, err = in.AST()
		return err
	}
	var (
		found  [32]pathValue // what the input holds at each path, for the observer
		vals   []pathValue
		native bool
	)
	if p.obs != nil {
		if len(p.proj) <= len(found) {
			vals = found[:len(p.proj)]
		} else {
			vals = make([]pathValue, len(p.proj))
		}
	}
	if p.memo != nil {
		// The key from the Go input when it can be, so that a hit converts nothing.
		key, keyed = p.proj.nativeKeyInto(in, vals)
		if native = keyed; !keyed {
			if err := convert(); err != nil {
				return policyError(fmt.Errorf("pdp: convert input: %w", err))
			}
			key, keyed = p.proj.key(value)
		}
		if keyed {
			if d, hit := p.memo.get(key); hit {
				e.memoHits.Add(1)
				return d.clone()
			}
			e.memoMisses.Add(1)
		}
	}
	if native && p.obs != nil {
		// Keyed natively: the memo's analysis holds for this input, so the policy is given only
		// what it reads (see observer).
		value, _ = p.obs.build(vals)
	}
	if value == nil {
		if err := convert(); err != nil {
			return policyError(fmt.Errorf("pdp: convert input: %w", err))
		}
	}
	d := p.eval(ctx, value)
	if keyed && d.Err == nil && p.memo.admit(key) {
		p.memo.put(key, d.clone())
	}
	return d
}

func (p *prepared) eval(ctx context.Context, value ast.Value) Decision {
	rs, err := evalQuery(ctx, p.pq, value)
	if err != nil {
		return policyError(fmt.Errorf("pdp: evaluate %s: %w", p.info.Query, err))
	}
	if len(rs) == 0 || len(rs[0].Expressions) == 0 {
		return Decision{Reasons: []string{ReasonNoDecision}}
	}
	if len(rs) > 1 {
		return policyError(fmt.Errorf("pdp: evaluate %s: %d results, want one", p.info.Query, len(rs)))
	}
	return interpret(rs[0].Expressions[0].Value)
}

// evalQuery evaluates pq on input value until ctx ends. rego started a goroutine per
// evaluation to cancel it when ctx ends, and woke it again when the evaluation was over; a
// callback registered on ctx cancels it without either.
func evalQuery(ctx context.Context, pq rego.PreparedEvalQuery, value ast.Value) (rego.ResultSet, error) {
	cancel := topdown.NewCancel()
	stop := context.AfterFunc(ctx, cancel.Cancel)
	defer stop()
	return pq.Eval(ctx, rego.EvalParsedInput(value), rego.EvalMetrics(metrics.NoOp()), rego.EvalExternalCancel(cancel))
}

// interpret turns the decision rule's value into a Decision. The rule may be a boolean or an
// object {"allow": bool, "reasons": [string], "obligations": {...}}; anything else is an error,
// since guessing at a malformed policy's intent could turn a mistake into an allow.
func interpret(v any) Decision {
	switch v := v.(type) {
	case bool:
		if v {
			return Decision{Allow: true, Reasons: []string{}}
		}
		return Decision{Reasons: []string{"denied"}}
	case map[string]any:
		allow, ok := v["allow"].(bool)
		if !ok {
			return policyError(fmt.Errorf("pdp: decision.allow is %s, want boolean", typeName(v["allow"])))
		}
		d := Decision{Allow: allow, Reasons: []string{}}
		switch rs := v["reasons"].(type) {
		case nil:
		case []any:
			for _, r := range rs {
				s, ok := r.(string)
				if !ok {
					return policyError(fmt.Errorf("pdp: decision.reasons holds a %s, want strings", typeName(r)))
				}
				d.Reasons = append(d.Reasons, s)
			}
			sort.Strings(d.Reasons) // policy sets are unordered; records should not churn
		default:
			return policyError(fmt.Errorf("pdp: decision.reasons is %s, want array", typeName(rs)))
		}
		switch ob := v["obligations"].(type) {
		case nil:
		case map[string]any:
			d.Obligations = ob
		default:
			return policyError(fmt.Errorf("pdp: decision.obligations is %s, want object", typeName(ob)))
		}
		if !d.Allow && len(d.Reasons) == 0 {
			d.Reasons = []string{"denied"}
		}
		return d
	default:
		return policyError(fmt.Errorf("pdp: decision is %s, want boolean or object", typeName(v)))
	}
}

func policyError(err error) Decision {
	return Decision{Reasons: []string{ReasonPolicyError}, Err: err}
}

func typeName(v any) string {
	switch v.(type) {
	case nil:
		return "null/undefined"
	case bool:
		return "boolean"
	case string:
		return "string"
	case []any:
		return "array"
	case map[string]any:
		return "object"
	default:
		return "number"
	}
}
