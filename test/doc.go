// Package test holds custody's end-to-end tests: they build the custody binary, run it against a
// real embedded or external NATS JetStream server, drive it over HTTP, and read the decision
// stream back.
package test
