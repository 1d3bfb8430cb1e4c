package server

import (
	"encoding/json"
	"reflect"
	"strings"
	"sync"
	"unicode/utf16"
	"unicode/utf8"
)

// decodeDirect is the strict decoder's fastest path: one pass over the bytes that checks the
// strict rules exactly as fastStrict does and, in the same pass, stores the values into v as
// encoding/json (with UseNumber) would. It only says yes: any body it is not sure of (a key with
// an escape, a value of the wrong type for its field, a type it has no plan for, every refusal)
// reports false with v reset to its zero value, and decodeJSON then takes the old path (fastStrict
// or the walker, then encoding/json), which decides and words the error as before. It saves
// the second decode by encoding/json, which copied the whole body into the Decoder's buffer and
// built every free-form map through reflection. Body must be valid UTF-8 (checked by the caller)
// and v a pointer to a zero value. FuzzDirectDecode holds it to the old path on hostile input.
func decodeDirect(body []byte, v any) bool {
	d := directDecoders.Get().(*directDecoder)
	d.fastScanner = fastScanner{b: body}
	defer d.release()
	d.space()
	if p, ok := v.(*any); ok { // AuthZEN bodies: a plain value
		if *p != nil {
			return false
		}
		val, ok := d.free(1)
		if !ok || !d.end() {
			return false
		}
		*p = val
		return true
	}
	rv := reflect.ValueOf(v)
	if rv.Kind() != reflect.Pointer || rv.IsNil() {
		return false
	}
	e := rv.Elem()
	if !e.IsZero() { // encoding/json merges into what is there; the direct path does not
		return false
	}
	if !d.into(e, planOf(e.Type()), 1) || !d.end() {
		e.SetZero()
		return false
	}
	return true
}

// planKind is what the direct path can store into; planNone is everything else (unmarshalers,
// slices, floats, unsigned integers, json.Number, embedded structs, ",string" fields), for
// which it hands the body to the old path.
type planKind uint8

const (
	planNone planKind = iota
	planStruct
	planPointer
	planString
	planInt
	planBool
	planMap // map[string]any
	planAny // interface{}
)

// plan is how the direct path stores a JSON value into a Go type, derived once per type.
type plan struct {
	kind   planKind
	typ    reflect.Type
	elem   *plan                 // planPointer: the pointed-to type
	fields map[string]*fieldPlan // planStruct: by exact JSON name, as shape has them
}

// fieldPlan is one struct field: its index, its fold group (fields whose names fold alike share
// one, so that one object cannot name both) and its plan.
type fieldPlan struct {
	index int
	group uint
	p     *plan
}

var plans sync.Map // reflect.Type -> *plan

var (
	anyMapType = reflect.TypeFor[map[string]any]()
	numberType = reflect.TypeFor[json.Number]()
)

func planOf(t reflect.Type) *plan {
	if p, ok := plans.Load(t); ok {
		return p.(*plan)
	}
	p := buildPlan(t, map[reflect.Type]*plan{})
	plans.Store(t, p)
	return p
}

var noPlan = &plan{kind: planNone}

func buildPlan(t reflect.Type, seen map[reflect.Type]*plan) *plan {
	if p, ok := seen[t]; ok {
		return p
	}
	if t.Kind() != reflect.Interface {
		pt := reflect.PointerTo(t)
		if pt.Implements(jsonUnmarshaler) || pt.Implements(textUnmarshaler) {
			return noPlan
		}
	}
	switch t.Kind() {
	case reflect.Pointer:
		p := &plan{kind: planPointer, typ: t}
		seen[t] = p
		p.elem = buildPlan(t.Elem(), seen)
		return p
	case reflect.Struct:
		p := &plan{kind: planStruct, typ: t, fields: map[string]*fieldPlan{}}
		seen[t] = p
		if !addFieldPlans(p, t, seen) {
			p.kind, p.fields = planNone, nil
		}
		return p
	case reflect.String:
		if t == numberType {
			return noPlan // encoding/json checks what a json.Number field receives
		}
		return &plan{kind: planString, typ: t}
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return &plan{kind: planInt, typ: t}
	case reflect.Bool:
		return &plan{kind: planBool, typ: t}
	case reflect.Map:
		if t == anyMapType {
			return &plan{kind: planMap, typ: t}
		}
	case reflect.Interface:
		if t.NumMethod() == 0 {
			return &plan{kind: planAny, typ: t}
		}
	}
	return noPlan
}

