// Package ocsftest validates OCSF events against a snapshot of the OCSF schema source, for
// tests: custody's own tests use it on every event they produce, and it is not part of custody.
package ocsftest
