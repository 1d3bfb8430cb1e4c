package schema

// Entity is an AuthZEN subject or resource: a typed identifier with free-form properties.
type Entity struct {
	Type       string         `json:"type"`
	ID         string         `json:"id"`
	Properties map[string]any `json:"properties,omitempty"`
}

// Action is an AuthZEN action. For an agent tool call, Name is the tool name and Properties
// carries the MCP server and the call's arguments.
type Action struct {
	Name       string         `json:"name"`
	Properties map[string]any `json:"properties,omitempty"`
}

// Agent is the acting workload, such as a SPIFFE ID of an agent deployment.
type Agent struct {
	ID         string         `json:"id"`
	Type       string         `json:"type,omitempty"`
	Properties map[string]any `json:"properties,omitempty"`
}

// Delegation says who delegated to whom and whether tokens proved it.
type Delegation struct {
	Verified bool  `json:"verified"`
	Chain    []any `json:"chain"`
}

// Task identifies the unit of agent work a call belongs to. The prompt that started it is
// never carried: only its keyed hash, IntentSHA256.
type Task struct {
	ID           string `json:"id,omitempty"`
	ParentID     string `json:"parent_id,omitempty"`
	Attempt      int64  `json:"attempt,omitempty"`
	SessionID    string `json:"session_id,omitempty"`
	IntentSHA256 string `json:"intent_sha256,omitempty"`
	// IntentSealed is set on decision records only, when serve runs with --intent-vault: where
	// the intent, encrypted, is kept. Policies never see it: it is filled after the decision.
	IntentSealed *SealedIntent `json:"intent_sealed,omitempty"`
}

// SealedIntent points at a task's intent encrypted in the intent vault: the stream, the subject
// and sequence of the entry, and the SHA-256 of its ciphertext, so that the record's hash covers
// exactly which entry holds the prompt.
type SealedIntent struct {
	Stream  string `json:"stream"`
	Subject string `json:"subject"`
	Seq     uint64 `json:"seq"`
	SHA256  string `json:"sha256"`
}
