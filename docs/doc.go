// Package docs holds custody's documentation and the tests that keep it true: the examples in
// docs/testdata run against the built binary, every link, flag, command, endpoint, test name and
// repository file a page names must exist, and configuration.md is generated from the flags.
//
// Regenerate configuration.md after changing a flag:
//
//	go generate ./docs
package docs

//go:generate go test -run TestConfigurationReference -update .
