package jetstream

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/custodyhq/custody/decisionlog"
)

// ErrStreamChanged is returned, wrapped, once the CUSTODY stream is no longer the stream this
// instance checked at start: deleted and recreated, or edited to keep less or protect less.
// It wraps decisionlog.ErrUnavailable, so every answer is then a 503 deny.
var ErrStreamChanged = fmt.Errorf("%w: the CUSTODY stream changed under this instance", decisionlog.ErrUnavailable)

// DefaultGuardInterval is how often a Guard reads the stream's config when nothing else made it.
const DefaultGuardInterval = 2 * time.Second

// streamInfoer is the one call a Guard makes.
type streamInfoer interface {
	Info(ctx context.Context, opts ...jetstream.StreamInfoOpt) (*jetstream.StreamInfo, error)
}

// Guard watches that CUSTODY is still the stream checked at start: the same stream (its creation
// time) with the same subjects, protections, limits and replicas. The first difference trips it
// for good: the instance then refuses to record, so it answers every request with a 503 deny and
// is not ready, until an operator has looked and restarted it (a restart checks the stream again
// and refuses to start on a difference). Records are never written into a look-alike.
type Guard struct {
	stream  streamInfoer
	want    jetstream.StreamConfig
	created time.Time
	logger  zerolog.Logger
	every   time.Duration

	tripped atomic.Pointer[error]
	checks  atomic.Uint64
	// bytes and maxBytes are the stream's size and byte limit as the last check saw them.
	bytes, maxBytes atomic.Int64
	poke            chan struct{}
	mu              sync.Mutex // one Check at a time
}

// GuardOption configures a Guard.
type GuardOption func(*Guard)

// WithGuardInterval sets how often Run checks the stream.
func WithGuardInterval(d time.Duration) GuardOption { return func(g *Guard) { g.every = d } }

// WithGuardLogger sets the logger for a tripped guard.
func WithGuardLogger(l zerolog.Logger) GuardOption { return func(g *Guard) { g.logger = l } }

// NewGuard watches stream, whose current config and creation time (as EnsureStream returned
// them) are what it holds the stream to.
func NewGuard(stream jetstream.Stream, opts ...GuardOption) *Guard {
	info := stream.CachedInfo()
	g := &Guard{
		stream:  stream,
		want:    info.Config,
		created: info.Created,
		logger:  zerolog.Nop(),
		every:   DefaultGuardInterval,
		poke:    make(chan struct{}, 1),
	}
	for _, o := range opts {
		o(g)
	}
	g.bytes.Store(int64(info.State.Bytes))
	g.maxBytes.Store(info.Config.MaxBytes)
	return g
}

// Err is nil while the stream is the one checked at start, and the reason once it is not.
func (g *Guard) Err() error {
	if p := g.tripped.Load(); p != nil {
		return *p
	}
	return nil
}

// Tripped reports whether the guard has tripped, for a metric.
func (g *Guard) Tripped() bool { return g.tripped.Load() != nil }

// Checks counts the checks made, for tests and a metric.
func (g *Guard) Checks() uint64 { return g.checks.Load() }

// Check reads the stream's info and trips the guard on any difference. A stream that cannot be
// read (NATS down, a leader election) is not a difference: publishing fails on its own then. A
// stream that is gone is: a stream recreated by someone else must not be written to.
func (g *Guard) Check(ctx context.Context) error {
	if err := g.Err(); err != nil {
		return err
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.checks.Add(1)
	info, err := g.stream.Info(ctx)
	switch {
	case errors.Is(err, jetstream.ErrStreamNotFound):
		return g.trip("the stream was deleted")
	case err != nil:
		return nil
	case !info.Created.Equal(g.created):
		return g.trip(fmt.Sprintf("the stream was deleted and recreated (created %s, was %s)",
			info.Created.UTC().Format(time.RFC3339Nano), g.created.UTC().Format(time.RFC3339Nano)))
	}
	if d := ConfigDifferences(g.want, info.Config); len(d) > 0 {
		return g.trip("its settings changed: " + strings.Join(d, "; "))
	}
	g.bytes.Store(int64(info.State.Bytes))
	g.maxBytes.Store(info.Config.MaxBytes)
	return nil
}

// Room reports whether the stream, as the last check saw it, has more than reserve (a fraction
// of its byte limit) left: what may be spent on records that are not decisions, such as refused
// attempts, so that they can never take the last of the space from decisions. An unbounded
// stream always has room.
func (g *Guard) Room(reserve float64) bool {
	limit := g.maxBytes.Load()
	if limit <= 0 {
		return true
	}
	return float64(g.bytes.Load()) < (1-reserve)*float64(limit)
}

func (g *Guard) trip(why string) error {
	err := fmt.Errorf("%w: %s", ErrStreamChanged, why)
	if g.tripped.CompareAndSwap(nil, &err) {
		g.logger.Error().Str("stream", decisionlog.StreamName).Str("reason", why).
			Msg("decision stream changed under this instance; refusing to record (every answer is a 503 deny) until restarted")
	}
	return g.Err()
}

// Poke asks Run for a check now, without waiting for it: after a publish error.
func (g *Guard) Poke() {
	select {
	case g.poke <- struct{}{}:
	default:
	}
}

// Run checks the stream every interval, and when poked, until ctx ends.
func (g *Guard) Run(ctx context.Context) {
	t := time.NewTicker(g.every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-g.poke:
		}
		cctx, cancel := context.WithTimeout(ctx, g.every)
		_ = g.Check(cctx)
		cancel()
	}
}

// JetStream returns js with its publishes refused once the guard has tripped, and each failed
// publish followed by a check. Sinks, the spool's forwarder and checkpoints all publish through it.
func (g *Guard) JetStream(js jetstream.JetStream) jetstream.JetStream {
	return &guardedJetStream{JetStream: js, g: g}
}

type guardedJetStream struct {
	jetstream.JetStream
	g *Guard
}

func (j *guardedJetStream) PublishMsg(ctx context.Context, msg *nats.Msg, opts ...jetstream.PublishOpt) (*jetstream.PubAck, error) {
	if err := j.g.Err(); err != nil {
		return nil, err
	}
	ack, err := j.JetStream.PublishMsg(ctx, msg, opts...)
	if err != nil {
		j.g.Poke()
	}
	return ack, err
}

func (j *guardedJetStream) PublishMsgAsync(msg *nats.Msg, opts ...jetstream.PublishOpt) (jetstream.PubAckFuture, error) {
	if err := j.g.Err(); err != nil {
		return nil, err
	}
	f, err := j.JetStream.PublishMsgAsync(msg, opts...)
	if err != nil {
		j.g.Poke()
	}
	// A lost ack surfaces as an error of the record's Publish, which the guarded Publisher
	// turns into a check: no goroutine per record here.
	return f, err
}

// Publisher returns p with records refused once the guard has tripped. It covers the spool too,
// which would otherwise keep answering from its local disk while nothing reaches the stream.
func (g *Guard) Publisher(p decisionlog.Publisher) decisionlog.Publisher {
	return &guardedPublisher{Publisher: p, g: g}
}

type guardedPublisher struct {
	decisionlog.Publisher
	g *Guard
}

func (p *guardedPublisher) Publish(ctx context.Context, r *decisionlog.Record) error {
	if err := p.g.Err(); err != nil {
		return err
	}
	err := p.Publisher.Publish(ctx, r)
	if err != nil {
		p.g.Poke()
	}
	return err
}
