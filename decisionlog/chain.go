package decisionlog

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
)

// The hash chain. Each custody instance numbers its records seq 1, 2, 3, ... and each record
// carries prev_hash, the hash of the record before it ("" for seq 1), and hash, computed as:
//
//	hash = hex(SHA-256(B))
//
// where B is the record's JSON exactly as published, without its final "hash" member: the
// published body is B with its closing "}" replaced by `,"hash":"<hash>"}`. Hashing the bytes
// rather than a re-encoding means a verifier needs no canonicalisation rules: it strips the
// suffix, restores the "}", and hashes what is left.

// ErrBadHash is returned when a body's hash does not match its content.
var ErrBadHash = errors.New("record hash does not match its content")

// hashSuffixLen is len(`,"hash":"` + 64 hex digits + `"}`).
const hashSuffixLen = len(`,"hash":"`) + sha256.Size*2 + len(`"}`)

// Seal encodes r as published: it fills r.Hash and returns the body. r.Seq and r.PrevHash must
// already be set.
func Seal(r *Record) ([]byte, error) {
	r.Hash = ""
	b, err := marshalRecord(r)
	if err != nil {
		return nil, fmt.Errorf("decisionlog: encode record: %w", err)
	}
	sum := sha256.Sum256(b)
	r.Hash = hex.EncodeToString(sum[:])
	out := append(b[:len(b)-1], `,"hash":"`...) // b is ours: the body grows in place
	out = append(out, r.Hash...)
	out = append(out, `"}`...)
	return out, nil
}

// BodyHash checks a published body against its trailing hash member and returns that hash.
func BodyHash(body []byte) (string, error) {
	if len(body) < hashSuffixLen+2 || !bytes.HasSuffix(body, []byte(`"}`)) {
		return "", fmt.Errorf("%w: no trailing hash member", ErrBadHash)
	}
	suffix := body[len(body)-hashSuffixLen:]
	if !bytes.HasPrefix(suffix, []byte(`,"hash":"`)) {
		return "", fmt.Errorf("%w: no trailing hash member", ErrBadHash)
	}
	claimed := string(suffix[len(`,"hash":"`) : len(suffix)-2])
	unhashed := make([]byte, 0, len(body)-hashSuffixLen+1)
	unhashed = append(unhashed, body[:len(body)-hashSuffixLen]...)
	unhashed = append(unhashed, '}')
	sum := sha256.Sum256(unhashed)
	if got := hex.EncodeToString(sum[:]); got != claimed {
		return "", fmt.Errorf("%w: content hashes to %s, record says %s", ErrBadHash, got, claimed)
	}
	return claimed, nil
}

// ChainHead is the position of an instance's chain: the last durable record's seq and hash.
type ChainHead struct {
	Seq  uint64 `json:"seq"`
	Hash string `json:"hash"`
}

// Link sets r's place after head: the next seq and head's hash as prev_hash.
func (h ChainHead) Link(r *Record) {
	r.Seq = h.Seq + 1
	r.PrevHash = h.Hash
}

// After returns the head once r (already sealed) is durable.
func After(r *Record) ChainHead { return ChainHead{Seq: r.Seq, Hash: r.Hash} }
