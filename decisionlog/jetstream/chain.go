package jetstream

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
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
	// Window is how many records may await JetStream's ack at once. 1 (the default) publishes
	// one record at a time. Above 1, concurrent decisions share the connection and each waits
	// only for its own ack; every record but the first in flight then carries
	// Nats-Expected-Last-Msg-Id naming the message sent before it, so JetStream stores the
	// window's records only as an unbroken prefix and a failed record can never leave a gap.
	// That header needs the sink to be the stream's only writer: use a window only with a stream
	// of its own (the embedded server), never with a stream a fleet shares. With a Window of 1 no
	// message the sink sends depends on the stream's last message, so any number of instances
	// can share the stream: a clustered stream wedged for good when another instance's record
	// broke a last-message expectation (issue 14).
	Window int
	// Stream is read to settle a publish whose ack was lost: was the record stored or not?
	Stream interface {
		GetLastMsgForSubject(ctx context.Context, subject string) (*jetstream.RawStreamMsg, error)
	}
}

// WithChain makes the sink chain its records: each gets the next seq and the previous hash.
func WithChain(cfg ChainConfig) Option {
	return func(s *Sink) {
		if cfg.CheckpointEvery == 0 {
			cfg.CheckpointEvery = DefaultCheckpointEvery
		}
		if cfg.CheckpointInterval == 0 {
			cfg.CheckpointInterval = DefaultCheckpointInterval
		}
		if cfg.Window < 1 {
			cfg.Window = 1
		}
		s.chain = &chainState{cfg: cfg, head: cfg.Head, next: cfg.Head, checkpointed: cfg.Head.Seq}
		s.headSeq.Store(cfg.Head.Seq)
		s.checkpointSeq.Store(cfg.Head.Seq)
		s.slots = newAckSlots(cfg.Window)
	}
}

type chainState struct {
	cfg  ChainConfig
	head decisionlog.ChainHead // confirmed: JetStream acked this record and every one before it
	next decisionlog.ChainHead // where the next record links: after the last record sent
	// window holds the messages sent and not yet confirmed, in the order they were sent.
	window []*inflight
	// lastSent is the Nats-Msg-Id of the last message sent while the window was not empty: the
	// next message must follow it in the stream.
	lastSent string
	// broken: a message in the window failed, so which of its successors were stored is not
	// known. Nothing more is sent until repair settles it.
	broken       bool
	generation   uint64 // bumped by each repair; a late ack of an older window is ignored
	checkpointed uint64 // seq of the last published checkpoint
	// checkpointDue: a checkpoint was asked for while a record was in flight on a shared
	// stream. It is published once the window is empty, so that it lands after every record it
	// could be read after (RecoverHead reads only records after the last checkpoint).
	checkpointDue bool
	// checkpoint is the checkpoint sent and not yet acked, nil when none is. Its ack is waited
	// for outside chainMu, like a record's; no second checkpoint is sent meanwhile.
	checkpoint *pendingCheckpoint
}

// pendingCheckpoint is a checkpoint sent to JetStream whose ack is awaited.
type pendingCheckpoint struct {
	cp         *decisionlog.Checkpoint
	id         string // its Nats-Msg-Id
	fut        jetstream.PubAckFuture
	inWindow   bool   // records were in flight when it was sent: they may depend on it
	generation uint64 // of the window it was sent in
	done       chan struct{}
	err        error
}

// soleWriter reports whether the sink may rely on being the stream's only writer, and so may
// name its last message in Nats-Expected-Last-Msg-Id.
func (c *chainState) soleWriter() bool { return c.cfg.Window > 1 }

