package decisionlog

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"hash"
	"regexp"
	"strings"
	"sync"
)

// IntentHasher turns a task's prompt text into a keyed hash, so that records can show two calls
// served the same intent without anyone being able to read, or brute-force, the prompt.
type IntentHasher struct {
	key []byte
	// macs holds keyed HMACs for reuse: keying one (hmac.New) was most of a Sum's allocations,
	// and Reset brings a used one back to the keyed state.
	macs sync.Pool
}

// NewIntentHasher returns a hasher keyed with key, which must be kept secret.
func NewIntentHasher(key []byte) *IntentHasher {
	return &IntentHasher{key: append([]byte(nil), key...)}
}

// Sum returns the hex HMAC-SHA256 of intent, or "" for an empty intent.
func (h *IntentHasher) Sum(intent string) string {
	if intent == "" {
		return ""
	}
	m, _ := h.macs.Get().(hash.Hash)
	if m == nil {
		m = hmac.New(sha256.New, h.key)
	}
	m.Write([]byte(intent))
	var sum [sha256.Size]byte
	out := hex.EncodeToString(m.Sum(sum[:0]))
	m.Reset()
	h.macs.Put(m)
	return out
}

// Masked replaces the value of a sensitive key in a record.
const Masked = "[masked]"

// sensitiveKeyParts mark keys whose values are secrets. They are matched by substring against the
// normalised key (lower case, without separators), erring on the side of masking: only names
// no ordinary word contains belong here.
var sensitiveKeyParts = []string{
	"password", "passwd", "pwd", "passphrase", "passcode", "secret", "token", "apikey", "authorization",
	"bearer", "jwt", "cookie", "credential", "privatekey", "privkey", "clientsecret", "sessionkey",
	"accesskey", "signingkey", "encryptionkey", "masterkey", "mnemonic", "seedphrase",
	"connectionstring", "prompt", "intent",
}

// sensitiveKeyWords mark keys that hold a secret when one of the key's words is exactly one of
// these: as substrings they would mask ordinary fields ("pinned", "author", "footprint").
var sensitiveKeyWords = []string{"auth", "pin", "otp", "totp", "hotp", "creds", "dsn"}

// maxKeyBytes bounds the normalised key built on the stack; longer keys are matched on a prefix
// of that length, which still holds any sensitive part of a name a person would write.
const maxKeyBytes = 128

// SensitiveKey reports whether a value stored under key must be masked before recording. The key
// is normalised first: case is ignored, "_", "-", "." and spaces separate words, and so does
// camelCase ("apiKey", "API.KEY" and "api_key" are one name; "userPin" holds the word "pin").
func SensitiveKey(key string) bool {
	var buf [maxKeyBytes]byte
	joined := buf[:0]
	sensitive := false
	forEachKeyWord(key, func(w string) {
		if !sensitive {
			ascii := isASCII(w)
			for _, sw := range sensitiveKeyWords {
				// An ASCII word of another length cannot fold to sw; a non-ASCII one can
				// ("dſn" is "dsn").
				if (!ascii || len(w) == len(sw)) && strings.EqualFold(w, sw) {
					sensitive = true
					break
				}
			}
		}
		for i := 0; i < len(w) && len(joined) < maxKeyBytes; i++ {
			joined = append(joined, lowerASCII(w[i]))
		}
	})
	if sensitive {
		return true
	}
	// strings.Contains(joined, p) for every part, found as a part starting at some byte of
	// joined: only the parts that begin with that byte are tried (26 searches of every key were
	// most of masking's CPU).
	for i := range joined {
		for _, p := range sensitivePartsByFirst[joined[i]] {
			if len(joined)-i >= len(p) && string(joined[i:i+len(p)]) == p {
				return true
			}
		}
	}
	return false
}

// sensitivePartsByFirst is sensitiveKeyParts by their first byte.
var sensitivePartsByFirst = func() (t [256][]string) {
	for _, p := range sensitiveKeyParts {
		t[p[0]] = append(t[p[0]], p)
	}
	return t
}()

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

// forEachKeyWord calls f with each word of key, a substring of it: words are separated by any
// byte that is not an ASCII letter or digit, by a lower-case letter or digit followed by an
// upper-case one ("apiKey"), and by the last capital of a run followed by a lower-case letter
// ("APIKey" is "API", "Key").
func forEachKeyWord(key string, f func(string)) {
	start := -1
	for i := 0; i < len(key); i++ {
		c := key[i]
		if !isAlnum(c) {
			if start >= 0 {
				f(key[start:i])
				start = -1
			}
			continue
		}
		if start >= 0 && isUpper(c) {
			prev := key[i-1]
			if !isUpper(prev) || (i+1 < len(key) && isLower(key[i+1])) {
				f(key[start:i])
				start = i
			}
		}
		if start < 0 {
			start = i
		}
	}
	if start >= 0 {
		f(key[start:])
	}
}

