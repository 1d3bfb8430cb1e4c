package main

import (
	"bufio"
	"bytes"
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
	"golang.org/x/mod/sumdb/note"

	"github.com/custodyhq/custody/decisionlog"
	custodyjs "github.com/custodyhq/custody/decisionlog/jetstream"
	"github.com/custodyhq/custody/decisionlog/verify"
)

// errVerifyFailed is returned, wrapped, when the stream shows a break or, with
// --require-signed, an instance without a verified checkpoint.
var errVerifyFailed = errors.New("verification failed")

// runVerify implements `custody verify`: it checks the hash chains and signed checkpoints of the
// live stream or of an export file, prints a summary, and fails on any break.
func runVerify(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("verify", stderr)
	var (
		natsURL, file string
		pubkeys       stringList
		requireSigned bool
		witnesses     stringList
		witnessKeys   stringList
		evidence      string
	)
	fs.StringVar(&natsURL, "nats-url", DefaultNATSURL, "NATS server `url` whose CUSTODY stream to verify")
	var creds natsAuth
	fs.StringVar(&creds.file, "nats-creds", "", "NATS credentials `file`")
	var dataDir string
	readerCredsFlags(fs, &dataDir, &creds)
	fs.StringVar(&file, "file", "", "verify this export `file` (from custody export; - for standard input) instead of the live stream")
	fs.Var(&pubkeys, "pubkey", "checkpoint verifier `key` as custody keys prints it, or @file with one key per line; repeatable")
	fs.BoolVar(&requireSigned, "require-signed", false, "also fail on unchained records, on an instance without a checkpoint verified by its own --pubkey, and on a --pubkey that verified no checkpoint")
	fs.Var(&witnesses, "witness", "also check the checkpoints kept by a witness: a `path` that serve --checkpoint-witness file:PATH wrote (file or directory); repeatable")
	fs.Var(&witnessKeys, "witness-key", "note verifier `key` of an HTTP witness (or @file); every --witness checkpoint must then carry a valid cosignature by one of them; repeatable")
	fs.StringVar(&evidence, "evidence", "", "verify this evidence `file` (from custody evidence) offline, without NATS")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	verifiers, names, err := loadVerifiers(pubkeys)
	if err != nil {
		return fmt.Errorf("%w: --pubkey: %w", errUsage, err)
	}
	if evidence != "" {
		return verifyEvidenceFile(evidence, pubkeys, stdout)
	}
	if creds, err = readerCreds(fs, creds, dataDir); err != nil {
		return err
	}
	if requireSigned && verifiers == nil {
		return fmt.Errorf("%w: --require-signed needs at least one --pubkey", errUsage)
	}

	var opts []verify.Option
	if requireSigned {
		opts = append(opts, verify.RequireSigned(names...))
	}
	c := verify.NewChecker(verifiers, opts...)
	var cosigners note.Verifiers
	if len(witnessKeys) > 0 {
		if cosigners, _, err = loadVerifiers(witnessKeys); err != nil {
			return fmt.Errorf("%w: --witness-key: %w", errUsage, err)
		}
	}
	for _, w := range witnesses {
		if err := addWitnessed(w, c, cosigners); err != nil {
			return fmt.Errorf("verify: witness: %w", err)
		}
	}
	if file != "" {
		err = checkFile(file, c)
	} else {
		err = checkStream(ctx, natsURL, creds, c, stderr)
	}
	if err != nil {
		return fmt.Errorf("verify: %w", err)
	}
	rep := c.Report()
	if err := rep.Summary(stdout); err != nil {
		return fmt.Errorf("verify: write summary: %w", err)
	}
	if !rep.OK() {
		return fmt.Errorf("verify: %w: %s", errVerifyFailed, nounCount(len(rep.Breaks), "break", "breaks"))
	}
	return nil
}

func nounCount(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return fmt.Sprintf("%d %s", n, many)
}