// addFieldPlans fills p with t's fields, named as encoding/json and shape name them. It reports
// false for a struct whose names follow rules the direct path does not repeat: an embedded
// field, a tag name encoding/json would ignore, two fields of one name, ",string", more than
// 64 fold groups.
func addFieldPlans(p *plan, t reflect.Type, seen map[reflect.Type]*plan) bool {
	var groups []string // folded name of each group
	for i := range t.NumField() {
		f := t.Field(i)
		if f.Anonymous {
			return false
		}
		tag := f.Tag.Get("json")
		if tag == "-" || !f.IsExported() {
			continue
		}
		name, opts, _ := strings.Cut(tag, ",")
		for _, o := range strings.Split(opts, ",") {
			if o == "string" {
				return false
			}
		}
		if name == "" {
			name = f.Name
		} else if !plainTagName(name) {
			return false
		}
		if _, dup := p.fields[name]; dup {
			return false
		}
		fk := foldKey(name)
		g := -1
		for j, k := range groups {
			if k == fk {
				g = j
			}
		}
		if g < 0 {
			g = len(groups)
			groups = append(groups, fk)
		}
		if g >= 64 {
			return false
		}
		p.fields[name] = &fieldPlan{index: i, group: uint(g), p: buildPlan(f.Type, seen)}
	}
	return true
}

// plainTagName reports whether a tag name is letters, digits, '_', '-' and '.': valid for
// encoding/json (isValidTag) and plain enough that no rule of its is in doubt.
func plainTagName(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' || c == '.') {
			return false
		}
	}
	return s != ""
}

// directDecoder is fastScanner (whose scanning of literals, numbers, spaces and separators it
// shares) with values built as it goes.
type directDecoder struct {
	fastScanner
	keys []string // the members of the free-form objects being read, innermost last
	vals []any    // the elements of the arrays being read, innermost last
}

// directDecoders keeps the decoders' scratch (keys, vals) from one body to the next, so that
// an array costs one allocation of its own size and the bookkeeping none. Scratch is cleared
// before it goes back: a pooled decoder keeps no value of a past body alive.
var directDecoders = sync.Pool{New: func() any { return new(directDecoder) }}

// maxPooledScratch bounds the scratch a pooled decoder keeps (one hostile body with a huge
// array must not pin its size).
const maxPooledScratch = 1024

func (d *directDecoder) release() {
	clear(d.keys[:cap(d.keys)])
	clear(d.vals[:cap(d.vals)])
	d.keys, d.vals = d.keys[:0], d.vals[:0]
	if cap(d.keys) > maxPooledScratch || cap(d.vals) > maxPooledScratch {
		return
	}
	d.fastScanner = fastScanner{}
	directDecoders.Put(d)
}

func (d *directDecoder) end() bool {
	d.space()
	return d.i == len(d.b)
}

// into stores the value at d.i into v by p, at nesting level depth.
func (d *directDecoder) into(v reflect.Value, p *plan, depth int) bool {
	if p.kind == planNone || d.i >= len(d.b) {
		return false
	}
	switch c := d.b[d.i]; {
	case c == 'n':
		if !d.literal("null") {
			return false
		}
		switch p.kind {
		case planPointer, planMap, planAny:
			v.SetZero() // encoding/json ignores null for strings, numbers, booleans, structs
		}
		return true
	case p.kind == planPointer:
		if v.IsNil() {
			v.Set(reflect.New(p.typ.Elem()))
		}
		return d.into(v.Elem(), p.elem, depth)
	case p.kind == planAny:
		val, ok := d.free(depth)
		if ok && val != nil {
			v.Set(reflect.ValueOf(val))
		}
		return ok
	case c == '{':
		if depth > MaxNestingDepth {
			return false
		}
		switch p.kind {
		case planStruct:
			return d.structObject(v, p, depth)
		case planMap:
			m, ok := d.freeObject(depth)
			if ok {
				v.Set(reflect.ValueOf(m))
			}
			return ok
		}
	case c == '"':
		if p.kind == planString {
			s, ok := d.str()
			if ok {
				v.SetString(s)
			}
			return ok
		}
	case c == 't' || c == 'f':
		if p.kind == planBool {
			word := "false"
			if c == 't' {
				word = "true"
			}
			if !d.literal(word) {
				return false
			}
			v.SetBool(c == 't')
			return true
		}
	case c == '-' || (c >= '0' && c <= '9'):
		if p.kind == planInt {
			start := d.i
			if !d.number() {
				return false
			}
			n, ok := parseInt64(d.b[start:d.i])
			if !ok || v.OverflowInt(n) {
				return false // encoding/json's error for it
			}
			v.SetInt(n)
			return true
		}
	}
	return false // a type encoding/json refuses here: the old path words it
}

