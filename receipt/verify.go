package receipt

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/lestrrat-go/jwx/v3/jwk"
	"github.com/lestrrat-go/jwx/v3/jws"
)

// Errors Verify wraps, so that an enforcement point can tell why it refuses a call.
var (
	ErrSignature            = errors.New("receipt: signature does not verify")
	ErrMalformed            = errors.New("receipt: malformed")
	ErrType                 = errors.New("receipt: not a custody receipt (typ)")
	ErrExpired              = errors.New("receipt: expired")
	ErrNotYetValid          = errors.New("receipt: issued in the future")
	ErrIssuer               = errors.New("receipt: issuer")
	ErrAudience             = errors.New("receipt: audience")
	ErrCallMismatch         = errors.New("receipt: is for another call")
	ErrUnverifiedDelegation = errors.New("receipt: delegation was asserted, not verified")
	ErrObligation           = errors.New("receipt: carries an obligation this enforcement point does not carry out")
)

// DefaultLeeway is the clock skew Verify tolerates on exp and iat.
const DefaultLeeway = 5 * time.Second

// Call is the tool call an enforcement point is about to run, which a receipt must name. Its JSON
// form is the --call file of custody receipt verify.
type Call struct {
	// Tool is the tool's name (the receipt's action).
	Tool string `json:"tool"`
	// Server is the MCP server the tool runs on; "" when none.
	Server string `json:"server,omitempty"`
	// Arguments are the arguments the tool is about to run with; nil is {}.
	Arguments map[string]any `json:"arguments,omitempty"`
	// Resource is what the call acts on; the zero value is the tool itself ({"type":"tool",
	// "id":Tool}), as custody has it when a request names no resource.
	Resource Resource `json:"resource"`
	// Subject is on whose behalf the call runs (the receipt's sub). Required.
	Subject string `json:"subject"`
	// Agent, when set, must be the receipt's act.sub.
	Agent string `json:"agent,omitempty"`
}

// Expected is a Call and what the enforcement point accepts.
type Expected struct {
	Call
	// Audience is this enforcement point's name. A receipt with an aud is accepted only by the
	// audience it names; a receipt without one only when Audience is "".
	Audience string
	// Issuer, when set, must be the receipt's iss.
	Issuer string
	// Obligations names the obligations this enforcement point carries out (for example
	// require_approval and approval_reason, when it obtains a human's approval itself). A
	// receipt carrying any other is refused: an obligation ignored is an allow the policy did
	// not give.
	Obligations []string
	// AllowUnverified accepts a receipt whose delegation custody did not verify (the subject or
	// agent was asserted in the request, as without --require-auth). Off by default.
	AllowUnverified bool
	// Now is the time to check exp and iat against; zero is time.Now().
	Now time.Time
	// Leeway is the clock skew tolerated; zero is DefaultLeeway.
	Leeway time.Duration
}

// Verify checks that token is a custody receipt for the call want is about to run: signed by a key
// in keys, typ custody-receipt+jwt, within its validity, for want's audience, naming want's
// tool, server, arguments (by their RFC 8785 hash), resource and subject, with a verified
// delegation and no obligation want does not carry out. It returns the receipt's claims, whose
// decision_id the enforcement point logs.
func Verify(token string, keys jwk.Set, want Expected) (*Claims, error) {
	c, err := VerifySignature(token, keys)
	if err != nil {
		return nil, err
	}
	if err := check(c, want); err != nil {
		return nil, err
	}
	return c, nil
}

// VerifySignature checks only that token is a receipt signed by a key in keys (signature and
// typ) and returns its claims, whatever its validity and the call. custody uses it to accept a
// receipt as proof that an execution reporter was given the decision, even after it expired.
func VerifySignature(token string, keys jwk.Set) (*Claims, error) {
	token = strings.TrimSpace(token)
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return nil, fmt.Errorf("%w: not a compact JWS", ErrMalformed)
	}
	payload, err := jws.Verify([]byte(token), jws.WithKeySet(keys, jws.WithInferAlgorithmFromKey(true)))
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrSignature, err)
	}
	var header struct {
		Typ string `json:"typ"`
	}
	raw, err := base64.RawURLEncoding.DecodeString(parts[0])
	if err != nil || json.Unmarshal(raw, &header) != nil {
		return nil, fmt.Errorf("%w: header", ErrMalformed)
	}
	if !strings.EqualFold(header.Typ, Type) {
		return nil, fmt.Errorf("%w: %q, want %q", ErrType, header.Typ, Type)
	}
	var c Claims
	if err := json.NewDecoder(bytes.NewReader(payload)).Decode(&c); err != nil {
		return nil, fmt.Errorf("%w: claims: %v", ErrMalformed, err)
	}
	return &c, nil
}

