package decisionlog

import (
	"errors"
	"fmt"
	"sync"

	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"
)

// The Merkle tree. Each instance's records are the leaves of an RFC 6962 Merkle tree, in chain
// order: the record with seq N is leaf N-1, and the leaf is the record's body exactly as
// published. So the leaf hash is SHA-256(0x00 || body) and an interior node SHA-256(0x01 ||
// left || right), which any RFC 6962 library computes; a checkpoint signs the tree's size and
// root (see Checkpoint). transparency-dev/merkle does the tree arithmetic: compact ranges let a
// writer keep only O(log n) hashes, and its proof package is the reference for inclusion and
// consistency proofs, which would be easy to get subtly wrong by hand.

var hasher = rfc6962.DefaultHasher

var rangeFactory = &compact.RangeFactory{Hash: hasher.HashChildren}

// LeafHash is the RFC 6962 leaf hash of a record body: SHA-256(0x00 || body).
func LeafHash(body []byte) []byte { return hasher.HashLeaf(body) }

// ErrTreeGap is returned, wrapped, when a record does not extend the tree by one leaf.
var ErrTreeGap = errors.New("record does not extend the Merkle tree")

// Tree is the state of an instance's Merkle tree that a writer needs: the compact range of its
// leaves [0, size), O(log size) hashes. It is safe for concurrent use.
type Tree struct {
	mu sync.Mutex
	r  *compact.Range
	// broken says why the tree stopped following the chain (a record was passed over); a
	// broken tree signs nothing, so checkpoints fall back to chain-only notes.
	broken string
	// kept, when set (KeepLeaves), holds the leaf hashes since an earlier size, for
	// consistency proofs to a witness (witness.go).
	kept *leafLog
}

// NewTree returns the empty tree of a fresh instance.
func NewTree() *Tree { return &Tree{r: rangeFactory.NewEmptyRange(0)} }

// RestoreTree rebuilds a tree of size leaves from its compact range, as a checkpoint carries
// it, and checks that it has root. The frontier is unsigned; the root is what was signed.
func RestoreTree(size uint64, frontier [][]byte, root []byte) (*Tree, error) {
	r, err := rangeFactory.NewRange(0, size, frontier)
	if err != nil {
		return nil, fmt.Errorf("decisionlog: restore tree: %w", err)
	}
	got, err := r.GetRootHash(nil)
	if err != nil {
		return nil, fmt.Errorf("decisionlog: restore tree: %w", err)
	}
	if size == 0 {
		got = hasher.EmptyRoot()
	}
	if string(got) != string(root) {
		return nil, fmt.Errorf("decisionlog: restore tree: frontier of size %d does not hash to the signed root", size)
	}
	return &Tree{r: r}, nil
}

// Append adds the sealed record r with body as the next leaf. A record whose seq is not the
// next leaf breaks the tree (it stays broken: later checkpoints carry no root) and returns an
// error wrapping ErrTreeGap; a record already in the tree is ignored.
func (t *Tree) Append(r *Record, body []byte) error { return t.AppendSeq(r.Seq, body) }

// AppendSeq is Append for the record with seq whose published body is body: a sink that
// keeps a record's seq and body, not the record, extends the tree with it.
func (t *Tree) AppendSeq(seq uint64, body []byte) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.broken != "" {
		return fmt.Errorf("decisionlog: tree: %w: %s", ErrTreeGap, t.broken)
	}
	switch size := t.r.End(); {
	case seq <= size:
		return nil
	case seq != size+1:
		t.broken = fmt.Sprintf("seq %d follows a tree of %d leaves", seq, size)
		return fmt.Errorf("decisionlog: tree: %w: %s", ErrTreeGap, t.broken)
	}
	leaf := LeafHash(body)
	if err := t.r.Append(leaf, nil); err != nil {
		return fmt.Errorf("decisionlog: tree: append: %w", err)
	}
	t.kept.add(leaf)
	return nil
}

