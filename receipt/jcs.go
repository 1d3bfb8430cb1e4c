package receipt

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
	"unicode/utf16"
	"unicode/utf8"
)

// The RFC 8785 JSON Canonicalization Scheme (JCS): one byte sequence for one JSON value, so that
// custody and a downstream system hash the same tool arguments to the same digest whatever
// their JSON encoders do with key order, whitespace, escapes and number spelling.

// maxCanonicalDepth bounds nesting, as the strict request decoders do: deeper values are no tool
// call's arguments and would only cost stack.
const maxCanonicalDepth = 64

// ArgumentsSHA256 is the hex SHA-256 of the RFC 8785 canonical JSON of a tool call's arguments,
// the receipt's arguments_sha256. nil arguments are {}, as custody's policy input has them.
func ArgumentsSHA256(args map[string]any) (string, error) {
	var v any = args
	if args == nil {
		v = map[string]any{}
	}
	b, err := Canonicalize(v)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:]), nil
}

// Canonicalize returns the RFC 8785 canonical JSON of v, a value as encoding/json decodes JSON
// into an any (map[string]any, []any, string, float64 or json.Number, bool, nil; Go integer
// types are accepted too). Numbers are IEEE 754 doubles, as the RFC requires: an integer beyond
// 2^53 is rounded, as a JavaScript verifier would. NaN and infinities are an error.
func Canonicalize(v any) ([]byte, error) {
	var buf bytes.Buffer
	if err := appendCanonical(&buf, v, 0); err != nil {
		return nil, fmt.Errorf("receipt: canonicalize: %w", err)
	}
	return buf.Bytes(), nil
}

// CanonicalizeJSON returns the RFC 8785 canonical form of the JSON text raw. Duplicate object
// names are an error (RFC 8785 takes I-JSON, RFC 7493, which forbids them): two parsers that
// resolve them differently would hash different calls alike.
func CanonicalizeJSON(raw []byte) ([]byte, error) {
	v, err := parseStrict(raw)
	if err != nil {
		return nil, fmt.Errorf("receipt: canonicalize: %w", err)
	}
	return Canonicalize(v)
}

func appendCanonical(buf *bytes.Buffer, v any, depth int) error {
	if depth > maxCanonicalDepth {
		return fmt.Errorf("nested deeper than %d", maxCanonicalDepth)
	}
	switch x := v.(type) {
	case nil:
		buf.WriteString("null")
	case bool:
		if x {
			buf.WriteString("true")
		} else {
			buf.WriteString("false")
		}
	case string:
		return appendString(buf, x)
	case float64:
		return appendNumber(buf, x)
	case float32:
		return appendNumber(buf, float64(x))
	case json.Number:
		f, err := strconv.ParseFloat(string(x), 64)
		if err != nil {
			return fmt.Errorf("number %q: %w", string(x), err)
		}
		return appendNumber(buf, f)
	case int:
		return appendNumber(buf, float64(x))
	case int64:
		return appendNumber(buf, float64(x))
	case int32:
		return appendNumber(buf, float64(x))
	case uint64:
		return appendNumber(buf, float64(x))
	case []any:
		buf.WriteByte('[')
		for i, e := range x {
			if i > 0 {
				buf.WriteByte(',')
			}
			if err := appendCanonical(buf, e, depth+1); err != nil {
				return err
			}
		}
		buf.WriteByte(']')
	case map[string]any:
		keys := make([]string, 0, len(x))
		for k := range x {
			if !utf8.ValidString(k) {
				return errors.New("object name is not UTF-8")
			}
			keys = append(keys, k)
		}
		// RFC 8785 section 3.2.3: names sorted by their UTF-16 code units, not by UTF-8 bytes
		// (the two orders differ above U+FFFF).
		slices.SortFunc(keys, compareUTF16)
		buf.WriteByte('{')
		for i, k := range keys {
			if i > 0 {
				buf.WriteByte(',')
			}
			if err := appendString(buf, k); err != nil {
				return err
			}
			buf.WriteByte(':')
			if err := appendCanonical(buf, x[k], depth+1); err != nil {
				return err
			}
		}
		buf.WriteByte('}')
	default:
		return fmt.Errorf("unsupported type %T", v)
	}
	return nil
}

func compareUTF16(a, b string) int {
	ua, ub := utf16.Encode([]rune(a)), utf16.Encode([]rune(b))
	return slices.Compare(ua, ub)
}

