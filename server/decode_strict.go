package server

import (
	"bytes"
	"encoding"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"unicode"
	"unicode/utf8"
)

// The strict decoder. Every body custody reads goes through decodeJSON, which walks the body
// once before anything is decoded and refuses what two JSON parsers may read differently:
//
//   - a member twice in one object (encoding/json keeps the last, others the first), or twice in
//     different case ("tool" and "TOOL": encoding/json matches struct fields case-insensitively
//     and merged the two field by field);
//   - in a native body (one decoded into a struct), a member the struct does not name exactly:
//     a typo such as "resources" was dropped in silence, and with it an ownership check;
//   - bytes that are not UTF-8 (encoding/json turns them into U+FFFD, others keep them);
//   - nesting deeper than MaxNestingDepth, and numbers that are not a finite float64 (1e400):
//     no tool call needs either, and either made records that verify, trace and correlate
//     could not read back.
//
// Free-form objects (properties, arguments, context) may hold any members, but never the same
// one twice. AuthZEN bodies decode into plain values, so only the rules that are not about
// unknown members apply to them, as the AuthZEN spec requires unknown members to be ignored.

// MaxNestingDepth bounds how deeply a body nests objects and arrays; the body itself is level 1.
const MaxNestingDepth = 64

// decodeJSON decodes one JSON value from body into v under the strict rules above, keeping
// numbers exact (json.Number). Errors name the field at fault. Most bodies are checked and
// decoded in one pass (decodeDirect); the others take decodeJSONSlow, the reference.
func decodeJSON(body []byte, v any) *apiError {
	if utf8.Valid(body) && decodeDirect(body, v) {
		return nil
	}
	return decodeJSONSlow(body, v)
}

