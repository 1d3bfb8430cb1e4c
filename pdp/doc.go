// Package pdp is custody's decision engine: it compiles a Rego policy set once and decides each
// request against it, with no knowledge of HTTP or NATS.
package pdp
