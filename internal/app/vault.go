package app

import (
	"context"
	"fmt"
	"time"

	"filippo.io/age"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/custodyhq/custody/decisionlog/vault"
	custodyhttp "github.com/custodyhq/custody/server"
)

// VaultConfig is the sealed intent vault: off unless Recipients names one.
type VaultConfig struct {
	// Recipients are age X25519 recipients (age1...) or @file of them, one a line
	// (`serve --intent-vault`).
	Recipients []string
	// Retention is how long CUSTODY_VAULT keeps sealed intents; 0 keeps them forever.
	Retention time.Duration
}

// Validate parses the recipients, so that a typo stops serve before it answers anything.
func (c VaultConfig) Validate() error {
	_, err := c.recipients()
	return err
}

func (c VaultConfig) recipients() ([]age.Recipient, error) {
	if c.Retention < 0 {
		return nil, configErrorf("--intent-vault-retention must not be negative")
	}
	if len(c.Recipients) == 0 {
		if c.Retention > 0 {
			return nil, configErrorf("--intent-vault-retention needs --intent-vault")
		}
		return nil, nil
	}
	rs, err := vault.ParseRecipients(c.Recipients)
	if err != nil {
		return nil, configErrorf("--intent-vault: %w", err)
	}
	return rs, nil
}

// build opens (or creates) the vault stream and returns the server option that seals intents
// into it and serves unseal; nothing without --intent-vault.
func (c VaultConfig) build(ctx context.Context, js jetstream.JetStream, cfg Config, instance string, log zerolog.Logger) ([]custodyhttp.Option, error) {
	recipients, err := c.recipients()
	if err != nil || len(recipients) == 0 {
		return nil, err
	}
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	st, err := vault.EnsureStream(sctx, js, c.Retention, cfg.StreamReplicas)
	if err != nil {
		return nil, fmt.Errorf("app: %w", err)
	}
	if !cfg.Auth.RequireAuth {
		log.Warn().Msg("--intent-vault without --require-auth: unseal still requires an authenticated caller, but decisions can be asked anonymously")
	}
	log.Info().Int("recipients", len(recipients)).Dur("retention", c.Retention).Str("stream", vault.StreamName).Msg("task intents are sealed into the intent vault")
	return []custodyhttp.Option{custodyhttp.WithVault(vault.New(js, st, recipients, instance, cfg.PublishTimeout))}, nil
}
