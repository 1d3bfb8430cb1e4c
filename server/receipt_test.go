package server_test

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/custodyhq/custody/decisionlog"
	"github.com/custodyhq/custody/identity"
	"github.com/custodyhq/custody/internal/tokentest"
	"github.com/custodyhq/custody/receipt"
	"github.com/custodyhq/custody/server"
)

// testIssuer signs receipts with a fresh key, as issuer "test", valid for 5 minutes.
func testIssuer(tb testing.TB) *receipt.Issuer {
	tb.Helper()
	key, err := receipt.LoadOrCreateKey(tb.TempDir() + "/receipt.key")
	if err != nil {
		tb.Fatal(err)
	}
	iss, err := receipt.NewIssuer(key, "test", 5*time.Minute)
	if err != nil {
		tb.Fatal(err)
	}
	return iss
}

// receiptServer is a server that signs receipts, at the fixed test clock.
func receiptServer(t *testing.T, opts ...server.Option) (*server.Server, *decisionlog.Memory) {
	t.Helper()
	iss := testIssuer(t)
	pub := &decisionlog.Memory{}
	opts = append([]server.Option{
		server.WithIDFunc(sequentialIDs()),
		server.WithClock(func() time.Time { return fixedNow }),
		server.WithReceipts(iss),
	}, opts...)
	return server.New(engine(t), pub, decisionlog.NewIntentHasher(testKey), opts...), pub
}

// jwsParts decodes a compact JWS's header and payload without verifying it: what the claims are
// is under test here, the signature in the receipt package's tests.
func jwsParts(t *testing.T, tok string) (header, payload map[string]any) {
	t.Helper()
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		t.Fatalf("receipt %q is not a compact JWS", tok)
	}
	for i, dst := range []*map[string]any{&header, &payload} {
		raw, err := base64.RawURLEncoding.DecodeString(parts[i])
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(raw, dst); err != nil {
			t.Fatal(err)
		}
	}
	return header, payload
}

func sha256Hex(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

// TestReceiptBindsTheDecision: a receipt names the call it allowed closely enough that a
// downstream system can refuse any other: the MCP server, the arguments (their RFC 8785 hash),
// the obligations, whether the delegation was proven, who called, and the enforcement point it is
// for. Once it named only the action and resource, so a receipt for one email was good for any
// email, and a require_approval allow looked like a plain one.
func TestReceiptBindsTheDecision(t *testing.T) {
	s, _ := receiptServer(t)
	h := s.Handler()
	// The canonical form of exampleRequest's arguments: keys sorted, no whitespace.
	mailArgs := sha256Hex(`{"api_token":"sk-live-123","to":"bob@acme.example"}`)
	for _, tc := range []struct {
		name    string
		body    string
		headers []string
		want    map[string]any
	}{{
		name: "plain allow",
		body: exampleRequest,
		want: map[string]any{
			"server": "mail", "arguments_sha256": mailArgs, "obligations": map[string]any{},
			"delegation_verified": false, "sub": "alice@acme.example",
		},
	}, {
		name:    "for a named enforcement point",
		body:    exampleRequest,
		headers: []string{server.HeaderReceiptAudience, "mail-gw.acme.example"},
		want: map[string]any{
			"server": "mail", "arguments_sha256": mailArgs, "obligations": map[string]any{},
			"delegation_verified": false, "sub": "alice@acme.example", "aud": "mail-gw.acme.example",
		},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			r := do(t, h, "POST", "/v1/authorize", "application/json", tc.body, tc.headers...)
			if r.Status != http.StatusOK || r.Body["allow"] != true {
				t.Fatalf("authorize: %d %s", r.Status, r.Raw)
			}
			tok, _ := r.Body["receipt"].(string)
			header, claims := jwsParts(t, tok)
			if header["typ"] != receipt.Type {
				t.Errorf("typ %v, want %s", header["typ"], receipt.Type)
			}
			got := map[string]any{}
			for k := range tc.want {
				if v, ok := claims[k]; ok {
					got[k] = v
				}
			}
			if _, ok := claims["aud"]; ok && tc.want["aud"] == nil {
				got["aud"] = claims["aud"]
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("claims (-want +got):\n%s\nall: %v", diff, claims)
			}
		})
	}
}

