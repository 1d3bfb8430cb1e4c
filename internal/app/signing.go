package app

import (
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/mod/sumdb/note"

	"github.com/custodyhq/custody/decisionlog"
)

// SigningKeyFile is where the App keeps the instance's checkpoint key when --signing-key is unset.
const SigningKeyFile = "checkpoint.key"

// loadSigningKey returns the checkpoint signer and its verifier key. Without path, the key lives
// in the data dir and is generated on first start.
func loadSigningKey(dataDir, path, instance string) (note.Signer, string, error) {
	if path == "" {
		path = filepath.Join(dataDir, SigningKeyFile)
		if _, err := loadOrCreate(path, func() string {
			skey, _, err := decisionlog.GenerateSigningKey(decisionlog.SigningKeyName(instance))
			if err != nil {
				panic(err) // only when the system's random source fails
			}
			return skey
		}); err != nil {
			return nil, "", fmt.Errorf("signing key: %w", err)
		}
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, "", fmt.Errorf("signing key: %w", err)
	}
	skey := strings.TrimSpace(string(raw))
	signer, err := note.NewSigner(skey)
	if err != nil {
		return nil, "", fmt.Errorf("signing key %s: %w", path, err)
	}
	vkey, err := DeriveVerifierKey(skey)
	if err != nil {
		return nil, "", fmt.Errorf("signing key %s: %w", path, err)
	}
	return signer, vkey, nil
}

// DeriveVerifierKey derives the public verifier key from an Ed25519 signed-note signer key
// ("PRIVATE+KEY+<name>+<hash>+<base64(0x01 || seed)>").
func DeriveVerifierKey(skey string) (string, error) {
	parts := strings.SplitN(skey, "+", 5) // the key data is base64 and may hold "+"
	if len(parts) != 5 || parts[0] != "PRIVATE" || parts[1] != "KEY" {
		return "", errors.New("not a signed-note private key")
	}
	data, err := base64.StdEncoding.DecodeString(parts[4])
	if err != nil || len(data) != 1+ed25519.SeedSize || data[0] != 1 {
		return "", errors.New("not an Ed25519 signed-note private key")
	}
	pub := ed25519.NewKeyFromSeed(data[1:]).Public().(ed25519.PublicKey)
	return note.NewEd25519VerifierKey(parts[2], pub)
}

// VerifierKey returns the checkpoint verifier key of the instance whose data dir is dataDir,
// from the signing key at path (default: SigningKeyFile in dataDir, generated if missing).
func VerifierKey(dataDir, path, instance string) (string, error) {
	_, vkey, err := loadSigningKey(dataDir, path, instance)
	if err != nil {
		return "", fmt.Errorf("app: %w", err)
	}
	return vkey, nil
}