// parseInt64 is strconv.ParseInt(s, 10, 64) for a JSON number, without the error value that
// makes it allocate: false for a fraction, an exponent or an overflow.
func parseInt64(s []byte) (int64, bool) {
	neg := len(s) > 0 && s[0] == '-'
	if neg {
		s = s[1:]
	}
	if len(s) == 0 || len(s) > 19 {
		return 0, false
	}
	var n uint64
	for _, c := range s {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + uint64(c-'0')
	}
	if neg {
		if n > 1<<63 {
			return 0, false
		}
		return -int64(n), true
	}
	if n > 1<<63-1 {
		return 0, false
	}
	return int64(n), true
}

// structObject reads {...} into the struct v; d.b[d.i] is '{'. Every member must be a field's
// exact name, once, and no two members may fold alike.
func (d *directDecoder) structObject(v reflect.Value, p *plan, depth int) bool {
	d.i++
	d.space()
	if d.i < len(d.b) && d.b[d.i] == '}' {
		d.i++
		return true
	}
	var seen uint64 // fold groups named so far
	for {
		key, ok := d.key()
		if !ok {
			return false
		}
		f, known := p.fields[string(key)]
		if !known || seen&(1<<f.group) != 0 {
			return false
		}
		seen |= 1 << f.group
		if !d.colon() || !d.into(v.Field(f.index), f.p, depth+1) {
			return false
		}
		if more, ok := d.next('}'); !ok || !more {
			return ok
		}
	}
}

// key reads a member name without escapes (a name with one is left to the walker, which
// compares decoded names, as fastStrict does) and returns its bytes.
func (d *directDecoder) key() ([]byte, bool) {
	if d.i >= len(d.b) || d.b[d.i] != '"' {
		return nil, false
	}
	start := d.i + 1
	for j := start; j < len(d.b); j++ {
		switch c := d.b[j]; {
		case c == '"':
			d.i = j + 1
			return d.b[start:j], true
		case c == '\\' || c < 0x20:
			return nil, false
		}
	}
	return nil, false
}

// free reads any value as encoding/json decodes it into an any with UseNumber.
func (d *directDecoder) free(depth int) (any, bool) {
	if d.i >= len(d.b) {
		return nil, false
	}
	switch c := d.b[d.i]; {
	case c == '{':
		if depth > MaxNestingDepth {
			return nil, false
		}
		m, ok := d.freeObject(depth)
		return m, ok
	case c == '[':
		if depth > MaxNestingDepth {
			return nil, false
		}
		return d.freeArray(depth)
	case c == '"':
		return d.str()
	case c == 't':
		return true, d.literal("true")
	case c == 'f':
		return false, d.literal("false")
	case c == 'n':
		return nil, d.literal("null")
	case c == '-' || (c >= '0' && c <= '9'):
		start := d.i
		if !d.number() {
			return nil, false
		}
		return json.Number(d.b[start:d.i]), true
	}
	return nil, false
}

// freeObject reads {...} as a map[string]any; d.b[d.i] is '{'. No two members may fold alike.
func (d *directDecoder) freeObject(depth int) (map[string]any, bool) {
	d.i++
	d.space()
	m := map[string]any{}
	if d.i < len(d.b) && d.b[d.i] == '}' {
		d.i++
		return m, true
	}
	base := len(d.keys)
	var folded map[string]struct{} // past 16 members, as fastStrict does: no quadratic scan
	for {
		kb, ok := d.key()
		if !ok {
			return nil, false
		}
		key := string(kb)
		if folded != nil {
			fk := foldKey(key)
			if _, dup := folded[fk]; dup {
				return nil, false
			}
			folded[fk] = struct{}{}
		} else {
			for _, k := range d.keys[base:] {
				if sameFold(k, key) {
					return nil, false
				}
			}
			d.keys = append(d.keys, key)
			if len(d.keys)-base > 16 {
				folded = make(map[string]struct{}, 2*(len(d.keys)-base))
				for _, k := range d.keys[base:] {
					folded[foldKey(k)] = struct{}{}
				}
			}
		}
		if !d.colon() {
			return nil, false
		}
		val, ok := d.free(depth + 1)
		if !ok {
			return nil, false
		}
		m[key] = val
		more, ok := d.next('}')
		if !ok {
			return nil, false
		}
		if !more {
			d.keys = d.keys[:base]
			return m, true
		}
	}
}

