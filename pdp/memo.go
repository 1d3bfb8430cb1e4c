package pdp

import (
	"container/list"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"hash/maphash"
	"maps"
	"slices"
	"strings"
	"sync"

	"github.com/open-policy-agent/opa/v1/ast"
)

// A decision memo answers a repeated question without evaluating it again. It is exact, not a
// heuristic: when a policy set is loaded, its compiled modules and the decision query are read
// for every place they touch input, and a decision is remembered under the values of exactly
// those places (the projection of the input). Two inputs with the same projection are
// indistinguishable to the policy, so it decides them alike. Agents repeat themselves: the same
// agent calling the same tool for the same user, with different arguments, correlation IDs and
// tasks that the policy never reads, is one decision.
//
// Every input reference is a read of the value under its longest constant path (input.a[x].b
// reads input.a whole), wherever it stands: a rule body, a head's reference, key or value, an
// else branch, a function's arguments, a comprehension, an every, the decision query. The only
// exception is a read of the type alone, which must be provable from the rule itself: the
// reference is the operand of a type test (is_string(input.a)), or a local bound once to it and
// used nowhere else than as the operand of type tests (u := input.a; is_string(u)). A local that
// also appears anywhere else, in a head, a call, a comparison, a comprehension, counts as a read
// of the value: its value can flow on from there.
//
// The memo is off for a policy set that could decide a repeated input differently: one that uses
// a non-deterministic or clock-reading built-in (time.now_ns, http.send, rand.intn,
// io.jwt.decode_verify, ...), a `with` modifier, or a built-in the engine does not know; and it
// is off when the policy or the query reads the input whole (json.marshal(input), input[k]),
// since the projection would then be the entire input. Policy errors are never remembered.

// clockReaders are deterministic built-ins whose result still depends on the time of the call.
var clockReaders = map[string]bool{
	"io.jwt.decode_verify":                                   true,
	"crypto.x509.parse_and_verify_certificates":              true,
	"crypto.x509.parse_and_verify_certificates_with_options": true,
	"time.now_ns": true,
}

// typeTests are the built-ins whose result depends only on the type of their first operand.
var typeTests = map[string]bool{
	"is_object": true, "is_string": true, "is_array": true, "is_number": true,
	"is_boolean": true, "is_null": true, "is_set": true, "type_name": true,
}

// inputPath is one place the policy reads the input: a path from the input's root, read
// whole (value) or only for its type.
type inputPath struct {
	path     ast.Ref // the terms after `input`: strings and numbers
	typeOnly bool
	keys     []string // path as strings, when every step is one; nil otherwise
}

// newInputPath is the read of path, or of its type only.
func newInputPath(path ast.Ref, typeOnly bool) inputPath {
	keys, _ := stringKeys(path)
	return inputPath{path: path, typeOnly: typeOnly, keys: keys}
}

// projection is every place a policy set reads its input.
type projection []inputPath

// analyzeInputUse returns the projection of the policy set's modules, as c compiled them, and of
// the decision query, or why a decision of it cannot be remembered. c is the compiler every query
// of the set is prepared on (see compileSet), so the analysis reads exactly what is evaluated.
func analyzeInputUse(c *ast.Compiler, query string) (projection, error) {
	a := &inputUse{paths: map[string]inputPath{}}
	// Imports are not read: the compiler has rewritten every reference through one to the full
	// path, which is read where it is used.
	for _, name := range slices.Sorted(maps.Keys(c.Modules)) {
		for _, r := range c.Modules[name].Rules {
			a.scope(r, r.Location.String())
		}
	}
	q, err := ast.ParseBody(query)
	if err != nil {
		return nil, fmt.Errorf("parse decision query: %w", err)
	}
	a.scope(q, "the decision query")
	if a.why != nil {
		return nil, a.why
	}
	var out projection
	for _, k := range slices.Sorted(maps.Keys(a.paths)) {
		out = append(out, a.paths[k])
	}
	return out.minimal(), nil
}

// inputUse gathers the input paths of a policy set, scope by scope, and the first reason it
// cannot have a memo.
type inputUse struct {
	paths map[string]inputPath
	why   error
}

func (a *inputUse) add(p inputPath) {
	k := p.path.String()
	if p.typeOnly {
		k = "type " + k
	}
	a.paths[k] = p
}

func (a *inputUse) fail(format string, args ...any) {
	if a.why == nil {
		a.why = fmt.Errorf(format, args...)
	}
}

// checkCall refuses an operator whose result may differ between two calls with the same
// operands, or that the engine cannot vouch for.
func (a *inputUse) checkCall(name, loc string) {
	if bi, ok := ast.BuiltinMap[name]; ok {
		if bi.Nondeterministic || clockReaders[name] {
			a.fail("%s calls %s, which may answer differently each time", loc, name)
		}
	} else if !strings.HasPrefix(name, "data.") {
		a.fail("%s calls %s, a built-in this engine does not know", loc, name)
	}
}

