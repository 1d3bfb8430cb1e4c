package pdp

import (
	"encoding/binary"
	"encoding/json"
	"maps"
	"slices"
	"strconv"

	"github.com/open-policy-agent/opa/v1/ast"
)

// The memo key straight from the Go input. Converting an input to OPA's value (Input.AST) was
// most of a memo hit's cost, paid only to read the few places the projection names. nativeKey
// reads those places in the Go input and writes exactly the bytes projection.key writes for
// the converted input (TestNativeKeyMatchesAST and FuzzNativeKey hold it to that), so a hit
// needs no conversion and both ways of keying share one memo. Whatever it is not sure to
// encode alike (a number read by the policy, a type OPA converts by a JSON round trip, a
// non-string path) it leaves to the conversion: ok is false.

// nativeKey is projection.key(in.AST()) without the conversion, or ok false. It is false too
// when in.AST() would fail, so that such an input is still refused as before rather than
// answered from the memo.
func (p projection) nativeKey(in *Input) (string, bool) { return p.nativeKeyInto(in, nil) }

// pathValue is what an input holds at one path of a projection: v, when found.
type pathValue struct {
	v     any
	found bool
}

// nativeKeyInto is nativeKey that also stores, when vals is not nil, what in holds at each of
// p's paths into vals (len(p) of them), for an observer to build the observed input from.
func (p projection) nativeKeyInto(in *Input, vals []pathValue) (string, bool) {
	if !in.convertible() {
		return "", false
	}
	buf := make([]byte, 0, 256)
	for i, ip := range p {
		if len(ip.path) == 0 && ip.typeOnly { // is_object(input): the input is always one
			buf = append(buf, "Tobject\x00"...)
			continue
		}
		v, found, ok := in.find(ip.keys)
		if vals != nil {
			vals[i] = pathValue{v: v, found: found}
		}
		switch {
		case !ok:
			return "", false
		case !found:
			buf = append(buf, 'A')
		case ip.typeOnly:
			name, ok := nativeTypeName(v)
			if !ok {
				return "", false
			}
			buf = append(buf, 'T')
			buf = append(buf, name...)
			buf = append(buf, 0)
		default:
			buf = append(buf, 'V')
			if buf, ok = encodeNative(buf, v); !ok {
				return "", false
			}
		}
		if len(buf) > maxKeyBytes {
			return "", false
		}
	}
	return string(buf), true
}

// convertible reports whether in.AST() converts every free-form part without an error: the
// kinds of value InterfaceToValue takes directly, and numbers within OPA's range.
func (in *Input) convertible() bool {
	ok := convertibleValue(in.Subject.Properties) && convertibleValue(in.Resource.Properties) &&
		convertibleValue(in.Action.Properties) && convertibleValue(in.Context) &&
		convertibleValue(in.Delegation.Chain) && convertibleValue(in.Approval)
	if in.Agent != nil {
		ok = ok && convertibleValue(in.Agent.Properties)
	}
	return ok
}

func convertibleValue(v any) bool {
	switch x := v.(type) {
	case nil, bool, string, float64, int, int64, uint64:
		return true
	case json.Number:
		_, err := ast.NumberChecked(string(x))
		return err == nil
	case []any:
		for _, e := range x {
			if !convertibleValue(e) {
				return false
			}
		}
		return true
	case map[string]any:
		for _, e := range x {
			if !convertibleValue(e) {
				return false
			}
		}
		return true
	}
	return false // converted by a JSON round trip, which may fail: leave it to AST
}

// stringKeys is path's steps as strings; ok is false for a step that is not one (input.a[0]).
func stringKeys(path ast.Ref) (keys []string, ok bool) {
	keys = make([]string, len(path))
	for i, t := range path {
		s, isStr := t.Value.(ast.String)
		if !isStr {
			return nil, false
		}
		keys[i] = string(s)
	}
	return keys, true
}