func check(c *Claims, want Expected) error {
	now, leeway := want.Now, want.Leeway
	if now.IsZero() {
		now = time.Now()
	}
	if leeway <= 0 {
		leeway = DefaultLeeway
	}
	switch {
	case c.DecisionID == "" || c.Exp == 0:
		return fmt.Errorf("%w: no decision_id or exp", ErrMalformed)
	case now.After(time.Unix(c.Exp, 0).Add(leeway)):
		return fmt.Errorf("%w: at %s", ErrExpired, time.Unix(c.Exp, 0).UTC().Format(time.RFC3339))
	case time.Unix(c.Iat, 0).After(now.Add(leeway)):
		return fmt.Errorf("%w: iat %s", ErrNotYetValid, time.Unix(c.Iat, 0).UTC().Format(time.RFC3339))
	case want.Issuer != "" && c.Iss != want.Issuer:
		return fmt.Errorf("%w: %q, want %q", ErrIssuer, c.Iss, want.Issuer)
	case c.Aud != want.Audience:
		return fmt.Errorf("%w: the receipt is for %q, this enforcement point is %q", ErrAudience, c.Aud, want.Audience)
	case !c.DelegationVerified && !want.AllowUnverified:
		return fmt.Errorf("%w: the subject %q was not proven to custody", ErrUnverifiedDelegation, c.Sub)
	}
	for name := range c.Obligations {
		if !contains(want.Obligations, name) {
			return fmt.Errorf("%w: %s", ErrObligation, name)
		}
	}
	return matchCall(c, want.Call)
}

func contains(list []string, s string) bool {
	for _, e := range list {
		if e == s {
			return true
		}
	}
	return false
}

// matchCall compares the receipt with the call about to run, field by field, so that the error
// names what differs.
func matchCall(c *Claims, call Call) error {
	if call.Tool == "" || call.Subject == "" {
		return fmt.Errorf("%w: the expected call must name its tool and subject", ErrCallMismatch)
	}
	res := call.Resource
	if res == (Resource{}) {
		res = Resource{Type: "tool", ID: call.Tool}
	}
	args, err := ArgumentsSHA256(call.Arguments)
	if err != nil {
		return fmt.Errorf("%w: arguments: %v", ErrCallMismatch, err)
	}
	act := ""
	if c.Act != nil {
		act = c.Act.Sub
	}
	for _, f := range []struct{ name, got, want string }{
		{"tool (action)", c.Action, call.Tool},
		{"server", c.Server, call.Server},
		{"resource.type", c.Resource.Type, res.Type},
		{"resource.id", c.Resource.ID, res.ID},
		{"subject (sub)", c.Sub, call.Subject},
		{"arguments (arguments_sha256)", c.ArgumentsSHA256, args},
	} {
		if f.got != f.want {
			return fmt.Errorf("%w: %s is %q in the receipt, %q in the call", ErrCallMismatch, f.name, f.got, f.want)
		}
	}
	if call.Agent != "" && act != call.Agent {
		return fmt.Errorf("%w: agent (act.sub) is %q in the receipt, %q in the call", ErrCallMismatch, act, call.Agent)
	}
	return nil
}

// ParseCall reads a Call from its JSON form, strictly: an object with only Call's fields, no
// duplicate names at any depth (RFC 8785 takes I-JSON), nesting and numbers bounded.
func ParseCall(raw []byte) (Call, error) {
	v, err := parseStrict(raw)
	if err != nil {
		return Call{}, fmt.Errorf("receipt: call: %w", err)
	}
	obj, ok := v.(map[string]any)
	if !ok {
		return Call{}, errors.New("receipt: call: not a JSON object")
	}
	var c Call
	str := func(name string, dst *string, from map[string]any) error {
		x, ok := from[name]
		if !ok {
			return nil
		}
		s, ok := x.(string)
		if !ok {
			return fmt.Errorf("receipt: call: %s: not a string", name)
		}
		*dst = s
		return nil
	}
	for name, x := range obj {
		var err error
		switch name {
		case "tool":
			err = str(name, &c.Tool, obj)
		case "server":
			err = str(name, &c.Server, obj)
		case "subject":
			err = str(name, &c.Subject, obj)
		case "agent":
			err = str(name, &c.Agent, obj)
		case "arguments":
			m, ok := x.(map[string]any)
			if !ok && x != nil {
				return Call{}, errors.New("receipt: call: arguments: not an object")
			}
			if _, err := Canonicalize(m); err != nil {
				return Call{}, fmt.Errorf("receipt: call: arguments: %w", err)
			}
			c.Arguments = m
		case "resource":
			m, ok := x.(map[string]any)
			if !ok {
				return Call{}, errors.New("receipt: call: resource: not an object")
			}
			for k := range m {
				if k != "type" && k != "id" {
					return Call{}, fmt.Errorf("receipt: call: resource: unknown field %q", k)
				}
			}
			if err := str("type", &c.Resource.Type, m); err != nil {
				return Call{}, err
			}
			err = str("id", &c.Resource.ID, m)
		default:
			return Call{}, fmt.Errorf("receipt: call: unknown field %q", name)
		}
		if err != nil {
			return Call{}, err
		}
	}
	return c, nil
}
