package identity_test

import (
	"encoding/json"
	"os"
	"testing"
)

func jsonMarshal(v any) ([]byte, error) { return json.Marshal(v) }

func writeFile(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}