// find is in.AST().Find(path) on the Go input, for a path given as its keys (an inputPath's): the
// value there and whether there is one. ok is false for a path it cannot follow exactly like
// OPA: a non-string step (nil keys), a value of a kind it does not know.
func (in *Input) find(keys []string) (v any, found, ok bool) {
	if len(keys) == 0 {
		return nil, false, false // nil keys, or the whole input: the analysis never keys on it
	}
	rest := keys[1:]
	switch keys[0] {
	case "subject":
		return findEntity(in.Subject, rest)
	case "resource":
		return findEntity(in.Resource, rest)
	case "action":
		return findFields(rest, func(k string) (any, bool) {
			switch k {
			case "name":
				return in.Action.Name, true
			case "properties":
				return orEmpty(in.Action.Properties), true
			}
			return nil, false
		})
	case "context":
		return findIn(orEmpty(in.Context), rest)
	case "delegation":
		return findFields(rest, func(k string) (any, bool) {
			switch k {
			case "verified":
				return in.Delegation.Verified, true
			case "chain":
				return orEmptyList(in.Delegation.Chain), true
			}
			return nil, false
		})
	case "agent":
		if in.Agent == nil {
			return nil, false, true
		}
		a := in.Agent
		return findFields(rest, func(k string) (any, bool) {
			switch k {
			case "id":
				return a.ID, true
			case "type":
				return a.Type, true
			case "properties":
				return orEmpty(a.Properties), true
			}
			return nil, false
		})
	case "task":
		if in.Task == nil {
			return nil, false, true
		}
		t := in.Task
		return findFields(rest, func(k string) (any, bool) {
			switch k {
			case "id":
				return t.ID, true
			case "parent_id":
				return t.ParentID, true
			case "attempt":
				return t.Attempt, true
			case "session_id":
				return t.SessionID, true
			case "intent_sha256":
				return t.IntentSHA256, true
			}
			return nil, false
		})
	case "correlation_id":
		if in.CorrelationID == "" {
			return nil, false, true
		}
		return findIn(in.CorrelationID, rest)
	case "approval":
		if in.Approval == nil {
			return nil, false, true
		}
		return findIn(in.Approval, rest)
	case "caller":
		if in.Caller == nil {
			return nil, false, true
		}
		c := in.Caller
		return findFields(rest, func(k string) (any, bool) {
			switch k {
			case "kind":
				return c.Kind, true
			case "id":
				return c.ID, true
			}
			return nil, false
		})
	}
	return nil, false, true
}

// findEntity follows rest into an entity, as AST builds it: type, id and properties.
func findEntity(e Entity, rest []string) (any, bool, bool) {
	return findFields(rest, func(k string) (any, bool) {
		switch k {
		case "type":
			return e.Type, true
		case "id":
			return e.ID, true
		case "properties":
			return orEmpty(e.Properties), true
		}
		return nil, false
	})
}

// envelopeObject stands for an envelope object read whole (input.subject): its type is known
// (is_object(input.subject) is in the default policy), its value is left to the conversion.
type envelopeObject struct{}

// findFields follows rest into an envelope object whose members field gives.
func findFields(rest []string, field func(string) (any, bool)) (any, bool, bool) {
	if len(rest) == 0 {
		return envelopeObject{}, true, true
	}
	v, there := field(rest[0])
	if !there {
		return nil, false, true
	}
	return findIn(v, rest[1:])
}

// findIn follows rest into a free-form value, as ast.Value.Find does: only objects have string
// members; a string step into anything else finds nothing.
func findIn(v any, rest []string) (any, bool, bool) {
	for _, k := range rest {
		switch x := v.(type) {
		case map[string]any:
			var there bool
			if v, there = x[k]; !there {
				return nil, false, true
			}
		case nil, bool, string, json.Number, float64, int, int64, uint64, []any:
			return nil, false, true
		default:
			return nil, false, false
		}
	}
	return v, true, true
}

// nativeTypeName is ast.ValueName of v's conversion.
func nativeTypeName(v any) (string, bool) {
	switch v.(type) {
	case nil:
		return "null", true
	case bool:
		return "boolean", true
	case string:
		return "string", true
	case json.Number, float64, int, int64, uint64:
		return "number", true
	case []any:
		return "array", true
	case map[string]any, envelopeObject:
		return "object", true
	}
	return "", false
}

