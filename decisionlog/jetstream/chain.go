package jetstream

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/mod/sumdb/note"

	"github.com/custodyhq/custody/decisionlog"
)

// Headers that let a reader follow an instance's chain without decoding bodies.
const (
	HeaderInstance = "Custody-Instance"
	HeaderSeq      = "Custody-Seq"
	HeaderHash     = "Custody-Hash"
)

// Checkpoint defaults: a signed checkpoint every DefaultCheckpointEvery records or every
// DefaultCheckpointInterval, whichever comes first, when the chain has moved.
const (
	DefaultCheckpointEvery    = 1000
	DefaultCheckpointInterval = 10 * time.Second
)

// ChainConfig makes a sink number and link its records and publish signed checkpoints.
type ChainConfig struct {
	Instance string
	// Head is where the chain resumes; see RecoverHead.
	Head decisionlog.ChainHead
	// Signer signs checkpoints (an Ed25519 signed-note key).
	Signer             note.Signer
	CheckpointEvery    uint64
	CheckpointInterval time.Duration
	// Stream is read to settle a publish whose ack was lost: was the record stored or not?
	Stream interface {
		GetLastMsgForSubject(ctx context.Context, subject string) (*jetstream.RawStreamMsg, error)
	}
}

// WithChain makes the sink chain its records: each gets the next seq and the previous hash.
// Publishing is then serialised, since a record can only be linked once the one before it is
// durable: a failed publish must not leave a gap that reads as a deleted record.
func WithChain(cfg ChainConfig) Option {
	return func(s *Sink) {
		if cfg.CheckpointEvery == 0 {
			cfg.CheckpointEvery = DefaultCheckpointEvery
		}
		if cfg.CheckpointInterval == 0 {
			cfg.CheckpointInterval = DefaultCheckpointInterval
		}
		s.chain = &chainState{cfg: cfg, head: cfg.Head, checkpointed: cfg.Head.Seq}
	}
}

type chainState struct {
	cfg          ChainConfig
	head         decisionlog.ChainHead
	checkpointed uint64 // seq of the last published checkpoint
	// uncertain is a record whose publish failed: JetStream may have stored it anyway (a lost
	// ack). Until that is settled no record may take its seq, or the chain would fork.
	uncertain *decisionlog.Record
}

// Head returns the chain's current head.
func (s *Sink) Head() decisionlog.ChainHead {
	s.chainMu.Lock()
	defer s.chainMu.Unlock()
	if s.chain == nil {
		return decisionlog.ChainHead{}
	}
	return s.chain.head
}

// CheckpointedSeq is the seq of the last checkpoint published, 0 when unchained.
func (s *Sink) CheckpointedSeq() uint64 {
	s.chainMu.Lock()
	defer s.chainMu.Unlock()
	if s.chain == nil {
		return 0
	}
	return s.chain.checkpointed
}

// publishChained links, seals and publishes r, advancing the head only once JetStream acked it.
func (s *Sink) publishChained(ctx context.Context, r *decisionlog.Record) error {
	s.chainMu.Lock()
	defer s.chainMu.Unlock()
	c := s.chain
	if c.uncertain != nil {
		if err := s.settleLocked(ctx); err != nil {
			return err
		}
	}
	r.PDP.Instance = c.cfg.Instance
	c.head.Link(r)
	body, err := decisionlog.Seal(r)
	if err != nil {
		return fmt.Errorf("jetstream: %w: %w", decisionlog.ErrUnavailable, err)
	}
	if err := s.PublishSealed(ctx, r, body); err != nil {
		// The head stays put, so the next record takes this seq and the chain has no gap, unless
		// the record was stored after all: settleLocked finds out before the next publish.
		sealed := *r
		c.uncertain = &sealed
		return err
	}
	c.head = decisionlog.After(r)
	if c.head.Seq-c.checkpointed >= c.cfg.CheckpointEvery {
		s.checkpointLocked(ctx)
	}
	return nil
}

// settleLocked decides whether the uncertain record reached the stream, by reading the last
// message on its subject, and moves the head past it if it did.
func (s *Sink) settleLocked(ctx context.Context) error {
	c := s.chain
	u := c.uncertain
	if c.cfg.Stream == nil {
		c.uncertain = nil
		return nil
	}
	gctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.timeout)
	defer cancel()
	m, err := c.cfg.Stream.GetLastMsgForSubject(gctx, decisionlog.RecordSubject(u))
	switch {
	case err == nil:
		if m.Header.Get(decisionlog.HeaderMsgID) == u.MsgID() && m.Header.Get(HeaderSeq) == strconv.FormatUint(u.Seq, 10) {
			c.head = decisionlog.After(u)
			s.logger.Warn().Str("decision_id", u.DecisionID).Uint64("seq", u.Seq).Msg("record answered as unavailable was stored after all")
		}
	case errors.Is(err, jetstream.ErrMsgNotFound):
	default:
		return fmt.Errorf("jetstream: settle record %s: %w: %w", u.DecisionID, decisionlog.ErrUnavailable, err)
	}
	c.uncertain = nil
	return nil
}

// PublishSealed publishes a record that is already chained and sealed (body from
// decisionlog.Seal), with the chain headers, and waits for the ack. The spool's forwarder uses it.
func (s *Sink) PublishSealed(ctx context.Context, r *decisionlog.Record, body []byte) error {
	msg := s.decisionMsg(r, body)
	msg.Header.Set(HeaderInstance, r.PDP.Instance)
	msg.Header.Set(HeaderSeq, strconv.FormatUint(r.Seq, 10))
	msg.Header.Set(HeaderHash, r.Hash)
	return s.send(ctx, r, msg)
}

