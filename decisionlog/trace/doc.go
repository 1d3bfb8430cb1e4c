// Package trace rebuilds the workflow graph of one correlation ID from its decision and
// execution records, and joins downstream system logs to the stream: pure functions, no NATS.
package trace
