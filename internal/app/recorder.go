package app

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"golang.org/x/mod/sumdb/note"

	"github.com/custodyhq/custody/decisionlog"
	custodyjs "github.com/custodyhq/custody/decisionlog/jetstream"
	"github.com/custodyhq/custody/decisionlog/spool"
	custodyhttp "github.com/custodyhq/custody/server"
)

// recorder is the decision log as serve wires it.
type recorder struct {
	mode      string
	publisher decisionlog.Publisher
	ready     func(context.Context) error
	// start runs the recorder's goroutines (the stream probe, the spool's forwarder); close
	// stops them and waits, and also works when start was never called.
	start func()
	close func(ctx context.Context) error
	spool *spool.Spool
	// chainSeq and checkpointSeq give the chain head and the last checkpoint, for metrics.
	chainSeq, checkpointSeq func() uint64
}

type recorderDeps struct {
	cfg      Config
	logger   zerolog.Logger
	js       jetstream.JetStream
	stream   jetstream.Stream
	nc       *nats.Conn
	instance string
	head     decisionlog.ChainHead
	signer   note.Signer
	embedded bool
	// evidence are the sink options of evidence.go: the Merkle tree and witnesses.
	evidence []custodyjs.Option
}

// embeddedAckWindow is how many records may await their ack at once on the embedded server.
const embeddedAckWindow = 256

// ackWindow is the ack-mode window: pipelined on the embedded server, whose stream has no other
// writer, and one record at a time on a server a fleet may share, where Nats-Expected-Last-Msg-Id
// would refuse records whenever another instance's landed in between.
func ackWindow(embedded bool) int {
	if embedded {
		return embeddedAckWindow
	}
	return 1
}

// recordModeFor resolves --record-mode: auto is ack with the embedded server, spool otherwise.
func recordModeFor(mode string, embedded bool) string {
	if mode != RecordAuto {
		return mode
	}
	if embedded {
		return RecordAck
	}
	return RecordSpool
}

// probeEvery is how often the stream's writability is read for /readyz; probeStale is how old
// a probe may be before readiness stops trusting it.
const (
	probeEvery = time.Second
	probeStale = 5 * time.Second
)

// streamProbe caches whether the stream can take a record: /readyz reads the cache and never
// waits on the network (nor does /metrics).
type streamProbe struct {
	mu   sync.Mutex
	at   time.Time // when the last probe started
	okAt time.Time // when the last successful probe started
	err  error
}