// inflight is a chained record sent to JetStream and not yet confirmed.
type inflight struct {
	// subject, msgID and decisionID name the record as sealed (its seq is after.Seq): what a
	// lost ack is checked against. The record itself is not kept: a copy of it cost an
	// allocation on every record, and its caller may change it once Publish returns.
	subject, msgID, decisionID string
	body                       []byte // as published: the Merkle leaf
	after                      decisionlog.ChainHead
	generation                 uint64
	done                       chan struct{} // closed once err is set
	err                        error
	stored                     bool // set by a repair that found the record on the stream (guarded by chainMu)
}

// Head returns the chain's current head: its last record that JetStream acked with every one
// before it.
func (s *Sink) Head() decisionlog.ChainHead {
	s.chainMu.Lock()
	defer s.chainMu.Unlock()
	if s.chain == nil {
		return decisionlog.ChainHead{}
	}
	return s.chain.head
}

// HeadSeq is the seq of Head, read without waiting: chainMu may be held across a network call
// (a repair), and /metrics must never block on one.
func (s *Sink) HeadSeq() uint64 { return s.headSeq.Load() }

// CheckpointedSeq is the seq of the last checkpoint published, 0 when unchained. Like HeadSeq
// it never waits.
func (s *Sink) CheckpointedSeq() uint64 { return s.checkpointSeq.Load() }

// publishChained links, seals and sends r, then waits for its own ack. Linking and sending
// happen under chainMu, so records reach the connection, and the stream, in chain order; the
// wait does not hold it, so up to Window records share the round trip to JetStream.
func (s *Sink) publishChained(ctx context.Context, r *decisionlog.Record) error {
	slot := <-s.slots
	release := func() { // once: the slot is given back before a checkpoint's ack is awaited
		if slot != nil {
			s.slots <- slot
			slot = nil
		}
	}
	defer release()
	if err := s.guardErr(); err != nil {
		return err
	}

	s.chainMu.Lock()
	c := s.chain
	if c.broken {
		if err := s.repairLocked(ctx); err != nil {
			s.chainMu.Unlock()
			return err
		}
	}
	r.PDP.Instance = c.cfg.Instance
	c.next.Link(r)
	body, err := decisionlog.Seal(r)
	if err != nil {
		s.chainMu.Unlock()
		return fmt.Errorf("jetstream: %w: %w", decisionlog.ErrUnavailable, err)
	}
	msg := s.chainedMsg(r, body)
	if err := s.checkSize(r, msg); err != nil { // not sent: the next record takes its seq
		s.chainMu.Unlock()
		return err
	}
	expectLast := ""
	if len(c.window) > 0 && c.soleWriter() {
		expectLast = c.lastSent
	}
	if err := s.sendRecord(slot, msg, r.MsgID(), expectLast); err != nil { // not sent: the next record takes this one's place in the chain
		s.chainMu.Unlock()
		s.guardPoke()
		s.logger.Error().Err(err).Str("decision_id", r.DecisionID).Msg("decision record not sent")
		return fmt.Errorf("jetstream: publish record: %w: %w", decisionlog.ErrUnavailable, err)
	}
	e := &inflight{subject: msg.Subject, msgID: r.MsgID(), decisionID: r.DecisionID, body: body, after: decisionlog.After(r), generation: c.generation, done: make(chan struct{})}
	c.window = append(c.window, e)
	c.next, c.lastSent = e.after, r.MsgID()
	s.chainMu.Unlock()

	timer := ackTimer(s.timeout)
	select {
	case m := <-slot.ch:
		e.err = ackError(m)
	case <-timer.C:
		e.err = errors.New("no ack within the publish timeout")
		slot.retire() // the ack may still come: not to the next record that takes this slot
	}
	releaseAckTimer(timer)
	if e.err != nil {
		s.guardPoke()
	}
	close(e.done) // before taking chainMu: a repair holding it may be waiting for this

	s.chainMu.Lock()
	if e.generation != c.generation {
		// A repair already settled this record's window, and said whether it was stored. (Its
		// seq may since belong to another record: a record that was not stored gives it up.)
		stored := e.stored
		s.chainMu.Unlock()
		if stored {
			return nil
		}
		return fmt.Errorf("jetstream: publish record: %w: %w", decisionlog.ErrUnavailable, e.err)
	}
	if e.err != nil {
		c.broken = true
		s.chainMu.Unlock()
		s.logger.Error().Err(e.err).Str("decision_id", r.DecisionID).Str("correlation_id", r.CorrelationID).Msg("decision record not acked")
		return fmt.Errorf("jetstream: publish record: %w: %w", decisionlog.ErrUnavailable, e.err)
	}
	cp := s.advanceLocked()
	s.chainMu.Unlock()
	release()
	_ = s.settleCheckpoint(ctx, cp) // this record is stored; a failed checkpoint is retried
	return nil
}

