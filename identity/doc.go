// Package identity proves who is calling custody: it verifies OAuth 2.0 Token Exchange (RFC 8693)
// delegation tokens against trusted issuers' JWKS, checks hashed API keys, and reads SPIFFE IDs
// from client certificates. It knows nothing of HTTP routing or NATS.
package identity
