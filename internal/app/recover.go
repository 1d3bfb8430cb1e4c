package app

import (
	"context"
	"fmt"

	"github.com/rs/zerolog"

	"github.com/custodyhq/custody/decisionlog"
	custodyjs "github.com/custodyhq/custody/decisionlog/jetstream"
)

// recoverChain finds where instance's chain resumes, trusting only checkpoints that verify with
// the instance's own verifier key vkey, and logs what recovery passed over: a forged or damaged
// message that claims the instance is evidence an operator must see.
// It also returns the instance's Merkle tree at that head, nil when it could not be rebuilt.
func recoverChain(ctx context.Context, stream custodyjs.RecoverStream, instance, vkey string, log zerolog.Logger) (decisionlog.ChainHead, *decisionlog.Tree, error) {
	verifiers, err := decisionlog.NewVerifiers(vkey)
	if err != nil {
		return decisionlog.ChainHead{}, nil, fmt.Errorf("app: recover chain: %w", err)
	}
	rec, err := custodyjs.RecoverHead(ctx, stream, instance, verifiers)
	if err != nil {
		return decisionlog.ChainHead{}, nil, fmt.Errorf("app: %w", err)
	}
	if rec.Tree == nil {
		log.Warn().Str("why", rec.TreeNote).Msg("checkpoints will sign the chain head only, not a Merkle root: evidence extracts need a Merkle checkpoint")
	}
	if rec.Skipped > 0 || rec.CheckpointsRejected > 0 {
		log.Warn().Int("skipped", rec.Skipped).Str("first_skipped", rec.FirstSkip).
			Int("checkpoints_rejected", rec.CheckpointsRejected).
			Msg("chain recovery skipped messages that claim this instance but do not verify: forged or damaged; run custody verify")
	}
	if rec.Read.Retries > 0 {
		log.Info().Int("retries", rec.Read.Retries).Str("last_retry", rec.Read.LastRetry).Msg("chain recovery rode out transient NATS errors")
	}
	log.Debug().Uint64("checkpoint_seq", rec.Checkpoint).Int("adopted", rec.Adopted).Msg("chain recovered")
	return rec.Head, rec.Tree, nil
}