// scope adds the input paths of one variable scope: a rule with its else branches, or the
// decision query. Counting a local's occurrences over the whole rule is conservative: a
// same-named local of a nested comprehension only adds occurrences, which can only turn a
// type read into a value read.
func (a *inputUse) scope(node any, where string) {
	occurs := map[ast.Var]int{}        // every occurrence of a variable
	typeUses := map[ast.Var]int{}      // as the first operand of a type test
	binds := map[ast.Var][]*ast.Term{} // v = input.<constant path>, by v
	typeOnly := map[*ast.Term]bool{}   // input references read only for their type
	walkAll(node, func(x any) bool {
		switch x := x.(type) {
		case ast.Var:
			occurs[x]++
		case ast.Call:
			a.checkCall(x[0].String(), orWhere(x[0].Location, where))
		case *ast.Expr:
			if len(x.With) > 0 {
				a.fail("%s uses a with modifier", orWhere(x.Location, where))
			}
			if !x.IsCall() {
				break
			}
			a.checkCall(x.Operator().String(), orWhere(x.Location, where))
			ops := x.Operands()
			if typeTests[x.Operator().String()] && len(ops) > 0 {
				if _, exact := groundInputPath(ops[0]); exact {
					typeOnly[ops[0]] = true
				} else if v, ok := ops[0].Value.(ast.Var); ok {
					typeUses[v]++
				}
			}
			if (x.IsEquality() || x.IsAssignment()) && !x.Negated && len(ops) == 2 {
				for i, o := range ops {
					v, ok := o.Value.(ast.Var)
					if _, exact := groundInputPath(ops[1-i]); ok && exact {
						binds[v] = append(binds[v], ops[1-i])
					}
				}
			}
		}
		return false
	})
	for v, refs := range binds {
		if len(refs) == 1 && typeUses[v] > 0 && occurs[v] == typeUses[v]+1 {
			typeOnly[refs[0]] = true
		}
	}
	var visit func(x any) bool
	visit = func(x any) bool {
		t, ok := x.(*ast.Term)
		if !ok || !isInputRooted(t) {
			return false
		}
		p, _ := inputPrefix(t)
		if typeOnly[t] {
			a.add(newInputPath(p, true))
			return true
		}
		if len(p) == 0 {
			a.fail("%s reads the whole input", orWhere(t.Location, where))
		}
		a.add(newInputPath(p, false))
		// The reference's head is the input variable, accounted for; a computed key
		// (input.a[input.b]) may read more of the input.
		if r, ok := t.Value.(ast.Ref); ok {
			for _, k := range r[1:] {
				walkAll(k, visit)
			}
		}
		return true
	}
	walkAll(node, visit)
}

func orWhere(loc *ast.Location, where string) string {
	if loc == nil {
		return where
	}
	return loc.String()
}

// walkAll calls f on every node under x, as ast.NewGenericVisitor does, and also on the
// reference of every rule head, which ast's walk skips: a general ref head (p[k].v := ...) keeps
// its keys there, not in Head.Key.
func walkAll(x any, f func(any) bool) {
	var vis *ast.GenericVisitor
	vis = ast.NewGenericVisitor(func(x any) bool {
		if f(x) {
			return true
		}
		if h, ok := x.(*ast.Head); ok {
			for _, t := range h.Reference {
				vis.Walk(t)
			}
		}
		return false
	})
	vis.Walk(x)
}

func isInputRooted(t *ast.Term) bool {
	switch v := t.Value.(type) {
	case ast.Var:
		return v.Equal(ast.InputRootDocument.Value)
	case ast.Ref:
		return v.HasPrefix(ast.InputRootRef)
	}
	return false
}

// inputPrefix is the longest path of constant strings and numbers that t reads under input,
// and whether that is all of t (no variable or computed part after it).
func inputPrefix(t *ast.Term) (ast.Ref, bool) {
	r, ok := t.Value.(ast.Ref)
	if !ok {
		return ast.Ref{}, true // the bare input variable
	}
	for i := 1; i < len(r); i++ {
		switch r[i].Value.(type) {
		case ast.String, ast.Number:
		default:
			return r[1:i].Copy(), false
		}
	}
	return r[1:].Copy(), true
}

// groundInputPath is the path t names under input, when t names one exactly.
func groundInputPath(t *ast.Term) (ast.Ref, bool) {
	if !isInputRooted(t) {
		return nil, false
	}
	return inputPrefix(t)
}

