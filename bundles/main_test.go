package bundles_test

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package when its tests leave a goroutine behind: every goroutine the
// package starts must end with the Run or Close that owns it.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
