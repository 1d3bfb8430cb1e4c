package jetstream

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Read defaults. A transient failure (no responders while a cluster elects a leader, a timeout,
// a server restart under the read) is retried with backoff from DefaultReadBackoff doubling to
// maxReadBackoff, up to DefaultReadRetries times in a row: about 15 s of trouble.
const (
	DefaultReadBatch   = 256
	DefaultReadRetries = 12
	DefaultReadBackoff = 50 * time.Millisecond
	DefaultReadTimeout = 5 * time.Second
	maxReadBackoff     = 2 * time.Second
	// readConsumerIdle is how long the server keeps a reader's consumer once the reader is gone.
	readConsumerIdle = 30 * time.Second
)

// ErrReadLimit is returned, wrapped, when a read stops at ReadOptions.Limit with more to read.
var ErrReadLimit = errors.New("read limit reached")

// ReadStream is what Read needs of the CUSTODY stream; jetstream.Stream has it.
type ReadStream interface {
	Info(ctx context.Context, opts ...jetstream.StreamInfoOpt) (*jetstream.StreamInfo, error)
	CreateOrUpdateConsumer(ctx context.Context, cfg jetstream.ConsumerConfig) (jetstream.Consumer, error)
	DeleteConsumer(ctx context.Context, consumer string) error
}

// ReadOptions says which messages Read delivers.
type ReadOptions struct {
	// Filters are subject filters; none reads all of the stream.
	Filters []string
	// StartSeq is the first stream sequence to read (0: the first message), StartTime the
	// earliest time (zero: any). At most one is set.
	StartSeq  uint64
	StartTime time.Time
	// Limit stops the read with ErrReadLimit once this many messages were delivered and more
	// remain; 0 reads to the end.
	Limit int
	// Batch, Retries, Backoff and Timeout (per request) default to the Default* constants.
	Batch   int
	Retries int
	Backoff time.Duration
	Timeout time.Duration
}

// Msg is one message as Read delivers it.
type Msg struct {
	Seq     uint64 // stream sequence
	Subject string
	Header  nats.Header
	Data    []byte
}

// ReadStats says what a read saw, for the caller to report.
type ReadStats struct {
	// End is the stream's last sequence when the read began: the read stops there.
	End       uint64
	Delivered int
	// Retries counts transient failures ridden out; LastRetry is the last of them.
	Retries   int
	LastRetry string
	// Unplaceable counts messages without JetStream metadata, which cannot be ordered and are
	// skipped. Missing counts, on an unfiltered read, stream sequences up to End that were not
	// there to deliver: removed before or during the read (retention, or a stream edit).
	Unplaceable int
	Missing     uint64
}

// Read delivers the stream's messages on opts.Filters to fn, in stream order, from the start
// given in opts to the stream's last message as of the start of the read: messages published
// later are not waited for. A transient failure is retried from the message after the last one
// delivered, so each message is delivered once; a read that cannot reach the end returns an
// error, never a silent short read. fn's error stops the read and is returned as is.
//
// Read uses an ephemeral pull consumer that acks nothing and detects a message lost in transit
// by its consumer sequence; it then starts a new consumer where it was.
func Read(ctx context.Context, s ReadStream, opts ReadOptions, fn func(*Msg) error) (ReadStats, error) {
	r := &reader{s: s, opts: opts}
	r.defaults()
	err := r.run(ctx, fn)
	r.release()
	return r.stats, err
}

type reader struct {
	s     ReadStream
	opts  ReadOptions
	stats ReadStats

	cons     jetstream.Consumer
	lastCons uint64 // consumer sequence of the last message taken from cons
	next     uint64 // stream sequence to resume at; 0 until a message was delivered
	failures int    // transient failures in a row
}

func (r *reader) defaults() {
	o := &r.opts
	if o.Batch <= 0 {
		o.Batch = DefaultReadBatch
	}
	if o.Retries <= 0 {
		o.Retries = DefaultReadRetries
	}
	if o.Backoff <= 0 {
		o.Backoff = DefaultReadBackoff
	}
	if o.Timeout <= 0 {
		o.Timeout = DefaultReadTimeout
	}
	if o.Limit > 0 {
		o.Batch = min(o.Batch, o.Limit+1)
	}
}

func (r *reader) run(ctx context.Context, fn func(*Msg) error) error {
	var info *jetstream.StreamInfo
	for {
		rctx, cancel := context.WithTimeout(ctx, r.opts.Timeout)
		var err error
		info, err = r.s.Info(rctx)
		cancel()
		if err == nil {
			break
		}
		if err := r.retry(ctx, "stream info", err); err != nil {
			return err
		}
	}
	r.failures = 0
	r.stats.End = info.State.LastSeq
	if info.State.Msgs == 0 || r.stats.End < r.opts.StartSeq {
		return nil
	}
	unfiltered := len(r.opts.Filters) == 0 && r.opts.StartTime.IsZero()
	expect := max(r.opts.StartSeq, 1) // next stream sequence an unfiltered read should see
	for {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("jetstream: read stream: %w", err)
		}
		if r.cons == nil {
			if err := r.consume(ctx); err != nil {
				if err := r.retry(ctx, "create consumer", err); err != nil {
					return err
				}
				continue
			}
		}
		batch, err := r.cons.FetchNoWait(r.opts.Batch)
		if err != nil {
			if err := r.retry(ctx, "fetch", err); err != nil {
				return err
			}
			continue
		}
		n, lost := 0, false
		for m := range batch.Messages() {
			if lost {
				continue // drain: the batch's remaining messages are read again
			}
			md, err := m.Metadata()
			if err != nil {
				r.stats.Unplaceable++
				continue
			}
			if md.Sequence.Consumer != r.lastCons+1 {
				lost = true // a message went missing between server and client
				continue
			}
			r.lastCons = md.Sequence.Consumer
			seq := md.Sequence.Stream
			if seq > r.stats.End {
				return nil
			}
			if unfiltered && seq > expect {
				r.stats.Missing += seq - expect
			}
			expect, r.next = seq+1, seq+1
			if r.opts.Limit > 0 && r.stats.Delivered >= r.opts.Limit {
				return fmt.Errorf("jetstream: read stream: %w: %d messages", ErrReadLimit, r.opts.Limit)
			}
			if err := fn(&Msg{Seq: seq, Subject: m.Subject(), Header: m.Headers(), Data: m.Data()}); err != nil {
				return err
			}
			r.stats.Delivered++
			n++
			if seq >= r.stats.End || md.NumPending == 0 {
				if unfiltered && seq < r.stats.End {
					r.stats.Missing += r.stats.End - seq
				}
				return nil
			}
		}
		if lost {
			if err := r.retry(ctx, "fetch", errors.New("a message was lost in transit")); err != nil {
				return err
			}
			continue
		}
		if err := batch.Error(); err != nil {
			if err := r.retry(ctx, "fetch", err); err != nil {
				return err
			}
			continue
		}
		if n > 0 {
			r.failures = 0
			continue
		}
		// Nothing came: the end, or a consumer that cannot deliver right now?
		rctx, cancel := context.WithTimeout(ctx, r.opts.Timeout)
		ci, err := r.cons.Info(rctx)
		cancel()
		if err != nil {
			if err := r.retry(ctx, "consumer info", err); err != nil {
				return err
			}
			continue
		}
		if ci.NumPending == 0 {
			if unfiltered && expect <= r.stats.End {
				r.stats.Missing += r.stats.End - expect + 1
			}
			return nil
		}
		if err := r.retry(ctx, "fetch", fmt.Errorf("%d messages pending, none delivered", ci.NumPending)); err != nil {
			return err
		}
	}
}

