package main

import (
	"os"
	"runtime/debug"
)

// Defaults for the garbage collector of a serving custody, used unless the operator sets GOGC
// or GOMEMLIMIT.
const (
	defaultGCPercent   = 400
	defaultMemoryLimit = 512 << 20
)

// tuneGC sets serve's collector defaults. custody's live heap is small (the compiled policy set,
// a few caches) while each decision allocates tens of KiB that are garbage once it is answered.
// With Go's default GOGC=100 a collection ran every few hundred requests and took about 14% of
// the CPU under load. GOGC=400 lets the heap grow to five times the live set between
// collections (about 100 MB resident with the default policies); the soft memory limit keeps a
// large policy set (a catalog of 100,000 tools) from growing the heap without bound.
func tuneGC() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(defaultGCPercent)
	}
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(defaultMemoryLimit)
	}
}
