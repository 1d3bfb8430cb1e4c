package decisionlog_test

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/note"

	"github.com/custodyhq/custody/decisionlog"
)

// BenchmarkCheckpointPer1000Records is what the Merkle tree adds per checkpoint interval at the
// default --checkpoint-every: 1,000 leaf appends (about 1 KiB records) and one signed v2
// checkpoint, against the v1 checkpoint alone.
func BenchmarkCheckpointPer1000Records(b *testing.B) {
	skey, _, _ := decisionlog.GenerateSigningKey("custody-bench")
	signer, _ := note.NewSigner(skey)
	body := bytes.Repeat([]byte("x"), 1024)
	head := decisionlog.ChainHead{Seq: 1000, Hash: strings.Repeat("ab", 32)}
	b.Run("v2-merkle", func(b *testing.B) {
		tree := decisionlog.NewTree()
		seq := uint64(0)
		for b.Loop() {
			for range 1000 {
				seq++
				_ = tree.Append(&decisionlog.Record{Seq: seq}, body)
			}
			_, root, frontier, _ := tree.State()
			if _, err := decisionlog.NewTreeCheckpoint("bench", head, root, frontier, time.Now(), signer); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("v1-chain-head", func(b *testing.B) {
		for b.Loop() {
			if _, err := decisionlog.NewCheckpoint("bench", head, time.Now(), signer); err != nil {
				b.Fatal(err)
			}
		}
	})
}
