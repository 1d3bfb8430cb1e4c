package server

import (
	"bytes"
	"encoding/json"
	"io"
	"reflect"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/google/go-cmp/cmp"
)

// TestDecodeAuthorizeAllocs guards the direct path on the load test's distinct bodies: checked
// by the fast scan and then decoded again by encoding/json, one took 121 allocations (about
// 4 KB); decoded in the one pass, far fewer. A field the direct path has no plan for, added to
// a native request, sends every body back to the old path and fails this.
func TestDecodeAuthorizeAllocs(t *testing.T) {
	for _, bb := range decodeBenchBodies {
		t.Run(bb.name, func(t *testing.T) {
			body := []byte(bb.body)
			if _, err := decodeAuthorize(body); err != nil {
				t.Fatal(err)
			}
			var req authorizeRequest
			if !decodeDirect(body, &req) {
				t.Fatal("the direct path refused the body")
			}
			allocs := testing.AllocsPerRun(50, func() { _, _ = decodeAuthorize(body) })
			if limit := 60.0; allocs > limit {
				t.Errorf("decodeAuthorize: %.0f allocations, want at most %.0f", allocs, limit)
			}
		})
	}
}

// directProbe has a field of each kind the direct path plans for, and some it leaves to
// encoding/json, so that the fuzz target reaches both.
type directProbe struct {
	ID      string            `json:"id"`
	IDUpper string            `json:"ID"` // folds like "id": one object may not name both
	Small   int8              `json:"small"`
	Big     int64             `json:"big"`
	Flag    bool              `json:"flag"`
	PP      **string          `json:"pp"`
	Named   probeName         `json:"named"`
	Any     any               `json:"any"`
	Map     map[string]any    `json:"map"`
	Nested  *directProbe      `json:"nested"`
	Plain   string            // no tag: its Go name
	Skipped string            `json:"-"`
	Num     json.Number       `json:"num"`  // no plan
	When    *time.Time        `json:"when"` // no plan: an unmarshaler
	List    []string          `json:"list"` // no plan
	Strs    map[string]string `json:"strs"` // no plan
	hidden  string
}

type probeName string

// directEmbedded has an embedded struct, whose promoted names the direct path leaves alone.
type directEmbedded struct {
	entityBody
	Extra string `json:"extra"`
}

// directQuoted has a ",string" field, whose struct the direct path leaves alone.
type directQuoted struct {
	Quoted int64  `json:"q,string"`
	Extra  string `json:"extra"`
}

func TestDirectDecode(t *testing.T) {
	tests := []struct {
		name   string
		body   string
		direct bool // taken by the direct path
	}{
		{"native", designRequest, true},
		{"null members", `{"agent":null,"user":null,"tool":{"name":null,"arguments":null},"context":null,"task":{"attempt":null}}`, true},
		{"escapes", `{"agent":{"id":"a\"\\\/\b\f\n\r\t\u0000\u00e9"},"tool":{"name":"\ud83d\ude00"}}`, true},
		{"lone surrogates", `{"agent":{"id":"\ud800x\udc00\ud800\u0041\ud800\ud800"},"tool":{"name":"t"}}`, true},
		{"free-form values", `{"agent":{"id":"a"},"tool":{"name":"t","arguments":{"a":[],"b":{},"c":[1,-0.5e+3,true,false,null,"s",[{}]],"K":1,"\u212a":2}}}`, false},
		{"escaped key", `{"agent":{"id":"a"},"tool":{"name":"t","arguments":{"\u0061":1}}}`, false},
		{"case-folded free-form keys", `{"agent":{"id":"a"},"tool":{"name":"t","arguments":{"k":1,"K":2}}}`, false},
		{"kelvin sign", `{"agent":{"id":"a"},"tool":{"name":"t","arguments":{"k":1,"\u212a":2}}}`, false},
		{"case-folded member", `{"agent":{"id":"a"},"Tool":{"name":"t"}}`, false},
		{"duplicate member", `{"agent":{"id":"a"},"agent":{"id":"b"},"tool":{"name":"t"}}`, false},
		{"unknown member", `{"agent":{"id":"a"},"tool":{"name":"t"},"resources":{}}`, false},
		{"wrong type", `{"agent":{"id":"a"},"tool":{"name":"t"},"task":{"attempt":"1"}}`, false},
		{"fraction into an integer", `{"agent":{"id":"a"},"tool":{"name":"t"},"task":{"attempt":1.5}}`, false},
		{"integer overflow", `{"agent":{"id":"a"},"tool":{"name":"t"},"task":{"attempt":9223372036854775808}}`, false},
		{"big number", `{"agent":{"id":"a"},"tool":{"name":"t","arguments":{"n":1e400}}}`, false},
		{"long number", `{"agent":{"id":"a"},"tool":{"name":"t","arguments":{"n":123456789012345678901234567890}}}`, true},
		{"deep", minimal(`"context":{"a":` + strings.Repeat("[", 62) + strings.Repeat("]", 62) + "}"), true},
		{"too deep", minimal(`"context":{"a":` + strings.Repeat("[", 63) + strings.Repeat("]", 63) + "}"), false},
		{"trailing data", minimal("") + " {}", false},
		{"not an object", `[1]`, false},
		{"top-level null", `null`, true},
		{"invalid UTF-8", minimal(`"context":{"a":"` + "\xff" + `"}`), false},
		{"control character", minimal(`"context":{"a":"` + "\x01" + `"}`), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			body := []byte(tt.body)
			var direct authorizeRequest
			if got := utf8.Valid(body) && decodeDirect(body, &direct); got != tt.direct {
				t.Errorf("direct path taken: %v, want %v", got, tt.direct)
			}
			if !tt.direct && !reflect.DeepEqual(direct, authorizeRequest{}) {
				t.Errorf("the direct path left %+v behind", direct)
			}
			directAgrees[authorizeRequest](t, body)
			directAgrees[any](t, body)
		})
	}
}

