package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/custodyhq/custody/decisionlog"
	custodyjs "github.com/custodyhq/custody/decisionlog/jetstream"
	"github.com/custodyhq/custody/decisionlog/ocsf"
	"github.com/custodyhq/custody/internal/app"
)

// runExport implements `custody export`: every message body of the CUSTODY stream (decisions
// and checkpoints), one per line, in stream order, as `custody verify --file` reads them.
func runExport(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("export", stderr)
	var natsURL, since, corr, out string
	fs.StringVar(&natsURL, "nats-url", DefaultNATSURL, "NATS server `url`")
	var creds natsAuth
	fs.StringVar(&creds.file, "nats-creds", "", "NATS credentials `file`")
	var dataDir string
	readerCredsFlags(fs, &dataDir, &creds)
	fs.StringVar(&since, "since", "", "start at this `time`: a duration ago such as 24h, or an RFC 3339 time (default: the first message)")
	fs.StringVar(&corr, "correlation-id", "", "only the decision records of this correlation `id` (such an export cannot be chain-verified)")
	fs.StringVar(&out, "out", "", "write to this `file` instead of standard output")
	var format string
	fs.StringVar(&format, "format", "json", "`format` of each line: json (the message as published, what custody verify --file reads) or ocsf (an OCSF event)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if format != "json" && format != "ocsf" {
		return fmt.Errorf("%w: --format %q: want json or ocsf", errUsage, format)
	}
	var err error
	if creds, err = readerCreds(fs, creds, dataDir); err != nil {
		return err
	}
	start, err := parseSince(since, time.Now())
	if err != nil {
		return fmt.Errorf("%w: --since %q: %w", errUsage, since, err)
	}
	var filter string
	if corr != "" {
		filter = decisionlog.DecisionFilter("", "", "", corr)
		fmt.Fprintf(stderr, "custody export: only the decisions of correlation ID %q: without the rest of each chain and without checkpoints, this export cannot be chain-verified\n", corr)
	}
	if !start.IsZero() {
		fmt.Fprintf(stderr, "custody export: from %s: earlier messages are left out, and custody verify checks each chain from where the file begins\n", start.UTC().Format(time.RFC3339))
	}

	nc, err := dialNATS(natsURL, creds, "custody export")
	if err != nil {
		return fmt.Errorf("export: %w", err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("export: jetstream: %w", err)
	}

	w, commit, abort, err := exportWriter(out, stdout)
	if err != nil {
		return fmt.Errorf("export: %w", err)
	}
	bw := bufio.NewWriter(w)
	n := 0
	st, err := readStream(ctx, js, filter, start, func(m *custodyjs.Msg) error {
		if format == "ocsf" {
			line, err := ocsf.MapJSON(ocsf.Msg{Seq: m.Seq, Subject: m.Subject, MsgID: m.Header.Get(decisionlog.HeaderMsgID), Data: m.Data})
			if err != nil {
				return err
			}
			n++
			_, err = bw.Write(append(line, '\n'))
			return err
		}
		if bytes.ContainsAny(m.Data, "\r\n") {
			return fmt.Errorf("message %d on %s holds a line break, which an export file cannot: verify the live stream instead (custody verify --nats-url)", m.Seq, m.Subject)
		}
		if _, err := bw.Write(m.Data); err != nil {
			return err
		}
		n++
		return bw.WriteByte('\n')
	})
	if err == nil {
		err = bw.Flush()
	}
	if err == nil {
		err = commit()
	}
	if err != nil {
		abort()
		return fmt.Errorf("export: %w", err)
	}
	reportRead(stderr, "export", st)
	dest := "standard output"
	if out != "" {
		dest = out
	}
	fmt.Fprintf(stderr, "custody export: %s to %s\n", count(n, "message"), dest)
	return nil
}

// exportWriter returns where the export goes. A file is written beside its final name and
// renamed into place by commit, so that a failed export never leaves a partial file that reads
// as a truncated stream; abort removes it.
func exportWriter(path string, stdout io.Writer) (w io.Writer, commit func() error, abort func(), err error) {
	if path == "" {
		return stdout, func() error { return nil }, func() {}, nil
	}
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*.partial")
	if err != nil {
		return nil, nil, nil, fmt.Errorf("create %s: %w", path, err)
	}
	commit = func() error {
		if err := f.Close(); err != nil {
			return fmt.Errorf("write %s: %w", path, err)
		}
		if err := os.Rename(f.Name(), path); err != nil {
			return fmt.Errorf("write %s: %w", path, err)
		}
		return nil
	}
	abort = func() {
		f.Close()
		os.Remove(f.Name())
	}
	return f, commit, abort, nil
}

// parseSince reads --since: "" (from the start), a positive duration before now, or an RFC 3339
// time.
func parseSince(s string, now time.Time) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if d, err := time.ParseDuration(s); err == nil {
		if d <= 0 {
			return time.Time{}, errors.New("want a positive duration")
		}
		return now.Add(-d), nil
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Time{}, errors.New("want a duration such as 24h or an RFC 3339 time such as 2026-11-27T06:00:00Z")
	}
	if t.After(now) {
		return time.Time{}, errors.New("is in the future")
	}
	return t, nil
}

