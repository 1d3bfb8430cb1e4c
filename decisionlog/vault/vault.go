// Package vault keeps task intents (the prompt text behind an agent's calls) sealed: encrypted
// with age to the investigators' X25519 recipients and stored on a JetStream stream of their own,
// CUSTODY_VAULT, apart from the decision stream and outside the custody.> subjects its readers
// may see. custody holds no key that decrypts an entry; only the age identities of the
// recipients do, and they stay with the investigators.
package vault

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"filippo.io/age"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/custodyhq/custody/decisionlog"
	"github.com/custodyhq/custody/schema"
)

// StreamName and SubjectPrefix place the vault: one entry per decision on
// custody_vault.<instance>.<decision_id>. The prefix is not under custody.>, so neither the
// decision stream nor a reader's subscription to custody.> ever sees an entry.
const (
	StreamName     = "CUSTODY_VAULT"
	SubjectPrefix  = "custody_vault"
	StreamSubjects = SubjectPrefix + ".>"
)

// DefaultTimeout bounds one vault write or read.
const DefaultTimeout = 5 * time.Second

// ErrNotFound is returned, wrapped, when an entry is not in the vault (never written, or expired
// by --intent-vault-retention).
var ErrNotFound = errors.New("vault: no such sealed entry")

// ErrMismatch is returned, wrapped, when the entry at a reference is not the one the decision
// record names: another subject or other ciphertext than the record's hash vouches for.
var ErrMismatch = errors.New("vault: sealed entry does not match its reference")

// ParseRecipients reads --intent-vault values: each an age X25519 recipient (age1...), or @FILE
// naming a file of them, one a line ("#" comments and blank lines are skipped).
func ParseRecipients(specs []string) ([]age.Recipient, error) {
	var out []age.Recipient
	for _, spec := range specs {
		lines := []string{spec}
		src := spec
		if path, ok := strings.CutPrefix(spec, "@"); ok {
			raw, err := os.ReadFile(path)
			if err != nil {
				return nil, fmt.Errorf("vault: read recipients: %w", err)
			}
			lines = strings.Split(string(raw), "\n")
			src = path
		}
		n := 0
		for i, l := range lines {
			l = strings.TrimSpace(l)
			if l == "" || strings.HasPrefix(l, "#") {
				continue
			}
			r, err := age.ParseX25519Recipient(l)
			if err != nil {
				return nil, fmt.Errorf("vault: parse recipient (%s, line %d): %w", src, i+1, err)
			}
			out = append(out, r)
			n++
		}
		if n == 0 {
			return nil, fmt.Errorf("vault: parse recipients: %s names none", src)
		}
	}
	return out, nil
}

// ParseIdentities reads age identities (AGE-SECRET-KEY-1... lines, as age-keygen writes them).
func ParseIdentities(r io.Reader) ([]age.Identity, error) {
	ids, err := age.ParseIdentities(bufio.NewReader(r))
	if err != nil {
		return nil, fmt.Errorf("vault: parse identities: %w", err)
	}
	return ids, nil
}

// Decrypt opens a sealed entry with identities. With none that matches it fails and returns
// nothing: age authenticates the whole ciphertext, so a wrong key or an edited entry reveals no
// part of the intent.
func Decrypt(ciphertext []byte, identities ...age.Identity) ([]byte, error) {
	r, err := age.Decrypt(bytes.NewReader(ciphertext), identities...)
	if err != nil {
		return nil, fmt.Errorf("vault: decrypt: %w", err)
	}
	out, err := io.ReadAll(r)
	if err != nil {
		return nil, fmt.Errorf("vault: decrypt: %w", err)
	}
	return out, nil
}

// StreamConfig is the vault stream as custody creates it: file storage, limits retention with
// MaxAge set by --intent-vault-retention, new entries refused rather than old ones evicted when
// full, and neither message deletes nor purges allowed.
func StreamConfig(retention time.Duration, replicas int) jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:              StreamName,
		Description:       "custody sealed task intents (age-encrypted)",
		Subjects:          []string{StreamSubjects},
		Storage:           jetstream.FileStorage,
		Retention:         jetstream.LimitsPolicy,
		Discard:           jetstream.DiscardNew,
		MaxAge:            retention,
		MaxBytes:          -1,
		MaxMsgs:           -1,
		MaxMsgsPerSubject: -1,
		MaxConsumers:      -1,
		Replicas:          max(replicas, 1),
		DenyDelete:        true,
		DenyPurge:         true,
	}
}

