package jetstream

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/custodyhq/custody/decisionlog"
)

// StreamConfig is what custody asks of the CUSTODY stream.
type StreamConfig struct {
	// Retention is the maximum age of a record; 0 keeps records forever.
	Retention time.Duration
	// MaxBytes bounds the stream's size; -1 is unlimited. When full, new records are refused
	// (discard-new), never old ones evicted, and callers then get a deny.
	MaxBytes int64
	// Replicas is the number of copies in a JetStream cluster.
	Replicas int
	// DuplicateWindow is how long JetStream remembers a Nats-Msg-Id to drop a replayed record.
	DuplicateWindow time.Duration
}

// Defaults for StreamConfig.
const (
	DefaultReplicas        = 1
	DefaultDuplicateWindow = 2 * time.Minute
)

// SetDefaults fills unset fields.
func (c *StreamConfig) SetDefaults() {
	if c.MaxBytes == 0 {
		c.MaxBytes = -1
	}
	if c.Replicas == 0 {
		c.Replicas = DefaultReplicas
	}
	if c.DuplicateWindow == 0 {
		c.DuplicateWindow = DefaultDuplicateWindow
		if c.Retention > 0 && c.Retention < c.DuplicateWindow {
			c.DuplicateWindow = c.Retention // JetStream refuses a window longer than max age
		}
	}
}

// Validate reports the first field that is out of range.
func (c *StreamConfig) Validate() error {
	switch {
	case c.Retention < 0:
		return errors.New("jetstream: stream config: retention must not be negative")
	case c.MaxBytes < -1 || c.MaxBytes == 0:
		return errors.New("jetstream: stream config: max bytes must be positive or -1")
	case c.Replicas < 1 || c.Replicas > 5:
		return errors.New("jetstream: stream config: replicas must be between 1 and 5")
	case c.DuplicateWindow <= 0:
		return errors.New("jetstream: stream config: duplicate window must be positive")
	case c.Retention > 0 && c.DuplicateWindow > c.Retention:
		return errors.New("jetstream: stream config: duplicate window must not exceed retention")
	}
	return nil
}

// streamCreator is the one JetStream call EnsureStream needs.
type streamCreator interface {
	CreateOrUpdateStream(ctx context.Context, cfg jetstream.StreamConfig) (jetstream.Stream, error)
}

// EnsureStream creates the CUSTODY stream, or updates it to cfg, idempotently. The stream keeps
// history: file storage, deletes and purges denied, and new records refused rather than old
// ones evicted when it is full.
func EnsureStream(ctx context.Context, js streamCreator, cfg StreamConfig) (jetstream.Stream, error) {
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	s, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        decisionlog.StreamName,
		Description: "custody authorization decisions",
		Subjects:    []string{decisionlog.StreamSubjects},
		Storage:     jetstream.FileStorage,
		Retention:   jetstream.LimitsPolicy,
		Discard:     jetstream.DiscardNew,
		MaxAge:      cfg.Retention,
		MaxBytes:    cfg.MaxBytes,
		MaxMsgs:     -1,
		Replicas:    cfg.Replicas,
		Duplicates:  cfg.DuplicateWindow,
		DenyDelete:  true,
		DenyPurge:   true,
	})
	if err != nil {
		return nil, fmt.Errorf("jetstream: create or update stream %s: %w", decisionlog.StreamName, err)
	}
	return s, nil
}