// sendRecord sends a chained record's message with the headers jetstream's publish options
// set (its Nats-Msg-Id, the stream it must land in and, in a window, the message it must
// follow), its ack due on slot's inbox. The caller holds chainMu: messages leave in chain order.
func (s *Sink) sendRecord(slot *ackSlot, msg *nats.Msg, msgID, expectLast string) error {
	if err := slot.open(s.nc); err != nil {
		return err
	}
	msg.Header[jetstream.MsgIDHeader] = []string{msgID}
	msg.Header[jetstream.ExpectedStreamHeader] = expectStreamValue
	if expectLast != "" {
		msg.Header[jetstream.ExpectedLastMsgIDHeader] = []string{expectLast}
	}
	msg.Reply = slot.subject
	return s.nc.PublishMsg(msg)
}

// expectStreamValue is the Nats-Expected-Stream header of every record, made once.
var expectStreamValue = []string{decisionlog.StreamName}

// ackTimers holds stopped timers for the wait on a record's ack: one was made for every record.
// A stopped timer delivers no stale tick (since Go 1.23; releaseAckTimer drains the channel for
// GODEBUG=asynctimerchan=1), so a reused timer is as good as a new one.
var ackTimers sync.Pool

// ackTimer is a timer that fires after d.
func ackTimer(d time.Duration) *time.Timer {
	if t, ok := ackTimers.Get().(*time.Timer); ok {
		t.Reset(d)
		return t
	}
	return time.NewTimer(d)
}

// releaseAckTimer stops t and keeps it for reuse.
func releaseAckTimer(t *time.Timer) {
	if !t.Stop() {
		select {
		case <-t.C:
		default:
		}
	}
	ackTimers.Put(t)
}

func (s *Sink) chainedMsg(r *decisionlog.Record, body []byte) *nats.Msg {
	return recordMsg(r, body, true)
}

// advanceLocked moves the confirmed head over the acked records at the front of the window,
// and sends a checkpoint when enough records have been confirmed since the last; the caller
// settles it (settleCheckpoint) once it has let go of chainMu.
func (s *Sink) advanceLocked() *pendingCheckpoint {
	c := s.chain
	n := 0
	for _, e := range c.window {
		if !isDone(e) || e.err != nil {
			break
		}
		c.head = e.after
		s.headSeq.Store(c.head.Seq)
		s.extendTree(e.after.Seq, e.body)
		n++
	}
	c.window = c.window[n:]
	if len(c.window) == 0 {
		c.window = nil // let the backing array go
	}
	due := c.checkpointDue && len(c.window) == 0 && c.head.Seq > c.checkpointed
	if due || c.head.Seq-c.checkpointed >= c.cfg.CheckpointEvery {
		cp, _ := s.checkpointLocked() // a checkpoint not sent is retried at the next record or tick
		return cp
	}
	return nil
}

func isDone(e *inflight) bool {
	select {
	case <-e.done:
		return true
	default:
		return false
	}
}