// EnsureStream creates the vault stream, or checks that an existing one has this retention,
// these subjects and denies deletes and purges. A vault with another retention is refused
// rather than changed: shortening it would delete sealed intents.
func EnsureStream(ctx context.Context, js jetstream.JetStream, retention time.Duration, replicas int) (jetstream.Stream, error) {
	want := StreamConfig(retention, replicas)
	s, err := js.Stream(ctx, StreamName)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		s, err = js.CreateStream(ctx, want)
		if err != nil {
			return nil, fmt.Errorf("vault: create stream %s: %w", StreamName, err)
		}
		return s, nil
	}
	if err != nil {
		return nil, fmt.Errorf("vault: read stream %s: %w", StreamName, err)
	}
	got := s.CachedInfo().Config
	var diffs []string
	if fmt.Sprint(got.Subjects) != fmt.Sprint(want.Subjects) {
		diffs = append(diffs, fmt.Sprintf("subjects %v", got.Subjects))
	}
	if got.MaxAge != want.MaxAge {
		diffs = append(diffs, fmt.Sprintf("retention %s, not %s", got.MaxAge, want.MaxAge))
	}
	if !got.DenyDelete || !got.DenyPurge {
		diffs = append(diffs, "deletes or purges allowed")
	}
	if got.Storage != jetstream.FileStorage {
		diffs = append(diffs, "not file storage")
	}
	if len(diffs) > 0 {
		return nil, fmt.Errorf("vault: stream %s exists with %s", StreamName, strings.Join(diffs, "; "))
	}
	return s, nil
}

// Vault seals intents to a fixed set of recipients and reads entries back for unseal.
type Vault struct {
	js         jetstream.JetStream
	stream     jetstream.Stream
	recipients []age.Recipient
	instance   string
	timeout    time.Duration
}

// New returns a vault writing through js into stream (see EnsureStream) for instance.
// timeout bounds each write and read; 0 means DefaultTimeout.
func New(js jetstream.JetStream, stream jetstream.Stream, recipients []age.Recipient, instance string, timeout time.Duration) *Vault {
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	return &Vault{js: js, stream: stream, recipients: recipients, instance: instance, timeout: timeout}
}

// Subject is where decisionID's sealed intent is kept.
func (v *Vault) Subject(decisionID string) string {
	return SubjectPrefix + "." + decisionlog.Token(v.instance) + "." + decisionlog.Token(decisionID)
}

// Seal encrypts intent to the vault's recipients and stores it under decisionID, returning the
// reference the decision record carries once the stream has acknowledged the entry. The
// correlation ID is kept in a header so that an unseal can find the decision from its ID alone.
func (v *Vault) Seal(ctx context.Context, decisionID, correlationID, intent string) (*schema.SealedIntent, error) {
	var buf bytes.Buffer
	buf.Grow(len(intent) + 200*len(v.recipients))
	w, err := age.Encrypt(&buf, v.recipients...)
	if err != nil {
		return nil, fmt.Errorf("vault: seal: %w", err)
	}
	if _, err := io.WriteString(w, intent); err != nil {
		return nil, fmt.Errorf("vault: seal: %w", err)
	}
	if err := w.Close(); err != nil {
		return nil, fmt.Errorf("vault: seal: %w", err)
	}
	msg := nats.NewMsg(v.Subject(decisionID))
	msg.Data = buf.Bytes()
	msg.Header.Set(decisionlog.HeaderDecisionID, decisionID)
	msg.Header.Set(decisionlog.HeaderCorrelationID, correlationID)
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), v.timeout)
	defer cancel()
	// The decision ID as Nats-Msg-Id: a resent entry is dropped and acked with the first's seq.
	ack, err := v.js.PublishMsg(ctx, msg, jetstream.WithMsgID(decisionID), jetstream.WithExpectStream(StreamName))
	if err != nil {
		return nil, fmt.Errorf("vault: store sealed intent: %w", err)
	}
	sum := sha256.Sum256(msg.Data)
	return &schema.SealedIntent{Stream: StreamName, Subject: msg.Subject, Seq: ack.Sequence, SHA256: hex.EncodeToString(sum[:])}, nil
}

// CorrelationID returns the correlation ID of decisionID's sealed entry, for an unseal that
// names only the decision.
func (v *Vault) CorrelationID(ctx context.Context, decisionID string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, v.timeout)
	defer cancel()
	m, err := v.stream.GetLastMsgForSubject(ctx, SubjectPrefix+".*."+decisionlog.Token(decisionID))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return "", fmt.Errorf("%w: decision %s", ErrNotFound, decisionID)
	}
	if err != nil {
		return "", fmt.Errorf("vault: find decision %s: %w", decisionID, err)
	}
	return m.Header.Get(decisionlog.HeaderCorrelationID), nil
}

// Open returns the ciphertext ref names, after checking it is the entry the reference vouches
// for (subject and SHA-256). It does not decrypt: custody cannot.
func (v *Vault) Open(ctx context.Context, ref *schema.SealedIntent) ([]byte, error) {
	if ref == nil || ref.Stream != StreamName {
		return nil, fmt.Errorf("%w: not a reference into %s", ErrMismatch, StreamName)
	}
	ctx, cancel := context.WithTimeout(ctx, v.timeout)
	defer cancel()
	m, err := v.stream.GetMsg(ctx, ref.Seq)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, fmt.Errorf("%w: %s seq %d", ErrNotFound, StreamName, ref.Seq)
	}
	if err != nil {
		return nil, fmt.Errorf("vault: read %s seq %d: %w", StreamName, ref.Seq, err)
	}
	sum := sha256.Sum256(m.Data)
	if m.Subject != ref.Subject || hex.EncodeToString(sum[:]) != ref.SHA256 {
		return nil, fmt.Errorf("%w: %s seq %d", ErrMismatch, StreamName, ref.Seq)
	}
	return m.Data, nil
}
