package jetstream

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/custodyhq/custody/decisionlog"
)

// DefaultPublishTimeout bounds the wait for JetStream's ack of one record.
const DefaultPublishTimeout = 2 * time.Second

// publisher is the JetStream the sink needs. Chained records go out on its connection with an
// ack inbox per window slot (see ackSlot); the rest through its publish calls.
type publisher interface {
	PublishMsg(ctx context.Context, msg *nats.Msg, opts ...jetstream.PublishOpt) (*jetstream.PubAck, error)
	PublishMsgAsync(msg *nats.Msg, opts ...jetstream.PublishOpt) (jetstream.PubAckFuture, error)
	Conn() *nats.Conn
}

// Sink publishes records to the CUSTODY stream and returns once JetStream has acked them.
type Sink struct {
	js      publisher
	timeout time.Duration
	logger  zerolog.Logger

	mu       sync.RWMutex // guards closed against in-flight Adds
	closed   bool
	inflight sync.WaitGroup

	chainMu sync.Mutex // orders chained publishes: link, seal and send happen under it
	chain   *chainState
	slots   chan *ackSlot // the chained records awaiting their ack, at most ChainConfig.Window
	nc      *nats.Conn    // the connection chained records are sent on
	// guard, when js is a Guard's, refuses chained records as its publishes refuse theirs.
	guard   *Guard
	now     func() time.Time
	stop    context.CancelFunc
	stopped chan struct{} // closed when runCheckpoints returns
	// headSeq and checkpointSeq mirror the chain's head and last checkpoint for readers that
	// must not wait for chainMu.
	headSeq, checkpointSeq atomic.Uint64
	// lastOK and lastFail are when a record was last acked and last refused (unix nanos), and
	// lastErr why; readiness reads them.
	lastOK, lastFail atomic.Int64
	lastErr          atomic.Pointer[error]
	// maxPayload is the largest message the server takes (headers and body); 0 checks nothing.
	maxPayload int64
	// tree follows the instance's Merkle tree over the records this sink got acked; checkpoints
	// sign its root. Nil: checkpoints sign the chain head only (v1).
	tree       *decisionlog.Tree
	treeBroken atomic.Bool // logged that tree stopped
	// onCheckpoint is told of each checkpoint published, to send it to witnesses.
	onCheckpoint func(context.Context, *decisionlog.Checkpoint)
}

var _ decisionlog.Publisher = (*Sink)(nil)

// Option configures a Sink.
type Option func(*Sink)

// WithPublishTimeout bounds the wait for one ack; past it Publish fails.
func WithPublishTimeout(d time.Duration) Option { return func(s *Sink) { s.timeout = d } }

// WithLogger sets the sink's logger. The default discards.
func WithLogger(l zerolog.Logger) Option { return func(s *Sink) { s.logger = l } }

// WithMaxPayload makes the sink refuse, without sending it, a record whose message would exceed
// n bytes: the server's max_payload (nats.Conn.MaxPayload). Such a record can never be stored.
func WithMaxPayload(n int64) Option { return func(s *Sink) { s.maxPayload = n } }

// WithTree makes the sink extend t with every chained record JetStream acks and sign t's root
// in its checkpoints. t must hold exactly the instance's records before the chain's head (see
// RecoverHead); one tree may pass from sink to sink as serve's record modes hand over.
func WithTree(t *decisionlog.Tree) Option { return func(s *Sink) { s.tree = t } }

// WithCheckpointHook calls fn with each checkpoint once it is on the stream, for example to
// send it to a witness. fn must not block for long: it runs with the chain locked.
func WithCheckpointHook(fn func(context.Context, *decisionlog.Checkpoint)) Option {
	return func(s *Sink) { s.onCheckpoint = fn }
}

// headerReserve is room kept for the headers the jetstream client adds to a record's message
// (Nats-Msg-Id, Nats-Expected-Stream and, in a window, Nats-Expected-Last-Msg-Id).
const headerReserve = 512

// MessageSize is how many bytes msg takes against the server's max_payload, with room for the
// headers a publish adds.
func MessageSize(msg *nats.Msg) int64 {
	n := int64(len(msg.Data)) + headerReserve + int64(len("NATS/1.0\r\n\r\n"))
	for k, vs := range msg.Header {
		for _, v := range vs {
			n += int64(len(k) + len(v) + 4)
		}
	}
	return n
}

// checkSize refuses msg when it cannot fit the server's max payload.
func (s *Sink) checkSize(r *decisionlog.Record, msg *nats.Msg) error {
	if s.maxPayload <= 0 {
		return nil
	}
	if n := MessageSize(msg); n > s.maxPayload {
		return fmt.Errorf("jetstream: publish record %s: %w: %w: %d bytes, the server takes %d", r.DecisionID, decisionlog.ErrUnavailable, decisionlog.ErrTooLarge, n, s.maxPayload)
	}
	return nil
}

