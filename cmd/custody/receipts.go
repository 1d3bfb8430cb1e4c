package main

import (
	"flag"
	"fmt"
	"path/filepath"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	custodyjs "github.com/custodyhq/custody/decisionlog/jetstream"
	"github.com/custodyhq/custody/receipt"
	custodyhttp "github.com/custodyhq/custody/server"
)

// receiptConfig is how serve signs decision receipts and finds decisions for execution reports.
type receiptConfig struct {
	keyFile string
	ttl     time.Duration
}

func (c *receiptConfig) flags(fs *flag.FlagSet) {
	fs.StringVar(&c.keyFile, "receipt-key", "", "private JWK (ECDSA P-256) that signs decision receipts (default: generated into the data dir as receipt.key)")
	fs.DurationVar(&c.ttl, "receipt-ttl", receipt.DefaultTTL, "how long a decision receipt is valid; executions reported later are flagged decision_expired")
}

// serverOptions loads (or creates) the receipt key and returns the server options for receipts
// and execution reports. The issuer is the public URL when set, else "custody/<instance>".
func (c *receiptConfig) serverOptions(dataDir, publicURL, instance string, stream jetstream.Stream) ([]custodyhttp.Option, error) {
	if c.ttl <= 0 {
		return nil, fmt.Errorf("%w: --receipt-ttl must be positive", errUsage)
	}
	path := c.keyFile
	if path == "" {
		path = filepath.Join(dataDir, "receipt.key")
	}
	key, err := receipt.LoadOrCreateKey(path)
	if err != nil {
		return nil, fmt.Errorf("serve: %w", err)
	}
	iss := publicURL
	if iss == "" {
		iss = "custody/" + instance
	}
	issuer, err := receipt.NewIssuer(key, iss, c.ttl)
	if err != nil {
		return nil, fmt.Errorf("serve: %w", err)
	}
	return []custodyhttp.Option{
		custodyhttp.WithReceipts(issuer),
		custodyhttp.WithDecisionLookup(&custodyjs.Lookup{Stream: stream}),
	}, nil
}
