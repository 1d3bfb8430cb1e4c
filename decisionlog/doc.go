// Package decisionlog defines custody's decision record (custody.decision.v1), the subjects it is
// published on, and the Publisher interface that makes a record durable before a caller is answered.
package decisionlog