// Permanent reports whether a publish error can never succeed on retry: the record is too large
// for the server or the stream. Everything else (timeouts, no responders, a lost leader, a full
// stream) may pass.
func Permanent(err error) bool {
	if errors.Is(err, decisionlog.ErrTooLarge) || errors.Is(err, nats.ErrMaxPayload) {
		return true
	}
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamMessageExceedsMaximum
}

// NewSink returns a sink publishing through js.
func NewSink(js publisher, opts ...Option) *Sink {
	s := &Sink{js: js, timeout: DefaultPublishTimeout, logger: zerolog.Nop(), now: time.Now, nc: js.Conn()}
	if g, ok := js.(*guardedJetStream); ok {
		s.guard = g.g
	}
	for _, o := range opts {
		o(s)
	}
	s.logger = s.logger.With().Str("component", "decisionlog.jetstream").Logger()
	if s.chain != nil {
		ctx, cancel := context.WithCancel(context.Background())
		s.stop, s.stopped = cancel, make(chan struct{})
		go s.runCheckpoints(ctx)
	}
	return s
}

// Publish sends r to its decision subject with Nats-Msg-Id set to the decision ID, so that a
// retried publish is stored once, and waits for the ack. The wait is detached from ctx's
// cancellation (a caller that hangs up must not leave the record's fate unknown) and bounded by
// the publish timeout. Any failure wraps decisionlog.ErrUnavailable.
func (s *Sink) Publish(ctx context.Context, r *decisionlog.Record) error {
	s.mu.RLock()
	if s.closed {
		s.mu.RUnlock()
		return fmt.Errorf("jetstream: publish record: %w: sink closed", decisionlog.ErrUnavailable)
	}
	s.inflight.Add(1)
	s.mu.RUnlock()
	defer s.inflight.Done()

	var err error
	if s.chain != nil {
		err = s.publishChained(ctx, r)
	} else {
		err = s.publishPlain(ctx, r)
	}
	s.noteOutcome(err)
	return err
}

// noteOutcome keeps when a record was last stored or refused. A record refused for its size
// says nothing about the stream, so it does not count.
func (s *Sink) noteOutcome(err error) {
	switch {
	case err == nil:
		s.lastOK.Store(s.now().UnixNano())
	case errors.Is(err, decisionlog.ErrTooLarge):
	default:
		s.lastErr.Store(&err)
		s.lastFail.Store(s.now().UnixNano())
	}
}

// LastOutcome reports when a record was last acked and last failed (zero when never), and the
// last failure.
func (s *Sink) LastOutcome() (ok, failed time.Time, err error) {
	if n := s.lastOK.Load(); n > 0 {
		ok = time.Unix(0, n)
	}
	if n := s.lastFail.Load(); n > 0 {
		failed = time.Unix(0, n)
	}
	if p := s.lastErr.Load(); p != nil {
		err = *p
	}
	return ok, failed, err
}

func (s *Sink) publishPlain(ctx context.Context, r *decisionlog.Record) error {
	data, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("jetstream: encode record: %w: %w", decisionlog.ErrUnavailable, err)
	}
	msg := s.decisionMsg(r, data)
	if err := s.checkSize(r, msg); err != nil {
		return err
	}
	return s.send(ctx, r, msg)
}

func (s *Sink) decisionMsg(r *decisionlog.Record, body []byte) *nats.Msg {
	return recordMsg(r, body, false)
}

// msgHeaderRoom is how many headers a record's message ends up with at most: its own (three,
// and the chain's three) and the jetstream client's (Nats-Msg-Id, Nats-Expected-Stream,
// Nats-Expected-Last-Msg-Id). A map made with room for them never grows.
const msgHeaderRoom = 8

// recordMsg is r's message: its subject, body and headers, the chain's too when chained. The
// header values share one backing array, and the map has room for every header the publish
// adds: nats.NewMsg and a Header.Set per header cost an allocation each, on every record.
// Header.Set is h[key] = []string{value} (nats headers are case-sensitive), so this is what it
// did. TestRecordMsgMatchesHeaderSet holds it to the Set calls it replaces.
func recordMsg(r *decisionlog.Record, body []byte, chained bool) *nats.Msg {
	h := make(nats.Header, msgHeaderRoom)
	vals := make([]string, 0, 6)
	set := func(k, v string) {
		vals = append(vals, v)
		h[k] = vals[len(vals)-1 : len(vals) : len(vals)]
	}
	set(decisionlog.HeaderCorrelationID, r.CorrelationID)
	switch {
	case r.IsUnseal():
		set(decisionlog.HeaderDecisionID, r.DecisionID)
	case r.IsExecution():
		set(decisionlog.HeaderDecisionID, r.DecisionID)
		if r.Execution != nil {
			set(decisionlog.HeaderExecution, r.Execution.Status)
		}
	default:
		set(decisionlog.HeaderDecision, r.Outcome())
	}
	if chained {
		set(HeaderInstance, r.PDP.Instance)
		set(HeaderSeq, strconv.FormatUint(r.Seq, 10))
		set(HeaderHash, r.Hash)
	}
	return &nats.Msg{Subject: decisionlog.RecordSubject(r), Header: h, Data: body}
}