// runCheckpoints publishes a checkpoint every interval while the chain moves, until ctx ends.
func (s *Sink) runCheckpoints(ctx context.Context) {
	t := time.NewTicker(s.chain.cfg.CheckpointInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.chainMu.Lock()
			if s.chain.head.Seq > s.chain.checkpointed {
				s.checkpointLocked(ctx)
			}
			s.chainMu.Unlock()
		}
	}
}

// Checkpoint publishes a checkpoint of the current head now, if the chain moved since the last.
func (s *Sink) Checkpoint(ctx context.Context) error {
	s.chainMu.Lock()
	defer s.chainMu.Unlock()
	if s.chain == nil || s.chain.head.Seq == s.chain.checkpointed {
		return nil
	}
	return s.checkpointLocked(ctx)
}

func (s *Sink) checkpointLocked(ctx context.Context) error {
	c := s.chain
	if c.cfg.Signer == nil {
		return nil
	}
	if err := s.PublishCheckpoint(ctx, c.cfg.Instance, c.head, c.cfg.Signer); err != nil {
		return err
	}
	c.checkpointed = c.head.Seq
	return nil
}

// PublishCheckpoint signs head and publishes it on custody.checkpoint.<instance>.
func (s *Sink) PublishCheckpoint(ctx context.Context, instance string, head decisionlog.ChainHead, signer note.Signer) error {
	cp, err := decisionlog.NewCheckpoint(instance, head, s.now(), signer)
	if err != nil {
		return err
	}
	body, err := json.Marshal(cp)
	if err != nil {
		return err
	}
	msg := nats.NewMsg(decisionlog.CheckpointSubject(instance))
	msg.Data = body
	msg.Header.Set(HeaderInstance, instance)
	msg.Header.Set(HeaderSeq, strconv.FormatUint(cp.Seq, 10))
	msg.Header.Set(HeaderHash, cp.Hash)
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.timeout)
	defer cancel()
	if _, err := s.js.PublishMsg(pctx, msg, jetstream.WithMsgID("checkpoint-"+instance+"-"+strconv.FormatUint(cp.Seq, 10))); err != nil {
		s.logger.Warn().Err(err).Uint64("seq", cp.Seq).Msg("checkpoint not published; will retry")
		return fmt.Errorf("jetstream: publish checkpoint: %w", err)
	}
	s.logger.Debug().Uint64("seq", cp.Seq).Msg("checkpoint published")
	return nil
}

// streamReader is what RecoverHead needs of the stream.
type streamReader interface {
	GetLastMsgForSubject(ctx context.Context, subject string) (*jetstream.RawStreamMsg, error)
	Info(ctx context.Context, opts ...jetstream.StreamInfoOpt) (*jetstream.StreamInfo, error)
	OrderedConsumer(ctx context.Context, cfg jetstream.OrderedConsumerConfig) (jetstream.Consumer, error)
}

// RecoverHead finds where instance's chain ends in the stream: its last checkpoint, then any of
// its records after that checkpoint (read by headers only). A fresh instance starts at seq 0.
func RecoverHead(ctx context.Context, stream streamReader, instance string) (decisionlog.ChainHead, error) {
	var head decisionlog.ChainHead
	var from uint64 = 1
	last, err := stream.GetLastMsgForSubject(ctx, decisionlog.CheckpointSubject(instance))
	switch {
	case err == nil:
		var cp decisionlog.Checkpoint
		if err := json.Unmarshal(last.Data, &cp); err != nil {
			return head, fmt.Errorf("jetstream: recover chain: read checkpoint: %w", err)
		}
		if head, err = decisionlog.ReadCheckpointUnverified(&cp); err != nil {
			return head, fmt.Errorf("jetstream: recover chain: %w", err)
		}
		from = last.Sequence + 1
	case errors.Is(err, jetstream.ErrMsgNotFound):
	default:
		return head, fmt.Errorf("jetstream: recover chain: last checkpoint: %w", err)
	}
	info, err := stream.Info(ctx)
	if err != nil {
		return head, fmt.Errorf("jetstream: recover chain: stream info: %w", err)
	}
	lastSeq := info.State.LastSeq
	if lastSeq < from {
		return head, nil
	}
	cons, err := stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{decisionlog.DecisionPrefix + ".>", decisionlog.ExecutionPrefix + ".>"},
		DeliverPolicy:  jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:    from,
		HeadersOnly:    true,
	})
	if err != nil {
		return head, fmt.Errorf("jetstream: recover chain: consumer: %w", err)
	}
	for {
		batch, err := cons.Fetch(1000, jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			return head, fmt.Errorf("jetstream: recover chain: fetch: %w", err)
		}
		n := 0
		done := false
		for m := range batch.Messages() {
			n++
			md, err := m.Metadata()
			if err != nil {
				return head, fmt.Errorf("jetstream: recover chain: metadata: %w", err)
			}
			if m.Headers().Get(HeaderInstance) == instance {
				seq, err := strconv.ParseUint(m.Headers().Get(HeaderSeq), 10, 64)
				if err == nil && seq > head.Seq {
					head = decisionlog.ChainHead{Seq: seq, Hash: m.Headers().Get(HeaderHash)}
				}
			}
			// NumPending 0: nothing more matches the filter. Without it, a stream ending in a
			// checkpoint (not matched) made the next fetch wait out its 2 s timeout at every start.
			if md.Sequence.Stream >= lastSeq || md.NumPending == 0 {
				done = true
			}
		}
		if err := batch.Error(); err != nil {
			return head, fmt.Errorf("jetstream: recover chain: fetch: %w", err)
		}
		if done || n == 0 {
			return head, nil
		}
	}
}
