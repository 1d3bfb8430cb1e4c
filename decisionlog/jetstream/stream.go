package jetstream

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
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
	// KeepDuplicateWindow accepts an existing stream's duplicate window: DuplicateWindow is then
	// only what a new stream gets (the window was not asked for explicitly).
	KeepDuplicateWindow bool
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

// streamManager is what EnsureStream and ApplyStreamConfig need of a JetStream context.
type streamManager interface {
	CreateStream(ctx context.Context, cfg jetstream.StreamConfig) (jetstream.Stream, error)
	UpdateStream(ctx context.Context, cfg jetstream.StreamConfig) (jetstream.Stream, error)
	Stream(ctx context.Context, name string) (jetstream.Stream, error)
}

// ConfigMismatchError says how an existing CUSTODY stream differs from what this instance asks
// for. custody never resolves it on its own: every difference either changes what history is kept
// (retention, limits, replicas) or how it is protected, so applying it is an operator's act.
type ConfigMismatchError struct {
	// Differences name each setting: "max_age: stream has 720h0m0s, this instance asks for 30s".
	Differences []string
}

func (e *ConfigMismatchError) Error() string {
	return fmt.Sprintf("jetstream: stream %s exists with other settings: %s", decisionlog.StreamName, strings.Join(e.Differences, "; "))
}

// streamAttempt bounds one create or info call, so that a call lost during a cluster's leader
// election is retried within the caller's deadline instead of using all of it.
const streamAttempt = 5 * time.Second

// EnsureStream creates the CUSTODY stream when it is missing and otherwise checks that it has
// cfg's settings; it never changes an existing stream (a difference is a *ConfigMismatchError).
// Instances starting together converge: the one whose create loses finds the winner's stream and
// checks it. The stream keeps history: file storage, deletes and purges denied, and new records
// refused rather than old ones evicted when it is full.
func EnsureStream(ctx context.Context, js streamManager, cfg StreamConfig) (jetstream.Stream, error) {
	want, err := cfg.streamConfig()
	if err != nil {
		return nil, err
	}
	for wait := 100 * time.Millisecond; ; wait = min(2*wait, 2*time.Second) {
		s, err := ensureOnce(ctx, js, want, cfg.KeepDuplicateWindow)
		if err == nil || !transient(err) {
			return s, err
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("jetstream: ensure stream %s: %w (last error: %w)", decisionlog.StreamName, ctx.Err(), err)
		case <-time.After(wait):
		}
	}
}

func ensureOnce(ctx context.Context, js streamManager, want jetstream.StreamConfig, keepDuplicates bool) (jetstream.Stream, error) {
	actx, cancel := context.WithTimeout(ctx, streamAttempt)
	defer cancel()
	s, err := js.Stream(actx, decisionlog.StreamName)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		s, err = js.CreateStream(actx, want)
		if err == nil {
			return s, nil
		}
		if !errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			return nil, fmt.Errorf("jetstream: create stream %s: %w", decisionlog.StreamName, err)
		}
		s, err = js.Stream(actx, decisionlog.StreamName) // another instance created it first
	}
	if err != nil {
		return nil, fmt.Errorf("jetstream: stream %s: %w", decisionlog.StreamName, err)
	}
	got := s.CachedInfo().Config
	if keepDuplicates {
		want.Duplicates = got.Duplicates
	}
	if diffs := ConfigDifferences(want, got); len(diffs) > 0 {
		return nil, &ConfigMismatchError{Differences: diffs}
	}
	return s, nil
}

// ApplyStreamConfig updates an existing CUSTODY stream to cfg, or creates it: the explicit act
// behind `serve --stream-apply-config`. Shrinking retention, limits or replicas is only ever done
// here.
func ApplyStreamConfig(ctx context.Context, js streamManager, cfg StreamConfig) (jetstream.Stream, error) {
	want, err := cfg.streamConfig()
	if err != nil {
		return nil, err
	}
	s, err := js.UpdateStream(ctx, want)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return EnsureStream(ctx, js, cfg)
	}
	if err != nil {
		return nil, fmt.Errorf("jetstream: update stream %s: %w", decisionlog.StreamName, err)
	}
	return s, nil
}

