package forward

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/rs/zerolog"

	"github.com/custodyhq/custody/decisionlog"
)

// Defaults for Config.
const (
	DefaultBatch      = 500
	DefaultMaxWait    = time.Second
	DefaultTimeout    = 10 * time.Second
	DefaultMinBackoff = 100 * time.Millisecond
	DefaultMaxBackoff = 30 * time.Second
)

// Stream is what the forwarder needs of the CUSTODY stream; jetstream.Stream has it.
type Stream interface {
	Info(ctx context.Context, opts ...jetstream.StreamInfoOpt) (*jetstream.StreamInfo, error)
	OrderedConsumer(ctx context.Context, cfg jetstream.OrderedConsumerConfig) (jetstream.Consumer, error)
}

// Msg is one stream message handed to Format.
type Msg struct {
	Seq     uint64
	Subject string
	MsgID   string
	Time    time.Time // when the stream stored it
	Data    []byte
}

// Config configures a Forwarder.
type Config struct {
	Stream Stream
	Sink   Sink
	// Format turns a message into one JSON event and the time a SIEM should index it by.
	Format func(Msg) ([]byte, time.Time, error)
	// CursorFile holds the stream sequence of the last delivered record. It is written, synced
	// and renamed into place after each delivered batch.
	CursorFile string
	Batch      int
	MaxWait    time.Duration // how long a fetch waits for a full batch
	Timeout    time.Duration // per delivery attempt; a hung receiver is abandoned after it
	MinBackoff time.Duration
	MaxBackoff time.Duration
	Logger     zerolog.Logger
}

// Forwarder delivers the stream, in stream order and at least once, to a Sink.
//
// It reads with an ordered consumer that starts after the sequence in its cursor file, and
// advances the cursor only once the receiver took the whole batch. An ordered consumer is the
// library's guarantee of gap-free, in-order delivery (it recreates itself where it was if a
// message goes missing), it needs nothing the reader credential does not grant, and, unlike a
// durable consumer's ack state, the cursor file resumes exactly after the last delivered record
// on a restart: a durable consumer redelivers unacked messages only after its ack wait, and a
// redelivery can overtake later messages. The cost is that the cursor lives where the forwarder
// runs, on persistent disk, one per destination.
type Forwarder struct {
	cfg Config
	reg *prometheus.Registry

	delivered, batches, failures *prometheus.CounterVec
	missing                      prometheus.Counter
	lag, cursorGauge, lastOK     prometheus.Gauge

	mu     sync.Mutex
	cursor uint64
	end    uint64 // the stream's last sequence as last seen
	health health
}

type health struct {
	Status    string    `json:"status"` // ok, retrying or rejected
	Cursor    uint64    `json:"cursor"`
	Lag       uint64    `json:"lag"`
	Failures  int       `json:"consecutive_failures"`
	LastError string    `json:"last_error,omitempty"`
	LastOK    time.Time `json:"last_delivery,omitzero"`
}

