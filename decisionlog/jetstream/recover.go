package jetstream

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"

	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/mod/sumdb/note"

	"github.com/custodyhq/custody/decisionlog"
)

// recoverLookback is how many stream messages before its last checkpoint recovery reads again.
// A checkpoint can land after records it does not cover (those in the ack window when it was
// published, at most 256 with the embedded server); they must not be missed, or the instance
// would reuse their seqs.
const recoverLookback = 4096

// RecoverStream is what RecoverHead needs of the stream; jetstream.Stream has it.
type RecoverStream interface {
	ReadStream
	GetLastMsgForSubject(ctx context.Context, subject string) (*jetstream.RawStreamMsg, error)
}

// Recovery is where an instance's chain resumes and what recovery passed over on the way.
type Recovery struct {
	Head decisionlog.ChainHead
	// Checkpoint is the seq of the last checkpoint that verified (0: none; the chain was
	// followed from seq 1), CheckpointsRejected the checkpoints of this instance that did not.
	Checkpoint          uint64
	CheckpointsRejected int
	// Adopted counts this instance's records after the checkpoint that extend the chain.
	Adopted int
	// Skipped counts messages that claim this instance (by header or body) but were not
	// adopted: unreadable, not sealed, not linking to the chain, or a second record for a seq.
	// Each is a forgery or damage; none moves the head.
	Skipped int
	// FirstSkip describes the first of them, for the log.
	FirstSkip string
	Read      ReadStats
	// Tree is the instance's Merkle tree at Head, for the sink to extend (see WithTree): resumed
	// from the last checkpoint's compact range when it hashes to the signed root, else rebuilt
	// from the instance's records from seq 1. Nil when it cannot be rebuilt (records before the
	// checkpoint are gone); TreeNote then says why, and checkpoints sign the chain head only.
	Tree     *decisionlog.Tree
	TreeNote string

	// rebuild follows the chain up to the checkpoint when the tree is rebuilt from seq 1.
	rebuild    *decisionlog.ChainHead
	checkpoint decisionlog.ChainHead
}

// RecoverHead finds where instance's chain ends in the stream. It trusts only what verifies:
// the last checkpoint of the instance whose signed note verifies with verifier (the instance's
// own key), then the records after it whose body hashes to their hash and links to the head so
// far, first come first adopted. Chain headers are never trusted on their own. A fresh instance
// starts at seq 0.
func RecoverHead(ctx context.Context, stream RecoverStream, instance string, verifiers note.Verifiers) (Recovery, error) {
	var rec Recovery
	if verifiers == nil {
		return rec, errors.New("jetstream: recover chain: no checkpoint verifier key")
	}
	cpPos, err := lastVerifiedCheckpoint(ctx, stream, instance, verifiers, &rec)
	if err != nil {
		return rec, err
	}
	var from uint64
	if cpPos > recoverLookback {
		from = cpPos - recoverLookback
	}
	if rec.Tree == nil {
		// No checkpoint, or one without a usable tree: rebuild the tree from seq 1.
		from, rec.rebuild, rec.checkpoint, rec.Tree = 0, &decisionlog.ChainHead{}, rec.Head, decisionlog.NewTree()
	}
	st, err := Read(ctx, stream, ReadOptions{
		Filters:  []string{decisionlog.DecisionPrefix + ".>", decisionlog.ExecutionPrefix + ".>", decisionlog.UnsealPrefix + ".>"},
		StartSeq: from,
	}, func(m *Msg) error {
		rec.consider(instance, m)
		return nil
	})
	rec.Read = st
	if err != nil {
		return rec, fmt.Errorf("jetstream: recover chain: %w", err)
	}
	if rec.Tree != nil {
		if size, _, _, ok := rec.Tree.State(); !ok || size != rec.Head.Seq {
			rec.Tree, rec.TreeNote = nil, fmt.Sprintf("the Merkle tree could not be rebuilt: the stream holds %d linked records of this instance before seq %d", size, rec.Head.Seq)
		}
	}
	return rec, nil
}

// lastVerifiedCheckpoint sets rec.Head from the last checkpoint of instance that verifies and
// returns its stream sequence (0 when none does). The last checkpoint is fetched directly;
// only when it does not verify are all of the instance's checkpoints read.
func lastVerifiedCheckpoint(ctx context.Context, stream RecoverStream, instance string, verifiers note.Verifiers, rec *Recovery) (uint64, error) {
	subject := decisionlog.CheckpointSubject(instance)
	var last *jetstream.RawStreamMsg
	r := &reader{opts: ReadOptions{}}
	r.defaults()
	for {
		rctx, cancel := context.WithTimeout(ctx, r.opts.Timeout)
		var err error
		last, err = stream.GetLastMsgForSubject(rctx, subject)
		cancel()
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return 0, nil
		}
		if err == nil {
			break
		}
		if err := r.retry(ctx, "last checkpoint", err); err != nil {
			return 0, fmt.Errorf("jetstream: recover chain: %w", err)
		}
	}
	if head, tree, ok := openCheckpoint(instance, last.Data, verifiers); ok {
		rec.Head, rec.Checkpoint, rec.Tree = head, head.Seq, tree
		return last.Sequence, nil
	}
	var pos uint64
	st, err := Read(ctx, stream, ReadOptions{Filters: []string{subject}}, func(m *Msg) error {
		if head, tree, ok := openCheckpoint(instance, m.Data, verifiers); ok {
			rec.Head, rec.Checkpoint, rec.Tree, pos = head, head.Seq, tree, m.Seq
		} else {
			rec.CheckpointsRejected++
		}
		return nil
	})
	rec.Read.Retries += st.Retries
	if err != nil {
		return 0, fmt.Errorf("jetstream: recover chain: checkpoints: %w", err)
	}
	return pos, nil
}

