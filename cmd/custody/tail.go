package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/custodyhq/custody/decisionlog"
)

func runTail(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("tail", stderr)
	var (
		natsURL, outcome, agent, tool, corr, since string
		asJSON, all                                bool
		limit                                      int
	)
	fs.StringVar(&natsURL, "nats-url", DefaultNATSURL, "NATS server `url`")
	var creds natsAuth
	fs.StringVar(&creds.file, "nats-creds", "", "NATS credentials file")
	var dataDir string
	readerCredsFlags(fs, &dataDir, &creds)
	fs.StringVar(&outcome, "outcome", "", "only allow or deny")
	fs.StringVar(&agent, "agent", "", "only this agent ID")
	fs.StringVar(&tool, "tool", "", "only this tool (action) name")
	fs.StringVar(&corr, "correlation-id", "", "only this correlation ID")
	fs.BoolVar(&asJSON, "json", false, "print each record as one line of JSON")
	fs.BoolVar(&all, "all", false, "start from the first decision in the stream instead of new ones")
	fs.StringVar(&since, "since", "", "start from decisions this long ago, such as 10m")
	fs.IntVar(&limit, "limit", 0, "stop after this many decisions (0: follow until interrupted)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	var err error
	if creds, err = readerCreds(fs, creds, dataDir); err != nil {
		return err
	}
	if outcome != "" && outcome != "allow" && outcome != "deny" {
		return fmt.Errorf("%w: --outcome %q: want allow or deny", errUsage, outcome)
	}
	cfg := jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{decisionlog.DecisionFilter(outcome, agent, tool, corr)},
		DeliverPolicy:  jetstream.DeliverNewPolicy,
	}
	switch {
	case all && since != "":
		return fmt.Errorf("%w: --all and --since are exclusive", errUsage)
	case all:
		cfg.DeliverPolicy = jetstream.DeliverAllPolicy
	case since != "":
		d, err := time.ParseDuration(since)
		if err != nil || d <= 0 {
			return fmt.Errorf("%w: --since %q: want a positive duration such as 10m", errUsage, since)
		}
		start := time.Now().Add(-d)
		cfg.DeliverPolicy, cfg.OptStartTime = jetstream.DeliverByStartTimePolicy, &start
	}

	nc, err := dialNATS(natsURL, creds, "custody tail", nats.MaxReconnects(-1))
	if err != nil {
		return fmt.Errorf("tail: %w", err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("tail: jetstream: %w", err)
	}
	cons, err := js.OrderedConsumer(ctx, decisionlog.StreamName, cfg)
	if err != nil {
		return fmt.Errorf("tail: follow stream %s: %w", decisionlog.StreamName, err)
	}
	msgs, err := cons.Messages()
	if err != nil {
		return fmt.Errorf("tail: follow stream %s: %w", decisionlog.StreamName, err)
	}
	stop := context.AfterFunc(ctx, msgs.Stop)
	defer stop()
	defer msgs.Stop()

	for n := 0; limit == 0 || n < limit; n++ {
		msg, err := msgs.Next()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, jetstream.ErrMsgIteratorClosed) {
				return nil
			}
			return fmt.Errorf("tail: next decision: %w", err)
		}
		if asJSON {
			fmt.Fprintf(stdout, "%s\n", msg.Data())
			continue
		}
		// A record that does not verify is shown as such, never as a decision; one that cannot
		// be read at all is named and skipped, and the tail goes on.
		rec, err := decisionlog.CheckRecord(msg.Headers().Get(decisionlog.HeaderMsgID), msg.Data())
		switch {
		case rec == nil:
			fmt.Fprintf(stdout, "UNREADABLE %s: %v\n", msg.Subject(), err)
		case err != nil:
			fmt.Fprintf(stdout, "UNVERIFIED %s (%v)\n", formatRecord(rec), err)
		default:
			fmt.Fprintln(stdout, formatRecord(rec))
		}
	}
	return nil
}

// formatRecord renders a decision on one line for people.
func formatRecord(r *decisionlog.Record) string {
	var b strings.Builder
	outcome := "DENY "
	if r.Allow {
		outcome = "ALLOW"
	}
	fmt.Fprintf(&b, "%s %s agent=%s action=%s subject=%s:%s resource=%s:%s",
		r.Timestamp.Format(time.RFC3339Nano), outcome, orDash(r.AgentID()), orDash(r.Action.Name),
		r.Subject.Type, r.Subject.ID, r.Resource.Type, r.Resource.ID)
	if len(r.Reasons) > 0 {
		fmt.Fprintf(&b, " reasons=%s", strings.Join(r.Reasons, ","))
	}
	if len(r.Obligations) > 0 {
		keys := make([]string, 0, len(r.Obligations))
		for k := range r.Obligations {
			keys = append(keys, k)
		}
		fmt.Fprintf(&b, " obligations=%s", strings.Join(keys, ","))
	}
	fmt.Fprintf(&b, " correlation=%s decision=%s", r.CorrelationID, r.DecisionID)
	if r.Task != nil && r.Task.ID != "" {
		fmt.Fprintf(&b, " task=%s", r.Task.ID)
	}
	if r.Error != "" {
		fmt.Fprintf(&b, " error=%q", r.Error)
	}
	return b.String()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
