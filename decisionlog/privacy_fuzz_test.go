package decisionlog

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strings"
	"testing"
)

// FuzzMasking: key and value classification never panics, masking a string gives back either it
// or Masked, and whatever is masked stays masked under any key.
func FuzzMasking(f *testing.F) {
	f.Add("api.key", "Bearer 0a1b2c3d4e5f6a7b")
	f.Add("pinned", "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhbGljZSJ9.")
	f.Add("userPIN", "sk-proj-4Kp9xQ2mZ7vL1nR8tY3wB6cJ")
	f.Add("\xff\xfeAUTH", "-----BEGIN PRIVATE KEY-----")
	f.Add("dſn", "")
	f.Add("x_DSN.creds", "")
	f.Add("myPassWordHint", "")
	f.Add(strings.Repeat("a", 120)+"tokenization", "")
	f.Fuzz(func(t *testing.T, key, value string) {
		if got, want := SensitiveKey(key), sensitiveKeyReference(key); got != want {
			t.Fatalf("SensitiveKey(%q) = %v, the reference says %v", key, got, want)
		}
		got := MaskValue(value)
		if got != value && got != Masked {
			t.Fatalf("MaskValue(%q) = %q", value, got)
		}
		if got == Masked {
			m := MaskMap(map[string]any{strings.ToLower(key): value, "x": []any{value}})
			if m["x"].([]any)[0] != Masked {
				t.Fatalf("masked value %q escaped inside a list", value)
			}
		}
	})
}

// FuzzMaskMapShared holds MaskMapShared to MaskMap on any JSON object: the same value, spelled
// alike, the input untouched, and the input handed back only when MaskMap would mask nothing.
func FuzzMaskMapShared(f *testing.F) {
	f.Add([]byte(`{"to":"bob","n":1.5,"l":["a",{"b":[]}],"o":{}}`))
	f.Add([]byte(`{"a":[{"b":{"Set-Cookie":"x"}}],"api_key":"k"}`))
	f.Add([]byte(`{"note":"Bearer 0a1b2c3d4e5f6a7b","x":[["eyJhbGciOiJub25lIn0.eyJzdWIiOiJhbGljZSJ9.s"]]}`))
	f.Add([]byte(`{"q":"<b>&amp;</b>","k\"ey":"v\u2028","userPIN":null}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		parse := func() map[string]any {
			d := json.NewDecoder(bytes.NewReader(body))
			d.UseNumber()
			var m map[string]any
			if d.Decode(&m) != nil {
				return nil
			}
			return m
		}
		in := parse()
		if in == nil {
			return
		}
		want := MaskMap(in)
		got := MaskMapShared(in)
		wb, werr := json.Marshal(want)
		gb, gerr := json.Marshal(got)
		if (werr == nil) != (gerr == nil) || !bytes.Equal(wb, gb) {
			t.Fatalf("encodings differ:\nMaskMap %s (%v)\nshared  %s (%v)", wb, werr, gb, gerr)
		}
		ib, _ := json.Marshal(in)
		fb, _ := json.Marshal(parse())
		if !bytes.Equal(ib, fb) {
			t.Fatalf("MaskMapShared modified its input: %s, was %s", ib, fb)
		}
		if reflect.ValueOf(got).UnsafePointer() == reflect.ValueOf(in).UnsafePointer() && !bytes.Equal(wb, ib) {
			t.Fatalf("MaskMapShared returned its input %s, which MaskMap masks to %s", ib, wb)
		}
	})
}

// sensitiveKeyReference is SensitiveKey as it was before its searches were narrowed: every
// word folded against every sensitive word, every part searched for in the joined key.
func sensitiveKeyReference(key string) bool {
	var joined []byte
	sensitive := false
	forEachKeyWord(key, func(w string) {
		for _, sw := range sensitiveKeyWords {
			if strings.EqualFold(w, sw) {
				sensitive = true
			}
		}
		for i := 0; i < len(w) && len(joined) < maxKeyBytes; i++ {
			joined = append(joined, lowerASCII(w[i]))
		}
	})
	if sensitive {
		return true
	}
	for _, p := range sensitiveKeyParts {
		if strings.Contains(string(joined), p) {
			return true
		}
	}
	return false
}