// repairLocked settles a window in which a message failed. Every message in it is first
// settled (each waiter gives up at the publish timeout). Because each message but the first
// named its predecessor in Nats-Expected-Last-Msg-Id, the stream holds an unbroken prefix of
// the window: the acked records, then possibly some whose ack was lost. Those are looked up in
// order until one is missing; the chain resumes after the last record stored, and the records
// after it give up their seqs, so the chain never has a gap.
func (s *Sink) repairLocked(ctx context.Context) error {
	c := s.chain
	for _, e := range c.window {
		<-e.done
	}
	head := c.head
	i := 0
	for ; i < len(c.window) && c.window[i].err == nil; i++ {
		head = c.window[i].after
		c.window[i].stored = true
		s.extendTree(c.window[i].after.Seq, c.window[i].body)
	}
	for ; i < len(c.window); i++ {
		stored, err := s.storedLocked(ctx, c.window[i])
		if err != nil {
			c.head = head
			s.headSeq.Store(head.Seq)
			c.window = c.window[i:]
			return err
		}
		if !stored {
			break
		}
		head = c.window[i].after
		c.window[i].stored = true
		s.extendTree(c.window[i].after.Seq, c.window[i].body)
		s.logger.Warn().Str("decision_id", c.window[i].decisionID).Uint64("seq", c.window[i].after.Seq).Msg("record answered as unavailable was stored after all")
	}
	c.head, c.next = head, head
	s.headSeq.Store(head.Seq)
	c.window, c.lastSent, c.broken = nil, "", false
	c.generation++
	return nil
}

// storedLocked reports whether the record of e, whose publish failed, reached the stream, by
// reading the last message on its subject.
func (s *Sink) storedLocked(ctx context.Context, e *inflight) (bool, error) {
	c := s.chain
	if c.cfg.Stream == nil {
		return false, nil
	}
	gctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.timeout)
	defer cancel()
	m, err := c.cfg.Stream.GetLastMsgForSubject(gctx, e.subject)
	switch {
	case err == nil:
		return m.Header.Get(decisionlog.HeaderMsgID) == e.msgID && m.Header.Get(HeaderSeq) == strconv.FormatUint(e.after.Seq, 10), nil
	case errors.Is(err, jetstream.ErrMsgNotFound):
		return false, nil
	default:
		return false, fmt.Errorf("jetstream: settle record %s: %w: %w", e.decisionID, decisionlog.ErrUnavailable, err)
	}
}

// CheckSealed returns an error wrapping decisionlog.ErrTooLarge when the sealed record r could
// never be published: its message would exceed the server's max payload. The spool calls it
// before it answers.
func (s *Sink) CheckSealed(r *decisionlog.Record, body []byte) error {
	return s.checkSize(r, s.chainedMsg(r, body))
}

// PublishSealed publishes a record that is already chained and sealed (body from
// decisionlog.Seal), with the chain headers, and waits for the ack. The spool's forwarder uses it.
func (s *Sink) PublishSealed(ctx context.Context, r *decisionlog.Record, body []byte) error {
	msg := s.chainedMsg(r, body)
	err := s.checkSize(r, msg)
	if err == nil {
		err = s.send(ctx, r, msg)
	}
	s.noteOutcome(err)
	if err == nil {
		s.extendTree(r.Seq, body)
	}
	return err
}

// extendTree adds an acked record to the Merkle tree. A record the tree cannot take (one was
// passed over, as the spool does with a record JetStream refuses for good) is logged once;
// checkpoints then sign the chain head only.
func (s *Sink) extendTree(seq uint64, body []byte) {
	if s.tree == nil {
		return
	}
	if err := s.tree.AppendSeq(seq, body); err != nil && s.treeBroken.CompareAndSwap(false, true) {
		s.logger.Error().Err(err).Uint64("seq", seq).Msg("Merkle tree stops here; checkpoints now sign the chain head only")
	}
}

