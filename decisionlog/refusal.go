package decisionlog

import "time"

// Refusal is the fixed summary that stands for a refused attempt in its record: an attempt whose
// caller failed authentication is recorded as this and the endpoint, never with its body. Every
// field is bounded (codes from a fixed set, a network address, fixed-length hashes), so that a
// flood of attempts cannot put an attacker's bytes, or a body the readers cannot parse, on the
// stream. Its JSON keys are part of the record's wire contract.
type Refusal struct {
	// Code is the refusal's error code, such as invalid_token or unauthenticated.
	Code string `json:"code"`
	// CallerKind is the credential presented: jwt, api_key, mtls, or anonymous.
	CallerKind string `json:"caller_kind"`
	// Source is the network address (IP, without port) the attempt came from; "" on an
	// aggregate.
	Source string `json:"source,omitempty"`
	// Claimed holds keyed hashes of the IDs the body claimed, when it could be read.
	Claimed *ClaimedIDs `json:"claimed,omitempty"`
	// Count is how many attempts the record stands for: 1, or on an aggregate the attempts
	// beyond the rate limit since Since.
	Count uint64 `json:"count"`
	// Sources is how many distinct sources an aggregate's attempts came from (counted up to a
	// bound; see the server's refusal limits).
	Sources int `json:"sources,omitempty"`
	// Since starts the interval an aggregate counts.
	Since *time.Time `json:"since,omitempty"`
}

// ClaimedIDs are hex HMAC-SHA256 sums, keyed with the intent hasher's key, of the IDs a refused
// body claimed: equal claims are linkable across records, the IDs themselves are not recorded.
type ClaimedIDs struct {
	Subject string `json:"subject,omitempty"`
	Agent   string `json:"agent,omitempty"`
	Action  string `json:"action,omitempty"`
}

// ReasonRefusalsDropped is the reason of an aggregate refusal record: the attempts it counts
// were beyond the rate limit and recorded only as that count.
const ReasonRefusalsDropped = "refusals_rate_limited"
