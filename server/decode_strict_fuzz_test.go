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

// FuzzFastStrictAgrees holds the fast path to the walker: a body the fast path accepts, for a
// native request's shape and for a free-form value, the walker accepts too. Seeds are shared
// with FuzzStrictDecode (testdata/fuzz/FuzzFastStrictAgrees).
func FuzzFastStrictAgrees(f *testing.F) {
	for _, seed := range fastSeeds {
		f.Add([]byte(seed))
	}
	native := shapeOf(reflect.TypeOf(&authorizeRequest{}))
	f.Fuzz(func(t *testing.T, body []byte) {
		if !utf8.Valid(body) {
			return
		}
		for _, sh := range []*shape{nil, native} {
			if fastStrict(body, sh) {
				if _, err := strictValue(body, sh); err != nil {
					t.Fatalf("the fast path accepted what the walker refuses (%v): %q", err, body)
				}
			}
		}
	})
}

// fastSeeds cover each rule the fast path checks, on both sides of it.
var fastSeeds = []string{
	`{"agent":{"id":"a"},"tool":{"name":"t","server":"s","arguments":{"x":[1,2.5,-3e2,{"y":null}],"z":"\u00e9\n"}}}`,
	`{"tool":{"name":"a"},"TOOL":{"name":"b"}}`,
	`{"tool":{"name":"a","name":"b"}}`,
	`{"tool":{"arguments":{"k":1,"K":2}}}`,
	`{"tool":{"arguments":{"k":1,"\u212a":2}}}`,
	`{"resources":{}}`,
	`{"tool":{"arguments":{"n":1e400}}}`,
	`{"tool":{"arguments":{"n":1e-400}}}`,
	`{"tool":{"arguments":{"n":-0.0e+00}}}`,
	`{"a\u0062":1}`,
	`{"tool":{"name":"t"}} x`,
	`{"tool":{"name":"t",}}`,
	`[` + strings.Repeat(`[`, 63) + strings.Repeat(`]`, 63) + `]`,
	`[` + strings.Repeat(`[`, 64) + strings.Repeat(`]`, 64) + `]`,
	`"str"`, `true`, `null`, `01`, `-`, `1.`, `{"a":"\x"}`, `{"a":"` + "\x01" + `"}`,
}

func TestFastStrictSeeds(t *testing.T) {
	native := shapeOf(reflect.TypeOf(&authorizeRequest{}))
	for _, seed := range fastSeeds {
		for _, sh := range []*shape{nil, native} {
			if fastStrict([]byte(seed), sh) {
				if _, err := strictValue([]byte(seed), sh); err != nil {
					t.Errorf("fast path accepted %q, the walker refuses it: %v", seed, err)
				}
			}
		}
	}
	// The fast path must take the common body, or it buys nothing.
	if !fastStrict([]byte(fastSeeds[0]), native) {
		t.Error("the fast path refused a plain native body")
	}
}