// directAgrees asserts that decodeJSON and decodeJSONSlow (the path before the direct one)
// decode body into a T alike, error for error, and that what the direct path accepts,
// encoding/json decodes to the same value and fastStrict accepts.
func directAgrees[T any](t *testing.T, body []byte) {
	t.Helper()
	var got, want T
	gotErr := decodeJSON(body, &got)
	wantErr := decodeJSONSlow(body, &want)
	if diff := cmp.Diff(wantErr, gotErr, cmp.AllowUnexported(apiError{})); diff != "" {
		t.Fatalf("%T: errors differ from the old path (-old +new):\n%s\nbody: %q", got, diff, body)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("%T: values differ from the old path:\nnew: %#v\nold: %#v\nbody: %q", got, got, want, body)
	}
	var direct T
	if !utf8.Valid(body) || !decodeDirect(body, &direct) {
		return
	}
	if !fastStrict(body, shapeOf(reflect.TypeOf(&direct))) {
		t.Fatalf("%T: the direct path accepted what fastStrict refuses: %q", direct, body)
	}
	var ref T
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	if err := dec.Decode(&ref); err != nil {
		t.Fatalf("%T: the direct path accepted what encoding/json refuses (%v): %q", direct, err, body)
	}
	if _, err := dec.Token(); err != io.EOF {
		t.Fatalf("%T: the direct path accepted trailing data: %q", direct, body)
	}
	if !reflect.DeepEqual(direct, ref) {
		t.Fatalf("%T: the direct path and encoding/json disagree:\ndirect: %#v\njson:   %#v\nbody: %q", direct, direct, ref, body)
	}
}

// FuzzDirectDecode is the differential test of the direct path: for any body and each target
// type (the request types, a free-form value, and probes with fields of every kind), decodeJSON
// answers exactly as the old path does, and what the direct path accepts encoding/json decodes
// to a deep-equal value. Seeds are in testdata/fuzz/FuzzDirectDecode.
func FuzzDirectDecode(f *testing.F) {
	for _, seed := range fastSeeds {
		f.Add([]byte(seed))
	}
	for _, bb := range decodeBenchBodies {
		f.Add([]byte(bb.body))
	}
	f.Add([]byte(`{"id":"a","small":127,"big":-9223372036854775808,"flag":true,"pp":"x","named":"n","any":{"a":[1]},"map":{"b":null},"nested":{"ID":"b","nested":null},"Plain":"p"}`))
	f.Add([]byte(`{"id":"a","ID":"b"}`))
	f.Add([]byte(`{"small":128}`))
	f.Add([]byte(`{"num":"12","when":"2024-01-01T00:00:00Z","list":["a"],"q":"5","strs":{"a":"b"}}`))
	f.Add([]byte(`{"type":"t","id":"i","extra":"e"}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		directAgrees[authorizeRequest](t, body)
		directAgrees[any](t, body)
		directAgrees[executionRequest](t, body)
		directAgrees[unsealRequest](t, body)
		directAgrees[directProbe](t, body)
		directAgrees[directEmbedded](t, body)
		directAgrees[directQuoted](t, body)
	})
}

// TestDirectProbeTakesTheDirectPath: the probe types reach the direct path (or, for those with
// rules it leaves alone, never do), so that the fuzz target tests both.
func TestDirectProbeTakesTheDirectPath(t *testing.T) {
	tests := []struct {
		name   string
		decode func([]byte) bool
		body   string
		direct bool
	}{
		{"probe", func(b []byte) bool { var v directProbe; return decodeDirect(b, &v) }, `{"id":"a","small":127,"big":-9223372036854775808,"flag":true,"pp":"x","named":"n","any":{"a":[1]},"map":{"b":null},"nested":{"ID":"b","nested":null},"Plain":"p"}`, true},
		{"probe, both fold-alike names", func(b []byte) bool { var v directProbe; return decodeDirect(b, &v) }, `{"id":"a","ID":"b"}`, false},
		{"probe, int8 overflow", func(b []byte) bool { var v directProbe; return decodeDirect(b, &v) }, `{"small":128}`, false},
		{"probe, unplanned field", func(b []byte) bool { var v directProbe; return decodeDirect(b, &v) }, `{"when":"2024-01-01T00:00:00Z"}`, false},
		{"embedded", func(b []byte) bool { var v directEmbedded; return decodeDirect(b, &v) }, `{"extra":"e"}`, false},
		{"quoted", func(b []byte) bool { var v directQuoted; return decodeDirect(b, &v) }, `{"extra":"e"}`, false},
		{"unseal", func(b []byte) bool { var v unsealRequest; return decodeDirect(b, &v) }, `{"decision_id":"d","reason":"r"}`, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.decode([]byte(tt.body)); got != tt.direct {
				t.Errorf("direct path taken: %v, want %v", got, tt.direct)
			}
			directAgrees[directProbe](t, []byte(tt.body))
		})
	}
}
