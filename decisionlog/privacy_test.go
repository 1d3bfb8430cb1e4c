package decisionlog

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
)

var sha256HexRE = regexp.MustCompile(`^[0-9a-f]{64}$`)

func TestIntentHasherSum(t *testing.T) {
	const intent = "send the Q3 numbers to bob@acme.example"
	h := NewIntentHasher([]byte("key-1"))
	tests := []struct {
		name string
		got  string
		want string
	}{
		// The well-known HMAC-SHA256 example (key "key"), pinning the algorithm.
		{"known answer", NewIntentHasher([]byte("key")).Sum("The quick brown fox jumps over the lazy dog"), "f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"},
		{"empty intent", h.Sum(""), ""},
		{"empty intent, empty key", NewIntentHasher(nil).Sum(""), ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if diff := cmp.Diff(tc.want, tc.got); diff != "" {
				t.Errorf("Sum mismatch (-want +got):\n%s", diff)
			}
		})
	}

	props := []struct {
		name string
		a, b string
		same bool
	}{
		{"deterministic", h.Sum(intent), h.Sum(intent), true},
		{"same key, new hasher", h.Sum(intent), NewIntentHasher([]byte("key-1")).Sum(intent), true},
		{"different keys differ", h.Sum(intent), NewIntentHasher([]byte("key-2")).Sum(intent), false},
		{"keyed, not plain SHA-256 (empty key differs)", h.Sum(intent), NewIntentHasher(nil).Sum(intent), false},
		{"different intents differ", h.Sum(intent), h.Sum(intent + " "), false},
		{"case matters", h.Sum("a"), h.Sum("A"), false},
	}
	for _, tc := range props {
		t.Run(tc.name, func(t *testing.T) {
			if diff := cmp.Diff(tc.same, tc.a == tc.b); diff != "" {
				t.Errorf("Sum equality mismatch (-want +got):\n%s\na = %s\nb = %s", diff, tc.a, tc.b)
			}
		})
	}

	for _, in := range []string{"z", "a", intent, "0123456789abcdef", strings.Repeat("f", 64), "🤖\x00\xff", strings.Repeat("long ", 10000)} {
		t.Run("shape/"+shorten(in), func(t *testing.T) {
			got := h.Sum(in)
			if !sha256HexRE.MatchString(got) {
				t.Errorf("Sum(%.20q) = %q, want 64 lower-case hex digits", in, got)
			}
			// Only an intent with a non-hex character can be told apart from hash output.
			if !isLowerHexString(in) && strings.Contains(got, in) {
				t.Errorf("Sum(%.20q) = %q contains the intent", in, got)
			}
		})
	}
}

func shorten(s string) string {
	if len(s) > 16 {
		return s[:16]
	}
	return s
}

// TestIntentHasherCopiesKey: changing the caller's key slice afterwards does not change hashes.
func TestIntentHasherCopiesKey(t *testing.T) {
	key := []byte("secret-key")
	h := NewIntentHasher(key)
	before := h.Sum("intent")
	copy(key, "XXXXXXXXXX")
	if diff := cmp.Diff(before, h.Sum("intent")); diff != "" {
		t.Errorf("Sum changed after the key slice was modified (-before +after):\n%s", diff)
	}
}