// names are the paths as operators read them: "subject.id", "type of subject".
func (p projection) names() []string {
	out := make([]string, 0, len(p))
	for _, ip := range p {
		parts := make([]string, 0, len(ip.path)+1)
		parts = append(parts, "input")
		for _, t := range ip.path {
			if s, ok := t.Value.(ast.String); ok {
				parts = append(parts, string(s))
			} else {
				parts = append(parts, t.String())
			}
		}
		name := strings.Join(parts, ".")
		if ip.typeOnly {
			name = "type of " + name
		}
		out = append(out, name)
	}
	return out
}

// minimal drops paths that another value path already covers: reading a document whole reads
// everything under it.
func (p projection) minimal() projection {
	var out projection
	for _, a := range p {
		covered := false
		for _, b := range p {
			if !b.typeOnly && len(b.path) < len(a.path) && a.path.HasPrefix(b.path) ||
				!b.typeOnly && a.typeOnly && b.path.Equal(a.path) {
				covered = true
				break
			}
		}
		if !covered {
			out = append(out, a)
		}
	}
	return out
}

// maxKeyBytes bounds a memo key. The projection can include caller-sent values (a user's scopes),
// and a memo of 10,000 entries must not become a way to hold 10,000 request bodies in memory: a
// larger input is evaluated without the memo.
const maxKeyBytes = 4096

// key encodes the input's projection: for each path, in order, what is there (or that nothing
// is). The encoding is injective, so equal keys mean equal projections. ok is false for a value
// the encoder does not know, which is then decided without the memo.
func (p projection) key(in ast.Value) (string, bool) {
	buf := make([]byte, 0, 256)
	for _, ip := range p {
		v, err := in.Find(ip.path)
		switch {
		case err != nil: // nothing there
			buf = append(buf, 'A')
		case ip.typeOnly:
			buf = append(buf, 'T')
			buf = append(buf, ast.ValueName(v)...)
			buf = append(buf, 0)
		default:
			buf = append(buf, 'V')
			var ok bool
			if buf, ok = encode(buf, v); !ok {
				return "", false
			}
		}
		if len(buf) > maxKeyBytes {
			return "", false
		}
	}
	return string(buf), true
}

// encode appends a type-tagged, length-prefixed encoding of v.
func encode(buf []byte, v ast.Value) ([]byte, bool) {
	switch x := v.(type) {
	case ast.Null:
		return append(buf, 'n'), true
	case ast.Boolean:
		if x {
			return append(buf, 't'), true
		}
		return append(buf, 'f'), true
	case ast.Number:
		buf = append(buf, 'd')
		return appendString(buf, string(x)), true
	case ast.String:
		buf = append(buf, 's')
		buf = appendString(buf, string(x))
		return buf, len(buf) <= maxKeyBytes
	case *ast.Array:
		buf = append(buf, 'a')
		buf = binary.AppendUvarint(buf, uint64(x.Len()))
		for i := range x.Len() {
			var ok bool
			if buf, ok = encode(buf, x.Elem(i).Value); !ok || len(buf) > maxKeyBytes {
				return buf, false
			}
		}
		return buf, true
	case ast.Object:
		buf = append(buf, 'o')
		keys := x.Keys() // sorted
		buf = binary.AppendUvarint(buf, uint64(len(keys)))
		for _, k := range keys {
			var ok bool
			if buf, ok = encode(buf, k.Value); !ok {
				return buf, false
			}
			if buf, ok = encode(buf, x.Get(k).Value); !ok || len(buf) > maxKeyBytes {
				return buf, false
			}
		}
		return buf, true
	}
	return buf, false
}

func appendString(buf []byte, s string) []byte {
	buf = binary.AppendUvarint(buf, uint64(len(s)))
	return append(buf, s...)
}

// memo holds remembered decisions, least recently used first out, bounded by a number of
// entries and by an estimate of the bytes they hold (keys, reasons and obligations): the entry
// bound alone let a few large decisions, one 4 KiB key and a large obligation each, grow the memo
// well past what its entry count suggests.
//
// A decision is remembered the second time its key is decided, not the first (see doorkeeper):
// traffic that never repeats then costs the memo one hash per decision, instead of an entry
// built, inserted and evicted unused, and a memo full of them for the collector to scan.
type memo struct {
	mu         sync.Mutex
	entries    map[string]*list.Element // of *memoEntry
	lru        list.List                // front: most recently used
	maxEntries int
	maxBytes   int64
	bytes      int64
	door       doorkeeper
}

type memoEntry struct {
	key  string
	d    Decision
	size int64
}

func newMemo(entries int, bytes int64) *memo {
	return &memo{
		entries:    make(map[string]*list.Element, min(entries, 1024)),
		maxEntries: entries,
		maxBytes:   bytes,
		// No more keys than the memo could hold by either bound: a large --decision-memo under
		// the default byte bound must not size the doorkeeper by the entry bound alone.
		door: newDoorkeeper(int(min(int64(entries), bytes/entryOverhead))),
	}
}

