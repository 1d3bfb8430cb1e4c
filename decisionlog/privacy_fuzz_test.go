package decisionlog

import (
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
	f.Fuzz(func(t *testing.T, key, value string) {
		_ = SensitiveKey(key)
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