func TestSensitiveKey(t *testing.T) {
	tests := []struct {
		key  string
		want bool
	}{
		{"password", true},
		{"Password", true},
		{"new_password", true},
		{"passwd", true},
		{"API_KEY", true},
		{"apiKey", true},
		{"api-key", true},
		{"x-api-key", true},
		{"Api Key", true},
		{"Authorization", true},
		{"proxy-authorization", true},
		{"x-api-token", true},
		{"access_token", true},
		{"refresh-token", true},
		{"client_secret", true},
		{"clientSecret", true},
		{"secret", true},
		{"Cookie", true},
		{"set-cookie", true},
		{"credentials", true},
		{"private_key", true},
		{"PRIVATE-KEY", true},
		{"session_key", true},
		{"aws_access_key_id", true},
		{"prompt", true},
		{"system_prompt", true},
		{"intent", true},
		// Substring matching errs on the side of masking.
		{"max_tokens", true},
		{"tokenizer", true},
		{"secretary", true},
		{"to", false},
		{"path", false},
		{"name", false},
		{"id", false},
		{"", false},
		{"query", false},
		{"amount", false},
		{"body", false},
		{"key", false},
		{"pass", false},
		// Issue 16: these key names carried secrets into records. Matching ignores case and the
		// separators "_", "-", "." and " ", and splits camelCase into words.
		{"pwd", true},
		{"oldPwd", true},
		{"passphrase", true},
		{"key_passphrase", true},
		{"bearer", true},
		{"bearerToken", true},
		{"auth", true},
		{"x-auth", true},
		{"Auth.Header", true},
		{"jwt", true},
		{"id_jwt", true},
		{"api.key", true},
		{"API.KEY", true},
		{"APIKey", true},
		{"otp", true},
		{"OTPCode", true},
		{"totp", true},
		{"pin", true},
		{"PIN", true},
		{"pin_code", true},
		{"userPin", true},
		{"card.pin", true},
		{"signing_key", true},
		{"encryptionKey", true},
		{"mnemonic", true},
		{"seed_phrase", true},
		{"creds", true},
		{"dsn", true},
		{"connection_string", true},
		// Ordinary fields that share letters with those names survive.
		{"pinned", false},
		{"isPinned", false},
		{"spinner", false},
		{"pinyin", false},
		{"author", false},
		{"authors", false},
		{"authority", false},
		{"coauthor", false},
		{"footprint", false},
		{"hotpath", false},
		{"keyboard", false},
		{"passenger", false},
		{"compass", false},
		{"seed", false},
		{"opinion", false},
	}
	for _, tc := range tests {
		t.Run(tc.key, func(t *testing.T) {
			if diff := cmp.Diff(tc.want, SensitiveKey(tc.key)); diff != "" {
				t.Errorf("SensitiveKey(%q) mismatch (-want +got):\n%s", tc.key, diff)
			}
		})
	}
}

// maskInput builds a fresh nested JSON-shaped value for each use, so a test can check that
// masking left it as it was.
func maskInput() map[string]any {
	return map[string]any{
		"to":       "bob@acme.example",
		"password": "hunter2",
		"amount":   json.Number("12.50"),
		"headers": map[string]any{
			"Authorization": "Bearer abc",
			"Accept":        "application/json",
		},
		"items": []any{
			map[string]any{"name": "a", "api_key": "k1"},
			map[string]any{"name": "b", "nested": []any{map[string]any{"client_secret": "s", "ok": true}}},
			"plain",
			json.Number("3"),
			nil,
			[]any{map[string]any{"token": "t"}},
		},
		"credentials": map[string]any{"user": "alice", "pw": "x"},
		"empty":       map[string]any{},
		"none":        nil,
	}
}

func maskWant() map[string]any {
	return map[string]any{
		"to":       "bob@acme.example",
		"password": Masked,
		"amount":   json.Number("12.50"),
		"headers": map[string]any{
			"Authorization": Masked,
			"Accept":        "application/json",
		},
		"items": []any{
			map[string]any{"name": "a", "api_key": Masked},
			map[string]any{"name": "b", "nested": []any{map[string]any{"client_secret": Masked, "ok": true}}},
			"plain",
			json.Number("3"),
			nil,
			[]any{map[string]any{"token": Masked}},
		},
		// A sensitive key masks its whole value, even an object.
		"credentials": Masked,
		"empty":       map[string]any{},
		"none":        nil,
	}
}

