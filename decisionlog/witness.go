package decisionlog

import (
	"errors"
	"fmt"

	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/proof"
)

// A C2SP tlog-witness cosigns a checkpoint only with a consistency proof from the size it last
// cosigned. A writer's Tree is a compact range, which is not enough: a consistency proof from
// size m to n needs, besides the perfect subtrees of [0, m) (the compact range at m), hashes of
// subtrees among the leaves [m, n). So a tree that serves a witness keeps the compact range at
// some size m and the leaf hashes appended since (32 bytes a record), and forgets them up to n
// once the witness cosigned n. Reading them back from the stream instead would cost a stream
// scan per checkpoint; keeping them costs 32 bytes per record between two cosigned checkpoints.

// ErrLeavesForgotten is returned, wrapped, when a proof needs leaves the tree no longer keeps.
var ErrLeavesForgotten = errors.New("leaf hashes needed for the proof are not kept")

// MaxKeptLeaves bounds the leaf hashes a tree keeps for a witness (32 MiB): a witness down for
// longer gets checkpoints it can no longer be proved consistent with, and must be reset.
const MaxKeptLeaves = 1 << 20

type leafLog struct {
	start    uint64   // size of the tree the frontier is the compact range of
	frontier [][]byte // compact range [0, start)
	leaves   [][]byte // leaf hashes [start, start+len)
	overflow bool
}

func (l *leafLog) add(leaf []byte) {
	if l == nil || l.overflow {
		return
	}
	if len(l.leaves) >= MaxKeptLeaves {
		l.overflow, l.leaves = true, nil
		return
	}
	l.leaves = append(l.leaves, leaf)
}

// KeepLeaves makes t keep the leaf hashes appended from now on, so that ConsistencyProof can
// prove any size from the current one on.
func (t *Tree) KeepLeaves() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.kept == nil {
		t.kept = &leafLog{start: t.r.End(), frontier: append([][]byte(nil), t.r.Hashes()...)}
	}
}

// KeptFrom is the smallest size ConsistencyProof can prove from.
func (t *Tree) KeptFrom() uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.kept == nil {
		return t.r.End()
	}
	return t.kept.start
}

// rangeAt returns the compact range [0, size) for kept.start <= size <= the kept end.
func (l *leafLog) rangeAt(size uint64) (*compact.Range, error) {
	if l.overflow || size < l.start || size > l.start+uint64(len(l.leaves)) {
		return nil, fmt.Errorf("decisionlog: %w: size %d", ErrLeavesForgotten, size)
	}
	// A copy: the range grows its hashes in place, which would overwrite the kept frontier.
	r, err := rangeFactory.NewRange(0, l.start, append([][]byte(nil), l.frontier...))
	if err != nil {
		return nil, fmt.Errorf("decisionlog: kept leaves: %w", err)
	}
	for _, h := range l.leaves[:size-l.start] {
		if err := r.Append(h, nil); err != nil {
			return nil, fmt.Errorf("decisionlog: kept leaves: %w", err)
		}
	}
	return r, nil
}

// ConsistencyProof returns the RFC 6962 consistency proof from the tree of size1 leaves to the
// tree of size2, both at or after KeptFrom and at most the tree's size.
func (t *Tree) ConsistencyProof(size1, size2 uint64) ([][]byte, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.kept == nil {
		return nil, fmt.Errorf("decisionlog: consistency proof: %w: KeepLeaves was not called", ErrLeavesForgotten)
	}
	if size1 > size2 {
		return nil, fmt.Errorf("decisionlog: consistency proof: size %d after %d", size1, size2)
	}
	if size1 == 0 || size1 == size2 {
		return [][]byte{}, nil
	}
	old, err := t.kept.rangeAt(size1)
	if err != nil {
		return nil, err
	}
	if _, err := t.kept.rangeAt(size2); err != nil {
		return nil, err
	}
	nodes, err := proof.Consistency(size1, size2)
	if err != nil {
		return nil, fmt.Errorf("decisionlog: consistency proof: %w", err)
	}
	// The compact range at size1: its perfect subtrees, largest first, by position.
	oldNodes := map[compact.NodeID][]byte{}
	begin := uint64(0)
	hashes := old.Hashes()
	for level, i := 63, 0; level >= 0; level-- {
		if size1&(1<<level) == 0 {
			continue
		}
		oldNodes[compact.NewNodeID(uint(level), begin>>level)] = hashes[i]
		begin += 1 << level
		i++
	}
	out := make([][]byte, len(nodes.IDs))
	for i, id := range nodes.IDs {
		lo, hi := id.Coverage()
		switch h, ok := oldNodes[id]; {
		case ok:
			out[i] = h
		case lo >= size1 && hi <= size2:
			out[i] = t.kept.subtree(lo, hi)
		default:
			return nil, fmt.Errorf("decisionlog: consistency proof: node [%d, %d) is neither in the compact range at %d nor among the leaves after it", lo, hi, size1)
		}
	}
	p, err := nodes.Rehash(out, hasher.HashChildren)
	if err != nil {
		return nil, fmt.Errorf("decisionlog: consistency proof: %w", err)
	}
	return p, nil
}

// subtree is the hash of the perfect subtree over kept leaves [lo, hi).
func (l *leafLog) subtree(lo, hi uint64) []byte {
	level := append([][]byte(nil), l.leaves[lo-l.start:hi-l.start]...)
	for len(level) > 1 {
		next := make([][]byte, len(level)/2)
		for i := range next {
			next[i] = hasher.HashChildren(level[2*i], level[2*i+1])
		}
		level = next
	}
	return level[0]
}

// ForgetLeavesBefore drops the kept leaf hashes before size (a witness cosigned it): proofs
// from then on start at size or later.
func (t *Tree) ForgetLeavesBefore(size uint64) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.kept == nil || size <= t.kept.start {
		return nil
	}
	r, err := t.kept.rangeAt(size)
	if err != nil {
		return err
	}
	t.kept.leaves = append([][]byte(nil), t.kept.leaves[size-t.kept.start:]...)
	t.kept.start, t.kept.frontier = size, append([][]byte(nil), r.Hashes()...)
	return nil
}