// encodeNative is encode(buf, v's conversion).
func encodeNative(buf []byte, v any) ([]byte, bool) {
	switch x := v.(type) {
	case nil:
		return append(buf, 'n'), true
	case bool:
		if x {
			return append(buf, 't'), true
		}
		return append(buf, 'f'), true
	case json.Number: // converted to ast.Number(x) as it is (interned or not)
		buf = append(buf, 'd')
		return appendString(buf, string(x)), true
	case int64:
		buf = append(buf, 'd')
		return appendString(buf, strconv.FormatInt(x, 10)), true
	case string:
		buf = append(buf, 's')
		buf = appendString(buf, x)
		return buf, len(buf) <= maxKeyBytes
	case []any:
		buf = append(buf, 'a')
		buf = binary.AppendUvarint(buf, uint64(len(x)))
		for _, e := range x {
			var ok bool
			if buf, ok = encodeNative(buf, e); !ok || len(buf) > maxKeyBytes {
				return buf, false
			}
		}
		return buf, true
	case map[string]any:
		buf = append(buf, 'o')
		buf = binary.AppendUvarint(buf, uint64(len(x)))
		for _, k := range slices.Sorted(maps.Keys(x)) { // ast.Object.Keys: by byte order too
			buf = append(buf, 's')
			buf = appendString(buf, k)
			var ok bool
			if buf, ok = encodeNative(buf, x[k]); !ok || len(buf) > maxKeyBytes {
				return buf, false
			}
		}
		return buf, true
	}
	return buf, false // float64 and others: their conversion's spelling is left to OPA
}

// An observer builds the input as the policy set can observe it: the values at the projection's
// value paths and the types at its type paths, in an input that holds nothing else. It is what
// the memo already rests on turned to evaluation: a policy set with a memo decides exactly by the
// projection (two inputs that agree there are decided alike), and the observed input agrees with
// the whole one there, so it is decided alike, at the cost of converting only what the policy
// reads (the default policy never reads the arguments, the context, the task or the delegation
// chain). It is the projection's paths as a tree, built once per policy set; each decision then
// builds one object per node from the values nativeKeyInto found, with no second lookup.
type observer struct {
	root obsNode
}

// obsNode is one member of the observed input: the path to it is a projection path (idx >= 0)
// or leads to one (an object made for its members).
type obsNode struct {
	key      *ast.Term
	idx      int // the projection path that ends here, or -1
	typeOnly bool
	children []*obsNode
}

// newObserver returns the observer of p, a minimal projection; nil when a path has a step that
// is not a string, which the native lookup cannot follow.
func newObserver(p projection) *observer {
	o := &observer{root: obsNode{idx: -1}}
	for i, ip := range p {
		if len(ip.path) == 0 { // type of input: the root is an object
			continue
		}
		if ip.keys == nil {
			return nil
		}
		n := &o.root
		for _, k := range ip.keys {
			var next *obsNode
			for _, c := range n.children {
				if string(c.key.Value.(ast.String)) == k {
					next = c
					break
				}
			}
			if next == nil {
				next = &obsNode{key: ast.InternedTerm(k), idx: -1}
				n.children = append(n.children, next)
			}
			n = next
		}
		if n.idx >= 0 { // two paths to one place: not a minimal projection
			return nil
		}
		n.idx, n.typeOnly = i, ip.typeOnly
	}
	return o
}

// build is the observed input from vals, what nativeKeyInto found at each path. ok is false
// when a value at a path cannot be given natively (an envelope object read whole, a value the
// conversion refuses); the caller then converts the whole input.
func (o *observer) build(vals []pathValue) (ast.Value, bool) {
	obj, ok := o.root.object(vals)
	if !ok {
		return nil, false
	}
	if obj == nil {
		return ast.NewObject(), true
	}
	return obj, true
}

// value is the member n stands for, or nil when the input has nothing there.
func (n *obsNode) value(vals []pathValue) (ast.Value, bool) {
	if n.idx >= 0 {
		pv := vals[n.idx]
		if !pv.found {
			return nil, true // nothing here, so nothing under it either
		}
		switch x := pv.v.(type) {
		case envelopeObject: // an object of the envelope: its type, and members below
			if !n.typeOnly {
				return nil, false
			}
		case map[string]any:
			if !n.typeOnly {
				v, err := ast.InterfaceToValue(x)
				return v, err == nil
			}
		default: // a value read, or the type of one that has no members to read
			v, err := ast.InterfaceToValue(x)
			return v, err == nil
		}
		obj, ok := n.object(vals) // an object whose type is read: it is there
		if obj == nil {
			obj = ast.NewObject()
		}
		return obj, ok
	}
	obj, ok := n.object(vals)
	return obj, ok // a nil object is no value
}

// object is the object of n's children that the input has; nil when it has none of them.
func (n *obsNode) object(vals []pathValue) (ast.Object, bool) {
	items := make([][2]*ast.Term, 0, len(n.children))
	for _, c := range n.children {
		v, ok := c.value(vals)
		if !ok {
			return nil, false
		}
		if v != nil {
			items = append(items, ast.Item(c.key, ast.NewTerm(v)))
		}
	}
	if len(items) == 0 {
		return nil, true
	}
	return ast.NewObject(items...), true
}
