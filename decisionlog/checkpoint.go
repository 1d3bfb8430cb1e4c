package decisionlog

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"golang.org/x/mod/sumdb/note"
)

// SchemaCheckpointV1 names the wire format of a checkpoint message.
const SchemaCheckpointV1 = "custody.checkpoint.v1"

// CheckpointPrefix is the subject prefix of checkpoints: custody.checkpoint.<instance>.
const CheckpointPrefix = "custody.checkpoint"

// Checkpoint commits an instance to its chain head. Note is a signed note (the format of
// golang.org/x/mod/sumdb/note, used by Go's checksum database and the C2SP tlog-checkpoint
// spec) whose text is three lines:
//
//	custody.decision.v1/<instance>
//	<seq>
//	<base64 of the head hash's 32 bytes>
//
// The other fields repeat the note's content for readers; verifiers trust only the note.
type Checkpoint struct {
	Schema    string    `json:"schema"`
	Instance  string    `json:"instance"`
	Seq       uint64    `json:"seq"`
	Hash      string    `json:"hash"`
	Timestamp time.Time `json:"timestamp"`
	Note      string    `json:"note"`
}

// CheckpointSubject is where an instance's checkpoints are published.
func CheckpointSubject(instance string) string { return CheckpointPrefix + "." + Token(instance) }

// CheckpointOrigin is the first line of an instance's checkpoint notes.
func CheckpointOrigin(instance string) string { return SchemaDecisionV1 + "/" + instance }

// SigningKeyName is the signed-note key name of an instance's checkpoint key.
func SigningKeyName(instance string) string { return "custody-" + Token(instance) }

// GenerateSigningKey makes an Ed25519 checkpoint key named name, returning the signer key (keep
// it secret) and the verifier key (give it to verifiers), both in signed-note encoding.
func GenerateSigningKey(name string) (skey, vkey string, err error) {
	return note.GenerateKey(rand.Reader, name)
}

// NewCheckpoint signs head for instance with signer.
func NewCheckpoint(instance string, head ChainHead, now time.Time, signer note.Signer) (*Checkpoint, error) {
	raw, err := hex.DecodeString(head.Hash)
	if err != nil || len(raw) != 32 {
		return nil, fmt.Errorf("decisionlog: checkpoint: head hash %q is not 32 hex bytes", head.Hash)
	}
	text := fmt.Sprintf("%s\n%d\n%s\n", CheckpointOrigin(instance), head.Seq, base64.StdEncoding.EncodeToString(raw))
	signed, err := note.Sign(&note.Note{Text: text}, signer)
	if err != nil {
		return nil, fmt.Errorf("decisionlog: sign checkpoint: %w", err)
	}
	return &Checkpoint{
		Schema: SchemaCheckpointV1, Instance: instance, Seq: head.Seq, Hash: head.Hash,
		Timestamp: now.UTC(), Note: string(signed),
	}, nil
}

// ErrCheckpoint is returned, wrapped, for a checkpoint that does not verify.
var ErrCheckpoint = errors.New("checkpoint does not verify")

// OpenCheckpoint verifies c's note with verifiers and returns the head it commits to. The
// instance named in the note must be c's.
func OpenCheckpoint(c *Checkpoint, verifiers note.Verifiers) (ChainHead, error) {
	n, err := note.Open([]byte(c.Note), verifiers)
	if err != nil {
		return ChainHead{}, fmt.Errorf("%w: %w", ErrCheckpoint, err)
	}
	return parseCheckpointText(c.Instance, n.Text)
}

// ReadCheckpointUnverified parses c's note text without checking signatures, for reports made
// without a public key.
func ReadCheckpointUnverified(c *Checkpoint) (ChainHead, error) {
	text, _, ok := strings.Cut(c.Note, "\n\n")
	if !ok {
		return ChainHead{}, fmt.Errorf("%w: malformed note", ErrCheckpoint)
	}
	return parseCheckpointText(c.Instance, text+"\n")
}

func parseCheckpointText(instance, text string) (ChainHead, error) {
	lines := strings.Split(strings.TrimSuffix(text, "\n"), "\n")
	if len(lines) < 3 || lines[0] != CheckpointOrigin(instance) {
		return ChainHead{}, fmt.Errorf("%w: note is not a checkpoint of instance %q", ErrCheckpoint, instance)
	}
	seq, err := strconv.ParseUint(lines[1], 10, 64)
	if err != nil {
		return ChainHead{}, fmt.Errorf("%w: bad seq line %q", ErrCheckpoint, lines[1])
	}
	raw, err := base64.StdEncoding.DecodeString(lines[2])
	if err != nil || len(raw) != 32 {
		return ChainHead{}, fmt.Errorf("%w: bad hash line", ErrCheckpoint)
	}
	return ChainHead{Seq: seq, Hash: hex.EncodeToString(raw)}, nil
}

// NewVerifiers parses signed-note verifier keys, as `custody keys` prints them.
func NewVerifiers(vkeys ...string) (note.Verifiers, error) {
	var vs []note.Verifier
	for _, k := range vkeys {
		v, err := note.NewVerifier(strings.TrimSpace(k))
		if err != nil {
			return nil, fmt.Errorf("decisionlog: verifier key: %w", err)
		}
		vs = append(vs, v)
	}
	return note.VerifierList(vs...), nil
}