// dialNATS connects to the NATS server at url, with a credentials file when creds is set; extra
// options (reconnect policy, handlers) come after the defaults.
func dialNATS(url string, creds natsAuth, name string, extra ...nats.Option) (*nats.Conn, error) {
	return app.DialNATS(url, app.NATSClient{Creds: creds.file, CA: creds.ca, Cert: creds.cert, Key: creds.key},
		append([]nats.Option{nats.Name(name), nats.Timeout(5 * time.Second)}, extra...)...)
}

// readStream calls fn with each message of the CUSTODY stream on filter ("" for all of
// custody.>) from start (zero for the first), in stream order, up to the last message the stream
// held when the read began. It is custodyjs.Read: transient NATS errors are retried, and a read
// that cannot reach the end fails rather than stopping short.
func readStream(ctx context.Context, js jetstream.JetStream, filter string, start time.Time, fn func(m *custodyjs.Msg) error) (custodyjs.ReadStats, error) {
	var stream jetstream.Stream
	for attempt := 0; ; attempt++ {
		var err error
		stream, err = js.Stream(ctx, decisionlog.StreamName)
		if err == nil {
			break
		}
		// A cluster electing a leader answers no responders for a moment; a stream that does
		// not exist is not waited for.
		if errors.Is(err, jetstream.ErrStreamNotFound) || attempt >= custodyjs.DefaultReadRetries || ctx.Err() != nil {
			return custodyjs.ReadStats{}, fmt.Errorf("open stream %s: %w", decisionlog.StreamName, err)
		}
		select {
		case <-ctx.Done():
		case <-time.After(custodyjs.DefaultReadBackoff << min(attempt, 5)):
		}
	}
	opts := custodyjs.ReadOptions{StartTime: start}
	if filter != "" {
		opts.Filters = []string{filter}
	}
	return custodyjs.Read(ctx, stream, opts, fn)
}

// reportRead tells a reading command's user what the read rode out or could not see.
func reportRead(w io.Writer, cmd string, st custodyjs.ReadStats) {
	if st.Retries > 0 {
		fmt.Fprintf(w, "custody %s: rode out %d transient NATS %s (last: %s)\n", cmd, st.Retries, plural(uint64(st.Retries), "error", "errors"), st.LastRetry)
	}
	if st.Unplaceable > 0 {
		fmt.Fprintf(w, "custody %s: skipped %d %s without JetStream metadata\n", cmd, st.Unplaceable, plural(uint64(st.Unplaceable), "message", "messages"))
	}
	if st.Missing > 0 {
		fmt.Fprintf(w, "custody %s: %d stream %s up to seq %d %s not on the stream (expired or removed)\n", cmd, st.Missing, plural(st.Missing, "sequence", "sequences"), st.End, plural(st.Missing, "was", "were"))
	}
}

// count is n and the noun one, in the plural (one+"s") unless n is 1: "1 record", "2 records".
func count[N int | int64 | uint64](n N, one string) string {
	return fmt.Sprintf("%d %s", n, plural(uint64(n), one, one+"s"))
}

func plural(n uint64, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}
