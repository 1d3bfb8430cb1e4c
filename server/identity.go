package server

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/labstack/echo/v4"

	"github.com/custodyhq/custody/decisionlog"
	"github.com/custodyhq/custody/identity"
	"github.com/custodyhq/custody/pdp"
)

// TokenVerifier verifies delegation tokens. *identity.Verifier implements it.
type TokenVerifier interface {
	Verify(ctx context.Context, token string) (*identity.Delegation, error)
}

// APIKeyLookup finds the caller an API key belongs to. *identity.APIKeys implements it.
type APIKeyLookup interface {
	Lookup(key string) (name string, ok bool)
}

// WithTokenVerifier verifies `Authorization: Bearer <JWT>` delegation tokens with v.
func WithTokenVerifier(v TokenVerifier) Option { return func(s *Server) { s.tokens = v } }

// WithAPIKeys accepts the API keys k knows, in X-API-Key or as a non-JWT bearer token.
func WithAPIKeys(k APIKeyLookup) Option { return func(s *Server) { s.apiKeys = k } }

// WithRequireAuth refuses unauthenticated decision requests with 401.
func WithRequireAuth(required bool) Option { return func(s *Server) { s.requireAuth = required } }

// HeaderAPIKey carries an API key.
const HeaderAPIKey = "X-API-Key"

// Ways a caller can be authenticated, as recorded in caller.method.
const (
	AuthJWT    = "jwt"
	AuthAPIKey = "api_key"
	AuthMTLS   = "mtls"
)

// SubjectIssuerProperty is the subject property that names the issuer of the token that proved
// the subject (input.subject.properties.iss). Custody sets it from a verified token and drops
// it from subjects a body asserts, so a policy may trust it.
const SubjectIssuerProperty = "iss"

// Reasons recorded for refused attempts.
const (
	ReasonAuthenticationFailed = "authentication_failed"
	ReasonIdentityMismatch     = "identity_mismatch"
)

// caller is what authentication proved about who is calling.
type caller struct {
	method     string               // strongest proof presented: AuthJWT, AuthAPIKey, AuthMTLS, or ""
	id         string               // API key name, token subject or SPIFFE ID
	delegation *identity.Delegation // from a verified token
	workload   string               // SPIFFE ID of a verified client certificate
}

func (c *caller) ref() *decisionlog.Caller {
	if c == nil || c.method == "" {
		return nil
	}
	ref := &decisionlog.Caller{Method: c.method, ID: c.id}
	if c.workload != "" && c.method != AuthMTLS {
		ref.Workload = c.workload
	}
	return ref
}

// policyCaller is the caller as the policy sees it, input.caller.
func (c *caller) policyCaller() *pdp.Caller {
	if c == nil {
		return &pdp.Caller{Kind: pdp.CallerAnonymous}
	}
	switch c.method {
	case AuthJWT:
		return &pdp.Caller{Kind: pdp.CallerToken, ID: c.id}
	case AuthAPIKey:
		return &pdp.Caller{Kind: pdp.CallerAPIKey, ID: c.id}
	case AuthMTLS:
		return &pdp.Caller{Kind: pdp.CallerMTLS, ID: c.id}
	default:
		return &pdp.Caller{Kind: pdp.CallerAnonymous}
	}
}

// authenticate reads the caller's credentials, with one precedence (README "Credential
// precedence"): every credential presented is checked, and one that fails is a 401 whatever
// else was presented, even when authentication is optional: a bad credential is an attack or a
// bug, never anonymous, and never outvoted by a good one. The caller is then named by the
// first of a bearer JWT (a delegation token), an API key (X-API-Key, or a bearer that is not a
// JWT), and the client certificate's SPIFFE ID; the certificate binds the agent in every case.
func (s *Server) authenticate(c echo.Context) (*caller, *apiError) {
	req := c.Request()
	cl := &caller{}
	if req.TLS != nil && len(req.TLS.PeerCertificates) > 0 {
		// The TLS layer verified the chain against --client-ca before the handler ran.
		if id := identity.SPIFFEID(req.TLS.PeerCertificates[0]); id != "" {
			cl.method, cl.id, cl.workload = AuthMTLS, id, id
		}
	}
	var bearer string
	if h := req.Header.Get("Authorization"); h != "" {
		scheme, value, ok := strings.Cut(h, " ")
		if !ok || !strings.EqualFold(scheme, "Bearer") || strings.TrimSpace(value) == "" {
			return nil, errorf(CodeInvalidToken, "Authorization header: want \"Bearer <token>\"")
		}
		bearer = strings.TrimSpace(value)
	}
	var keys []string // every API key presented, each of which must be valid
	if values := req.Header.Values(HeaderAPIKey); len(values) > 1 {
		return nil, errorf(CodeInvalidCredentials, "more than one "+HeaderAPIKey+" header")
	} else if len(values) == 1 {
		if values[0] == "" {
			return nil, errorf(CodeInvalidCredentials, HeaderAPIKey+" header is empty")
		}
		keys = append(keys, values[0])
	}
	var d *identity.Delegation
	if bearer != "" && identity.LooksLikeJWT(bearer) {
		if s.tokens == nil {
			return nil, errorf(CodeInvalidToken, "bearer token: no trusted issuer is configured")
		}
		var err error
		if d, err = s.tokens.Verify(req.Context(), bearer); err != nil {
			if errors.Is(err, identity.ErrSubjectNotAllowed) || errors.Is(err, identity.ErrActorNotAllowed) {
				return nil, errorf(CodeSubjectNotAllowed, "bearer token: "+err.Error())
			}
			return nil, errorf(CodeInvalidToken, "bearer token: "+err.Error())
		}
	} else if bearer != "" {
		keys = append(keys, bearer)
	}
	keyName := ""
	for _, key := range keys {
		if s.apiKeys == nil {
			return nil, errorf(CodeInvalidCredentials, "API key presented, but no API keys are configured")
		}
		name, ok := s.apiKeys.Lookup(key)
		if !ok {
			return nil, errorf(CodeInvalidCredentials, "API key not recognised")
		}
		if keyName != "" && name != keyName {
			return nil, errorf(CodeInvalidCredentials, "two API keys of different callers presented")
		}
		keyName = name
	}
	switch {
	case d != nil:
		cl.method, cl.id, cl.delegation = AuthJWT, d.Subject, d
	case keyName != "":
		cl.method, cl.id = AuthAPIKey, keyName
	}
	if cl.method == "" && s.requireAuth {
		return nil, errorf(CodeUnauthenticated, "authentication required: a bearer token, an API key or a client certificate")
	}
	return cl, nil
}