// New checks cfg and loads the cursor.
func New(cfg Config) (*Forwarder, error) {
	if cfg.Stream == nil || cfg.Sink == nil || cfg.Format == nil || cfg.CursorFile == "" {
		return nil, errors.New("forward: new: stream, sink, format and cursor file are required")
	}
	if cfg.Batch <= 0 {
		cfg.Batch = DefaultBatch
	}
	if cfg.MaxWait <= 0 {
		cfg.MaxWait = DefaultMaxWait
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = DefaultMinBackoff
	}
	if cfg.MaxBackoff < cfg.MinBackoff {
		cfg.MaxBackoff = max(DefaultMaxBackoff, cfg.MinBackoff)
	}
	f := &Forwarder{cfg: cfg, reg: prometheus.NewRegistry()}
	f.delivered = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "custody_forward_delivered_total", Help: "Records the receiver took."}, nil)
	f.batches = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "custody_forward_batches_total", Help: "Batches the receiver took."}, nil)
	f.failures = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "custody_forward_delivery_failures_total", Help: "Failed delivery attempts, by kind: status (5xx, 408, 429), rejected (other 4xx), error (transport, timeout)."}, []string{"kind"})
	f.missing = prometheus.NewCounter(prometheus.CounterOpts{Name: "custody_forward_missing_total", Help: "Stream sequences after the cursor that were gone (retention) before they could be forwarded."})
	f.lag = prometheus.NewGauge(prometheus.GaugeOpts{Name: "custody_forward_lag_records", Help: "Stream messages after the cursor not yet delivered."})
	f.cursorGauge = prometheus.NewGauge(prometheus.GaugeOpts{Name: "custody_forward_cursor_seq", Help: "Stream sequence of the last delivered record."})
	f.lastOK = prometheus.NewGauge(prometheus.GaugeOpts{Name: "custody_forward_last_delivery_timestamp_seconds", Help: "When the receiver last took a batch."})
	f.reg.MustRegister(f.delivered, f.batches, f.failures, f.missing, f.lag, f.cursorGauge, f.lastOK)
	c, err := readCursor(cfg.CursorFile)
	if err != nil {
		return nil, err
	}
	f.cursor = c
	f.cursorGauge.Set(float64(c))
	f.health = health{Status: "ok", Cursor: c}
	return f, nil
}

// Cursor is the stream sequence of the last delivered record.
func (f *Forwarder) Cursor() uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.cursor
}

// Handler serves /healthz (200 while deliveries succeed or nothing is waiting, 503 while a
// delivery is being retried, with the state as JSON) and /metrics (Prometheus).
func (f *Forwarder) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(f.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		f.mu.Lock()
		h := f.health
		f.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		if h.Status != "ok" {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		_ = json.NewEncoder(w).Encode(h)
	})
	return mux
}

// Run forwards until ctx ends. It returns nil when ctx ends and an error only for what no retry
// mends: a cursor that cannot be written, a stream that is gone or was recreated.
func (f *Forwarder) Run(ctx context.Context) error {
	log := f.cfg.Logger
	var cons jetstream.Consumer
	failures := 0
	for ctx.Err() == nil {
		if cons == nil {
			c, err := f.consumer(ctx)
			if err != nil {
				if permanent(err) {
					return err
				}
				failures++
				log.Warn().Err(err).Int("attempt", failures).Msg("forward: cannot read the stream; retrying")
				f.sleep(ctx, failures, 0)
				continue
			}
			cons = c
		}
		msgs, err := f.fetch(cons)
		if err != nil {
			// The ordered consumer starts over from the cursor: nothing after it was delivered.
			cons = nil
			failures++
			log.Warn().Err(err).Int("attempt", failures).Msg("forward: fetch failed; reading again from the cursor")
			f.sleep(ctx, failures, 0)
			continue
		}
		failures = 0
		if len(msgs) == 0 {
			f.refreshLag(ctx)
			continue
		}
		began := time.Now()
		if err := f.deliver(ctx, msgs); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		if time.Since(began) > 30*time.Second {
			// A delivery retried past the consumer's idle limit may have lost it; starting
			// again from the cursor is always right.
			cons = nil
		}
	}
	return nil
}

func (f *Forwarder) consumer(ctx context.Context) (jetstream.Consumer, error) {
	cctx, cancel := context.WithTimeout(ctx, f.cfg.Timeout)
	defer cancel()
	info, err := f.cfg.Stream.Info(cctx)
	if err != nil {
		return nil, fmt.Errorf("forward: stream info: %w", err)
	}
	cur := f.Cursor()
	if cur > info.State.LastSeq {
		return nil, fmt.Errorf("forward: open stream: %w: the cursor is at seq %d but the stream ends at %d; the stream was recreated, move the cursor file %s away to forward it from the start", errRecreated, cur, info.State.LastSeq, f.cfg.CursorFile)
	}
	cfg := jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverAllPolicy}
	if cur > 0 {
		cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, cur+1
	}
	c, err := f.cfg.Stream.OrderedConsumer(cctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("forward: create ordered consumer: %w", err)
	}
	return c, nil
}