// consume starts a consumer at r.next (or the read's start when nothing was delivered yet).
func (r *reader) consume(ctx context.Context) error {
	cfg := jetstream.ConsumerConfig{
		AckPolicy:         jetstream.AckNonePolicy,
		InactiveThreshold: readConsumerIdle,
		MemoryStorage:     true,
		Replicas:          1,
		FilterSubjects:    r.opts.Filters,
		DeliverPolicy:     jetstream.DeliverAllPolicy,
	}
	switch {
	case r.next > 0:
		cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, r.next
	case r.opts.StartSeq > 0:
		cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, r.opts.StartSeq
	case !r.opts.StartTime.IsZero():
		t := r.opts.StartTime
		cfg.DeliverPolicy, cfg.OptStartTime = jetstream.DeliverByStartTimePolicy, &t
	}
	rctx, cancel := context.WithTimeout(ctx, r.opts.Timeout)
	defer cancel()
	c, err := r.s.CreateOrUpdateConsumer(rctx, cfg)
	if err != nil {
		return err
	}
	r.cons, r.lastCons = c, 0
	return nil
}

// retry counts a transient failure, waits, and drops the consumer so that the next attempt
// starts a new one where the read was. It returns an error when err is permanent or the
// failures in a row exceed the retries.
func (r *reader) retry(ctx context.Context, op string, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("jetstream: read stream: %s: %w", op, ctx.Err())
	}
	if permanent(err) {
		return fmt.Errorf("jetstream: read stream: %s: %w", op, err)
	}
	r.release()
	r.failures++
	r.stats.Retries++
	r.stats.LastRetry = op + ": " + err.Error()
	if r.failures > r.opts.Retries {
		return fmt.Errorf("jetstream: read stream: %s: giving up after %d attempts, %d messages read (to stream seq %d of %d): %w",
			op, r.failures, r.stats.Delivered, r.next, r.stats.End, err)
	}
	wait := r.opts.Backoff << min(r.failures-1, 10)
	t := time.NewTimer(min(wait, maxReadBackoff))
	defer t.Stop()
	select {
	case <-ctx.Done():
		return fmt.Errorf("jetstream: read stream: %s: %w", op, ctx.Err())
	case <-t.C:
		return nil
	}
}

// release deletes the reader's consumer, best effort: the server drops it anyway once idle.
func (r *reader) release() {
	if r.cons == nil {
		return
	}
	if ci := r.cons.CachedInfo(); ci != nil {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_ = r.s.DeleteConsumer(ctx, ci.Name)
		cancel()
	}
	r.cons = nil
}

// permanent reports errors that no retry mends.
func permanent(err error) bool {
	return errors.Is(err, jetstream.ErrStreamNotFound) || errors.Is(err, nats.ErrConnectionClosed) ||
		errors.Is(err, nats.ErrAuthorization) || errors.Is(err, jetstream.ErrInvalidOption) ||
		errors.Is(err, context.Canceled)
}
