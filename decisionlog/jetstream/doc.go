// Package jetstream publishes custody decision records to a NATS JetStream stream and waits for
// the stream's acknowledgement, so that a decision is durable before its caller is answered.
package jetstream