var errRecreated = errors.New("stream recreated")

func permanent(err error) bool {
	return errors.Is(err, errRecreated) || errors.Is(err, jetstream.ErrStreamNotFound) ||
		errors.Is(err, nats.ErrAuthorization) || errors.Is(err, nats.ErrConnectionClosed)
}

// fetch takes up to a batch, waiting at most MaxWait. Only messages after the cursor are kept,
// so a consumer that replays cannot make the forwarder deliver a record twice or out of order.
func (f *Forwarder) fetch(cons jetstream.Consumer) ([]Msg, error) {
	batch, err := cons.Fetch(f.cfg.Batch, jetstream.FetchMaxWait(f.cfg.MaxWait))
	if err != nil {
		return nil, fmt.Errorf("forward: fetch: %w", err)
	}
	last := f.Cursor()
	var out []Msg
	var pending uint64
	for m := range batch.Messages() {
		md, err := m.Metadata()
		if err != nil {
			continue // not a JetStream message: it has no place in the stream's order
		}
		seq := md.Sequence.Stream
		if seq <= last {
			continue
		}
		out = append(out, Msg{Seq: seq, Subject: m.Subject(), MsgID: m.Headers().Get("Nats-Msg-Id"), Time: md.Timestamp, Data: m.Data()})
		last, pending = seq, md.NumPending
	}
	if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) {
		return nil, fmt.Errorf("forward: fetch: %w", err)
	}
	if len(out) > 0 {
		f.setEnd(last + pending)
	}
	return out, nil
}

func (f *Forwarder) refreshLag(ctx context.Context) {
	cctx, cancel := context.WithTimeout(ctx, f.cfg.Timeout)
	defer cancel()
	info, err := f.cfg.Stream.Info(cctx)
	if err != nil {
		return
	}
	f.setEnd(info.State.LastSeq)
}

// setEnd notes the stream's last sequence as last seen; the lag is what lies between the
// cursor and it.
func (f *Forwarder) setEnd(end uint64) {
	f.mu.Lock()
	f.end = max(f.end, end)
	f.updateLag()
	f.mu.Unlock()
}

// updateLag is called with f.mu held.
func (f *Forwarder) updateLag() {
	var n uint64
	if f.end > f.cursor {
		n = f.end - f.cursor
	}
	f.health.Lag = n
	f.lag.Set(float64(n))
}

