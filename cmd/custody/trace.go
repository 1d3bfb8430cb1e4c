package main

import (
	"context"
	"fmt"
	"io"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/custodyhq/custody/decisionlog"
	custodyjs "github.com/custodyhq/custody/decisionlog/jetstream"
	"github.com/custodyhq/custody/decisionlog/trace"
)

func runTrace(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("trace", stderr)
	var natsURL, format string
	fs.StringVar(&natsURL, "nats-url", DefaultNATSURL, "NATS server `url`")
	var creds natsAuth
	fs.StringVar(&creds.file, "nats-creds", "", "NATS credentials file")
	var dataDir string
	readerCredsFlags(fs, &dataDir, &creds)
	fs.StringVar(&format, "format", "text", "text (an indented tree), json, dot or mermaid")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: custody trace [flags] <correlation-id>")
		fs.PrintDefaults()
	}
	// Flags may come before or after the correlation ID.
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	var err error
	if creds, err = readerCreds(fs, creds, dataDir); err != nil {
		return err
	}
	var rest []string
	corr := ""
	if fs.NArg() > 0 {
		corr, rest = fs.Arg(0), fs.Args()[1:]
	}
	if len(rest) > 0 {
		if err := fs.Parse(rest); err != nil {
			return fmt.Errorf("%w: %w", errUsage, err)
		}
		if fs.NArg() > 0 {
			return fmt.Errorf("%w: unexpected argument %q", errUsage, fs.Arg(0))
		}
	}
	if corr == "" {
		return fmt.Errorf("%w: trace: want a correlation ID", errUsage)
	}
	write := map[string]func(*trace.Graph, io.Writer) error{
		"text": (*trace.Graph).WriteText, "json": (*trace.Graph).WriteJSON,
		"dot": (*trace.Graph).WriteDOT, "mermaid": (*trace.Graph).WriteMermaid,
	}[format]
	if write == nil {
		return fmt.Errorf("%w: --format %q: want text, json, dot or mermaid", errUsage, format)
	}
	entries, err := readRecords(ctx, "trace", natsURL, creds, decisionlog.CorrelationFilters(corr), stderr)
	if err != nil {
		return err
	}
	g := trace.BuildEntries(corr, entries)
	if len(g.Nodes) == 1 {
		return fmt.Errorf("trace: no decisions or executions for correlation ID %q", corr)
	}
	return write(g, stdout)
}

// readRecords reads every decision and execution message on the given subject filters, from the
// start of the stream to its current end (filtering happens on the server), and checks each: a
// message that does not verify, or cannot be read at all, is kept as an unverified entry and
// the read carries on.
func readRecords(ctx context.Context, cmd, natsURL string, creds natsAuth, filters []string, stderr io.Writer) ([]trace.Entry, error) {
	nc, err := dialNATS(natsURL, creds, "custody "+cmd)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", cmd, err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("%s: jetstream: %w", cmd, err)
	}
	stream, err := js.Stream(ctx, decisionlog.StreamName)
	if err != nil {
		return nil, fmt.Errorf("%s: stream %s: %w", cmd, decisionlog.StreamName, err)
	}
	var out []trace.Entry
	st, err := custodyjs.Read(ctx, stream, custodyjs.ReadOptions{Filters: filters}, func(m *custodyjs.Msg) error {
		out = append(out, trace.Check(m.Seq, m.Subject, m.Header.Get(decisionlog.HeaderMsgID), m.Data))
		return nil
	})
	reportRead(stderr, cmd, st)
	if err != nil {
		return nil, fmt.Errorf("%s: read stream: %w", cmd, err)
	}
	return out, nil
}
