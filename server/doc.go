// Package server is custody's HTTP API: it decodes requests, asks the decision engine, makes the
// decision record durable, and only then answers.
package server
