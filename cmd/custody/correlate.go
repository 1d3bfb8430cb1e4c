package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/custodyhq/custody/decisionlog"
	"github.com/custodyhq/custody/decisionlog/trace"
	"github.com/custodyhq/custody/receipt"
)

// errFindings makes correlate exit non-zero after printing its findings.
var errFindings = errors.New("correlate: some lines are unattributed, contradicted or unverified")

// listFlag is a repeatable string flag.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

func runCorrelate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("correlate", stderr)
	var (
		natsURL string
		logs    listFlag
		asJSON  bool
		ttl     time.Duration
		f       = trace.DefaultFields
	)
	fs.StringVar(&natsURL, "nats-url", DefaultNATSURL, "NATS server `url`")
	var creds natsAuth
	fs.StringVar(&creds.file, "nats-creds", "", "NATS credentials file")
	var dataDir string
	readerCredsFlags(fs, &dataDir, &creds)
	fs.Var(&logs, "system-log", "a downstream system's JSON-lines log (`file`); repeat for several")
	fs.BoolVar(&asJSON, "json", false, "print {\"lines\": [...], \"summary\": {...}}")
	fs.DurationVar(&ttl, "receipt-ttl", receipt.DefaultTTL, "how long a decision explains an action (serve's --receipt-ttl)")
	fs.StringVar(&f.DecisionID, "decision-field", f.DecisionID, "field holding the decision ID (dotted path; \"\" to ignore)")
	fs.StringVar(&f.Receipt, "receipt-field", f.Receipt, "field holding the Custody-Receipt JWT, read when there is no decision ID")
	fs.StringVar(&f.CorrelationID, "correlation-field", f.CorrelationID, "field holding the correlation ID")
	fs.StringVar(&f.Action, "action-field", f.Action, "field holding the action (tool) name")
	fs.StringVar(&f.Resource, "resource-field", f.Resource, "field holding the resource ID (or type/id)")
	fs.StringVar(&f.Time, "time-field", f.Time, "field holding when the action was done, RFC 3339")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	var err error
	if creds, err = readerCreds(fs, creds, dataDir); err != nil {
		return err
	}
	if len(logs) == 0 {
		return fmt.Errorf("%w: correlate: want at least one --system-log FILE", errUsage)
	}
	// Every decision is read: a line's decision ID may belong to any correlation ID.
	entries, err := readRecords(ctx, "correlate", natsURL, creds, []string{decisionlog.DecisionPrefix + ".>"}, stderr)
	if err != nil {
		return err
	}
	c := trace.NewCorrelatorEntries(entries, f, ttl)
	for _, path := range logs {
		if err := correlateFile(c, path); err != nil {
			return err
		}
	}
	res := c.Result()
	if asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(res); err != nil {
			return err
		}
	} else {
		for _, l := range res.Lines {
			if l.Status == trace.Attributed {
				fmt.Fprintf(stdout, "%-12s %s human=%s agent=%s task=%s decision=%s\n", l.Status, l.Line, orDash(l.Subject), orDash(l.Agent), orDash(l.Task), l.DecisionID)
				continue
			}
			fmt.Fprintf(stdout, "%-12s %s %s\n", strings.ToUpper(l.Status), l.Line, l.Reason)
		}
		s := res.Summary
		fmt.Fprintf(stdout, "%s: %d attributed, %d unattributed, %d contradicted, %d unverified\n", count(s.Lines, "line"), s.Attributed, s.Unattributed, s.Contradicted, s.Unverified)
	}
	if !res.Clean() {
		return errFindings
	}
	return nil
}

func correlateFile(c *trace.Correlator, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("correlate: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), 4<<20)
	for n := 1; sc.Scan(); n++ {
		line := sc.Bytes()
		if len(strings.TrimSpace(string(line))) == 0 {
			continue
		}
		c.Add(fmt.Sprintf("%s:%d", path, n), line)
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("correlate: read %s: %w", path, err)
	}
	return nil
}
