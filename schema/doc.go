// Package schema holds the wire types a decision record carries: the AuthZEN entities, the
// acting agent, the delegation and the task. It is a leaf (standard library only) so that the
// readers of the record (decisionlog/verify, decisionlog/trace, receipt) build without the
// policy engine, and so that the record's JSON changes only when this package does: the engine
// (pdp) uses these types through aliases and maps them to OPA values itself.
package schema
