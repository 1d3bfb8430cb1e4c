// Package spool makes decision records durable on local disk before a caller is answered, and
// forwards them to JetStream in order, so that custody keeps answering while NATS is away and
// loses nothing it answered. One fsync serves every append that arrived while it ran (group
// commit).
package spool
