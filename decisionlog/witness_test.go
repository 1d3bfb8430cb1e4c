package decisionlog_test

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"testing"

	"github.com/custodyhq/custody/decisionlog"
)

// TestTreeConsistencyProofMatchesFullTree: the proofs a writer makes from its compact range and
// the leaves it kept equal those made from every leaf, for every pair of sizes, and verify.
func TestTreeConsistencyProofMatchesFullTree(t *testing.T) {
	const n = 70
	leaves := make([][]byte, n)
	for i := range leaves {
		sum := sha256.Sum256(fmt.Appendf(nil, "leaf %d", i))
		leaves[i] = sum[:]
	}
	full := decisionlog.NewLeaves(leaves)
	for _, start := range []uint64{0, 1, 5, 16, 33} {
		tree := decisionlog.NewTree()
		for _, l := range leaves[:start] {
			if err := tree.AppendLeaf(l); err != nil {
				t.Fatal(err)
			}
		}
		tree.KeepLeaves()
		for _, l := range leaves[start:] {
			if err := tree.AppendLeaf(l); err != nil {
				t.Fatal(err)
			}
		}
		for m := max(start, 1); m <= n; m++ {
			for size2 := m; size2 <= n; size2++ {
				got, err := tree.ConsistencyProof(m, size2)
				if err != nil {
					t.Fatalf("start %d: proof %d -> %d: %v", start, m, size2, err)
				}
				want, _ := full.Consistency(m, size2)
				if len(got) != len(want) {
					t.Fatalf("start %d: proof %d -> %d has %d hashes, want %d", start, m, size2, len(got), len(want))
				}
				for i := range got {
					if !bytes.Equal(got[i], want[i]) {
						t.Fatalf("start %d: proof %d -> %d differs at %d", start, m, size2, i)
					}
				}
				r1, _ := full.Root(m)
				r2, _ := full.Root(size2)
				if err := decisionlog.VerifyConsistency(m, size2, got, r1, r2); err != nil {
					t.Fatalf("start %d: proof %d -> %d does not verify: %v", start, m, size2, err)
				}
			}
		}
		if start > 1 {
			if _, err := tree.ConsistencyProof(start-1, n); !errors.Is(err, decisionlog.ErrLeavesForgotten) {
				t.Fatalf("proof from before the kept leaves: %v", err)
			}
		}
	}
	// Forgetting moves the start: proofs from there still match.
	tree := decisionlog.NewTree()
	tree.KeepLeaves()
	for _, l := range leaves {
		_ = tree.AppendLeaf(l)
	}
	if err := tree.ForgetLeavesBefore(40); err != nil {
		t.Fatal(err)
	}
	if tree.KeptFrom() != 40 {
		t.Fatalf("KeptFrom = %d", tree.KeptFrom())
	}
	got, err := tree.ConsistencyProof(45, 70)
	want, _ := full.Consistency(45, 70)
	if err != nil || len(got) != len(want) || !bytes.Equal(got[0], want[0]) {
		t.Fatalf("after forgetting: %v", err)
	}
	if _, err := tree.ConsistencyProof(39, 70); !errors.Is(err, decisionlog.ErrLeavesForgotten) {
		t.Fatalf("forgotten size: %v", err)
	}
}
