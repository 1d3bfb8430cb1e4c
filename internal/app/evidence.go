package app

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/rs/zerolog"

	"github.com/custodyhq/custody/decisionlog"
	custodyjs "github.com/custodyhq/custody/decisionlog/jetstream"
)

// EvidenceConfig holds the App's settings for evidence: where checkpoints are witnessed.
type EvidenceConfig struct {
	// Witnesses are `serve --checkpoint-witness` destinations: file:PATH (a file of JSON lines,
	// or a directory of one file per checkpoint, kept where the stream's operator cannot
	// rewrite it), or https://URL, a C2SP tlog-witness whose cosignatures are kept in
	// DATA/witness/.
	Witnesses []string
}

// sinkOptions are the sink options evidence needs: the Merkle tree recovery rebuilt (nil: the
// checkpoints sign the chain head only) and the witnesses. The slice is clipped, so that each
// sink appending its own options gets a fresh array.
//
// The HTTP witnesses, when any, come back too: their sender is started by Run and stopped by
// Close.
func (c *EvidenceConfig) sinkOptions(tree *decisionlog.Tree, dataDir string, log zerolog.Logger) ([]custodyjs.Option, *httpWitnesses, error) {
	var opts []custodyjs.Option
	if tree != nil {
		opts = append(opts, custodyjs.WithTree(tree))
	}
	var ws []fileWitness
	var urls []string
	for _, w := range c.Witnesses {
		if path, ok := strings.CutPrefix(w, "file:"); ok {
			ws = append(ws, fileWitness{path: path})
		} else {
			urls = append(urls, w)
		}
	}
	hw, err := newHTTPWitnesses(urls, dataDir, tree, log)
	if err != nil {
		return nil, nil, err
	}
	if len(ws) > 0 || hw != nil {
		opts = append(opts, custodyjs.WithCheckpointHook(func(_ context.Context, cp *decisionlog.Checkpoint) {
			if hw != nil {
				hw.enqueue(cp)
			}
			for _, w := range ws {
				if err := w.add(cp); err != nil {
					// The checkpoint is on the stream; a witness that missed one weakens only
					// the truncation check for the records before the next.
					log.Error().Err(err).Str("witness", w.path).Uint64("seq", cp.Seq).Msg("checkpoint not witnessed")
				}
			}
		}))
	}
	return slices.Clip(opts), hw, nil
}

// Validate checks the evidence settings before anything starts.
func (c *EvidenceConfig) Validate() error {
	for _, w := range c.Witnesses {
		if strings.HasPrefix(w, "http://") || strings.HasPrefix(w, "https://") {
			if err := checkWitnessURL(w); err != nil {
				return err
			}
			continue
		}
		path, ok := strings.CutPrefix(w, "file:")
		if !ok || path == "" {
			return configErrorf("--checkpoint-witness %q: want file:PATH or https://URL", w)
		}
	}
	return nil
}

// fileWitness keeps checkpoints in an append-only file (one JSON checkpoint a line) or, when
// path is a directory, one file per checkpoint, never overwritten.
type fileWitness struct{ path string }

func (w fileWitness) add(cp *decisionlog.Checkpoint) error {
	line, err := json.Marshal(cp)
	if err != nil {
		return fmt.Errorf("witness: encode checkpoint: %w", err)
	}
	path, flags := w.path, os.O_WRONLY|os.O_CREATE|os.O_APPEND
	if fi, err := os.Stat(w.path); err == nil && fi.IsDir() {
		path = filepath.Join(w.path, fmt.Sprintf("%s-%020d.json", decisionlog.Token(cp.Instance), cp.Seq))
		flags = os.O_WRONLY | os.O_CREATE | os.O_EXCL
	}
	f, err := os.OpenFile(path, flags, 0o600)
	if os.IsExist(err) {
		return nil // this checkpoint is already there (republished after a restart)
	}
	if err != nil {
		return fmt.Errorf("witness: open: %w", err)
	}
	if _, err := f.Write(append(line, '\n')); err != nil {
		f.Close()
		return fmt.Errorf("witness: append: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("witness: sync: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("witness: close: %w", err)
	}
	return nil
}
