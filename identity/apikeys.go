package identity

import (
	"bufio"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"strings"
)

// APIKeys authenticates callers that present an API key, such as AuthZEN gateways. Keys are held
// only as SHA-256 hashes: the file never contains a usable key.
type APIKeys struct {
	byHash map[[sha256.Size]byte]string // hash -> caller name
}

// APIKeyPrefix marks custody API keys, so that they are recognisable in secret scanners.
const APIKeyPrefix = "cust_"

// LoadAPIKeys reads a file of "name sha256-hex" lines; blank lines and lines starting with # are
// ignored.
func LoadAPIKeys(path string) (*APIKeys, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("identity: open api keys: %w", err)
	}
	defer f.Close()
	return ParseAPIKeys(f, path)
}

// ParseAPIKeys reads API key hashes from r; source names r in errors.
func ParseAPIKeys(r io.Reader, source string) (*APIKeys, error) {
	k := &APIKeys{byHash: map[[sha256.Size]byte]string{}}
	sc := bufio.NewScanner(r)
	for line := 1; sc.Scan(); line++ {
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		fields := strings.Fields(text)
		if len(fields) != 2 {
			return nil, fmt.Errorf("identity: %s:%d: want \"name sha256-hex\"", source, line)
		}
		raw, err := hex.DecodeString(strings.TrimPrefix(fields[1], "sha256:"))
		if err != nil || len(raw) != sha256.Size {
			return nil, fmt.Errorf("identity: %s:%d: hash must be 64 hex digits", source, line)
		}
		var h [sha256.Size]byte
		copy(h[:], raw)
		if other, dup := k.byHash[h]; dup {
			return nil, fmt.Errorf("identity: %s:%d: same key as %q", source, line, other)
		}
		k.byHash[h] = fields[0]
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("identity: read %s: %w", source, err)
	}
	return k, nil
}

// Lookup returns the caller name for key. Every stored hash is compared in constant time, so the
// time taken says nothing about which keys exist.
func (k *APIKeys) Lookup(key string) (string, bool) {
	if k == nil || key == "" {
		return "", false
	}
	h := sha256.Sum256([]byte(key))
	name, found := "", false
	for stored, n := range k.byHash {
		if subtle.ConstantTimeCompare(stored[:], h[:]) == 1 {
			name, found = n, true
		}
	}
	return name, found
}

// NewAPIKey returns a fresh random key and the line to add to an API keys file for it.
func NewAPIKey(name string) (key, line string, err error) {
	if name == "" || strings.ContainsAny(name, " \t\n#") {
		return "", "", fmt.Errorf("identity: api key name %q: want a single word", name)
	}
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", "", err
	}
	key = APIKeyPrefix + base64.RawURLEncoding.EncodeToString(b)
	sum := sha256.Sum256([]byte(key))
	return key, name + " " + hex.EncodeToString(sum[:]), nil
}
