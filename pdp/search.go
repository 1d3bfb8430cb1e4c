package pdp

import (
	"context"
	"errors"
	"fmt"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/rego"
	"github.com/open-policy-agent/opa/v1/storage"
)

// SearchRoot is where a policy set offers the candidates of AuthZEN search: SearchRoot + "." + kind,
// such as data.custody.search.actions. Each is an array of entities (subjects and resources
// {"type","id","properties"}, actions {"name","properties"}). It may read input, the search
// request with the searched entity left out, to narrow its list. Undefined means no candidates.
const SearchRoot = "data.custody.search"

// SearchKind names the entity an AuthZEN search looks for.
type SearchKind string

// The three AuthZEN search kinds, named as their candidate lists are under SearchRoot.
const (
	SearchSubjects  SearchKind = "subjects"
	SearchResources SearchKind = "resources"
	SearchActions   SearchKind = "actions"
)

// SearchKinds lists every SearchKind.
var SearchKinds = []SearchKind{SearchSubjects, SearchResources, SearchActions}

// ErrUnknownSearchKind is returned for a SearchKind that is not one of SearchKinds.
var ErrUnknownSearchKind = errors.New("unknown search kind")

// Query is the data reference the candidates of kind are read from.
func (k SearchKind) Query() string { return SearchRoot + "." + string(k) }

// prepareSearch prepares the candidate query of every search kind on set, beside the decision
// query and on the same compiler and store, so that a search evaluates queries compiled once per
// policy set like a decision does.
func prepareSearch(ctx context.Context, c *ast.Compiler, store storage.Store, set PolicySet) (map[SearchKind]rego.PreparedEvalQuery, error) {
	out := make(map[SearchKind]rego.PreparedEvalQuery, len(SearchKinds))
	for _, k := range SearchKinds {
		pq, err := prepareQuery(ctx, c, store, k.Query())
		if err != nil {
			return nil, fmt.Errorf("pdp: prepare %s of policy set %s: %w: %w", k.Query(), set.Source, ErrInvalidPolicySet, err)
		}
		out[k] = pq
	}
	return out, nil
}

// Candidates returns what the current policy set offers for a search of kind, as plain JSON
// values in the policy's order, for the caller to check and to decide one by one. in is the
// search request, which the candidate rule may read. Undefined is no candidates; anything but an
// array (or a set) is an error.
func (e *Engine) Candidates(ctx context.Context, kind SearchKind, in *Input) ([]any, error) {
	p := e.cur.Load()
	if p == nil {
		return nil, errors.New("pdp: no policy set loaded")
	}
	pq, ok := p.search[kind]
	if !ok {
		return nil, fmt.Errorf("pdp: candidates %q: %w", kind, ErrUnknownSearchKind)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("pdp: evaluate %s: %w", kind.Query(), err)
	}
	value, err := in.AST()
	if err != nil {
		return nil, fmt.Errorf("pdp: convert input: %w", err)
	}
	rs, err := evalQuery(ctx, pq, value)
	if err != nil {
		return nil, fmt.Errorf("pdp: evaluate %s: %w", kind.Query(), err)
	}
	if len(rs) == 0 || len(rs[0].Expressions) == 0 {
		return []any{}, nil
	}
	if len(rs) > 1 {
		return nil, fmt.Errorf("pdp: evaluate %s: %d results, want one", kind.Query(), len(rs))
	}
	list, ok := rs[0].Expressions[0].Value.([]any)
	if !ok {
		return nil, fmt.Errorf("pdp: %s is %s, want array", kind.Query(), typeName(rs[0].Expressions[0].Value))
	}
	return list, nil
}
