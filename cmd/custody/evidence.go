package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/custodyhq/custody/decisionlog/evidence"
	custodyjs "github.com/custodyhq/custody/decisionlog/jetstream"
	"github.com/custodyhq/custody/internal/app"
)

// runEvidence implements `custody evidence <correlation-id> --out FILE`: it reads the stream
// (the instance's whole tree is needed to prove inclusion), and writes an extract that
// `custody verify --evidence` checks offline.
func runEvidence(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("evidence", stderr)
	var (
		natsURL, out string
		pubkeys      stringList
	)
	fs.StringVar(&natsURL, "nats-url", DefaultNATSURL, "NATS server `url` whose CUSTODY stream to read")
	var creds natsAuth
	fs.StringVar(&creds.file, "nats-creds", "", "NATS credentials `file`")
	var dataDir string
	readerCredsFlags(fs, &dataDir, &creds)
	fs.StringVar(&out, "out", "", "write the extract to this `file` (- for standard output)")
	fs.Var(&pubkeys, "pubkey", "checkpoint verifier `key`, or @file; repeatable (default: the key of serve's --data-dir)")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: custody evidence [flags] <correlation-id> --out FILE")
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	corr := ""
	if fs.NArg() > 0 {
		corr = fs.Arg(0)
		if err := fs.Parse(fs.Args()[1:]); err != nil {
			return fmt.Errorf("%w: %w", errUsage, err)
		}
		if fs.NArg() > 0 {
			return fmt.Errorf("%w: unexpected argument %q", errUsage, fs.Arg(0))
		}
	}
	if corr == "" || out == "" {
		return fmt.Errorf("%w: evidence: want a correlation ID and --out FILE", errUsage)
	}
	var err error
	if creds, err = readerCreds(fs, creds, dataDir); err != nil {
		return err
	}
	if len(pubkeys) == 0 {
		k, err := dataDirVerifierKey(dataDir)
		if err != nil {
			return fmt.Errorf("%w: evidence: no --pubkey, and %w", errUsage, err)
		}
		pubkeys = append(pubkeys, k)
	}
	verifiers, _, err := loadVerifiers(pubkeys)
	if err != nil {
		return fmt.Errorf("%w: --pubkey: %w", errUsage, err)
	}
	keys, err := keyTexts(pubkeys)
	if err != nil {
		return fmt.Errorf("%w: --pubkey: %w", errUsage, err)
	}
	b := evidence.NewBuilder(corr, verifiers, keys)
	nc, err := dialNATS(natsURL, creds, "custody evidence")
	if err != nil {
		return fmt.Errorf("evidence: %w", err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("evidence: jetstream: %w", err)
	}
	st, err := readStream(ctx, js, "", time.Time{}, func(m *custodyjs.Msg) error {
		b.Add(evidence.Message{Subject: m.Subject, MsgID: m.Header.Get("Nats-Msg-Id"), Data: m.Data})
		return nil
	})
	reportRead(stderr, "evidence", st)
	if err != nil {
		return fmt.Errorf("evidence: read stream: %w", err)
	}
	doc, err := b.Document(time.Now())
	if err != nil {
		return err
	}
	data, err := json.MarshalIndent(doc, "", " ")
	if err != nil {
		return fmt.Errorf("evidence: encode: %w", err)
	}
	data = append(data, '\n')
	if out == "-" {
		_, err = stdout.Write(data)
	} else {
		err = os.WriteFile(out, data, 0o600)
	}
	if err != nil {
		return fmt.Errorf("evidence: write: %w", err)
	}
	fmt.Fprintf(stderr, "custody evidence: %s, %s, %s of inclusion proofs\n", count(len(doc.Records), "record"), count(len(doc.Checkpoints), "checkpoint"), count(doc.ProofBytes(), "byte"))
	return nil
}

// dataDirVerifierKey derives the verifier key of the checkpoint key in serve's data dir.
func dataDirVerifierKey(dataDir string) (string, error) {
	raw, err := os.ReadFile(filepath.Join(dataDir, app.SigningKeyFile))
	if err != nil {
		return "", fmt.Errorf("read the data dir's checkpoint key: %w", err)
	}
	return app.DeriveVerifierKey(strings.TrimSpace(string(raw)))
}

// keyTexts expands --pubkey values (@file included) into key strings.
func keyTexts(values []string) ([]string, error) {
	var out []string
	for _, v := range values {
		path, ok := strings.CutPrefix(v, "@")
		if !ok {
			out = append(out, strings.TrimSpace(v))
			continue
		}
		raw, err := os.ReadFile(path)
		if err != nil {
			return nil, err
		}
		for line := range strings.Lines(string(raw)) {
			if line = strings.TrimSpace(line); line != "" && !strings.HasPrefix(line, "#") {
				out = append(out, line)
			}
		}
	}
	return out, nil
}

// verifyEvidenceFile implements `custody verify --evidence FILE`: offline, no NATS. Without
// --pubkey it uses the keys the document carries, and says that this shows only that the
// document is self-consistent.
func verifyEvidenceFile(path string, pubkeys []string, stdout io.Writer) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("verify: evidence: %w", err)
	}
	doc, err := evidence.Decode(data)
	if err != nil {
		return fmt.Errorf("verify: %w: %w", errVerifyFailed, err)
	}
	own := len(pubkeys) == 0
	if own {
		pubkeys = doc.Keys
	}
	verifiers, _, err := loadVerifiers(pubkeys)
	if err != nil || verifiers == nil {
		return fmt.Errorf("verify: %w: evidence keys: %v", errVerifyFailed, cmpErr(err, errors.New("none")))
	}
	res := evidence.Check(doc, verifiers)
	fmt.Fprintf(stdout, "evidence for correlation ID %s: %s, %s, %s of inclusion proofs\n",
		printableArg(doc.CorrelationID), count(len(doc.Records), "record"), count(len(doc.Checkpoints), "checkpoint"), count(res.ProofBytes, "byte"))
	if own {
		fmt.Fprintln(stdout, "WARNING: checked with the keys inside the document (no --pubkey): this shows the document is consistent, not that custody signed it")
	}
	for _, r := range res.Records {
		what := "ALLOW"
		if !r.Allow {
			what = "DENY"
		}
		if r.Execution != nil {
			what = "execution " + r.Execution.Status
		}
		fmt.Fprintf(stdout, "  proved  %s seq %d %s %s %s by policy %s\n", r.PDP.Instance, r.Seq, r.MsgID(), what, r.Action.Name, r.Policy.Revision)
	}
	for _, p := range doc.Policies {
		fmt.Fprintf(stdout, "  policy  %s revision %s\n", p.Query, p.Revision)
	}
	if !res.OK() {
		fmt.Fprintf(stdout, "FAIL: %s\n", nounCount(len(res.Problems), "problem", "problems"))
		for _, p := range res.Problems {
			fmt.Fprintf(stdout, "  %s\n", p)
		}
		return fmt.Errorf("verify: %w: %s", errVerifyFailed, nounCount(len(res.Problems), "problem", "problems"))
	}
	fmt.Fprintln(stdout, "OK: every record is sealed, belongs to the correlation ID and is included in a signed checkpoint")
	return nil
}

func cmpErr(err, fallback error) error {
	if err != nil {
		return err
	}
	return fallback
}

// printableArg quotes s when it would not print as one plain word.
func printableArg(s string) string {
	if s == "" || strings.ContainsFunc(s, func(r rune) bool { return r <= ' ' || r == 0x7f || r == '"' }) {
		return fmt.Sprintf("%q", s)
	}
	return s
}