// openCheckpoint returns the head a checkpoint of instance commits to, and the Merkle tree at
// that head when the checkpoint signs a root and carries a compact range that hashes to it.
func openCheckpoint(instance string, body []byte, verifiers note.Verifiers) (decisionlog.ChainHead, *decisionlog.Tree, bool) {
	var cp decisionlog.Checkpoint
	if json.Unmarshal(body, &cp) != nil || cp.Instance != instance {
		return decisionlog.ChainHead{}, nil, false
	}
	st, err := decisionlog.OpenCheckpointState(&cp, verifiers)
	if err != nil || st.Head.Seq == 0 {
		return decisionlog.ChainHead{}, nil, false
	}
	if st.Root == nil {
		return st.Head, nil, true
	}
	frontier, err := cp.Frontier()
	if err != nil {
		return st.Head, nil, true
	}
	tree, err := decisionlog.RestoreTree(st.Head.Seq, frontier, st.Root)
	if err != nil {
		return st.Head, nil, true
	}
	return st.Head, tree, true
}

// chainFields are the fields recovery reads of a record.
type chainFields struct {
	Schema      string `json:"schema"`
	DecisionID  string `json:"decision_id"`
	ExecutionID string `json:"execution_id"`
	UnsealID    string `json:"unseal_id"`
	PDP         struct {
		Instance string `json:"instance"`
	} `json:"pdp"`
	Seq      uint64 `json:"seq"`
	PrevHash string `json:"prev_hash"`
	Hash     string `json:"hash"`
}

// consider adopts m when it is instance's next record, and counts it as skipped when it claims
// to be instance's and is not adopted.
func (rec *Recovery) consider(instance string, m *Msg) {
	claims := m.Header.Get(HeaderInstance) == instance
	var f chainFields
	if err := json.Unmarshal(m.Data, &f); err != nil {
		if claims {
			rec.skip(m, "unreadable: "+err.Error())
		}
		return
	}
	if f.PDP.Instance != instance {
		if claims {
			rec.skip(m, fmt.Sprintf("header names this instance, body names %q", f.PDP.Instance))
		}
		return
	}
	if rec.rebuild != nil && f.Seq <= rec.checkpoint.Seq {
		rec.rebuildLeaf(m, &f)
	}
	if f.Seq <= rec.Head.Seq {
		if f.Seq == rec.Head.Seq && f.Seq > 0 && f.Hash != rec.Head.Hash {
			rec.skip(m, fmt.Sprintf("a second record for seq %d", f.Seq))
		}
		return // already part of the chain (read again before the checkpoint)
	}
	id := f.DecisionID
	switch f.Schema {
	case decisionlog.SchemaExecutionV1:
		id = f.ExecutionID
	case decisionlog.SchemaUnsealV1:
		id = f.UnsealID
	}
	hash, err := decisionlog.BodyHash(m.Data)
	switch {
	case err != nil || hash != f.Hash:
		rec.skip(m, fmt.Sprintf("seq %d is not sealed", f.Seq))
	case id == "" || m.Header.Get("Nats-Msg-Id") != id:
		rec.skip(m, fmt.Sprintf("seq %d: Nats-Msg-Id is not the record's ID", f.Seq))
	case f.Seq != rec.Head.Seq+1 || f.PrevHash != rec.Head.Hash:
		rec.skip(m, fmt.Sprintf("seq %d does not link to seq %d", f.Seq, rec.Head.Seq))
	case m.Header.Get(HeaderSeq) != "" && m.Header.Get(HeaderSeq) != strconv.FormatUint(f.Seq, 10):
		rec.skip(m, fmt.Sprintf("seq %d: Custody-Seq header says %s", f.Seq, m.Header.Get(HeaderSeq)))
	default:
		if rec.Tree != nil {
			if rec.rebuild != nil && rec.rebuild.Seq != rec.checkpoint.Seq {
				rec.Tree = nil // records before the checkpoint are missing
			} else if rec.Tree.Append(&decisionlog.Record{Seq: f.Seq}, m.Data) != nil {
				rec.Tree = nil
			}
		}
		rec.Head = decisionlog.ChainHead{Seq: f.Seq, Hash: hash}
		rec.Adopted++
	}
}

// rebuildLeaf adds a record at or before the checkpoint to the tree being rebuilt when it is
// sealed and links to the records before it; the one at the checkpoint must have its hash.
func (rec *Recovery) rebuildLeaf(m *Msg, f *chainFields) {
	pre := rec.rebuild
	if f.Seq != pre.Seq+1 || f.PrevHash != pre.Hash {
		return // already taken, a fork, or a gap (then the tree stays short and is dropped)
	}
	hash, err := decisionlog.BodyHash(m.Data)
	if err != nil || hash != f.Hash || (f.Seq == rec.checkpoint.Seq && hash != rec.checkpoint.Hash) {
		return
	}
	if rec.Tree.Append(&decisionlog.Record{Seq: f.Seq}, m.Data) != nil {
		return
	}
	*pre = decisionlog.ChainHead{Seq: f.Seq, Hash: hash}
}

func (rec *Recovery) skip(m *Msg, why string) {
	rec.Skipped++
	if rec.FirstSkip == "" {
		rec.FirstSkip = fmt.Sprintf("stream seq %d on %s: %s", m.Seq, m.Subject, why)
	}
}
