package decisionlog_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/note"

	"github.com/custodyhq/custody/decisionlog"
)

func leafBodies(n int) [][]byte {
	out := make([][]byte, n)
	for i := range out {
		out[i] = fmt.Appendf(nil, `{"seq":%d}`, i+1)
	}
	return out
}

// TestTreeMatchesLeavesAndProofsVerify checks the writer's compact range against the reader's
// full tree at every size, and that every inclusion and consistency proof verifies with the
// library's verifier, and fails for a wrong leaf or root.
func TestTreeMatchesLeavesAndProofsVerify(t *testing.T) {
	bodies := leafBodies(37)
	var hashes [][]byte
	tree := decisionlog.NewTree()
	roots := [][]byte{nil}
	for i, b := range bodies {
		if err := tree.Append(&decisionlog.Record{Seq: uint64(i + 1)}, b); err != nil {
			t.Fatal(err)
		}
		hashes = append(hashes, decisionlog.LeafHash(b))
		_, root, _, ok := tree.State()
		if !ok {
			t.Fatal("tree broken")
		}
		roots = append(roots, root)
	}
	leaves := decisionlog.NewLeaves(hashes)
	for size := uint64(1); size <= leaves.Size(); size++ {
		root, err := leaves.Root(size)
		if err != nil || string(root) != string(roots[size]) {
			t.Fatalf("size %d: leaves root %x, tree root %x (%v)", size, root, roots[size], err)
		}
		for i := uint64(0); i < size; i++ {
			p, err := leaves.Inclusion(i, size)
			if err != nil {
				t.Fatal(err)
			}
			if err := decisionlog.VerifyInclusion(i, size, hashes[i], p, root); err != nil {
				t.Fatalf("leaf %d size %d: %v", i, size, err)
			}
			if decisionlog.VerifyInclusion(i, size, decisionlog.LeafHash([]byte("forged")), p, root) == nil {
				t.Fatalf("leaf %d size %d: a forged leaf verified", i, size)
			}
		}
		for s1 := uint64(1); s1 <= size; s1++ {
			p, err := leaves.Consistency(s1, size)
			if err != nil {
				t.Fatal(err)
			}
			if err := decisionlog.VerifyConsistency(s1, size, p, roots[s1], root); err != nil {
				t.Fatalf("consistency %d -> %d: %v", s1, size, err)
			}
			if s1 < size && decisionlog.VerifyConsistency(s1, size, p, roots[size-1], root) == nil && s1 != size-1 {
				t.Fatalf("consistency %d -> %d verified against another tree's root", s1, size)
			}
		}
	}
}

func TestTreeRestoreAndGap(t *testing.T) {
	tree := decisionlog.NewTree()
	for i, b := range leafBodies(11) {
		if err := tree.Append(&decisionlog.Record{Seq: uint64(i + 1)}, b); err != nil {
			t.Fatal(err)
		}
	}
	size, root, frontier, _ := tree.State()
	restored, err := decisionlog.RestoreTree(size, frontier, root)
	if err != nil {
		t.Fatal(err)
	}
	if _, r2, _, _ := restored.State(); string(r2) != string(root) {
		t.Fatal("restored tree has another root")
	}
	frontier[0][0] ^= 1
	if _, err := decisionlog.RestoreTree(size, frontier, root); err == nil {
		t.Fatal("an edited frontier was accepted")
	}
	// A record already in the tree is ignored; one that skips a seq breaks it for good.
	if err := restored.Append(&decisionlog.Record{Seq: 5}, []byte("x")); err != nil {
		t.Fatal(err)
	}
	if err := restored.Append(&decisionlog.Record{Seq: 13}, []byte("x")); !errors.Is(err, decisionlog.ErrTreeGap) {
		t.Fatalf("gap: %v", err)
	}
	if _, _, _, ok := restored.State(); ok {
		t.Fatal("a tree with a gap still signs")
	}
}

func TestTreeCheckpointNote(t *testing.T) {
	skey, vkey, err := decisionlog.GenerateSigningKey(decisionlog.SigningKeyName("pdp-1"))
	if err != nil {
		t.Fatal(err)
	}
	signer, _ := note.NewSigner(skey)
	vs, _ := decisionlog.NewVerifiers(vkey)
	tree := decisionlog.NewTree()
	for i, b := range leafBodies(3) {
		_ = tree.Append(&decisionlog.Record{Seq: uint64(i + 1)}, b)
	}
	_, root, frontier, _ := tree.State()
	head := decisionlog.ChainHead{Seq: 3, Hash: strings.Repeat("ab", 32)}
	cp, err := decisionlog.NewTreeCheckpoint("pdp-1", head, root, frontier, time.Now(), signer)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(cp.Note, "\n")
	if lines[0] != "custody.log.v2/pdp-1" || lines[1] != "3" || !strings.HasPrefix(lines[3], "chain-head ") {
		t.Fatalf("note is not a C2SP checkpoint with a chain-head extension:\n%s", cp.Note)
	}
	st, err := decisionlog.OpenCheckpointState(cp, vs)
	if err != nil || st.Head != head || string(st.Root) != string(root) {
		t.Fatalf("open: %+v %v", st, err)
	}
	// A v1 checkpoint still opens, without a root.
	v1, _ := decisionlog.NewCheckpoint("pdp-1", head, time.Now(), signer)
	st, err = decisionlog.OpenCheckpointState(v1, vs)
	if err != nil || st.Head != head || st.Root != nil {
		t.Fatalf("v1: %+v %v", st, err)
	}
	// The instance is bound: another instance's checkpoint does not open as this one's.
	cp.Instance = "pdp-2"
	if _, err := decisionlog.OpenCheckpointState(cp, vs); err == nil {
		t.Fatal("a checkpoint opened as another instance's")
	}
}