// freeArray reads [...] as a []any (never nil, as encoding/json makes it); d.b[d.i] is '['.
func (d *directDecoder) freeArray(depth int) (any, bool) {
	d.i++
	d.space()
	if d.i < len(d.b) && d.b[d.i] == ']' {
		d.i++
		return []any{}, true
	}
	base := len(d.vals)
	for {
		val, ok := d.free(depth + 1)
		if !ok {
			return nil, false
		}
		d.vals = append(d.vals, val)
		more, ok := d.next(']')
		if !ok {
			return nil, false
		}
		if !more {
			a := make([]any, len(d.vals)-base)
			copy(a, d.vals[base:])
			clear(d.vals[base:]) // the scratch must not keep values alive
			d.vals = d.vals[:base]
			return a, true
		}
	}
}

// sameFold reports foldKey(a) == foldKey(b) without building either for ASCII names.
func sameFold(a, b string) bool {
	if isASCII(a) && isASCII(b) {
		if len(a) != len(b) {
			return false
		}
		for i := 0; i < len(a); i++ {
			if upperASCII(a[i]) != upperASCII(b[i]) {
				return false
			}
		}
		return true
	}
	return foldKey(a) == foldKey(b)
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			return false
		}
	}
	return true
}

func upperASCII(c byte) byte {
	if c >= 'a' && c <= 'z' {
		return c - 'a' + 'A'
	}
	return c
}

// str reads a string value, checked as fastScanner.str checks it and unescaped as encoding/json
// unescapes it (unquoteBytes): a lone or broken surrogate escape becomes U+FFFD.
func (d *directDecoder) str() (string, bool) {
	start := d.i + 1
	j := start
	for ; j < len(d.b); j++ {
		c := d.b[j]
		if c == '"' {
			d.i = j + 1
			return string(d.b[start:j]), true
		}
		if c == '\\' {
			break
		}
		if c < 0x20 {
			return "", false
		}
	}
	out := make([]byte, j-start, j-start+16)
	copy(out, d.b[start:j])
	for j < len(d.b) {
		c := d.b[j]
		switch {
		case c == '"':
			d.i = j + 1
			return string(out), true
		case c < 0x20:
			return "", false
		case c != '\\':
			out = append(out, c)
			j++
			continue
		}
		if j+1 >= len(d.b) {
			return "", false
		}
		switch e := d.b[j+1]; e {
		case '"', '\\', '/':
			out = append(out, e)
		case 'b':
			out = append(out, '\b')
		case 'f':
			out = append(out, '\f')
		case 'n':
			out = append(out, '\n')
		case 'r':
			out = append(out, '\r')
		case 't':
			out = append(out, '\t')
		case 'u':
			r := hex4(d.b[j:])
			if r < 0 {
				return "", false
			}
			j += 6
			if utf16.IsSurrogate(r) {
				if r2 := hex4(d.b[j:]); r2 >= 0 {
					if dec := utf16.DecodeRune(r, r2); dec != utf8.RuneError {
						out = utf8.AppendRune(out, dec)
						j += 6
						continue
					}
				}
				r = utf8.RuneError
			}
			out = utf8.AppendRune(out, r)
			continue
		default:
			return "", false
		}
		j += 2
	}
	return "", false
}

// hex4 is encoding/json's getu4: the rune of `\uXXXX` at the start of s, or -1.
func hex4(s []byte) rune {
	if len(s) < 6 || s[0] != '\\' || s[1] != 'u' {
		return -1
	}
	var r rune
	for _, c := range s[2:6] {
		switch {
		case '0' <= c && c <= '9':
			c -= '0'
		case 'a' <= c && c <= 'f':
			c = c - 'a' + 10
		case 'A' <= c && c <= 'F':
			c = c - 'A' + 10
		default:
			return -1
		}
		r = r*16 + rune(c)
	}
	return r
}
