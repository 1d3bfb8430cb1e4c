// Package verify checks custody's decision stream end to end: each instance's hash chain of
// decision records and the signed checkpoints that commit to it.
package verify
