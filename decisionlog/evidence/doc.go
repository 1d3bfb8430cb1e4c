// Package evidence builds and checks evidence extracts: one self-describing JSON document
// holding every record of one correlation ID exactly as published, an RFC 6962 inclusion proof
// of each in its instance's Merkle tree, the signed checkpoints those proofs end in, the
// verifier keys and the policy revisions involved. Check verifies a document offline, with no
// NATS: anyone can repeat it with a standard Merkle library and the signed-note format (see
// docs/evidence.md).
package evidence
