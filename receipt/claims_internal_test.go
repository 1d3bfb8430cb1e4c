package receipt

import (
	"bytes"
	"encoding/json"
	"fmt"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// checkClaims fails unless appendJSON spells c exactly as json.Marshal does, or fails alike.
func checkClaims(t testing.TB, c *Claims) {
	t.Helper()
	want, werr := json.Marshal(c)
	got, gerr := c.appendJSON(nil)
	if (werr != nil) != (gerr != nil) {
		t.Fatalf("json.Marshal error %v, appendJSON error %v", werr, gerr)
	}
	if diff := cmp.Diff(string(want), string(got)); werr == nil && diff != "" {
		t.Fatalf("appendJSON differs from json.Marshal (-json +appendJSON):\n%s", diff)
	}
}

// TestClaimsJSONMatchesMarshal: the signed payload is the one json.Marshal made, for claims
// empty and full, with hostile strings in every member a request can reach.
func TestClaimsJSONMatchesMarshal(t *testing.T) {
	odd := []string{"", "alice@acme.example", "<b>&amp;</b>", "1<2", "3>2", "a&b", `q"\`, "\x00\n\t", "é\u2028\u2029", "\xff"}
	checkClaims(t, &Claims{})
	for i, s := range odd {
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			checkClaims(t, &Claims{
				Iss: s, Sub: s, Aud: s, Iat: -1, Exp: 1 << 62, Jti: s, DecisionID: s, CorrelationID: s, Action: s,
				Resource: Resource{Type: s, ID: s}, Server: s, ArgumentsSHA256: s,
				Obligations:        map[string]any{s: s, "n": json.Number("1.50"), "f": 0.1, "l": []any{s, true, nil}, "m": map[string]any{}},
				DelegationVerified: i%2 == 0, Caller: &Caller{Method: s, ID: s}, Act: &Actor{Sub: s}, TaskID: s,
			})
			checkClaims(t, &Claims{Iss: s, Obligations: map[string]any{}})
			checkClaims(t, &Claims{Iss: s, Obligations: nil, Caller: &Caller{}, Act: &Actor{}})
		})
	}
	checkClaims(t, &Claims{Obligations: map[string]any{"nan": func() float64 { z := 0.0; return z / z }()}})
}

// FuzzClaimsJSON holds appendJSON to json.Marshal for any claim values, obligations read from
// any JSON object.
func FuzzClaimsJSON(f *testing.F) {
	f.Add("custody", "alice", "gw<1>", int64(1), "d-1", "send_email", "mail&", []byte(`{"require_approval":true,"x":[1.5,"<"]}`), true, "api_key", "t-1")
	f.Add("", "", "", int64(-1), "\xff", "", "", []byte(`{"x":1e400}`), false, "", "")
	f.Fuzz(func(t *testing.T, iss, sub, aud string, iat int64, id, action, srv string, obl []byte, verified bool, method, task string) {
		for _, useNumber := range []bool{true, false} {
			d := json.NewDecoder(bytes.NewReader(obl))
			if useNumber {
				d.UseNumber()
			}
			var o map[string]any
			_ = d.Decode(&o)
			c := &Claims{Iss: iss, Sub: sub, Aud: aud, Iat: iat, Exp: iat + 300, Jti: id, DecisionID: id, CorrelationID: aud,
				Action: action, Resource: Resource{Type: "tool", ID: action}, Server: srv, ArgumentsSHA256: sub,
				Obligations: o, DelegationVerified: verified, TaskID: task}
			if method != "" {
				c.Caller, c.Act = &Caller{Method: method, ID: sub}, &Actor{Sub: iss}
			}
			checkClaims(t, c)
		}
	})
}