// appendString writes s as RFC 8785 section 3.2.2.2 does (ECMAScript JSON.stringify): only
// '"', '\\' and the controls below U+0020 are escaped, with the short forms where they exist
// and lower-case \u00xx otherwise; everything else, U+2028 and '<' included, is literal.
func appendString(buf *bytes.Buffer, s string) error {
	if !utf8.ValidString(s) {
		return errors.New("string is not UTF-8")
	}
	const hexDigits = "0123456789abcdef"
	buf.WriteByte('"')
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '"':
			buf.WriteString(`\"`)
		case c == '\\':
			buf.WriteString(`\\`)
		case c == '\b':
			buf.WriteString(`\b`)
		case c == '\f':
			buf.WriteString(`\f`)
		case c == '\n':
			buf.WriteString(`\n`)
		case c == '\r':
			buf.WriteString(`\r`)
		case c == '\t':
			buf.WriteString(`\t`)
		case c < 0x20:
			buf.WriteString(`\u00`)
			buf.WriteByte(hexDigits[c>>4])
			buf.WriteByte(hexDigits[c&0xf])
		default:
			buf.WriteByte(c)
		}
	}
	buf.WriteByte('"')
	return nil
}

// appendNumber writes f as ECMAScript's Number.prototype.toString does (RFC 8785 section
// 3.2.2.3): the shortest digits that round-trip, in plain notation for exponents in [-7, 21)
// and in exponent notation (e+N / e-N) outside.
func appendNumber(buf *bytes.Buffer, f float64) error {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return errors.New("number is not finite")
	}
	if f == 0 { // -0 too
		buf.WriteByte('0')
		return nil
	}
	if f < 0 {
		buf.WriteByte('-')
		f = -f
	}
	// Go's shortest 'e' formatting yields the same digits as ECMAScript's algorithm: both are the
	// shortest that round-trip, and both pick the closest to f among those.
	s := strconv.FormatFloat(f, 'e', -1, 64) // d.ddddde±XX
	mant, expStr, _ := strings.Cut(s, "e")
	digits := strings.Replace(mant, ".", "", 1)
	exp, err := strconv.Atoi(expStr)
	if err != nil {
		return fmt.Errorf("number %v: %w", f, err)
	}
	k, n := len(digits), exp+1 // f = 0.digits * 10^n
	switch {
	case k <= n && n <= 21:
		buf.WriteString(digits)
		buf.WriteString(strings.Repeat("0", n-k))
	case 0 < n && n <= 21:
		buf.WriteString(digits[:n])
		buf.WriteByte('.')
		buf.WriteString(digits[n:])
	case -6 < n && n <= 0:
		buf.WriteString("0.")
		buf.WriteString(strings.Repeat("0", -n))
		buf.WriteString(digits)
	default:
		buf.WriteByte(digits[0])
		if k > 1 {
			buf.WriteByte('.')
			buf.WriteString(digits[1:])
		}
		buf.WriteByte('e')
		if n-1 >= 0 {
			buf.WriteByte('+')
		}
		buf.WriteString(strconv.Itoa(n - 1))
	}
	return nil
}

// parseStrict decodes one JSON value, refusing duplicate object names, nesting beyond
// maxCanonicalDepth and trailing data. Numbers stay json.Number until canonicalized.
func parseStrict(raw []byte) (any, error) {
	if !utf8.Valid(raw) {
		return nil, errors.New("not UTF-8")
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	v, err := parseValue(dec, 0)
	if err != nil {
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("data after the JSON value")
	}
	return v, nil
}

func parseValue(dec *json.Decoder, depth int) (any, error) {
	if depth > maxCanonicalDepth {
		return nil, fmt.Errorf("nested deeper than %d", maxCanonicalDepth)
	}
	tok, err := dec.Token()
	if err != nil {
		return nil, err
	}
	switch t := tok.(type) {
	case json.Delim:
		switch t {
		case '{':
			obj := map[string]any{}
			for dec.More() {
				kt, err := dec.Token()
				if err != nil {
					return nil, err
				}
				k, ok := kt.(string)
				if !ok {
					return nil, errors.New("object name is not a string")
				}
				if _, dup := obj[k]; dup {
					return nil, fmt.Errorf("duplicate object name %q", k)
				}
				v, err := parseValue(dec, depth+1)
				if err != nil {
					return nil, err
				}
				obj[k] = v
			}
			if _, err := dec.Token(); err != nil { // '}'
				return nil, err
			}
			return obj, nil
		case '[':
			arr := []any{}
			for dec.More() {
				v, err := parseValue(dec, depth+1)
				if err != nil {
					return nil, err
				}
				arr = append(arr, v)
			}
			if _, err := dec.Token(); err != nil { // ']'
				return nil, err
			}
			return arr, nil
		default:
			return nil, fmt.Errorf("unexpected %v", t)
		}
	default:
		return t, nil
	}
}