// runCheckpoints publishes a checkpoint every interval while the chain moves, until ctx ends.
func (s *Sink) runCheckpoints(ctx context.Context) {
	defer close(s.stopped)
	t := time.NewTicker(s.chain.cfg.CheckpointInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			var cp *pendingCheckpoint
			s.chainMu.Lock()
			if s.chain.head.Seq > s.chain.checkpointed {
				cp, _ = s.checkpointLocked()
			}
			s.chainMu.Unlock()
			s.settleCheckpoint(ctx, cp)
		}
	}
}

// Checkpoint publishes a checkpoint of the current head now, if the chain moved since the last,
// and waits for its ack. A checkpoint already in flight is waited for first.
func (s *Sink) Checkpoint(ctx context.Context) error {
	for {
		s.chainMu.Lock()
		if s.chain == nil || s.chain.head.Seq == s.chain.checkpointed && s.chain.checkpoint == nil {
			s.chainMu.Unlock()
			return nil
		}
		if p := s.chain.checkpoint; p != nil {
			s.chainMu.Unlock()
			select {
			case <-p.done:
				continue
			case <-ctx.Done():
				return fmt.Errorf("jetstream: checkpoint: %w", ctx.Err())
			}
		}
		cp, err := s.checkpointLocked()
		s.chainMu.Unlock()
		if err != nil || cp == nil {
			return err
		}
		return s.settleCheckpoint(ctx, cp)
	}
}

// checkpointLocked signs the confirmed head and sends it, returning the checkpoint for the
// caller to settle outside chainMu; nil when none is due or one is already in flight. Sending
// under chainMu orders the checkpoint with the records on the connection (every record it
// covers was acked before it is sent, and records sent after it come after it), as a record's
// send is; only the round trip to its ack is left outside.
func (s *Sink) checkpointLocked() (*pendingCheckpoint, error) {
	c := s.chain
	if c.cfg.Signer == nil || c.broken || c.checkpoint != nil {
		return nil, nil
	}
	var opts []jetstream.PublishOpt
	if len(c.window) > 0 {
		if !c.soleWriter() {
			// A record in flight may land after this checkpoint and then never be read back by
			// RecoverHead. Naming it as the last message would order them, but on a shared
			// stream another instance's message may come between: wait for the window instead.
			c.checkpointDue = true
			return nil, nil
		}
		// Records after this checkpoint will name it as their predecessor; it names its own.
		opts = append(opts, jetstream.WithExpectLastMsgID(c.lastSent))
	}
	p, err := s.sendCheckpoint(c.cfg.Instance, c.head, c.cfg.Signer, opts...)
	if err != nil {
		return nil, err
	}
	p.inWindow, p.generation = len(c.window) > 0, c.generation
	if p.inWindow {
		c.lastSent = p.id
	}
	c.checkpoint = p
	return p, nil
}

// settleCheckpoint waits for the ack of p (nil: nothing to do) without holding chainMu, then
// records the outcome.
func (s *Sink) settleCheckpoint(ctx context.Context, p *pendingCheckpoint) error {
	if p == nil {
		return nil
	}
	p.err = s.awaitCheckpoint(p)
	s.chainMu.Lock()
	c := s.chain
	c.checkpoint = nil
	if p.err != nil {
		if p.inWindow && p.generation == c.generation {
			c.broken = true // records sent after it may have been refused
		}
	} else if p.cp.Seq > c.checkpointed {
		c.checkpointed, c.checkpointDue = p.cp.Seq, false
		s.checkpointSeq.Store(c.checkpointed)
	}
	s.chainMu.Unlock()
	close(p.done)
	if p.err != nil {
		return p.err
	}
	s.logger.Debug().Uint64("seq", p.cp.Seq).Str("schema", p.cp.Schema).Msg("checkpoint published")
	if s.onCheckpoint != nil {
		s.onCheckpoint(ctx, p.cp)
	}
	return nil
}

