package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/custodyhq/custody/decisionlog"
	"github.com/custodyhq/custody/decisionlog/forward"
	"github.com/custodyhq/custody/decisionlog/ocsf"
)

// splunkTokenEnv names the environment variable that may hold the Splunk HEC token.
const splunkTokenEnv = "CUSTODY_SPLUNK_TOKEN"

// runForward implements `custody forward`: deliver the CUSTODY stream to a SIEM, at least once
// and in stream order, until stopped.
func runForward(ctx context.Context, args []string, _, stderr io.Writer) error {
	fs := newFlagSet("forward", stderr)
	var natsURL, dataDir, to, format, cursor, tokenFile, listen, sourceType string
	var batch int
	var timeout, maxWait, maxBackoff time.Duration
	var fileMax int64
	fs.StringVar(&natsURL, "nats-url", DefaultNATSURL, "NATS server `url`")
	var creds natsAuth
	fs.StringVar(&creds.file, "nats-creds", "", "NATS credentials `file`")
	readerCredsFlags(fs, &dataDir, &creds)
	fs.StringVar(&to, "to", "", "destination: an http(s):// `URL` (NDJSON POSTs, or Splunk HEC with --splunk-token-file) or file:DIR")
	fs.StringVar(&format, "format", "ocsf", "`format` of each event: ocsf or json (the record as published)")
	fs.StringVar(&cursor, "cursor", "", "`file` holding the last delivered stream sequence (default: DATA/forward/<hash of --to>.cursor)")
	fs.StringVar(&tokenFile, "splunk-token-file", "", "`file` holding a Splunk HEC token (or set "+splunkTokenEnv+"); switches to the HEC event format")
	fs.StringVar(&sourceType, "splunk-sourcetype", "", "HEC sourcetype (default ocsf:custody, or custody:record with --format json)")
	fs.StringVar(&listen, "listen", "", "serve /healthz and /metrics on this `address`, such as 127.0.0.1:9471")
	fs.IntVar(&batch, "batch", forward.DefaultBatch, "records per delivery at most")
	fs.DurationVar(&maxWait, "max-wait", forward.DefaultMaxWait, "how long to wait to fill a batch")
	fs.DurationVar(&timeout, "timeout", forward.DefaultTimeout, "per-request timeout: a receiver that takes longer is retried")
	fs.DurationVar(&maxBackoff, "max-backoff", forward.DefaultMaxBackoff, "longest wait between retries")
	fs.Int64Var(&fileMax, "file-max-bytes", 100<<20, "with --to file:DIR, start a new file after this many bytes")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if to == "" {
		return fmt.Errorf("%w: --to is required", errUsage)
	}
	fmtFn, err := forwardFormat(format)
	if err != nil {
		return err
	}
	if creds, err = readerCreds(fs, creds, dataDir); err != nil {
		return err
	}
	if cursor == "" {
		sum := sha256.Sum256([]byte(to))
		cursor = filepath.Join(dataDir, "forward", hex.EncodeToString(sum[:8])+".cursor")
	}
	token, err := splunkToken(tokenFile)
	if err != nil {
		return err
	}
	sink, err := forwardSink(to, token, sourceType, format, timeout, fileMax)
	if err != nil {
		return err
	}
	if c, ok := sink.(io.Closer); ok {
		defer c.Close()
	}

	logger := zerolog.New(stderr).With().Timestamp().Str("cmd", "forward").Logger()
	nc, err := dialNATS(natsURL, creds, "custody forward", nats.MaxReconnects(-1), nats.ReconnectWait(time.Second))
	if err != nil {
		return fmt.Errorf("forward: %w", err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("forward: jetstream: %w", err)
	}
	var stream jetstream.Stream
	for attempt := 1; ; attempt++ {
		if stream, err = js.Stream(ctx, decisionlog.StreamName); err == nil {
			break
		}
		if errors.Is(err, jetstream.ErrStreamNotFound) || ctx.Err() != nil {
			return fmt.Errorf("forward: open stream %s: %w", decisionlog.StreamName, err)
		}
		logger.Warn().Err(err).Int("attempt", attempt).Msg("forward: stream not reachable yet")
		select {
		case <-ctx.Done():
		case <-time.After(min(time.Duration(attempt)*200*time.Millisecond, 5*time.Second)):
		}
	}
	f, err := forward.New(forward.Config{
		Stream: stream, Sink: sink, Format: fmtFn, CursorFile: cursor,
		Batch: batch, MaxWait: maxWait, Timeout: timeout, MaxBackoff: maxBackoff, Logger: logger,
	})
	if err != nil {
		return err
	}
	ev := logger.Info().Str("to", sink.Name()).Str("format", format).Str("cursor_file", cursor).Uint64("cursor", f.Cursor())
	if listen != "" {
		ln, err := net.Listen("tcp", listen)
		if err != nil {
			return fmt.Errorf("forward: listen %s: %w", listen, err)
		}
		srv := &http.Server{Handler: f.Handler(), ReadHeaderTimeout: 5 * time.Second}
		go func() { _ = srv.Serve(ln) }()
		defer srv.Close()
		ev = ev.Str("listen", ln.Addr().String())
	}
	ev.Msg("custody forwarding")
	if err := f.Run(ctx); err != nil {
		return err
	}
	logger.Info().Uint64("cursor", f.Cursor()).Msg("custody forward stopped")
	return nil
}

// forwardFormat returns how each message becomes one JSON event.
func forwardFormat(format string) (func(forward.Msg) ([]byte, time.Time, error), error) {
	switch format {
	case "ocsf":
		return func(m forward.Msg) ([]byte, time.Time, error) {
			e := ocsf.Map(ocsf.Msg{Seq: m.Seq, Subject: m.Subject, MsgID: m.MsgID, Time: m.Time, Data: m.Data})
			b, err := json.Marshal(e)
			return b, time.UnixMilli(e.Time), err
		}, nil
	case "json":
		return func(m forward.Msg) ([]byte, time.Time, error) {
			if !json.Valid(m.Data) || strings.ContainsAny(string(m.Data), "\r\n") {
				// An event line must be one JSON value; keep what cannot be one as a string.
				b, err := json.Marshal(map[string]any{"unreadable": string(m.Data), "subject": m.Subject, "stream_seq": m.Seq})
				return b, m.Time, err
			}
			return m.Data, m.Time, nil
		}, nil
	}
	return nil, fmt.Errorf("%w: --format %q: want ocsf or json", errUsage, format)
}

// splunkToken reads the HEC token from file, else from the environment. It is never logged.
func splunkToken(file string) (string, error) {
	if file == "" {
		return strings.TrimSpace(os.Getenv(splunkTokenEnv)), nil
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return "", fmt.Errorf("forward: read --splunk-token-file: %w", err)
	}
	t := strings.TrimSpace(string(b))
	if t == "" {
		return "", fmt.Errorf("%w: --splunk-token-file %s is empty", errUsage, file)
	}
	return t, nil
}

func forwardSink(to, token, sourceType, format string, timeout time.Duration, fileMax int64) (forward.Sink, error) {
	switch {
	case strings.HasPrefix(to, "file:"):
		dir := strings.TrimPrefix(to, "file:")
		if dir == "" {
			return nil, fmt.Errorf("%w: --to file: needs a directory", errUsage)
		}
		if token != "" {
			return nil, fmt.Errorf("%w: a Splunk token goes with an http(s) --to only", errUsage)
		}
		return &forward.FileSink{Dir: dir, MaxBytes: fileMax}, nil
	case strings.HasPrefix(to, "http://"), strings.HasPrefix(to, "https://"):
		if sourceType == "" {
			sourceType = "custody:record"
			if format == "ocsf" {
				sourceType = "ocsf:custody"
			}
		}
		return &forward.HTTPSink{URL: to, Client: &http.Client{Timeout: timeout}, SplunkToken: token, SourceType: sourceType}, nil
	}
	return nil, fmt.Errorf("%w: --to %q: want http://, https:// or file:DIR", errUsage, to)
}