// State returns the tree's size, root and frontier, or ok false when the tree is broken.
func (t *Tree) State() (size uint64, root []byte, frontier [][]byte, ok bool) {
	if t == nil {
		return 0, nil, nil, false
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.broken != "" {
		return 0, nil, nil, false
	}
	root, err := t.r.GetRootHash(nil)
	if err != nil {
		return 0, nil, nil, false
	}
	if t.r.End() == 0 {
		root = hasher.EmptyRoot()
	}
	return t.r.End(), root, append([][]byte(nil), t.r.Hashes()...), true
}

// Leaves holds every leaf hash of a tree, for building proofs: a reader that has all of an
// instance's records makes one, a writer never needs to.
type Leaves struct {
	levels [][][]byte // levels[0] are the leaf hashes; levels[k][i] roots the perfect subtree of leaves [i<<k, (i+1)<<k)
}

// NewLeaves builds the perfect subtrees over leaf hashes, in leaf order.
func NewLeaves(leafHashes [][]byte) *Leaves {
	l := &Leaves{levels: [][][]byte{leafHashes}}
	for cur := leafHashes; len(cur) > 1; {
		next := make([][]byte, len(cur)/2)
		for i := range next {
			next[i] = hasher.HashChildren(cur[2*i], cur[2*i+1])
		}
		l.levels = append(l.levels, next)
		cur = next
	}
	return l
}

// Size is the number of leaves.
func (l *Leaves) Size() uint64 { return uint64(len(l.levels[0])) }

// Root is the root hash of the tree of the first size leaves.
func (l *Leaves) Root(size uint64) ([]byte, error) {
	if size > l.Size() {
		return nil, fmt.Errorf("decisionlog: tree root: size %d beyond %d leaves", size, l.Size())
	}
	if size == 0 {
		return hasher.EmptyRoot(), nil
	}
	r := rangeFactory.NewEmptyRange(0)
	// Append the perfect subtrees that make up [0, size), largest first.
	var begin uint64
	for level := 63; level >= 0; level-- {
		if size&(1<<level) == 0 {
			continue
		}
		if err := r.AppendRange(mustRange(begin, uint(level), l.levels[level][begin>>level]), nil); err != nil {
			return nil, fmt.Errorf("decisionlog: tree root: %w", err)
		}
		begin += 1 << level
	}
	return r.GetRootHash(nil)
}

func mustRange(begin uint64, level uint, hash []byte) *compact.Range {
	r, err := rangeFactory.NewRange(begin, begin+1<<level, [][]byte{hash})
	if err != nil {
		panic(err) // begin is aligned to the level by construction
	}
	return r
}

// Inclusion returns the RFC 6962 inclusion proof of leaf index in the tree of size leaves.
func (l *Leaves) Inclusion(index, size uint64) ([][]byte, error) {
	if size > l.Size() || index >= size {
		return nil, fmt.Errorf("decisionlog: inclusion proof: leaf %d, tree size %d, %d leaves known", index, size, l.Size())
	}
	nodes, err := proof.Inclusion(index, size)
	if err != nil {
		return nil, fmt.Errorf("decisionlog: inclusion proof: %w", err)
	}
	return l.rehash(nodes)
}

// Consistency returns the RFC 6962 consistency proof between trees of size1 and size2 leaves.
func (l *Leaves) Consistency(size1, size2 uint64) ([][]byte, error) {
	if size2 > l.Size() || size1 > size2 {
		return nil, fmt.Errorf("decisionlog: consistency proof: sizes %d to %d, %d leaves known", size1, size2, l.Size())
	}
	nodes, err := proof.Consistency(size1, size2)
	if err != nil {
		return nil, fmt.Errorf("decisionlog: consistency proof: %w", err)
	}
	return l.rehash(nodes)
}

func (l *Leaves) rehash(nodes proof.Nodes) ([][]byte, error) {
	hashes := make([][]byte, len(nodes.IDs))
	for i, id := range nodes.IDs {
		if int(id.Level) >= len(l.levels) || id.Index >= uint64(len(l.levels[id.Level])) {
			return nil, fmt.Errorf("decisionlog: proof node %d/%d is not a perfect subtree of the known leaves", id.Level, id.Index)
		}
		hashes[i] = l.levels[id.Level][id.Index]
	}
	return nodes.Rehash(hashes, hasher.HashChildren)
}

// VerifyInclusion checks an inclusion proof of the leaf with leafHash at index in the tree of
// size leaves with root.
func VerifyInclusion(index, size uint64, leafHash []byte, p [][]byte, root []byte) error {
	if err := proof.VerifyInclusion(hasher, index, size, leafHash, p, root); err != nil {
		return fmt.Errorf("decisionlog: verify inclusion: %w", err)
	}
	return nil
}

// VerifyConsistency checks that the tree of size2 with root2 extends the tree of size1 with root1.
func VerifyConsistency(size1, size2 uint64, p [][]byte, root1, root2 []byte) error {
	if err := proof.VerifyConsistency(hasher, size1, size2, p, root1, root2); err != nil {
		return fmt.Errorf("decisionlog: verify consistency: %w", err)
	}
	return nil
}

// AppendLeaf adds a leaf by its hash, for verifiers that keep leaf hashes, not bodies.
func (t *Tree) AppendLeaf(leafHash []byte) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.broken != "" {
		return fmt.Errorf("decisionlog: tree: %w: %s", ErrTreeGap, t.broken)
	}
	if err := t.r.Append(leafHash, nil); err != nil {
		return fmt.Errorf("decisionlog: tree: append: %w", err)
	}
	t.kept.add(leafHash)
	return nil
}
