package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"time"

	"filippo.io/age"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/custodyhq/custody/decisionlog/vault"
	custodyhttp "github.com/custodyhq/custody/server"
)

// vaultConfig is serve's sealed intent vault: off unless --intent-vault names a recipient.
type vaultConfig struct {
	recipientSpecs stringList
	retention      time.Duration
	recipients     []age.Recipient // parsed by Validate
}

func (c *vaultConfig) flags(fs *flag.FlagSet) {
	fs.Var(&c.recipientSpecs, "intent-vault", "seal each task's intent to this age X25519 `recipient` (age1...) or @file of them, one a line, into the CUSTODY_VAULT stream; repeatable; unseal with custody unseal (default: intents are only hashed, never kept)")
	fs.DurationVar(&c.retention, "intent-vault-retention", 0, "how long CUSTODY_VAULT keeps sealed intents; 0 keeps them forever")
}

// Validate parses the recipients, so that a typo stops serve before it answers anything.
func (c *vaultConfig) Validate() error {
	if c.retention < 0 {
		return errors.New("--intent-vault-retention must not be negative")
	}
	if len(c.recipientSpecs) == 0 {
		if c.retention > 0 {
			return errors.New("--intent-vault-retention needs --intent-vault")
		}
		return nil
	}
	rs, err := vault.ParseRecipients(c.recipientSpecs)
	if err != nil {
		return fmt.Errorf("--intent-vault: %w", err)
	}
	c.recipients = rs
	return nil
}

// build opens (or creates) the vault stream and returns the server option that seals intents
// into it and serves unseal; nothing without --intent-vault.
func (c *vaultConfig) build(ctx context.Context, js jetstream.JetStream, cfg serveConfig, instance string, log zerolog.Logger) ([]custodyhttp.Option, error) {
	if len(c.recipients) == 0 {
		return nil, nil
	}
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	st, err := vault.EnsureStream(sctx, js, c.retention, cfg.streamReplicas)
	if err != nil {
		return nil, fmt.Errorf("serve: %w", err)
	}
	if !cfg.auth.requireAuth {
		log.Warn().Msg("--intent-vault without --require-auth: unseal still requires an authenticated caller, but decisions can be asked anonymously")
	}
	log.Info().Int("recipients", len(c.recipients)).Dur("retention", c.retention).Str("stream", vault.StreamName).Msg("task intents are sealed into the intent vault")
	return []custodyhttp.Option{custodyhttp.WithVault(vault.New(js, st, c.recipients, instance, cfg.publishTimeout))}, nil
}
