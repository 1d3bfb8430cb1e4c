// Package receipt issues decision receipts: short-lived JWS (JWT) tokens, signed by custody, that
// an agent forwards to the downstream system so the system's log can name the decision.
package receipt