func isUpper(c byte) bool { return 'A' <= c && c <= 'Z' }
func isLower(c byte) bool { return 'a' <= c && c <= 'z' }
func isDigit(c byte) bool { return '0' <= c && c <= '9' }
func isAlnum(c byte) bool { return isUpper(c) || isLower(c) || isDigit(c) || c >= 0x80 }

func lowerASCII(c byte) byte {
	if isUpper(c) {
		return c + 'a' - 'A'
	}
	return c
}

// secretMarkers are literals one of which every secretValueRE match contains: scanning for
// them is far cheaper than running the expression over every long argument.
var secretMarkers = []string{
	"eyJ", "earer", "EARER", "sk-", "sk_", "rk-", "rk_", "ghp_", "gho_", "ghu_", "ghs_", "ghr_",
	"github_pat_", "xox", "xapp-", "glpat-", "AKIA", "AIza", "cust_", "npm_", "hf_", "pypi-",
	"PRIVATE KEY",
}

// secretValueRE matches bearer-like credentials inside a string. The first group is a bearer
// token and the second a token whose generic prefix ("sk-") ordinary words share: those two
// must also look random (see looksRandom). The other forms are distinctive as they stand.
var secretValueRE = regexp.MustCompile(`(?i:\bbearer[ \t]+([A-Za-z0-9\-._~+/]{8,}=*))` +
	`|\b((?:sk|rk)[-_][A-Za-z0-9_-]{16,})` +
	`|\beyJ[A-Za-z0-9_-]{6,}\.[A-Za-z0-9_-]{6,}\.[A-Za-z0-9_-]*` +
	`|\bgh[pousr]_[A-Za-z0-9]{20,}` +
	`|\bgithub_pat_[A-Za-z0-9_]{20,}` +
	`|\bxox[abposr]-[A-Za-z0-9-]{10,}` +
	`|\bxapp-[A-Za-z0-9-]{10,}` +
	`|\bglpat-[A-Za-z0-9_-]{20,}` +
	`|\bAKIA[0-9A-Z]{16}\b` +
	`|\bAIza[0-9A-Za-z_-]{35}` +
	`|\bcust_[A-Za-z0-9_-]{32,}` +
	`|\bnpm_[A-Za-z0-9]{36}` +
	`|\bhf_[A-Za-z0-9]{30,}` +
	`|\bpypi-[A-Za-z0-9_-]{50,}` +
	`|-----BEGIN [A-Z ]*PRIVATE KEY-----`)

// SecretValue reports whether s holds a bearer-like credential anywhere: a JWT, an
// "Authorization: Bearer" value, a PEM private key, or a token with a well-known prefix (sk-,
// ghp_, xoxb-, AKIA, cust_ ...). Such a value is masked whatever key it is under.
func SecretValue(s string) bool {
	if len(s) < 12 || !containsAny(s, secretMarkers) {
		return false
	}
	for _, m := range secretValueRE.FindAllStringSubmatchIndex(s, -1) {
		switch {
		case m[2] >= 0:
			if looksRandom(s[m[2]:m[3]]) {
				return true
			}
		case m[4] >= 0:
			if looksRandom(s[m[4]:m[5]]) {
				return true
			}
		default:
			return true
		}
	}
	return false
}

// looksRandom tells a token from a word: generated tokens mix letters and digits ("sk-learn" and
// "bearer instrument" do not).
func looksRandom(tok string) bool {
	var letter, digit bool
	for i := 0; i < len(tok); i++ {
		letter = letter || isUpper(tok[i]) || isLower(tok[i])
		digit = digit || isDigit(tok[i])
	}
	return letter && digit
}

func containsAny(s string, subs []string) bool {
	for _, sub := range subs {
		if strings.Contains(s, sub) {
			return true
		}
	}
	return false
}

// MaskValue returns a copy of v, a JSON-shaped value, with every value under a sensitive key, and
// every string that holds a bearer-like credential, replaced by Masked. The input is not
// modified, since the policy still sees the original.
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
	case string:
		if SecretValue(v) {
			return Masked
		}
		return v
	default:
		return v
	}
}

// MaskMapShared is MaskMap for a caller that never modifies m nor the result: when nothing in m
// is masked it returns m itself, allocating nothing; otherwise it returns MaskMap(m). A record
// built from a request's input uses it: the input is decoded for that request alone and nothing
// writes to it after decoding, so the record can share what it would only have copied.
// TestMaskMapSharedMatchesMaskMap and FuzzMaskMapShared hold it to MaskMap.
func MaskMapShared(m map[string]any) map[string]any {
	if m == nil || !needsMask(m) {
		return m
	}
	return MaskMap(m)
}

// needsMask reports whether MaskValue(v) would mask anything in v.
func needsMask(v any) bool {
	switch v := v.(type) {
	case map[string]any:
		for k, e := range v {
			if SensitiveKey(k) || needsMask(e) {
				return true
			}
		}
	case []any:
		if v == nil {
			return true // MaskValue makes it [], not null: leave the spelling to it
		}
		for _, e := range v {
			if needsMask(e) {
				return true
			}
		}
	case string:
		return SecretValue(v)
	}
	return false
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
