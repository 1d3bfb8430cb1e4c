package identity_test

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/custodyhq/custody/identity"
)

// TestUnverifiedClaims: the one unverified decoder reads a compact JWT's payload with exact
// numbers, and calls anything else malformed.
func TestUnverifiedClaims(t *testing.T) {
	seg := func(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }
	tests := []struct {
		name  string
		token string
		want  map[string]any
	}{
		{"sub and act", "h." + seg(`{"sub": "alice", "act": {"sub": "agent-1"}, "exp": 12345678901234567}`) + ".s",
			map[string]any{"sub": "alice", "act": map[string]any{"sub": "agent-1"}, "exp": json.Number("12345678901234567")}},
		{"two segments", "h." + seg(`{"sub": "alice"}`), nil},
		{"padded base64", "h." + base64.URLEncoding.EncodeToString([]byte(`{"sub":"a"}`)) + ".s", nil},
		{"not an object", "h." + seg(`["alice"]`) + ".s", nil},
		{"null", "h." + seg(`null`) + ".s", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := identity.UnverifiedClaims(tt.token)
			if tt.want == nil {
				if !errors.Is(err, identity.ErrTokenMalformed) {
					t.Errorf("err = %v, want ErrTokenMalformed", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("claims (-want +got):\n%s", diff)
			}
		})
	}
}
