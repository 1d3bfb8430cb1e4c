// Package bundles loads custody policy sets (a directory of Rego and data files, an OPA bundle
// tarball, or an embedded file system), checks their signatures, names each by a revision, and
// reloads them into the engine when they change. A Ledger orders signed bundles by the serial in
// their signed manifest and refuses an older one, so that a replayed bundle cannot roll the
// policy back.
package bundles
