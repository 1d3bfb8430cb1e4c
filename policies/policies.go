// Package policies holds custody's default policy set, embedded in the binary.
package policies

import "embed"

// FS is the default policy set: the Rego modules (package custody.authz for
// decisions, custody.search for action search, and their tests) and data.json,
// which holds the agent registry and tool catalog under data.custody. Load its
// root as the data root so that data.json lands at data.custody.
//
//go:embed *.rego data.json
var FS embed.FS
