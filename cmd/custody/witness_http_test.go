package main

import (
	"testing"
	"time"
)

func TestEvidenceWitnessFlags(t *testing.T) {
	for _, ok := range []string{"file:/tmp/w.jsonl", "https://witness.example/", "http://127.0.0.1:8080", "http://localhost:1/w"} {
		if err := (&evidenceConfig{witnesses: stringList{ok}}).Validate(); err != nil {
			t.Errorf("%s: %v", ok, err)
		}
	}
	for _, bad := range []string{"http://witness.example/", "ftp://x", "file:", "/tmp/w.jsonl", "https://"} {
		if err := (&evidenceConfig{witnesses: stringList{bad}}).Validate(); err == nil {
			t.Errorf("%s accepted", bad)
		}
	}
}

func TestVaultFlags(t *testing.T) {
	if err := (&vaultConfig{}).Validate(); err != nil {
		t.Errorf("no vault: %v", err)
	}
	if err := (&vaultConfig{retention: time.Hour}).Validate(); err == nil {
		t.Error("--intent-vault-retention without --intent-vault accepted")
	}
	if err := (&vaultConfig{recipientSpecs: stringList{"age1nope"}}).Validate(); err == nil {
		t.Error("a malformed recipient accepted")
	}
	c := &vaultConfig{recipientSpecs: stringList{"age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"}}
	if err := c.Validate(); err != nil || len(c.recipients) != 1 {
		t.Errorf("a valid recipient: %v", err)
	}
}
