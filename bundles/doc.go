// Package bundles loads custody policy sets: a directory of Rego and data files, an OPA bundle
// tarball, or an embedded file system, each named by a revision.
package bundles
