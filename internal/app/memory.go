package app

import (
	"context"
	"os"
	"runtime"
	"runtime/debug"

	"github.com/rs/zerolog"

	"github.com/custodyhq/custody/bundles"
	"github.com/custodyhq/custody/pdp"
)

// The collector's settings for serve, used unless the operator sets GOGC or GOMEMLIMIT.
//
// Each decision allocates tens of KiB that are garbage once it is answered, against a live heap
// of about 20 MB; with Go's default GOGC=100 collection took about a quarter of the CPU under
// load, and at GOGC=200 still about a tenth on traffic the memo cannot answer. GOGC=400 runs it
// about half as often again (1.1 against 1.9 collections per 1,000 decisions at 4 connections).
// A soft memory limit keeps the resident set bounded whatever GOGC allows: the heap may grow to
// minMemoryLimit, or to liveHeadroom times the live heap the policy set leaves after it is
// loaded, whichever is larger, so a large policy set (a catalog of 100,000 tools) gets room
// instead of a collector that never stops.
const (
	gcPercent      = 400
	minMemoryLimit = 112 << 20
	liveHeadroom   = 3
)

// memoryGovernor sets the soft memory limit from the live heap after each policy load.
type memoryGovernor struct {
	enabled bool
	logger  zerolog.Logger
}

func newMemoryGovernor(logger zerolog.Logger) *memoryGovernor {
	_, gogc := os.LookupEnv("GOGC")
	_, limit := os.LookupEnv("GOMEMLIMIT")
	g := &memoryGovernor{enabled: !gogc && !limit, logger: logger}
	if g.enabled {
		debug.SetGCPercent(gcPercent)
		debug.SetMemoryLimit(minMemoryLimit)
	}
	return g
}

// afterLoad measures the live heap now that a policy set is loaded and moves the limit.
func (g *memoryGovernor) afterLoad() {
	if g == nil || !g.enabled {
		return
	}
	runtime.GC() // a policy load is rare; the live heap it leaves is what matters
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	limit := max(int64(minMemoryLimit), int64(ms.HeapAlloc)*liveHeadroom)
	debug.SetMemoryLimit(limit)
	g.logger.Debug().Uint64("live_heap_bytes", ms.HeapAlloc).Int64("memory_limit_bytes", limit).Msg("memory limit set")
}

// governedLoader loads policy sets into the engine and then lets the governor look at the heap.
type governedLoader struct {
	engine   *pdp.Engine
	governor *memoryGovernor
}

var _ bundles.Loader = governedLoader{}

func (l governedLoader) Load(ctx context.Context, set pdp.PolicySet) error {
	if err := l.engine.Load(ctx, set); err != nil {
		return err
	}
	l.governor.afterLoad()
	return nil
}
