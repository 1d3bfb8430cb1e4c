package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/custodyhq/custody/decisionlog/vault"
	"github.com/custodyhq/custody/internal/app"
)

// runUnseal asks a running serve for a decision's sealed intent and decrypts it here, with an
// age identity that never leaves this machine. serve records the unseal (who, which decision,
// why, when) on the decision stream before it releases the ciphertext, so the record exists
// even when the identity then turns out not to open it.
func runUnseal(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("unseal", stderr)
	var identityFile, reason, pdpURL, apiKeyFile, tokenFile, corr string
	fs.StringVar(&identityFile, "identity", "", "age identity `file` (AGE-SECRET-KEY-1..., as age-keygen writes it) of an --intent-vault recipient")
	fs.StringVar(&reason, "reason", "", "why the intent is read, such as an incident or case number; recorded in the unseal record")
	fs.StringVar(&pdpURL, "pdp-url", "http://"+app.DefaultAddr, "the running custody serve to ask")
	fs.StringVar(&apiKeyFile, "api-key-file", "", "`file` holding this investigator's API key (serve --api-keys-file)")
	fs.StringVar(&tokenFile, "token-file", "", "`file` holding a bearer token serve trusts (serve --issuer)")
	fs.StringVar(&corr, "correlation-id", "", "the decision's correlation ID (default: found through the vault)")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: custody unseal <decision-id> --identity FILE --reason TEXT [--pdp-url URL] [--api-key-file FILE | --token-file FILE]")
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	decisionID := ""
	if fs.NArg() > 0 {
		decisionID = fs.Arg(0)
		if err := fs.Parse(fs.Args()[1:]); err != nil {
			return fmt.Errorf("%w: %w", errUsage, err)
		}
		if fs.NArg() > 0 {
			return fmt.Errorf("%w: unexpected argument %q", errUsage, fs.Arg(0))
		}
	}
	if decisionID == "" || identityFile == "" || strings.TrimSpace(reason) == "" {
		return fmt.Errorf("%w: unseal: want a decision ID, --identity FILE and --reason TEXT", errUsage)
	}
	// The identity is read before serve is asked: a file that holds no identity must not leave an
	// unseal record behind.
	f, err := os.Open(identityFile)
	if err != nil {
		return fmt.Errorf("unseal: open identity: %w", err)
	}
	ids, err := vault.ParseIdentities(f)
	f.Close()
	if err != nil {
		return fmt.Errorf("unseal: %w", err)
	}
	body, err := json.Marshal(map[string]string{"decision_id": decisionID, "correlation_id": corr, "reason": reason})
	if err != nil {
		return fmt.Errorf("unseal: encode request: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimRight(pdpURL, "/")+"/v1/unseal", bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("unseal: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	if err := setCredential(req, apiKeyFile, tokenFile); err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("unseal: ask %s: %w", pdpURL, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("unseal: read answer: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		var e struct {
			Error struct{ Code, Message string } `json:"error"`
		}
		if json.Unmarshal(raw, &e) == nil && e.Error.Code != "" {
			return fmt.Errorf("unseal: serve answered %d %s: %s", resp.StatusCode, e.Error.Code, e.Error.Message)
		}
		return fmt.Errorf("unseal: serve answered %s", resp.Status)
	}
	var ur struct {
		UnsealID   string `json:"unseal_id"`
		Ciphertext []byte `json:"ciphertext"`
	}
	if err := json.Unmarshal(raw, &ur); err != nil {
		return fmt.Errorf("unseal: decode answer: %w", err)
	}
	fmt.Fprintf(stderr, "unseal %s of decision %s recorded on the decision stream\n", ur.UnsealID, decisionID)
	intent, err := vault.Decrypt(ur.Ciphertext, ids...)
	if err != nil {
		return fmt.Errorf("unseal: this identity does not open the sealed intent (it is not one of the --intent-vault recipients): %w", err)
	}
	if _, err := stdout.Write(intent); err != nil {
		return fmt.Errorf("unseal: write intent: %w", err)
	}
	if !bytes.HasSuffix(intent, []byte("\n")) {
		fmt.Fprintln(stdout)
	}
	return nil
}

// setCredential authenticates req with the API key or bearer token in a file.
func setCredential(req *http.Request, apiKeyFile, tokenFile string) error {
	switch {
	case apiKeyFile != "" && tokenFile != "":
		return fmt.Errorf("%w: unseal: give --api-key-file or --token-file, not both", errUsage)
	case apiKeyFile != "":
		raw, err := os.ReadFile(apiKeyFile)
		if err != nil {
			return fmt.Errorf("unseal: read API key: %w", err)
		}
		req.Header.Set("X-API-Key", strings.TrimSpace(string(raw)))
	case tokenFile != "":
		raw, err := os.ReadFile(tokenFile)
		if err != nil {
			return fmt.Errorf("unseal: read token: %w", err)
		}
		req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(raw)))
	default:
		return errors.New("unseal: serve releases sealed intents only to authenticated callers: give --api-key-file or --token-file")
	}
	return nil
}