func (m *memo) get(k string) (Decision, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	el, ok := m.entries[k]
	if !ok {
		return Decision{}, false
	}
	m.lru.MoveToFront(el)
	return el.Value.(*memoEntry).d, true
}

// admit says whether a decision under k, just evaluated, is worth remembering: whether k was
// decided before, as far as the doorkeeper recalls.
func (m *memo) admit(k string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.door.seenBefore(k)
}

// put remembers d under k, evicting the least recently used entries until both bounds hold. A
// decision larger than the whole byte bound is not remembered, and evicts nothing.
func (m *memo) put(k string, d Decision) {
	size := entrySize(k, d)
	if size > m.maxBytes {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if el, ok := m.entries[k]; ok { // decided twice concurrently: one entry
		m.remove(el)
	}
	for m.lru.Len() > 0 && (m.lru.Len() >= m.maxEntries || m.bytes+size > m.maxBytes) {
		m.remove(m.lru.Back())
	}
	m.entries[k] = m.lru.PushFront(&memoEntry{key: k, d: d, size: size})
	m.bytes += size
}

func (m *memo) remove(el *list.Element) {
	e := m.lru.Remove(el).(*memoEntry)
	delete(m.entries, e.key)
	m.bytes -= e.size
}

func (m *memo) usage() (int, int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.lru.Len(), m.bytes
}

// entryOverhead estimates what an entry costs beyond its strings: the map slot, the list
// element, the entry and its Decision.
const entryOverhead = 160

// entrySize estimates the bytes an entry holds: its key, its reasons and its obligations, each
// string with its header.
func entrySize(k string, d Decision) int64 {
	n := int64(entryOverhead + len(k))
	for _, r := range d.Reasons {
		n += int64(16 + len(r))
	}
	if d.Obligations != nil {
		n += jsonSize(d.Obligations)
	}
	return n
}

func jsonSize(v any) int64 {
	switch x := v.(type) {
	case map[string]any:
		n := int64(48)
		for k, e := range x {
			n += int64(16+len(k)) + jsonSize(e)
		}
		return n
	case []any:
		n := int64(24)
		for _, e := range x {
			n += jsonSize(e)
		}
		return n
	case string:
		return int64(16 + len(x))
	case json.Number:
		return int64(16 + len(x))
	}
	return 16
}

// clone returns d with its own reasons and obligations, so that no caller can change what the
// memo remembers.
func (d Decision) clone() Decision {
	d.Reasons = slices.Clone(d.Reasons)
	if d.Obligations != nil {
		d.Obligations = cloneJSON(d.Obligations).(map[string]any)
	}
	return d
}

func cloneJSON(v any) any {
	switch x := v.(type) {
	case map[string]any:
		out := make(map[string]any, len(x))
		for k, e := range x {
			out[k] = cloneJSON(e)
		}
		return out
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			out[i] = cloneJSON(e)
		}
		return out
	}
	return v
}

// doorkeeper recalls the keys of the last decisions the memo did not remember, as 64-bit hashes,
// the oldest forgotten first: a TinyLFU cache's doorkeeper (Einziger et al., 2017) made exact, so
// that whether a key is remembered depends only on the keys decided before it. A false match (two
// keys with one hash) only admits a key a decision early; what is remembered is always the key's
// own decision. Its hashes hold no pointers, so the collector never scans them.
type doorkeeper struct {
	seed maphash.Seed
	seen map[uint64]struct{}
	ring []uint64 // the hashes in seen, in the order they came; a full ring forgets its oldest
	next int      // the ring's oldest, once it is full
}

// newDoorkeeper recalls twice the memo's entries: a key is remembered when it repeats before that
// many other new keys were decided.
func newDoorkeeper(entries int) doorkeeper {
	n := max(1, min(2*entries, 1<<22))
	return doorkeeper{seed: maphash.MakeSeed(), seen: make(map[uint64]struct{}, min(n, 4096)), ring: make([]uint64, 0, n)}
}

// seenBefore reports whether k was offered since the doorkeeper last forgot it, and recalls it.
// The caller holds the memo's lock.
func (d *doorkeeper) seenBefore(k string) bool {
	h := maphash.String(d.seed, k)
	if _, ok := d.seen[h]; ok {
		return true
	}
	if len(d.ring) < cap(d.ring) {
		d.ring = append(d.ring, h)
	} else {
		delete(d.seen, d.ring[d.next])
		d.ring[d.next] = h
		d.next = (d.next + 1) % len(d.ring)
	}
	d.seen[h] = struct{}{}
	return false
}