// decodeJSONSlow is decodeJSON without the direct path: a *any receives the walked value
// itself; anything else is then decoded by encoding/json, which after the walk cannot read the
// body another way.
func decodeJSONSlow(body []byte, v any) *apiError {
	if len(bytes.TrimSpace(body)) == 0 {
		return errorf(CodeInvalidJSON, "request body is empty; want a JSON object")
	}
	sh := shapeOf(reflect.TypeOf(v))
	p, wantValue := v.(*any)
	// The fast path only says yes: a body it is unsure of, and every refusal, is walked.
	if wantValue || !utf8.Valid(body) || !fastStrict(body, sh) {
		val, aerr := strictValue(body, sh)
		if aerr != nil {
			return aerr
		}
		if wantValue {
			*p = val
			return nil
		}
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	if err := dec.Decode(v); err != nil {
		return jsonError(err)
	}
	return nil
}

// strictValue walks body, which must be exactly one JSON value, against sh (nil: free-form)
// and returns it as encoding/json would decode it into an any with UseNumber.
func strictValue(body []byte, sh *shape) (any, *apiError) {
	if !utf8.Valid(body) {
		return nil, errorf(CodeInvalidJSON, "malformed JSON: the body is not valid UTF-8")
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	w := &walker{dec: dec}
	tok, err := dec.Token()
	if err != nil {
		return nil, syntaxError(body, err)
	}
	v, aerr := w.value(tok, sh)
	if aerr == errSyntax {
		return nil, syntaxError(body, w.err)
	}
	if aerr != nil {
		return nil, aerr
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errorf(CodeInvalidJSON, "unexpected data after the JSON object")
	}
	return v, nil
}

// errSyntax stands, within the walk, for a syntax error kept in walker.err.
var errSyntax = &apiError{Code: CodeInvalidJSON}

// syntaxError explains a body the tokenizer refused with encoding/json's own message, which
// names the byte at fault: the tokenizer's errors do not always.
func syntaxError(body []byte, tokErr error) *apiError {
	var raw json.RawMessage
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(&raw); err != nil {
		return jsonError(err)
	}
	if tokErr == io.EOF {
		tokErr = io.ErrUnexpectedEOF
	}
	return jsonError(tokErr)
}

// shape is what the decoder knows of a value: for a struct, its members by exact JSON name
// (closed: no others are allowed); for an array or map, the shape of its elements. A nil shape
// is free-form.
type shape struct {
	closed bool
	fields map[string]*shape
	elem   *shape
}

var shapes sync.Map // reflect.Type -> *shape

// shapeOf derives the shape of values decoded into t from its json tags, so that a field added
// to a request struct is known to the decoder without being listed twice.
func shapeOf(t reflect.Type) *shape {
	if t == nil {
		return nil
	}
	if sh, ok := shapes.Load(t); ok {
		return sh.(*shape)
	}
	sh := buildShape(t, map[reflect.Type]*shape{})
	shapes.Store(t, sh)
	return sh
}

var (
	jsonUnmarshaler = reflect.TypeFor[json.Unmarshaler]()
	textUnmarshaler = reflect.TypeFor[encoding.TextUnmarshaler]()
)

func buildShape(t reflect.Type, seen map[reflect.Type]*shape) *shape {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if sh, ok := seen[t]; ok {
		return sh
	}
	pt := reflect.PointerTo(t)
	if pt.Implements(jsonUnmarshaler) || pt.Implements(textUnmarshaler) {
		return nil // decodes itself (time.Time): encoding/json's rules are its own
	}
	switch t.Kind() {
	case reflect.Struct:
		sh := &shape{closed: true, fields: map[string]*shape{}}
		seen[t] = sh
		addFields(sh, t, seen)
		return sh
	case reflect.Map, reflect.Slice, reflect.Array:
		elem := buildShape(t.Elem(), seen)
		if elem == nil {
			return nil
		}
		return &shape{elem: elem}
	default:
		return nil
	}
}

func addFields(sh *shape, t reflect.Type, seen map[reflect.Type]*shape) {
	for i := range t.NumField() {
		f := t.Field(i)
		tag := f.Tag.Get("json")
		if tag == "-" {
			continue
		}
		name, _, _ := strings.Cut(tag, ",")
		if f.Anonymous && name == "" {
			ft := f.Type
			if ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			if ft.Kind() == reflect.Struct {
				addFields(sh, ft, seen) // promoted, as encoding/json does
				continue
			}
		}
		if !f.IsExported() {
			continue
		}
		if name == "" {
			name = f.Name
		}
		sh.fields[name] = buildShape(f.Type, seen)
	}
}

// walker reads one value token by token, keeping the path for errors.
type walker struct {
	dec   *json.Decoder
	err   error // the syntax error behind errSyntax
	depth int
	path  []pathSeg
}

type pathSeg struct {
	key   string
	index int // -1 for an object member
}

// at renders the path, with key appended when not "": a.b[2].c.
func (w *walker) at(key string) string {
	var b strings.Builder
	for _, s := range w.path {
		if s.index >= 0 {
			fmt.Fprintf(&b, "[%d]", s.index)
			continue
		}
		if b.Len() > 0 {
			b.WriteByte('.')
		}
		b.WriteString(s.key)
	}
	if key != "" {
		if b.Len() > 0 {
			b.WriteByte('.')
		}
		b.WriteString(key)
	}
	return b.String()
}

func (w *walker) syntax(err error) *apiError {
	w.err = err
	return errSyntax
}

func (w *walker) fail(code, field, msg string) *apiError {
	e := errorf(code, msg)
	e.Field = truncate(field, 256)
	return e
}

func (w *walker) value(tok json.Token, sh *shape) (any, *apiError) {
	switch t := tok.(type) {
	case json.Delim:
		w.depth++
		if w.depth > MaxNestingDepth {
			field := w.at("")
			return nil, w.fail(CodeNestingTooDeep, field, fmt.Sprintf("%s: nested deeper than %d levels", orBody(field), MaxNestingDepth))
		}
		defer func() { w.depth-- }()
		if t == '{' {
			return w.object(sh)
		}
		return w.array(sh)
	case json.Number:
		if f, err := strconv.ParseFloat(string(t), 64); err != nil || math.IsInf(f, 0) {
			field := w.at("")
			return nil, w.fail(CodeNumberOutOfRange, field, fmt.Sprintf("%s: %s is not a finite 64-bit floating-point number", orBody(field), truncate(string(t), 32)))
		}
		return t, nil
	default: // string, bool, nil
		return t, nil
	}
}

func (w *walker) object(sh *shape) (any, *apiError) {
	m := map[string]any{}
	var folded map[string]string // folded name -> name as first sent
	for w.dec.More() {
		tok, err := w.dec.Token()
		if err != nil {
			return nil, w.syntax(err)
		}
		key := tok.(string) // json.Decoder only yields a string here
		if sh != nil && sh.closed {
			if _, ok := sh.fields[key]; !ok {
				return nil, w.unknown(sh, key)
			}
		}
		if _, dup := m[key]; dup {
			field := w.at(key)
			return nil, w.fail(CodeDuplicateField, field, field+": sent twice; a member may appear once")
		}
		fk := foldKey(key)
		if first, dup := folded[fk]; dup {
			field := w.at(key)
			return nil, w.fail(CodeDuplicateField, field, fmt.Sprintf("%s: sent twice, as %q and %q; names that differ only in case are the same member to some parsers", field, truncate(first, 64), truncate(key, 64)))
		}
		if folded == nil {
			folded = map[string]string{}
		}
		folded[fk] = key
		var member *shape
		if sh != nil {
			if sh.closed {
				member = sh.fields[key]
			} else {
				member = sh.elem
			}
		}
		if tok, err = w.dec.Token(); err != nil {
			return nil, w.syntax(err)
		}
		w.path = append(w.path, pathSeg{key: key, index: -1})
		v, aerr := w.value(tok, member)
		w.path = w.path[:len(w.path)-1]
		if aerr != nil {
			return nil, aerr
		}
		m[key] = v
	}
	if _, err := w.dec.Token(); err != nil { // '}'
		return nil, w.syntax(err)
	}
	return m, nil
}

func (w *walker) unknown(sh *shape, key string) *apiError {
	field := w.at(key)
	msg := field + ": unknown field"
	hint := ""
	for name := range sh.fields { // the least such name: map order must not change the message
		if strings.EqualFold(name, key) && (hint == "" || name < hint) {
			hint = name
		}
	}
	if hint != "" {
		msg += fmt.Sprintf(" (names are case-exact: %q)", hint)
	}
	return w.fail(CodeUnknownField, field, truncate(msg, 512))
}

func (w *walker) array(sh *shape) (any, *apiError) {
	a := []any{}
	var elem *shape
	if sh != nil && !sh.closed {
		elem = sh.elem
	}
	for i := 0; w.dec.More(); i++ {
		tok, err := w.dec.Token()
		if err != nil {
			return nil, w.syntax(err)
		}
		w.path = append(w.path, pathSeg{index: i})
		v, aerr := w.value(tok, elem)
		w.path = w.path[:len(w.path)-1]
		if aerr != nil {
			return nil, aerr
		}
		a = append(a, v)
	}
	if _, err := w.dec.Token(); err != nil { // ']'
		return nil, w.syntax(err)
	}
	return a, nil
}

// foldKey maps every name that encoding/json would match case-insensitively (bytes.EqualFold,
// Unicode simple folding: "K", "k" and the Kelvin sign) to one string.
func foldKey(s string) string {
	ascii := true
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			ascii = false
			break
		}
	}
	if ascii {
		return strings.ToUpper(s) // the least rune of an ASCII letter's orbit is its upper case
	}
	var b strings.Builder
	for _, r := range s {
		least := r
		for f := unicode.SimpleFold(r); f != r; f = unicode.SimpleFold(f) {
			least = min(least, f)
		}
		b.WriteRune(least)
	}
	return b.String()
}

func orBody(field string) string {
	if field == "" {
		return "body"
	}
	return field
}
