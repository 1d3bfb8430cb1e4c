package main

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"golang.org/x/mod/sumdb/note"

	"github.com/custodyhq/custody/decisionlog"
	custodyjs "github.com/custodyhq/custody/decisionlog/jetstream"
	"github.com/custodyhq/custody/decisionlog/spool"
)

// Record modes: how a decision becomes durable before its answer.
const (
	// recordSpool: fsynced to a local spool (group commit), then forwarded to JetStream in order.
	recordSpool = "spool"
	// recordAck: published to JetStream, answered once JetStream acked it.
	recordAck = "ack"
	// recordAuto: spool for an external NATS (it rides out outages), ack for the embedded server
	// (it is already a local disk store, so a spool would only write everything twice).
	recordAuto = "auto"
)

// recorder is the decision log as serve wires it.
type recorder struct {
	mode      string
	publisher decisionlog.Publisher
	ready     func(context.Context) error
	close     func(ctx context.Context) error
	spool     *spool.Spool
	// chainSeq and checkpointSeq give the chain head and the last checkpoint, for metrics.
	chainSeq, checkpointSeq func() uint64
}

type recorderDeps struct {
	cfg      serveConfig
	logger   zerolog.Logger
	js       jetstream.JetStream
	stream   jetstream.Stream
	nc       *nats.Conn
	instance string
	head     decisionlog.ChainHead
	signer   note.Signer
	embedded bool
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
	if mode != recordAuto {
		return mode
	}
	if embedded {
		return recordAck
	}
	return recordSpool
}

func newRecorder(d recorderDeps) (*recorder, error) {
	mode := recordModeFor(d.cfg.recordMode, d.embedded)
	log := d.logger.With().Str("component", "serve").Logger()
	switch mode {
	case recordAck:
		sink := custodyjs.NewSink(d.js, custodyjs.WithPublishTimeout(d.cfg.publishTimeout), custodyjs.WithLogger(d.logger),
			custodyjs.WithChain(custodyjs.ChainConfig{
				Instance:           d.instance,
				Head:               d.head,
				Signer:             d.signer,
				CheckpointEvery:    d.cfg.checkpointEvery,
				CheckpointInterval: d.cfg.checkpointInterval,
				Stream:             d.stream,
				Window:             ackWindow(d.embedded),
			}))
		return &recorder{
			mode:      mode,
			publisher: sink,
			ready: func(ctx context.Context) error {
				if err := custodyjs.Ready(d.nc); err != nil {
					return err
				}
				return custodyjs.Writable(ctx, d.stream)
			},
			close:         sink.Close,
			chainSeq:      func() uint64 { return sink.Head().Seq },
			checkpointSeq: sink.CheckpointedSeq,
		}, nil
	case recordSpool:
		sp, err := spool.Open(spool.Config{
			Dir:      filepath.Join(d.cfg.dataDir, "spool"),
			MaxBytes: d.cfg.spoolMaxBytes,
			Instance: d.instance,
			Head:     d.head,
		}, d.logger)
		if err != nil {
			return nil, fmt.Errorf("serve: %w", err)
		}
		sink := custodyjs.NewSink(d.js, custodyjs.WithPublishTimeout(d.cfg.publishTimeout), custodyjs.WithLogger(d.logger))
		checkpoint := func(ctx context.Context, head decisionlog.ChainHead) error {
			return sink.PublishCheckpoint(ctx, d.instance, head, d.signer)
		}
		fwdCtx, stopForward := context.WithCancel(context.Background())
		forwarded := make(chan struct{})
		go func() {
			defer close(forwarded)
			err := sp.Forward(fwdCtx, sink, checkpoint, d.cfg.checkpointEvery, d.cfg.checkpointInterval)
			if err != nil && !errors.Is(err, context.Canceled) {
				log.Error().Err(err).Msg("spool forwarder stopped")
			}
		}()
		records, bytes := sp.Stats()
		log.Info().Uint64("records", records).Int64("bytes", bytes).Msg("spool opened; forwarding to JetStream")
		return &recorder{
			mode:          mode,
			publisher:     sp,
			spool:         sp,
			chainSeq:      func() uint64 { return sp.Head().Seq },
			checkpointSeq: sp.CheckpointedSeq,
			ready: func(context.Context) error {
				if _, b := sp.Stats(); b >= d.cfg.spoolMaxBytes {
					return spool.ErrFull
				}
				return nil
			},
			close: func(ctx context.Context) error {
				err := sp.Close(ctx) // waits for the forwarder to drain, until ctx ends
				stopForward()
				<-forwarded
				return err
			},
		}, nil
	default:
		return nil, fmt.Errorf("%w: --record-mode %q: want auto, spool or ack", errUsage, d.cfg.recordMode)
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
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "custody_spool_records", Help: "Decision records in the spool not yet acked by JetStream."},
			func() float64 { n, _ := sp.Stats(); return float64(n) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "custody_spool_bytes", Help: "Bytes of spooled records not yet acked by JetStream."},
			func() float64 { _, b := sp.Stats(); return float64(b) }),
	)
}
