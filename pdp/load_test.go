package pdp_test

import (
	"context"
	"runtime"
	"testing"

	"github.com/custodyhq/custody/pdp"
)

// allocated is the bytes f allocates. TotalAlloc counts every allocation whatever the GC does, so
// unlike a duration it does not depend on how loaded the machine is.
func allocated(f func()) uint64 {
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// TestLoadCompilesOnce: a policy load compiles its set once, whatever it prepares from it (the
// decision query, the three search queries, the memo's analysis). It compiled the set five times
// before, and allocated 4x what one compile does (149 MB against 37 MB at 100,000 tools); the
// bound is 1.5x. Bytes allocated stand in for time: compiling is what both are made of.
func TestLoadCompilesOnce(t *testing.T) {
	set, _ := catalogSet(t, 10000)
	ctx := context.Background()
	var err error
	one := allocated(func() { _, err = oneCompile(ctx, set) })
	if err != nil {
		t.Fatal(err)
	}
	load := allocated(func() { _, err = pdp.New(ctx, set, pdp.WithMemo(100)) })
	if err != nil {
		t.Fatal(err)
	}
	if ratio := float64(load) / float64(one); ratio > 1.5 {
		t.Errorf("a load allocates %d bytes, %.1fx one compile (%d bytes); want at most 1.5x", load, ratio, one)
	}
}
