package jetstream_test

import (
	"encoding/json"
	"fmt"
	"testing"

	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/mod/sumdb/note"

	"github.com/custodyhq/custody/decisionlog"
	custodyjs "github.com/custodyhq/custody/decisionlog/jetstream"
	"github.com/custodyhq/custody/decisionlog/verify"
)

// publishN publishes n chained records of inst from head, with tree (nil: none), and closes
// the sink, which publishes a checkpoint of the head.
func publishN(t testing.TB, js jetstream.JetStream, stream jetstream.Stream, inst string, head decisionlog.ChainHead, tree *decisionlog.Tree, sig note.Signer, n, window int) {
	t.Helper()
	opts := []custodyjs.Option{custodyjs.WithChain(custodyjs.ChainConfig{Instance: inst, Head: head, Signer: sig, Stream: stream, Window: window})}
	if tree != nil {
		opts = append(opts, custodyjs.WithTree(tree))
	}
	sink := custodyjs.NewSink(js, opts...)
	for i := range n {
		if err := sink.Publish(t.Context(), record(fmt.Sprintf("%s-%d-%d", inst, head.Seq, i), i%2 == 0)); err != nil {
			t.Fatal(err)
		}
	}
	if err := sink.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
}

func streamMessages(t testing.TB, stream jetstream.Stream) []custodyjs.Msg {
	t.Helper()
	var out []custodyjs.Msg
	if _, err := custodyjs.Read(t.Context(), stream, custodyjs.ReadOptions{}, func(m *custodyjs.Msg) error {
		out = append(out, *m)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

// An instance that wrote v1 checkpoints (before Merkle trees) restarts: recovery rebuilds its
// tree from seq 1; after the next restart it resumes the tree from the checkpoint's compact
// range. Every v2 checkpoint then matches the records, and each is consistent with the one
// before it by an RFC 6962 consistency proof.
func TestMerkleCheckpointsStayConsistentAcrossRestarts(t *testing.T) {
	js, stream := setup(t, custodyjs.StreamConfig{})
	const inst = "inst-m"
	sig, verifiers := signer(t, inst)
	publishN(t, js, stream, inst, decisionlog.ChainHead{}, nil, sig, 3, 1) // legacy: v1 checkpoint

	var sizes []uint64
	for i, n := range []int{5, 9} {
		rec, err := custodyjs.RecoverHead(t.Context(), stream, inst, verifiers)
		if err != nil {
			t.Fatal(err)
		}
		size, _, _, ok := rec.Tree.State()
		if rec.Tree == nil || !ok || size != rec.Head.Seq {
			t.Fatalf("restart %d: no tree at the head %d (%s)", i, rec.Head.Seq, rec.TreeNote)
		}
		publishN(t, js, stream, inst, rec.Head, rec.Tree, sig, n, 1+i*7)
		sizes = append(sizes, rec.Head.Seq+uint64(n))
	}

	msgs := streamMessages(t, stream)
	vmsgs := make([]verify.Message, len(msgs))
	var leaves [][]byte
	roots := map[uint64][]byte{}
	for i, m := range msgs {
		vmsgs[i] = verify.Message{Subject: m.Subject, Data: m.Data}
		var cp decisionlog.Checkpoint
		_ = json.Unmarshal(m.Data, &cp)
		switch cp.Schema {
		case decisionlog.SchemaCheckpointV2:
			st, err := decisionlog.OpenCheckpointState(&cp, verifiers)
			if err != nil {
				t.Fatal(err)
			}
			roots[st.Head.Seq] = st.Root
		case decisionlog.SchemaDecisionV1:
			leaves = append(leaves, decisionlog.LeafHash(m.Data))
		}
	}
	rep := verify.Check(vmsgs, verifiers)
	if !rep.OK() || rep.Chains[0].TreeCheckpoints != 2 || rep.Chains[0].ChainOnlyCheckpoints != 1 {
		t.Fatalf("verify: ok=%v chains=%+v breaks=%v", rep.OK(), rep.Chains, rep.Breaks)
	}
	tree := decisionlog.NewLeaves(leaves)
	for _, s := range sizes {
		if root, _ := tree.Root(s); string(root) != string(roots[s]) {
			t.Fatalf("checkpoint at %d signs %x, the records give %x", s, roots[s], root)
		}
	}
	p, err := tree.Consistency(sizes[0], sizes[1])
	if err != nil {
		t.Fatal(err)
	}
	if err := decisionlog.VerifyConsistency(sizes[0], sizes[1], p, roots[sizes[0]], roots[sizes[1]]); err != nil {
		t.Fatalf("successive checkpoints are not consistent: %v", err)
	}
}