// deliver formats msgs and delivers them, retrying until the receiver takes them or ctx ends,
// then advances the cursor.
func (f *Forwarder) deliver(ctx context.Context, msgs []Msg) error {
	items := make([]Item, 0, len(msgs))
	if gap := msgs[0].Seq - f.Cursor() - 1; gap > 0 && f.Cursor() > 0 {
		f.missing.Add(float64(gap))
		f.cfg.Logger.Error().Uint64("after_seq", f.Cursor()).Uint64("missing", gap).Msg("forward: stream sequences were gone before they could be forwarded (retention or a stream edit)")
	}
	for _, m := range msgs {
		ev, t, err := f.cfg.Format(m)
		if err != nil {
			return fmt.Errorf("forward: format seq %d: %w", m.Seq, err)
		}
		items = append(items, Item{Seq: m.Seq, Time: t, Event: ev})
	}
	// Split on "too large" answers; each part is delivered in order before the next.
	queue := [][]Item{items}
	for len(queue) > 0 {
		part := queue[0]
		err := f.attempt(ctx, part)
		if err == nil {
			queue = queue[1:]
			if err := f.advance(part); err != nil {
				return err
			}
			continue
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if tooLarge(err) && len(part) > 1 {
			half := len(part) / 2
			queue = append([][]Item{part[:half], part[half:]}, queue[1:]...)
			f.cfg.Logger.Warn().Int("records", len(part)).Msg("forward: receiver says the batch is too large; splitting it")
			continue
		}
	}
	return nil
}

// attempt makes delivery attempts of one batch until one succeeds, one says "too large", or
// ctx ends. Every failure waits out a backoff, so no answer makes the forwarder spin.
func (f *Forwarder) attempt(ctx context.Context, batch []Item) error {
	for n := 1; ; n++ {
		actx, cancel := context.WithTimeout(ctx, f.cfg.Timeout)
		err := f.cfg.Sink.Deliver(actx, batch)
		cancel()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		kind, status := "error", "retrying"
		var se *StatusError
		var retryAfter time.Duration
		if errors.As(err, &se) {
			kind, retryAfter = "status", se.RetryAfter
			if se.Rejected() {
				kind, status = "rejected", "rejected"
			}
		}
		f.failures.WithLabelValues(kind).Inc()
		f.refreshLag(ctx) // the lag grows while the receiver is down: say so
		f.mu.Lock()
		f.health.Status, f.health.Failures, f.health.LastError = status, n, err.Error()
		f.mu.Unlock()
		ev := f.cfg.Logger.Warn()
		if kind == "rejected" {
			ev = f.cfg.Logger.Error() // an operator must act: the receiver refuses these records
		}
		ev.Err(err).Int("attempt", n).Uint64("first_seq", batch[0].Seq).Uint64("last_seq", batch[len(batch)-1].Seq).Str("to", f.cfg.Sink.Name()).Msg("forward: delivery failed; will retry, nothing is dropped")
		if tooLarge(err) && len(batch) > 1 {
			return err
		}
		f.sleep(ctx, n, retryAfter)
	}
}

// sleep waits the n-th backoff: MinBackoff doubling to MaxBackoff, or the receiver's
// Retry-After when that is longer (capped at MaxBackoff too, so a receiver cannot park the
// forwarder for hours).
func (f *Forwarder) sleep(ctx context.Context, n int, retryAfter time.Duration) {
	d := min(f.cfg.MinBackoff<<min(n-1, 20), f.cfg.MaxBackoff)
	d = min(max(d, retryAfter), f.cfg.MaxBackoff)
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

func (f *Forwarder) advance(batch []Item) error {
	last := batch[len(batch)-1].Seq
	if err := writeCursor(f.cfg.CursorFile, last); err != nil {
		return err
	}
	now := time.Now()
	f.mu.Lock()
	f.cursor = last
	f.health = health{Status: "ok", Cursor: last, LastOK: now}
	f.updateLag()
	f.mu.Unlock()
	f.delivered.WithLabelValues().Add(float64(len(batch)))
	f.batches.WithLabelValues().Inc()
	f.cursorGauge.Set(float64(last))
	f.lastOK.Set(float64(now.UnixNano()) / 1e9)
	return nil
}

// cursorState is the cursor file's content.
type cursorState struct {
	Stream string `json:"stream"`
	Seq    uint64 `json:"seq"`
}

func readCursor(path string) (uint64, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("forward: read cursor: %w", err)
	}
	var c cursorState
	if err := json.Unmarshal(b, &c); err != nil {
		return 0, fmt.Errorf("forward: read cursor %s: %w", path, err)
	}
	return c.Seq, nil
}

// writeCursor replaces the cursor file atomically and durably: a crash leaves the old cursor or
// the new one, never a torn file.
func writeCursor(path string, seq uint64) error {
	b, _ := json.Marshal(cursorState{Stream: decisionlog.StreamName, Seq: seq})
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return fmt.Errorf("forward: write cursor: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("forward: write cursor: %w", err)
	}
	_, err = tmp.Write(append(b, '\n'))
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("forward: write cursor: %w", err)
	}
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		_ = d.Sync() // the rename itself survives a power cut
		d.Close()
	}
	return nil
}
