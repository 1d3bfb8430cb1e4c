package receipt_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"math"
	"strconv"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/custodyhq/custody/receipt"
)

// TestCanonicalNumbers is RFC 8785 appendix B: IEEE 754 doubles and their canonical text.
func TestCanonicalNumbers(t *testing.T) {
	for _, tc := range []struct{ bits, want string }{
		{"0000000000000000", "0"},
		{"8000000000000000", "0"},
		{"0000000000000001", "5e-324"},
		{"8000000000000001", "-5e-324"},
		{"7fefffffffffffff", "1.7976931348623157e+308"},
		{"ffefffffffffffff", "-1.7976931348623157e+308"},
		{"4340000000000000", "9007199254740992"},
		{"c340000000000000", "-9007199254740992"},
		{"4430000000000000", "295147905179352830000"},
		{"7fffffffffffffff", ""},
		{"7ff0000000000000", ""},
		{"44b52d02c7e14af5", "9.999999999999997e+22"},
		{"44b52d02c7e14af6", "1e+23"},
		{"44b52d02c7e14af7", "1.0000000000000001e+23"},
		{"444b1ae4d6e2ef4e", "999999999999999700000"},
		{"444b1ae4d6e2ef4f", "999999999999999900000"},
		{"444b1ae4d6e2ef50", "1e+21"},
		{"3eb0c6f7a0b5ed8c", "9.999999999999997e-7"},
		{"3eb0c6f7a0b5ed8d", "0.000001"},
		{"41b3de4355555553", "333333333.3333332"},
		{"41b3de4355555554", "333333333.33333325"},
		{"41b3de4355555555", "333333333.3333333"},
		{"41b3de4355555556", "333333333.3333334"},
		{"41b3de4355555557", "333333333.33333343"},
		{"becbf647612f3696", "-0.0000033333333333333333"},
		{"43143ff3c1cb0959", "1424953923781206.2"},
	} {
		t.Run(tc.bits, func(t *testing.T) {
			u, err := strconv.ParseUint(tc.bits, 16, 64)
			if err != nil {
				t.Fatal(err)
			}
			got, err := receipt.Canonicalize(math.Float64frombits(u))
			if tc.want == "" {
				if err == nil {
					t.Errorf("canonicalized a non-finite number as %s", got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, string(got)); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

// TestCanonicalJSON is RFC 8785's examples (sections 3.2.2, 3.2.3) and what I-JSON refuses.
func TestCanonicalJSON(t *testing.T) {
	for _, tc := range []struct{ name, in, want string }{
		{"section 3.2.2", `{
  "numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],
  "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
  "literals": [null, true, false]
}`, `{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],"string":"€$\u000f\nA'B\"\\\\\"/"}`},
		{"section 3.2.3 sorting", `{
  "\u20ac": "Euro Sign",
  "\r": "Carriage Return",
  "\ufb33": "Hebrew Letter Dalet With Dagesh",
  "1": "One",
  "\ud83d\ude00": "Emoji: Grinning Face",
  "\u0080": "Control",
  "\u00f6": "Latin Small Letter O With Diaeresis"
}`, "{\"\\r\":\"Carriage Return\",\"1\":\"One\",\"\u0080\":\"Control\",\"ö\":\"Latin Small Letter O With Diaeresis\",\"€\":\"Euro Sign\",\"😀\":\"Emoji: Grinning Face\",\"\ufb33\":\"Hebrew Letter Dalet With Dagesh\"}"},
		{"nested and literal html", `{"b":[1,{"z":"<a>","a":"\u2028"}],"a":{}}`, "{\"a\":{},\"b\":[1,{\"a\":\"\u2028\",\"z\":\"<a>\"}]}"},
		{"duplicate name", `{"to":"bob","to":"eve"}`, ""},
		{"nested duplicate", `{"a":{"x":1,"x":2}}`, ""},
		{"trailing data", `{} {}`, ""},
		{"too deep", string(bytes.Repeat([]byte("["), 70)) + string(bytes.Repeat([]byte("]"), 70)), ""},
		{"beyond float64", `{"n":1e400}`, ""},
		{"not UTF-8", "{\"a\":\"\xff\"}", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := receipt.CanonicalizeJSON([]byte(tc.in))
			if tc.want == "" {
				if err == nil {
					t.Errorf("canonicalized %q as %s", tc.in, got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, string(got)); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

// TestArgumentsSHA256 pins the digest of a value as encoding/json decodes it (float64 numbers),
// which is how custody holds a call's arguments.
func TestArgumentsSHA256(t *testing.T) {
	var args map[string]any
	if err := json.Unmarshal([]byte(`{"to":"bob@acme.example","n":1.0E2,"api_token":"sk"}`), &args); err != nil {
		t.Fatal(err)
	}
	got, err := receipt.ArgumentsSHA256(args)
	if err != nil {
		t.Fatal(err)
	}
	// printf '{"api_token":"sk","n":100,"to":"bob@acme.example"}' | sha256sum
	if want := "0f3cadb4a5f5a16136d6fde98509bfc9ee6463c5bc1678084054717e52d042f1"; got != want {
		t.Errorf("arguments_sha256 %s", got)
	}
	empty, err := receipt.ArgumentsSHA256(nil)
	if err != nil || empty != sha256Hex(`{}`) {
		t.Errorf("nil arguments hash %s (%v), want the hash of {}", empty, err)
	}
}

// FuzzCanonicalizeJSON: canonical JSON is valid JSON, a fixed point, and decodes to the value
// the input did.
func FuzzCanonicalizeJSON(f *testing.F) {
	for _, s := range []string{`{"b":1,"a":[true,null,"x"]}`, `1e-7`, `"\u0001\ud83d\ude00"`, `{"a":{"a":{}}}`, `-0.0`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		out, err := receipt.CanonicalizeJSON(in)
		if err != nil {
			return
		}
		again, err := receipt.CanonicalizeJSON(out)
		if err != nil || !bytes.Equal(out, again) {
			t.Fatalf("canonical form %s is not a fixed point: %s, %v", out, again, err)
		}
		var a, b any
		if json.Unmarshal(in, &a) != nil || json.Unmarshal(out, &b) != nil {
			t.Fatalf("canonical form %s of %s does not decode", out, in)
		}
		if !cmp.Equal(a, b) {
			t.Fatalf("canonical form changed the value: %v, %v", a, b)
		}
	})
}

func sha256Hex(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}