func (s *Sink) awaitCheckpoint(p *pendingCheckpoint) error {
	timer := time.NewTimer(s.timeout)
	defer timer.Stop()
	var err error
	select {
	case <-p.fut.Ok():
		return nil
	case err = <-p.fut.Err():
	case <-timer.C:
		err = errors.New("no ack within the publish timeout")
	}
	s.logger.Warn().Err(err).Uint64("seq", p.cp.Seq).Msg("checkpoint not published; will retry")
	return fmt.Errorf("jetstream: publish checkpoint: %w", err)
}

// sendCheckpoint signs head and sends it without waiting for the ack.
func (s *Sink) sendCheckpoint(instance string, head decisionlog.ChainHead, signer note.Signer, opts ...jetstream.PublishOpt) (*pendingCheckpoint, error) {
	cp, id, msg, err := s.checkpointMsg(instance, head, signer)
	if err != nil {
		return nil, err
	}
	fut, err := s.js.PublishMsgAsync(msg, append([]jetstream.PublishOpt{jetstream.WithMsgID(id)}, opts...)...)
	if err != nil {
		s.logger.Warn().Err(err).Uint64("seq", cp.Seq).Msg("checkpoint not sent; will retry")
		return nil, fmt.Errorf("jetstream: publish checkpoint: %w", err)
	}
	return &pendingCheckpoint{cp: cp, id: id, fut: fut, done: make(chan struct{})}, nil
}

// PublishCheckpoint signs head and publishes it on custody.checkpoint.<instance>.
func (s *Sink) PublishCheckpoint(ctx context.Context, instance string, head decisionlog.ChainHead, signer note.Signer) error {
	cp, id, msg, err := s.checkpointMsg(instance, head, signer)
	if err != nil {
		return err
	}
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.timeout)
	defer cancel()
	if _, err := s.js.PublishMsg(pctx, msg, jetstream.WithMsgID(id)); err != nil {
		s.logger.Warn().Err(err).Uint64("seq", cp.Seq).Msg("checkpoint not published; will retry")
		return fmt.Errorf("jetstream: publish checkpoint: %w", err)
	}
	s.logger.Debug().Uint64("seq", cp.Seq).Str("schema", cp.Schema).Msg("checkpoint published")
	if s.onCheckpoint != nil {
		s.onCheckpoint(ctx, cp)
	}
	return nil
}

// checkpointMsg signs head and returns the checkpoint, its Nats-Msg-Id and its message.
func (s *Sink) checkpointMsg(instance string, head decisionlog.ChainHead, signer note.Signer) (*decisionlog.Checkpoint, string, *nats.Msg, error) {
	cp, err := s.newCheckpoint(instance, head, signer)
	if err != nil {
		return nil, "", nil, err
	}
	body, err := json.Marshal(cp)
	if err != nil {
		return nil, "", nil, err
	}
	msg := nats.NewMsg(decisionlog.CheckpointSubject(instance))
	msg.Data = body
	msg.Header.Set(HeaderInstance, instance)
	msg.Header.Set(HeaderSeq, strconv.FormatUint(cp.Seq, 10))
	msg.Header.Set(HeaderHash, cp.Hash)
	return cp, "checkpoint-" + instance + "-" + strconv.FormatUint(cp.Seq, 10), msg, nil
}

// newCheckpoint signs the Merkle tree when it is at head, and the chain head alone otherwise.
func (s *Sink) newCheckpoint(instance string, head decisionlog.ChainHead, signer note.Signer) (*decisionlog.Checkpoint, error) {
	if size, root, frontier, ok := s.tree.State(); ok && size == head.Seq {
		return decisionlog.NewTreeCheckpoint(instance, head, root, frontier, s.now(), signer)
	} else if s.tree != nil && ok {
		s.logger.Error().Uint64("tree_size", size).Uint64("seq", head.Seq).Msg("Merkle tree is not at the chain head; checkpoint signs the chain head only")
	}
	return decisionlog.NewCheckpoint(instance, head, s.now(), signer)
}