// TestSecretValue: bearer-like values are secrets whatever key they are under (issue 16), and
// ordinary text that shares their prefixes is not.
func TestSecretValue(t *testing.T) {
	const jwt = "eyJhbGciOiJSUzI1NiIsImtpZCI6ImsxIn0.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLWJ5dGVz"
	tests := []struct {
		name string
		in   string
		want bool
	}{
		{"jwt", jwt, true},
		{"unsigned jwt", "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhbGljZSJ9.", true},
		{"jwt in text", "use token " + jwt + " for the call", true},
		{"bearer header", "Bearer 4f9a8b7c6d5e4f3a2b1c", true},
		{"bearer lower case", "bearer abcDEF123456", true},
		{"bearer in a curl line", "curl -H 'Authorization: Bearer 0a1b2c3d4e5f6a7b' https://api", true},
		{"openai key", "sk-proj-4Kp9xQ2mZ7vL1nR8tY3wB6cJ", true},
		{"openai legacy key", "sk-4Kp9xQ2mZ7vL1nR8tY3wB6cJ0aHs5dFgT", true},
		{"stripe key", "sk_live_51HxAbCdEfGhIjKlMnOpQrStUv", true},
		{"github pat", "ghp_16C7e42F292c6912E7710c838347Ae178B4a", true},
		{"github fine-grained pat", "github_pat_11ABCDEFG0123456789_abcdefghijklmnop", true},
		{"slack bot token", "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOp", true},
		{"slack app token", "xapp-1-A0123456789-1234567890123-abcdef0123456789", true},
		{"gitlab pat", "glpat-xY12abCD34efGH56ijKL", true},
		{"aws access key id", "AKIAIOSFODNN7EXAMPLE", true},
		{"google api key", "AIzaSyA1bC2dE3fG4hI5jK6lM7nO8pQ9rS0tU1v", true},
		{"custody api key", "cust_q1w2e3r4t5y6u7i8o9p0a1s2d3f4g5h6j7k8l9z0x", true},
		{"pem private key", "-----BEGIN RSA PRIVATE KEY-----\nMIIE...\n-----END RSA PRIVATE KEY-----", true},
		{"pem openssh key", "-----BEGIN OPENSSH PRIVATE KEY-----\nb3Blbn...", true},
		// Ordinary values survive.
		{"empty", "", false},
		{"email", "bob@acme.example", false},
		{"path", "/home/alice/notes.txt", false},
		{"prose with bearer", "The bearer of this letter is a friend", false},
		{"bearer of a word", "bearer instrument", false},
		{"task id", "task-1234567890abcdefghij", false},
		{"risk word", "risk-assessment-quarterly", false},
		{"sk prefix word", "sk-learn", false},
		{"short sk", "sk-1234", false},
		{"dotted version", "v1.2.3", false},
		{"dotted name", "eyJ.not.a.token", false},
		{"ghp without token", "ghp_", false},
		{"public key", "-----BEGIN PUBLIC KEY-----\nMFkw...", false},
		{"uuid", "0190a5b2-7c3e-7d4f-8a9b-0c1d2e3f4a5b", false},
		{"sha256", "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if diff := cmp.Diff(tc.want, SecretValue(tc.in)); diff != "" {
				t.Errorf("SecretValue(%q) mismatch (-want +got):\n%s", tc.in, diff)
			}
		})
	}
}

// TestMaskValueMasksBearerLikeValues: a token under an innocent key is masked in the record.
func TestMaskValueMasksBearerLikeValues(t *testing.T) {
	in := map[string]any{
		"to":      "bob@acme.example",
		"headers": []any{"Accept: */*", "X-Custom: Bearer 0a1b2c3d4e5f6a7b"},
		"note":    "ghp_16C7e42F292c6912E7710c838347Ae178B4a",
		"pinned":  true,
		"author":  "alice",
	}
	want := map[string]any{
		"to":      "bob@acme.example",
		"headers": []any{"Accept: */*", Masked},
		"note":    Masked,
		"pinned":  true,
		"author":  "alice",
	}
	if diff := cmp.Diff(want, MaskMap(in)); diff != "" {
		t.Errorf("MaskMap mismatch (-want +got):\n%s", diff)
	}
}

