package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/lestrrat-go/jwx/v3/jwk"

	"github.com/custodyhq/custody/receipt"
)

// maxReceiptInput bounds what receipt verify reads for a receipt, a call or a JWKS.
const maxReceiptInput = 1 << 20

// runReceipt implements `custody receipt verify`: check a decision receipt against the call an
// enforcement point is about to run, as receipt.Verify does, for shell scripts and gateways that
// are not written in Go.
func runReceipt(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "verify" {
		return fmt.Errorf("%w: custody receipt verify --jwks URL|FILE --call FILE RECEIPT", errUsage)
	}
	fs := newFlagSet("receipt verify", stderr)
	var (
		jwksSrc, callFile, audience, issuer string
		obligations                         stringList
		allowUnverified                     bool
	)
	fs.StringVar(&jwksSrc, "jwks", "", "custody's receipt keys: its https `URL` (/.well-known/jwks.json) or a file")
	fs.StringVar(&callFile, "call", "", "JSON `file` of the call about to run: tool, server, arguments, resource {type, id}, subject, agent ('-' for stdin)")
	fs.StringVar(&audience, "audience", "", "this enforcement point's name: a receipt with an aud is accepted only by it")
	fs.StringVar(&issuer, "issuer", "", "the iss receipts must carry (custody's --public-url)")
	fs.Var(&obligations, "obligation", "an obligation this enforcement point carries out (repeatable); a receipt with any other is refused")
	fs.BoolVar(&allowUnverified, "allow-unverified", false, "accept a receipt whose subject was asserted, not proven to custody")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: custody receipt verify --jwks URL|FILE --call FILE [flags] RECEIPT ('-' reads it from stdin)")
		fs.PrintDefaults()
	}
	// The receipt may come before or after the flags.
	var positional []string
	rest := args[1:]
	for {
		if err := fs.Parse(rest); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return err
			}
			return fmt.Errorf("%w: %w", errUsage, err)
		}
		if fs.NArg() == 0 {
			break
		}
		positional, rest = append(positional, fs.Arg(0)), fs.Args()[1:]
	}
	if len(positional) != 1 || jwksSrc == "" || callFile == "" {
		fs.Usage()
		return fmt.Errorf("%w: receipt verify needs --jwks, --call and one RECEIPT", errUsage)
	}
	if positional[0] == "-" && callFile == "-" {
		return fmt.Errorf("%w: receipt verify: the receipt and the call cannot both be stdin", errUsage)
	}
	tok, err := readArg(positional[0])
	if err != nil {
		return fmt.Errorf("receipt verify: read receipt: %w", err)
	}
	rawCall, err := readFileArg(callFile)
	if err != nil {
		return fmt.Errorf("receipt verify: read call: %w", err)
	}
	call, err := receipt.ParseCall(rawCall)
	if err != nil {
		return fmt.Errorf("%w: %w", errUsage, err)
	}
	keys, err := loadReceiptKeys(ctx, jwksSrc)
	if err != nil {
		return err
	}
	claims, err := receipt.Verify(strings.TrimSpace(string(tok)), keys, receipt.Expected{
		Call: call, Audience: audience, Issuer: issuer, Obligations: obligations, AllowUnverified: allowUnverified,
	})
	if err != nil {
		return fmt.Errorf("receipt verify: refused: %w", err)
	}
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(claims)
}

// readArg is the receipt itself, or stdin for "-".
func readArg(v string) ([]byte, error) {
	if v == "-" {
		return io.ReadAll(io.LimitReader(os.Stdin, maxReceiptInput))
	}
	return []byte(v), nil
}

func readFileArg(path string) ([]byte, error) {
	if path == "-" {
		return io.ReadAll(io.LimitReader(os.Stdin, maxReceiptInput))
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, maxReceiptInput))
}

// loadReceiptKeys reads the JWKS at an http(s) URL or in a file.
func loadReceiptKeys(ctx context.Context, src string) (jwk.Set, error) {
	var raw []byte
	if strings.HasPrefix(src, "https://") || strings.HasPrefix(src, "http://") {
		ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, src, nil)
		if err != nil {
			return nil, fmt.Errorf("%w: --jwks: %w", errUsage, err)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return nil, fmt.Errorf("receipt verify: fetch JWKS: %w", err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return nil, fmt.Errorf("receipt verify: fetch JWKS: %s", resp.Status)
		}
		if raw, err = io.ReadAll(io.LimitReader(resp.Body, maxReceiptInput)); err != nil {
			return nil, fmt.Errorf("receipt verify: fetch JWKS: %w", err)
		}
	} else {
		var err error
		if raw, err = readFileArg(src); err != nil {
			return nil, fmt.Errorf("receipt verify: read JWKS: %w", err)
		}
	}
	set, err := jwk.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("receipt verify: parse JWKS: %w", err)
	}
	return set, nil
}