// transient reports whether a stream call may succeed if tried again: a timeout or no responders
// while JetStream elects a leader, never a refusal.
func transient(err error) bool {
	var mismatch *ConfigMismatchError
	if errors.As(err, &mismatch) {
		return false
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) ||
		errors.Is(err, nats.ErrNoResponders) || errors.Is(err, jetstream.ErrNoStreamResponse) {
		return true
	}
	// JetStream answers 503 ("not currently available") while a cluster elects its leaders.
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.Code == 503
}

func (c StreamConfig) streamConfig() (jetstream.StreamConfig, error) {
	c.SetDefaults()
	if err := c.Validate(); err != nil {
		return jetstream.StreamConfig{}, err
	}
	return jetstream.StreamConfig{
		Name:              decisionlog.StreamName,
		Description:       "custody authorization decisions",
		Subjects:          []string{decisionlog.StreamSubjects},
		Storage:           jetstream.FileStorage,
		Retention:         jetstream.LimitsPolicy,
		Discard:           jetstream.DiscardNew,
		MaxAge:            c.Retention,
		MaxBytes:          c.MaxBytes,
		MaxMsgs:           -1,
		MaxMsgsPerSubject: -1,
		MaxConsumers:      -1,
		Replicas:          c.Replicas,
		Duplicates:        c.DuplicateWindow,
		DenyDelete:        true,
		DenyPurge:         true,
	}, nil
}

// ConfigDifferences lists each setting in which got (a live stream) is weaker than or different
// from want, in the settings that decide what history the stream keeps and who can change it.
// Cosmetic settings (description, metadata, compression) are not compared.
func ConfigDifferences(want, got jetstream.StreamConfig) []string {
	var d []string
	diff := func(name string, w, g any) {
		if fmt.Sprint(w) != fmt.Sprint(g) {
			d = append(d, fmt.Sprintf("%s: stream has %v, this instance asks for %v", name, g, w))
		}
	}
	diff("subjects", want.Subjects, got.Subjects)
	diff("storage", want.Storage, got.Storage)
	diff("retention", want.Retention, got.Retention)
	diff("discard", want.Discard, got.Discard)
	diff("discard_new_per_subject", want.DiscardNewPerSubject, got.DiscardNewPerSubject)
	diff("max_age", want.MaxAge, got.MaxAge)
	diff("max_bytes", want.MaxBytes, got.MaxBytes)
	diff("max_msgs", want.MaxMsgs, got.MaxMsgs)
	diff("max_msgs_per_subject", want.MaxMsgsPerSubject, got.MaxMsgsPerSubject)
	diff("num_replicas", want.Replicas, got.Replicas)
	diff("duplicate_window", want.Duplicates, got.Duplicates)
	diff("deny_delete", want.DenyDelete, got.DenyDelete)
	diff("deny_purge", want.DenyPurge, got.DenyPurge)
	diff("sealed", want.Sealed, got.Sealed)
	diff("allow_rollup_hdrs", want.AllowRollup, got.AllowRollup) // a rollup header purges a subject
	diff("allow_msg_ttl", want.AllowMsgTTL, got.AllowMsgTTL)     // a TTL header expires a record
	diff("subject_delete_marker_ttl", want.SubjectDeleteMarkerTTL, got.SubjectDeleteMarkerTTL)
	diff("persist_mode", want.PersistMode, got.PersistMode) // async persistence acks before the disk
	diff("mirror", want.Mirror != nil, got.Mirror != nil)
	diff("sources", len(want.Sources), len(got.Sources))
	diff("subject_transform", want.SubjectTransform != nil, got.SubjectTransform != nil)
	diff("no_ack", want.NoAck, got.NoAck)
	return d
}
