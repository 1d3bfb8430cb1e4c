package server

import (
	"fmt"

	"github.com/custodyhq/custody/agentcall"
	"github.com/custodyhq/custody/pdp"
)

// DecodeCall reads body as endpoint reads it (EndpointAuthorize or EndpointEvaluation), with the
// same checks and errors, and returns the call it claims, mapped as that endpoint maps it.
// `custody eval` reads a request body with it, so that it decides the very input the server
// would; nothing is authenticated, so identity is what the body claims.
func DecodeCall(endpoint string, body []byte) (*agentcall.Call, error) {
	switch endpoint {
	case EndpointAuthorize:
		r, err := decodeAuthorize(body)
		if err != nil {
			return nil, err
		}
		return nativeCall(r), nil
	case EndpointEvaluation:
		r, err := decodeEvaluation(body)
		if err != nil {
			return nil, err
		}
		return authzenCall(r.item, r.lift), nil
	default:
		return nil, fmt.Errorf("server: decode call: %q is not an endpoint of one call", endpoint)
	}
}

// DecodeInput is DecodeCall mapped onto the policy input of an anonymous caller, exactly as the
// server would decide it: identity applied as for a request with no credentials (input.caller
// anonymous, body identities as claims), no intent hash.
func DecodeInput(endpoint string, body []byte) (*pdp.Input, error) {
	call, err := DecodeCall(endpoint, body)
	if err != nil {
		return nil, err
	}
	in := agentcall.Input(call, nil)
	// AuthZEN always names its subject; a native body may leave the user out.
	bodyUser := endpoint != EndpointAuthorize || call.Subject != nil
	if aerr := applyIdentity(in, nil, bodyUser); aerr != nil {
		return nil, aerr
	}
	return in, nil
}
