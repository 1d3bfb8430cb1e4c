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

// SchemaCheckpointV1 names the wire format of a checkpoint message that commits to the chain
// head only. custody no longer writes it; streams keep them and verifiers still check them.
const SchemaCheckpointV1 = "custody.checkpoint.v1"

// SchemaCheckpointV2 names the wire format of a checkpoint over the instance's Merkle tree.
const SchemaCheckpointV2 = "custody.checkpoint.v2"

// TreeOriginPrefix begins the origin line of a Merkle checkpoint: custody.log.v2/<instance>.
// It differs from the v1 origin so that no v1 note's chain hash can be read as a tree root.
const TreeOriginPrefix = "custody.log.v2"

// chainHeadExtension begins the note's extension line naming the chain head.
const chainHeadExtension = "chain-head "

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
// A custody.checkpoint.v2 note is a C2SP tlog-checkpoint over the instance's Merkle tree (see
// merkle.go), with one extension line naming the chain head, the record at seq = tree size:
//
//	custody.log.v2/<instance>
//	<tree size>
//	<base64 of the RFC 6962 root hash>
//	chain-head <base64 of the head record's hash>
//
// The other fields repeat the note's content for readers; verifiers trust only the note. Tree
// is the compact range of the tree (hex hashes, largest subtree first), unsigned: recovery
// resumes the tree from it after checking that it hashes to the signed root.
type Checkpoint struct {
	Schema    string    `json:"schema"`
	Instance  string    `json:"instance"`
	Seq       uint64    `json:"seq"`
	Hash      string    `json:"hash"`
	Root      string    `json:"root,omitempty"`
	Tree      []string  `json:"tree,omitempty"`
	Timestamp time.Time `json:"timestamp"`
	Note      string    `json:"note"`
}

// CheckpointState is what a checkpoint's note commits to. Root is nil for a v1 checkpoint,
// which signs the chain head only.
type CheckpointState struct {
	Head ChainHead
	Root []byte
}

// TreeOrigin is the origin line of an instance's Merkle checkpoints.
func TreeOrigin(instance string) string { return TreeOriginPrefix + "/" + instance }

// NewTreeCheckpoint signs the tree of size head.Seq with root and frontier (from Tree.State),
// whose last leaf is the record at head, for instance with signer.
func NewTreeCheckpoint(instance string, head ChainHead, root []byte, frontier [][]byte, now time.Time, signer note.Signer) (*Checkpoint, error) {
	raw, err := hex.DecodeString(head.Hash)
	if err != nil || len(raw) != 32 || len(root) != 32 {
		return nil, fmt.Errorf("decisionlog: checkpoint: head hash %q or root is not 32 bytes", head.Hash)
	}
	text := fmt.Sprintf("%s\n%d\n%s\n%s%s\n", TreeOrigin(instance), head.Seq, base64.StdEncoding.EncodeToString(root),
		chainHeadExtension, base64.StdEncoding.EncodeToString(raw))
	signed, err := note.Sign(&note.Note{Text: text}, signer)
	if err != nil {
		return nil, fmt.Errorf("decisionlog: sign checkpoint: %w", err)
	}
	tree := make([]string, len(frontier))
	for i, h := range frontier {
		tree[i] = hex.EncodeToString(h)
	}
	return &Checkpoint{
		Schema: SchemaCheckpointV2, Instance: instance, Seq: head.Seq, Hash: head.Hash,
		Root: hex.EncodeToString(root), Tree: tree, Timestamp: now.UTC(), Note: string(signed),
	}, nil
}

// OpenCheckpointState verifies c's note with verifiers and returns what it commits to.
func OpenCheckpointState(c *Checkpoint, verifiers note.Verifiers) (CheckpointState, error) {
	n, err := note.Open([]byte(c.Note), verifiers)
	if err != nil {
		return CheckpointState{}, fmt.Errorf("%w: %w", ErrCheckpoint, err)
	}
	return parseCheckpointState(c.Instance, n.Text)
}

// ReadCheckpointStateUnverified parses c's note text without checking signatures.
func ReadCheckpointStateUnverified(c *Checkpoint) (CheckpointState, error) {
	text, _, ok := strings.Cut(c.Note, "\n\n")
	if !ok {
		return CheckpointState{}, fmt.Errorf("%w: malformed note", ErrCheckpoint)
	}
	return parseCheckpointState(c.Instance, text+"\n")
}

// Frontier decodes c's unsigned compact range; RestoreTree checks it against the signed root.
func (c *Checkpoint) Frontier() ([][]byte, error) {
	out := make([][]byte, len(c.Tree))
	for i, h := range c.Tree {
		b, err := hex.DecodeString(h)
		if err != nil || len(b) != 32 {
			return nil, fmt.Errorf("%w: tree hash %d is not 32 hex bytes", ErrCheckpoint, i)
		}
		out[i] = b
	}
	return out, nil
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
	st, err := OpenCheckpointState(c, verifiers)
	return st.Head, err
}

// ReadCheckpointUnverified parses c's note text without checking signatures, for reports made
// without a public key.
func ReadCheckpointUnverified(c *Checkpoint) (ChainHead, error) {
	st, err := ReadCheckpointStateUnverified(c)
	return st.Head, err
}

// parseCheckpointState reads a v1 note (origin custody.decision.v1/<instance>, seq, head hash)
// or a v2 note (origin custody.log.v2/<instance>, tree size, root, chain-head extension).
func parseCheckpointState(instance, text string) (CheckpointState, error) {
	lines := strings.Split(strings.TrimSuffix(text, "\n"), "\n")
	if len(lines) < 3 {
		return CheckpointState{}, fmt.Errorf("%w: note is not a checkpoint of instance %q", ErrCheckpoint, instance)
	}
	v2 := lines[0] == TreeOrigin(instance)
	if !v2 && lines[0] != CheckpointOrigin(instance) {
		return CheckpointState{}, fmt.Errorf("%w: note is not a checkpoint of instance %q", ErrCheckpoint, instance)
	}
	seq, err := strconv.ParseUint(lines[1], 10, 64)
	if err != nil {
		return CheckpointState{}, fmt.Errorf("%w: bad seq line %q", ErrCheckpoint, lines[1])
	}
	third, err := base64.StdEncoding.DecodeString(lines[2])
	if err != nil || len(third) != 32 {
		return CheckpointState{}, fmt.Errorf("%w: bad hash line", ErrCheckpoint)
	}
	if !v2 {
		return CheckpointState{Head: ChainHead{Seq: seq, Hash: hex.EncodeToString(third)}}, nil
	}
	var head []byte
	for _, ext := range lines[3:] {
		if v, ok := strings.CutPrefix(ext, chainHeadExtension); ok {
			head, err = base64.StdEncoding.DecodeString(v)
			if err != nil || len(head) != 32 {
				return CheckpointState{}, fmt.Errorf("%w: bad chain-head line", ErrCheckpoint)
			}
		}
	}
	if head == nil {
		return CheckpointState{}, fmt.Errorf("%w: tree checkpoint without a chain-head line", ErrCheckpoint)
	}
	return CheckpointState{Head: ChainHead{Seq: seq, Hash: hex.EncodeToString(head)}, Root: third}, nil
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