// wwwAuthenticate is the RFC 6750 challenge for a 401 with code.
func wwwAuthenticate(code string) string {
	switch code {
	case CodeInvalidToken:
		return `Bearer realm="custody", error="invalid_token"`
	default:
		return `Bearer realm="custody"`
	}
}

// applyIdentity puts what the caller proved into in. Identities in the body are claims; a
// verified token or certificate is proof, and proof wins: where the body names someone else the
// request is refused with identity_mismatch rather than silently corrected.
func applyIdentity(in *pdp.Input, cl *caller, bodyUser bool) *apiError {
	in.Caller = cl.policyCaller()
	// subject.properties.iss names the issuer that proved the subject: only a token sets it.
	if _, asserted := in.Subject.Properties[SubjectIssuerProperty]; asserted {
		props := make(map[string]any, len(in.Subject.Properties))
		for k, v := range in.Subject.Properties {
			if k != SubjectIssuerProperty {
				props[k] = v
			}
		}
		in.Subject.Properties = props
	}
	if cl == nil {
		return nil
	}
	if d := cl.delegation; d != nil {
		if bodyUser && in.Subject.ID != d.Subject {
			return errorf(CodeIdentityMismatch, fmt.Sprintf("user.id %q differs from the token's subject %q", in.Subject.ID, d.Subject))
		}
		// Properties come from the token alone: body-asserted scopes or roles must not widen access.
		props := make(map[string]any, len(d.Props)+1)
		for k, v := range d.Props {
			props[k] = v
		}
		props[SubjectIssuerProperty] = d.Issuer
		in.Subject = pdp.Entity{Type: "user", ID: d.Subject, Properties: props}
		chain := []any{link("user", d.Subject, d.Issuer, AuthJWT)}
		if actor := d.CurrentActor(); actor != nil {
			if in.Agent != nil && in.Agent.ID != actor.Subject {
				return errorf(CodeIdentityMismatch, fmt.Sprintf("agent.id %q differs from the token's actor %q", in.Agent.ID, actor.Subject))
			}
			for _, a := range d.Actors {
				chain = append(chain, link("agent", a.Subject, a.Issuer, AuthJWT))
			}
			in.Agent = &pdp.Agent{ID: actor.Subject, Type: "agent", Properties: actor.Claims}
			in.Delegation = pdp.Delegation{Verified: true, Chain: chain}
		} else if in.Agent != nil {
			// A token without act proves only the subject; the agent is still a claim.
			in.Delegation = pdp.Delegation{Verified: false, Chain: append(chain, link("agent", in.Agent.ID, "", ""))}
		}
	}
	if cl.workload != "" {
		if in.Agent != nil && in.Agent.ID != cl.workload {
			return errorf(CodeIdentityMismatch, fmt.Sprintf("agent.id %q differs from the client certificate's SPIFFE ID %q", in.Agent.ID, cl.workload))
		}
		if in.Agent == nil {
			in.Agent = &pdp.Agent{ID: cl.workload, Type: "agent"}
		}
		markWorkloadVerified(&in.Delegation, cl.workload)
	}
	return nil
}

func link(typ, id, issuer, verifiedBy string) map[string]any {
	l := map[string]any{"type": typ, "id": id}
	if issuer != "" {
		l["issuer"] = issuer
	}
	if verifiedBy != "" {
		l["verified_by"] = verifiedBy
	}
	return l
}

// markWorkloadVerified notes on the chain's agent link that a client certificate proved it.
func markWorkloadVerified(d *pdp.Delegation, workload string) {
	for _, l := range d.Chain {
		if m, ok := l.(map[string]any); ok && m["type"] == "agent" && m["id"] == workload {
			if _, has := m["verified_by"]; !has {
				m["verified_by"] = AuthMTLS
			}
			return
		}
	}
	d.Chain = append(d.Chain, link("agent", workload, "", AuthMTLS))
}