// send publishes msg and waits for the ack, detached from ctx's cancellation and bounded by the
// publish timeout.
func (s *Sink) send(ctx context.Context, r *decisionlog.Record, msg *nats.Msg) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.timeout)
	defer cancel()
	ack, err := s.js.PublishMsg(ctx, msg,
		jetstream.WithMsgID(r.MsgID()),
		jetstream.WithExpectStream(decisionlog.StreamName),
		// No responders happens while a stream leader is elected: retry until the deadline.
		jetstream.WithRetryAttempts(math.MaxInt32),
		jetstream.WithRetryWait(25*time.Millisecond),
	)
	if err != nil {
		s.logger.Error().Err(err).Str("decision_id", r.DecisionID).Str("execution_id", r.ExecutionID).Str("correlation_id", r.CorrelationID).Msg("decision record not acked")
		return fmt.Errorf("jetstream: publish record: %w: %w", decisionlog.ErrUnavailable, err)
	}
	if ack.Duplicate {
		s.logger.Debug().Str("decision_id", r.DecisionID).Uint64("stream_seq", ack.Sequence).Msg("duplicate record dropped by stream")
	}
	return nil
}

// Close refuses new records and waits, until ctx ends, for those in flight to be acked.
func (s *Sink) Close(ctx context.Context) error {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	done := make(chan struct{})
	go func() { s.inflight.Wait(); close(done) }()
	select {
	case <-done:
		if s.chain != nil {
			s.stop()
			<-s.stopped // the ticker's goroutine is gone before Close returns
			s.closeSlots()
			if err := s.Checkpoint(ctx); err != nil { // leave a signed head behind
				return err
			}
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("jetstream: close sink: %w", ctx.Err())
	}
}

// closeSlots drops the ack inboxes of a closed sink, whose records have all been settled.
func (s *Sink) closeSlots() {
	for range cap(s.slots) {
		slot := <-s.slots
		slot.retire()
		s.slots <- slot
	}
}

// guardErr is why the guard refuses records, nil when it does not or there is none.
func (s *Sink) guardErr() error {
	if s.guard == nil {
		return nil
	}
	return s.guard.Err()
}

// guardPoke asks the guard, if any, to check the stream after a record failed.
func (s *Sink) guardPoke() {
	if s.guard != nil {
		s.guard.Poke()
	}
}

// ErrNotConnected is returned by Ready while the NATS connection is down.
var ErrNotConnected = errors.New("jetstream: not connected to NATS")

// Ready reports whether records can currently be published.
func Ready(nc *nats.Conn) error {
	if nc == nil || !nc.IsConnected() {
		return ErrNotConnected
	}
	return nil
}

// Quorate reports whether the stream in info can store a record now: it has a leader, and with
// replicas a majority of them is current. During a quorum loss the meta leader still answers
// stream info, so an answer alone proves nothing.
func Quorate(info *jetstream.StreamInfo) error {
	if info.Cluster == nil {
		return nil
	}
	if info.Cluster.Leader == "" {
		return fmt.Errorf("jetstream: stream %s has no leader", decisionlog.StreamName)
	}
	current := 1
	for _, p := range info.Cluster.Replicas {
		if p != nil && p.Current && !p.Offline {
			current++
		}
	}
	if want := info.Config.Replicas/2 + 1; current < want {
		return fmt.Errorf("jetstream: stream %s has %d of the %d current replicas a write needs", decisionlog.StreamName, current, want)
	}
	return nil
}

// fullMargin is how close to its byte limit a stream counts as full for readiness: a record
// rarely exceeds a few KiB.
const fullMargin = 64 << 10

// Writable reports whether the stream can take more records: it is not at its byte limit. A
// discard-new stream at its limit refuses every record, so the PDP is not ready.
func Writable(ctx context.Context, stream interface {
	Info(ctx context.Context, opts ...jetstream.StreamInfoOpt) (*jetstream.StreamInfo, error)
}) error {
	info, err := stream.Info(ctx)
	if err != nil {
		return fmt.Errorf("jetstream: stream info: %w", err)
	}
	if err := Quorate(info); err != nil {
		return err
	}
	if max := info.Config.MaxBytes; max > 0 && int64(info.State.Bytes)+fullMargin > max {
		return fmt.Errorf("jetstream: stream %s is full (%d of %d bytes)", decisionlog.StreamName, info.State.Bytes, max)
	}
	return nil
}