func (p *streamProbe) run(ctx context.Context, stream jetstream.Stream) {
	t := time.NewTicker(probeEvery)
	defer t.Stop()
	for {
		start := time.Now()
		pctx, cancel := context.WithTimeout(ctx, probeEvery)
		err := custodyjs.Writable(pctx, stream)
		cancel()
		p.mu.Lock()
		p.at, p.err = start, err
		if err == nil {
			p.okAt = start
		}
		p.mu.Unlock()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// state returns the last probe's error (or a stale one) and when a probe last succeeded.
func (p *streamProbe) state() (okAt time.Time, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case p.at.IsZero():
		return p.okAt, errors.New("app: stream not probed yet")
	case time.Since(p.at) > probeStale:
		return p.okAt, fmt.Errorf("app: stream probe stale since %s", p.at.Format(time.RFC3339))
	}
	return p.okAt, p.err
}

// ackReady is true about whether a decision can be recorded now in ack mode: connected, the
// stream led by a quorum and not full (cached probe), and the last record not refused since the
// last probe or record that succeeded.
func ackReady(nc *nats.Conn, probe *streamProbe, sink *custodyjs.Sink) error {
	if err := custodyjs.Ready(nc); err != nil {
		return err
	}
	okAt, err := probe.state()
	if err != nil {
		return err
	}
	ok, failed, ferr := sink.LastOutcome()
	if failed.After(ok) && failed.After(okAt) {
		return fmt.Errorf("app: the last decision record was refused: %w", ferr)
	}
	return nil
}

// drainSpool forwards what a spool left in the data dir before ack mode starts: an instance
// that ran in spool mode may have answered decisions that are only on local disk. It returns
// the chain head after them. A spool it cannot drain within the timeout makes ack mode refuse
// to start rather than drop them.
func drainSpool(ctx context.Context, d recorderDeps, sink *custodyjs.Sink, log zerolog.Logger) (decisionlog.ChainHead, error) {
	dir := filepath.Join(d.cfg.DataDir, "spool")
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		return d.head, nil
	}
	sp, err := spool.Open(spool.Config{Dir: dir, MaxBytes: d.cfg.SpoolMaxBytes, Instance: d.instance, Head: d.head, Permanent: custodyjs.Permanent}, d.logger)
	if err != nil {
		return d.head, fmt.Errorf("app: ack mode: %w", err)
	}
	records, _ := sp.Stats()
	if records == 0 {
		return sp.Head(), sp.Close(ctx)
	}
	log.Warn().Uint64("records", records).Str("dir", dir).Msg("spool left by spool mode; forwarding it before ack mode starts")
	checkpoint := func(ctx context.Context, head decisionlog.ChainHead) error {
		return sink.PublishCheckpoint(ctx, d.instance, head, d.signer)
	}
	fctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = sp.Forward(fctx, sink, checkpoint, 1<<62, time.Hour)
	}()
	cerr := sp.Close(ctx) // returns once the forwarder drained it, or ctx ended
	stop()
	<-done
	if cerr != nil {
		return d.head, fmt.Errorf("app: ack mode: %w; run --record-mode spool until it is forwarded", cerr)
	}
	head := sp.Head()
	if err := checkpoint(ctx, head); err != nil {
		return d.head, fmt.Errorf("app: ack mode: checkpoint after the spool: %w", err)
	}
	log.Info().Uint64("records", records).Uint64("seq", head.Seq).Msg("spool forwarded")
	return head, nil
}

// drainTimeout bounds how long ack mode waits for a leftover spool to reach JetStream.
const drainTimeout = time.Minute

