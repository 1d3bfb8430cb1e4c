package server

import (
	"bytes"
	"encoding/json"
	"io"
	"math"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"
)

// strictCodes are the codes the strict decoder refuses valid JSON with.
var strictCodes = map[string]bool{CodeUnknownField: true, CodeDuplicateField: true, CodeNestingTooDeep: true, CodeNumberOutOfRange: true}

// nativeNames are the members of a native request, listed by hand so that the fuzz target does
// not trust the decoder's own reflection.
var nativeNames = map[string]bool{"correlation_id": true, "agent": true, "user": true, "tool": true, "resource": true, "task": true, "context": true}

// FuzzStrictDecode is a differential test of the strict decoder against encoding/json: whatever
// it accepts, encoding/json accepts too and decodes to the same value; that value has no member
// twice (in any case), no number beyond float64 and no nesting beyond MaxNestingDepth; and what
// it refuses that encoding/json accepts is refused with a strictness code or as invalid UTF-8.
// Decoded as a native request, an accepted body names only native members, exactly. Seeds are
// in testdata/fuzz/FuzzStrictDecode.
func FuzzStrictDecode(f *testing.F) {
	f.Fuzz(func(t *testing.T, body []byte) {
		got, err := strictValue(body, nil)
		var want any
		dec := json.NewDecoder(bytes.NewReader(body))
		dec.UseNumber()
		refErr := dec.Decode(&want)
		if refErr == nil {
			if _, e := dec.Token(); e != io.EOF {
				refErr = io.ErrUnexpectedEOF // trailing data: refused by both
			}
		}
		if err == nil {
			if refErr != nil {
				t.Fatalf("strict accepted a body encoding/json refuses (%v): %q", refErr, body)
			}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("strict and encoding/json disagree:\nstrict: %#v\njson:   %#v", got, want)
			}
			checkStrictValue(t, want, 1)
		} else {
			if strings.TrimSpace(err.Message) == "" {
				t.Fatalf("error %q without a message", err.Code)
			}
			if refErr == nil && !strictCodes[err.Code] && !(err.Code == CodeInvalidJSON && !utf8.Valid(body)) {
				t.Fatalf("strict refused valid JSON with %v: %q", err, body)
			}
		}

		var req authorizeRequest
		if decodeJSON(body, &req) == nil {
			if err != nil {
				t.Fatalf("accepted as a native request but not as a value: %v", err)
			}
			if m, ok := got.(map[string]any); ok {
				for k := range m {
					if !nativeNames[k] {
						t.Fatalf("native request accepted with member %q", k)
					}
				}
			}
		}
	})
}

// checkStrictValue asserts the strict rules of v at nesting level depth.
func checkStrictValue(t *testing.T, v any, depth int) {
	t.Helper()
	switch v := v.(type) {
	case map[string]any:
		if depth > MaxNestingDepth {
			t.Fatalf("accepted nesting of %d levels", depth)
		}
		folded := map[string]bool{}
		for k, e := range v {
			if folded[foldKey(k)] {
				t.Fatalf("accepted %q with a case variant", k)
			}
			folded[foldKey(k)] = true
			checkStrictValue(t, e, depth+1)
		}
	case []any:
		if depth > MaxNestingDepth {
			t.Fatalf("accepted nesting of %d levels", depth)
		}
		for _, e := range v {
			checkStrictValue(t, e, depth+1)
		}
	case json.Number:
		if f, err := strconv.ParseFloat(string(v), 64); err != nil || math.IsInf(f, 0) {
			t.Fatalf("accepted number %s", v)
		}
	}
}

// TestFoldKeyMatchesEqualFold: two names fold alike exactly when encoding/json would match them
// to one field (bytes.EqualFold).
func TestFoldKeyMatchesEqualFold(t *testing.T) {
	names := []string{"tool", "TOOL", "Tool", "k", "K", "\u212a", "s", "S", "\u017f", "ß", "ẞ", "σ", "ς", "Σ", "", "a_b", "A_B", "ǅ", "ǆ", "Ǆ"}
	for _, a := range names {
		for _, b := range names {
			if got, want := foldKey(a) == foldKey(b), bytes.EqualFold([]byte(a), []byte(b)); got != want {
				t.Errorf("foldKey(%q) == foldKey(%q) is %v, bytes.EqualFold is %v", a, b, got, want)
			}
		}
	}
}
