package identity_test

import (
	"encoding/json"
	"os"
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package when a test leaves a goroutine behind, such as a JWKS fetch a
// verifier did not stop on Close.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func jsonMarshal(v any) ([]byte, error) { return json.Marshal(v) }

func writeFile(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}