func newRecorder(d recorderDeps) (*recorder, error) {
	mode := recordModeFor(d.cfg.RecordMode, d.embedded)
	log := d.logger.With().Str("component", "serve").Logger()
	maxPayload := custodyjs.WithMaxPayload(d.nc.MaxPayload())
	switch mode {
	case RecordAck:
		plain := custodyjs.NewSink(d.js, append(d.evidence, custodyjs.WithPublishTimeout(d.cfg.PublishTimeout), custodyjs.WithLogger(d.logger), maxPayload)...)
		dctx, cancel := context.WithTimeout(context.Background(), drainTimeout)
		head, err := drainSpool(dctx, d, plain, log)
		cancel()
		if err != nil {
			return nil, err
		}
		d.head = head
		probe := &streamProbe{}
		probeCtx, stopProbe := context.WithCancel(context.Background())
		probed := make(chan struct{})
		sink := custodyjs.NewSink(d.js, append(d.evidence, custodyjs.WithPublishTimeout(d.cfg.PublishTimeout), custodyjs.WithLogger(d.logger), maxPayload,
			custodyjs.WithChain(custodyjs.ChainConfig{
				Instance:           d.instance,
				Head:               d.head,
				Signer:             d.signer,
				CheckpointEvery:    d.cfg.CheckpointEvery,
				CheckpointInterval: d.cfg.CheckpointInterval,
				Stream:             d.stream,
				Window:             ackWindow(d.embedded),
			}))...)
		var started sync.Once
		return &recorder{
			mode:      mode,
			publisher: sink,
			ready:     func(context.Context) error { return ackReady(d.nc, probe, sink) },
			start: func() {
				started.Do(func() {
					go func() { defer close(probed); probe.run(probeCtx, d.stream) }()
				})
			},
			close: func(ctx context.Context) error {
				stopProbe()
				started.Do(func() { close(probed) }) // never started: nothing to wait for
				<-probed
				return sink.Close(ctx)
			},
			chainSeq:      sink.HeadSeq,
			checkpointSeq: sink.CheckpointedSeq,
		}, nil
	case RecordSpool:
		// Spool mode answers from local disk: the stream's state is not readiness, so no probe.
		sink := custodyjs.NewSink(d.js, append(d.evidence, custodyjs.WithPublishTimeout(d.cfg.PublishTimeout), custodyjs.WithLogger(d.logger), maxPayload)...)
		sp, err := spool.Open(spool.Config{
			Dir:      filepath.Join(d.cfg.DataDir, "spool"),
			MaxBytes: d.cfg.SpoolMaxBytes,
			Instance: d.instance,
			Head:     d.head,
			Check:    sink.CheckSealed,
			// A record JetStream refuses for good is kept aside, never retried forever.
			Permanent: custodyjs.Permanent,
		}, d.logger)
		if err != nil {
			return nil, fmt.Errorf("app: %w", err)
		}
		checkpoint := func(ctx context.Context, head decisionlog.ChainHead) error {
			return sink.PublishCheckpoint(ctx, d.instance, head, d.signer)
		}
		fwdCtx, stopForward := context.WithCancel(context.Background())
		forwarded := make(chan struct{})
		var started sync.Once
		records, bytes := sp.Stats()
		log.Info().Uint64("records", records).Int64("bytes", bytes).Msg("spool opened; forwarding to JetStream")
		return &recorder{
			mode:          mode,
			publisher:     sp,
			spool:         sp,
			chainSeq:      func() uint64 { return sp.Head().Seq },
			checkpointSeq: sp.CheckpointedSeq,
			ready: func(context.Context) error {
				if err := sp.Err(); err != nil {
					return err
				}
				if _, b := sp.Stats(); b >= d.cfg.SpoolMaxBytes {
					return spool.ErrFull
				}
				if n := sp.Rejected(); n > 0 {
					return custodyhttp.Degraded(fmt.Errorf("app: %d records refused by JetStream for good, kept in %s", n, filepath.Join(d.cfg.DataDir, "spool", "rejected")))
				}
				return nil
			},
			start: func() {
				started.Do(func() {
					go func() {
						defer close(forwarded)
						err := sp.Forward(fwdCtx, sink, checkpoint, d.cfg.CheckpointEvery, d.cfg.CheckpointInterval)
						if err != nil && !errors.Is(err, context.Canceled) {
							log.Error().Err(err).Msg("spool forwarder stopped")
						}
					}()
				})
			},
			close: func(ctx context.Context) error {
				ran := true
				started.Do(func() { ran = false; close(forwarded) })
				if !ran {
					// Without a forwarder nothing drains: what the spool holds stays on disk for
					// the next start, and waiting for it would only wait out ctx.
					dead, cancel := context.WithCancel(ctx)
					cancel()
					ctx = dead
				}
				err := sp.Close(ctx) // waits for the forwarder to drain, until ctx ends
				stopForward()
				<-forwarded
				return err
			},
		}, nil
	default:
		return nil, configErrorf("--record-mode %q: want auto, spool or ack", d.cfg.RecordMode)
	}
}

// register adds chain and spool gauges to reg.
func (r *recorder) register(reg *prometheus.Registry) {
	reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "custody_chain_seq", Help: "Seq of this instance's last chained decision record."},
			func() float64 { return float64(r.chainSeq()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "custody_checkpoint_lag_records", Help: "Chained records not yet covered by a published signed checkpoint."},
			func() float64 { return float64(r.chainSeq() - min(r.checkpointSeq(), r.chainSeq())) }),
	)
	if r.spool == nil {
		return
	}
	sp := r.spool
	reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "custody_spool_rejected_records", Help: "Spooled records JetStream refused for good since start, kept in the spool's rejected directory."},
			func() float64 { return float64(sp.Rejected()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "custody_spool_records", Help: "Decision records in the spool not yet acked by JetStream."},
			func() float64 { n, _ := sp.Stats(); return float64(n) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "custody_spool_bytes", Help: "Bytes of spooled records not yet acked by JetStream."},
			func() float64 { _, b := sp.Stats(); return float64(b) }),
	)
}