// loadVerifiers reads --pubkey values: verifier keys, or @file naming a file of them, one per
// line (blank lines and # comments skipped), and returns them with their key names. None gives
// nil: signatures are then not checked.
func loadVerifiers(values []string) (note.Verifiers, []string, error) {
	var keys []string
	seen := map[string]bool{}
	add := func(k string) {
		if !seen[k] { // the same key twice makes note lookups ambiguous
			seen[k] = true
			keys = append(keys, k)
		}
	}
	for _, v := range values {
		path, ok := strings.CutPrefix(v, "@")
		if !ok {
			add(strings.TrimSpace(v))
			continue
		}
		raw, err := os.ReadFile(path)
		if err != nil {
			return nil, nil, err
		}
		found := 0
		for line := range strings.Lines(string(raw)) {
			if line = strings.TrimSpace(line); line != "" && !strings.HasPrefix(line, "#") {
				add(line)
				found++
			}
		}
		if found == 0 {
			return nil, nil, fmt.Errorf("%s holds no key", path)
		}
	}
	if len(keys) == 0 {
		return nil, nil, nil
	}
	var names []string
	for _, k := range keys {
		v, err := note.NewVerifier(k)
		if err != nil {
			return nil, nil, fmt.Errorf("verifier key: %w", err)
		}
		names = append(names, v.Name())
	}
	vs, err := decisionlog.NewVerifiers(keys...)
	return vs, names, err
}

// checkFile feeds c the lines of an export file, or of standard input for "-".
func checkFile(path string, c *verify.Checker) error {
	r := io.Reader(os.Stdin)
	if path != "-" {
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		r = f
	}
	br := bufio.NewReader(r)
	for {
		line, err := br.ReadBytes('\n')
		if len(line) > 0 {
			line = bytes.TrimSuffix(line, []byte("\n"))
			line = bytes.TrimSuffix(line, []byte("\r")) // export never writes one: a CRLF copy
			c.Add(verify.Message{Data: line})
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read %s: %w", path, err)
		}
	}
}

// checkStream feeds c every message of the live CUSTODY stream, with its subject, and tells
// stderr what the read rode out or found missing.
func checkStream(ctx context.Context, url string, creds natsAuth, c *verify.Checker, stderr io.Writer) error {
	nc, err := dialNATS(url, creds, "custody verify")
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	st, err := readStream(ctx, js, "", time.Time{}, func(m *custodyjs.Msg) error {
		c.Add(verify.Message{Subject: m.Subject, Data: m.Data})
		return nil
	})
	reportRead(stderr, "verify", st)
	return err
}

// addWitnessed feeds c the checkpoints a file witness kept: a file of JSON lines, or a
// directory of one checkpoint file each. With cosigners, each must also carry a valid
// signature by one of them (an HTTP witness's cosignature), or the witness file is refused.
func addWitnessed(path string, c *verify.Checker, cosigners note.Verifiers) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	files := []string{path}
	if fi.IsDir() {
		entries, err := os.ReadDir(path)
		if err != nil {
			return err
		}
		files = files[:0]
		for _, e := range entries {
			if !e.IsDir() && strings.HasSuffix(e.Name(), ".json") {
				files = append(files, filepath.Join(path, e.Name()))
			}
		}
	}
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		for line := range bytes.Lines(raw) {
			if line = bytes.TrimSpace(line); len(line) > 0 {
				if err := checkCosigned(line, cosigners); err != nil {
					return fmt.Errorf("%s: %w", f, err)
				}
				c.AddWitnessed(line)
			}
		}
	}
	return nil
}

// checkCosigned checks that a witnessed checkpoint's note carries a signature by one of
// cosigners; nil cosigners check nothing. Signatures by other keys (custody's own) are ignored
// here: the checker verifies those.
func checkCosigned(line []byte, cosigners note.Verifiers) error {
	if cosigners == nil {
		return nil
	}
	var cp struct {
		Seq  uint64 `json:"seq"`
		Note string `json:"note"`
	}
	if err := json.Unmarshal(line, &cp); err != nil {
		return fmt.Errorf("witness entry is not a checkpoint: %w", err)
	}
	if _, err := note.Open([]byte(cp.Note), cosigners); err != nil {
		return fmt.Errorf("checkpoint at seq %d is not cosigned by any --witness-key: %w", cp.Seq, err)
	}
	return nil
}
