package app

import (
	"testing"
	"time"
)

func TestEvidenceWitnessFlags(t *testing.T) {
	for _, ok := range []string{"file:/tmp/w.jsonl", "https://witness.example/", "http://127.0.0.1:8080", "http://localhost:1/w"} {
		if err := (&EvidenceConfig{Witnesses: []string{ok}}).Validate(); err != nil {
			t.Errorf("%s: %v", ok, err)
		}
	}
	for _, bad := range []string{"http://witness.example/", "ftp://x", "file:", "/tmp/w.jsonl", "https://"} {
		if err := (&EvidenceConfig{Witnesses: []string{bad}}).Validate(); err == nil {
			t.Errorf("%s accepted", bad)
		}
	}
}

func TestVaultFlags(t *testing.T) {
	if err := (VaultConfig{}).Validate(); err != nil {
		t.Errorf("no vault: %v", err)
	}
	if err := (VaultConfig{Retention: time.Hour}).Validate(); err == nil {
		t.Error("--intent-vault-retention without --intent-vault accepted")
	}
	if err := (VaultConfig{Recipients: []string{"age1nope"}}).Validate(); err == nil {
		t.Error("a malformed recipient accepted")
	}
	c := VaultConfig{Recipients: []string{"age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"}}
	if rs, err := c.recipients(); err != nil || len(rs) != 1 {
		t.Errorf("a valid recipient: %v", err)
	}
}
