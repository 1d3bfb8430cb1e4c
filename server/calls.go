package server

import (
	"fmt"

	"github.com/custodyhq/custody/agentcall"
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