func TestMaskValue(t *testing.T) {
	tests := []struct {
		name string
		in   any
		want any
	}{
		{"nil", nil, nil},
		{"string", "password", "password"},
		{"bearer string", "Bearer 0a1b2c3d4e5f6a7b", Masked},
		{"number", json.Number("1"), json.Number("1")},
		{"bool", true, true},
		{"nil map stays nil", map[string]any(nil), map[string]any(nil)},
		{"empty map", map[string]any{}, map[string]any{}},
		{"empty array", []any{}, []any{}},
		{"flat", map[string]any{"secret": "s", "name": "n"}, map[string]any{"secret": Masked, "name": "n"}},
		{"sensitive key with nil value", map[string]any{"token": nil}, map[string]any{"token": Masked}},
		{"nested", maskInput(), maskWant()},
		{"array of objects", []any{map[string]any{"password": 1}, map[string]any{"x": 2}}, []any{map[string]any{"password": Masked}, map[string]any{"x": 2}}},
		{"array of arrays", []any{[]any{[]any{map[string]any{"cookie": "c"}}}}, []any{[]any{[]any{map[string]any{"cookie": Masked}}}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if diff := cmp.Diff(tc.want, MaskValue(tc.in)); diff != "" {
				t.Errorf("MaskValue mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestMaskMap(t *testing.T) {
	tests := []struct {
		name string
		in   map[string]any
		want map[string]any
	}{
		{"nil stays nil", nil, nil},
		{"empty stays empty", map[string]any{}, map[string]any{}},
		{"nested", maskInput(), maskWant()},
		{"deep inside arrays of objects", map[string]any{"a": []any{map[string]any{"b": []any{map[string]any{"c": map[string]any{"Set-Cookie": "x", "d": "y"}}}}}},
			map[string]any{"a": []any{map[string]any{"b": []any{map[string]any{"c": map[string]any{"Set-Cookie": Masked, "d": "y"}}}}}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if diff := cmp.Diff(tc.want, MaskMap(tc.in)); diff != "" {
				t.Errorf("MaskMap mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

// TestMaskDoesNotMutate: the input is left as it was (the policy still sees it), and the output
// shares no map or slice with it.
func TestMaskDoesNotMutate(t *testing.T) {
	in := maskInput()
	out := MaskMap(in)
	if diff := cmp.Diff(maskInput(), in); diff != "" {
		t.Fatalf("MaskMap modified its input (-want +got):\n%s", diff)
	}
	out["headers"].(map[string]any)["Accept"] = "changed"
	out["items"].([]any)[0].(map[string]any)["name"] = "changed"
	out["items"].([]any)[2] = "changed"
	if diff := cmp.Diff(maskInput(), in); diff != "" {
		t.Errorf("changing MaskMap's output changed its input (-want +got):\n%s", diff)
	}

	arr := []any{map[string]any{"password": "p"}}
	_ = MaskValue(arr)
	if diff := cmp.Diff([]any{map[string]any{"password": "p"}}, arr); diff != "" {
		t.Errorf("MaskValue modified its input (-want +got):\n%s", diff)
	}
}

func BenchmarkMaskMap(b *testing.B) {
	m := map[string]any{"to": "bob@acme.example", "api_key": "sk-1", "nested": map[string]any{"Authorization": "Bearer x", "path": "/tmp"}}
	b.ReportAllocs()
	for b.Loop() {
		_ = MaskMap(m)
	}
}

// maskSharedCases are values MaskMapShared must spell as MaskMap does: clean ones (shared) and
// ones with something to mask at every depth (copied).
func maskSharedCases() map[string]map[string]any {
	return map[string]map[string]any{
		"nil":             nil,
		"empty":           {},
		"clean":           {"to": "bob@acme.example", "n": json.Number("1.5"), "ok": true, "none": nil, "list": []any{"a", map[string]any{"b": []any{}}}, "o": map[string]any{}},
		"sensitive key":   {"to": "bob", "api_key": "k"},
		"secret value":    {"note": "Bearer 0a1b2c3d4e5f6a7b"},
		"deep key":        {"a": []any{map[string]any{"b": map[string]any{"Set-Cookie": "x"}}}},
		"deep value":      {"a": []any{[]any{"eyJhbGciOiJub25lIn0.eyJzdWIiOiJhbGljZSJ9.sig"}}},
		"nested":          maskInput(),
		"typed nil list":  {"a": []any(nil)},
		"typed nil map":   {"a": map[string]any(nil)},
		"other types":     {"s": []string{"Bearer 0a1b2c3d4e5f6a7b"}, "m": map[string]string{"token": "t"}},
		"html and escape": {"q": "<b>&amp;</b>", "k\"ey": "v\u2028"},
	}
}

// TestMaskMapSharedMatchesMaskMap: MaskMapShared gives what MaskMap gives, spelled alike; it
// hands back its input only when nothing in it is masked, and never modifies it.
func TestMaskMapSharedMatchesMaskMap(t *testing.T) {
	for name, in := range maskSharedCases() {
		t.Run(name, func(t *testing.T) {
			want := MaskMap(in)
			got := MaskMapShared(in)
			if diff := cmp.Diff(want, got); diff != "" {
				t.Fatalf("MaskMapShared differs from MaskMap (-MaskMap +shared):\n%s", diff)
			}
			wb, werr := json.Marshal(want)
			gb, gerr := json.Marshal(got)
			if werr != nil || gerr != nil || string(wb) != string(gb) {
				t.Fatalf("encodings differ:\nMaskMap %s (%v)\nshared  %s (%v)", wb, werr, gb, gerr)
			}
			shared := in != nil && reflect.ValueOf(got).UnsafePointer() == reflect.ValueOf(in).UnsafePointer()
			clean := cmp.Equal(in, want)
			if shared && !clean {
				t.Fatal("MaskMapShared returned its input, which MaskMap masks")
			}
			if fresh := maskSharedCases()[name]; !cmp.Equal(fresh, in) {
				t.Fatal("MaskMapShared modified its input")
			}
		})
	}
}

// TestMaskMapSharedAllocatesNothingWhenClean: a record of a call with nothing secret in it costs
// no copy of its properties (MaskMap made one, and re-boxed every string in it, on every decision).
func TestMaskMapSharedAllocatesNothingWhenClean(t *testing.T) {
	in := maskSharedCases()["clean"]
	if n := testing.AllocsPerRun(100, func() { _ = MaskMapShared(in) }); n != 0 {
		t.Errorf("MaskMapShared of a clean map: %v allocations, want 0", n)
	}
}

func BenchmarkMaskMapShared(b *testing.B) {
	m := map[string]any{"to": "bob@acme.example", "subject": "hello", "nested": map[string]any{"Accept": "text/plain", "path": "/tmp"}}
	b.ReportAllocs()
	for b.Loop() {
		_ = MaskMapShared(m)
	}
}

// TestIntentHasherReuse: a hasher whose HMACs are reused gives, call after call and from many
// goroutines at once, the sum a freshly keyed HMAC gives.
func TestIntentHasherReuse(t *testing.T) {
	key := []byte("reuse-key")
	h := NewIntentHasher(key)
	fresh := func(s string) string {
		m := hmac.New(sha256.New, key)
		m.Write([]byte(s))
		return hex.EncodeToString(m.Sum(nil))
	}
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := range 200 {
				s := strings.Repeat(string(rune('a'+g)), i%70+1) + strconv.Itoa(i)
				if got, want := h.Sum(s), fresh(s); got != want {
					t.Errorf("Sum(%q) = %s, want %s", s, got, want)
					return
				}
			}
		})
	}
	wg.Wait()
}
