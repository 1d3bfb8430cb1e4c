package decisionlog

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"strings"
)

// IntentHasher turns a task's prompt text into a keyed hash, so that records can show two calls
// served the same intent without anyone being able to read, or brute-force, the prompt.
type IntentHasher struct{ key []byte }

// NewIntentHasher returns a hasher keyed with key, which must be kept secret.
func NewIntentHasher(key []byte) *IntentHasher {
	return &IntentHasher{key: append([]byte(nil), key...)}
}

// Sum returns the hex HMAC-SHA256 of intent, or "" for an empty intent.
func (h *IntentHasher) Sum(intent string) string {
	if intent == "" {
		return ""
	}
	m := hmac.New(sha256.New, h.key)
	m.Write([]byte(intent))
	return hex.EncodeToString(m.Sum(nil))
}

// Masked replaces the value of a sensitive key in a record.
const Masked = "[masked]"

// sensitiveKeyParts mark keys whose values are secrets. Matching is on normalised key names
// (lower case, without "-" and "_"), by substring, erring on the side of masking.
var sensitiveKeyParts = []string{
	"password", "passwd", "secret", "token", "apikey", "authorization", "cookie",
	"credential", "privatekey", "clientsecret", "sessionkey", "accesskey", "prompt", "intent",
}

// keySeparators is built once: a Replacer per call cost more than the rest of masking.
var keySeparators = strings.NewReplacer("-", "", "_", "", " ", "")

// SensitiveKey reports whether a value stored under key must be masked before recording.
func SensitiveKey(key string) bool {
	k := strings.ToLower(keySeparators.Replace(key))
	for _, p := range sensitiveKeyParts {
		if strings.Contains(k, p) {
			return true
		}
	}
	return false
}

// MaskValue returns a copy of v, a JSON-shaped value, with every value under a sensitive key
// replaced by Masked. The input is not modified, since the policy still sees the original.
func MaskValue(v any) any {
	switch v := v.(type) {
	case map[string]any:
		return MaskMap(v)
	case []any:
		out := make([]any, len(v))
		for i, e := range v {
			out[i] = MaskValue(e)
		}
		return out
	default:
		return v
	}
}

// MaskMap is MaskValue for an object; nil stays nil.
func MaskMap(m map[string]any) map[string]any {
	if m == nil {
		return nil
	}
	out := make(map[string]any, len(m))
	for k, e := range m {
		if SensitiveKey(k) {
			out[k] = Masked
			continue
		}
		out[k] = MaskValue(e)
	}
	return out
}
