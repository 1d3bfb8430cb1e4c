// Package keyfile loads a key from a file, creating it on first use, durably and at most once:
// every custody key that lives in the data dir (receipt signing key, and the binary's intent and
// checkpoint keys) is read and first written the same way.
package keyfile