// TestReceiptAudienceHeaderIsChecked: an audience that could not be a name is a 400 before any
// decision, never an allow with a receipt for something else.
func TestReceiptAudienceHeaderIsChecked(t *testing.T) {
	s, pub := receiptServer(t)
	for _, aud := range []string{strings.Repeat("a", 257), "mail gw\x01", "\xff\xfe"} {
		r := do(t, s.Handler(), "POST", "/v1/authorize", "application/json", exampleRequest, server.HeaderReceiptAudience, aud)
		if r.Status != http.StatusBadRequest || r.Body["allow"] == true || r.Header.Get(server.HeaderReceipt) != "" {
			t.Errorf("audience %q: %d %s", aud, r.Status, r.Raw)
		}
	}
	if n := len(pub.Records()); n != 0 {
		t.Errorf("%d decisions recorded for refused requests", n)
	}
}

// TestReceiptNamesAProvenDelegation: with a token proving user and agent, the receipt says the
// delegation was verified and who called.
func TestReceiptNamesAProvenDelegation(t *testing.T) {
	idp := tokentest.NewIssuer(t, idpName)
	path := filepath.Join(t.TempDir(), "jwks.json")
	idp.WriteJWKS(t, path)
	v, err := identity.NewVerifier(identity.Config{Issuers: []identity.Issuer{{Issuer: idpName, JWKS: path}}, Audience: audience})
	if err != nil {
		t.Fatal(err)
	}
	s, _ := receiptServer(t, server.WithTokenVerifier(v), server.WithRequireAuth(true), server.WithClock(time.Now))
	const highRisk = `{"agent":{"id":"spiffe://acme.example/agents/ops"},
 "tool":{"name":"delete_file","server":"filesystem","arguments":{"path":"/srv/q3.xlsx","recursive":false,"n":1e2}},
 "resource":{"type":"file","id":"/srv/q3.xlsx","properties":{"owner":"alice@acme.example"}}}`
	for _, tc := range []struct {
		name, agent, scope, body string
		want                     map[string]any
	}{{
		name: "plain allow", agent: mailerID, scope: "mail.send", body: bareRequest,
		want: map[string]any{
			"delegation_verified": true, "obligations": map[string]any{}, "server": "mail",
			"caller": map[string]any{"method": server.AuthJWT, "id": "alice@acme.example"},
			"sub":    "alice@acme.example", "act": map[string]any{"sub": mailerID},
			"arguments_sha256": sha256Hex(`{}`),
		},
	}, {
		name: "require_approval allow", agent: "spiffe://acme.example/agents/ops", scope: "files.write", body: highRisk,
		want: map[string]any{
			"delegation_verified": true, "server": "filesystem",
			"obligations": map[string]any{"require_approval": true, "approval_reason": "high_risk_tool", "approval_channels": []any{"approver_cli", "signed_url"}},
			"caller":      map[string]any{"method": server.AuthJWT, "id": "alice@acme.example"},
			"sub":         "alice@acme.example", "act": map[string]any{"sub": "spiffe://acme.example/agents/ops"},
			"arguments_sha256": sha256Hex(`{"n":100,"path":"/srv/q3.xlsx","recursive":false}`),
		},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			tok := idp.Token(t, tokentest.Claims{"sub": "alice@acme.example", "aud": audience, "scope": tc.scope, "act": map[string]any{"sub": tc.agent}})
			r := do(t, s.Handler(), "POST", "/v1/authorize", "application/json", tc.body, "Authorization", "Bearer "+tok)
			if r.Status != http.StatusOK || r.Body["allow"] != true {
				t.Fatalf("authorize: %d %s", r.Status, r.Raw)
			}
			_, claims := jwsParts(t, r.Body["receipt"].(string))
			got := map[string]any{}
			for k := range tc.want {
				got[k] = claims[k]
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("claims (-want +got):\n%s", diff)
			}
		})
	}
}
