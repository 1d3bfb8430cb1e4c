package app

import (
	"fmt"
	"path/filepath"

	"github.com/nats-io/nats.go/jetstream"

	custodyjs "github.com/custodyhq/custody/decisionlog/jetstream"
	"github.com/custodyhq/custody/receipt"
	custodyhttp "github.com/custodyhq/custody/server"
)

// receiptOptions loads (or creates) the receipt key and returns the server options for receipts
// and execution reports. The issuer is the public URL when set, else "custody/<instance>".
func receiptOptions(c ReceiptConfig, dataDir, publicURL, instance string, stream jetstream.Stream) ([]custodyhttp.Option, error) {
	path := c.KeyFile
	if path == "" {
		path = filepath.Join(dataDir, "receipt.key")
	}
	key, err := receipt.LoadOrCreateKey(path)
	if err != nil {
		return nil, fmt.Errorf("app: %w", err)
	}
	iss := publicURL
	if iss == "" {
		iss = "custody/" + instance
	}
	issuer, err := receipt.NewIssuer(key, iss, c.TTL)
	if err != nil {
		return nil, fmt.Errorf("app: %w", err)
	}
	return []custodyhttp.Option{
		custodyhttp.WithReceipts(issuer),
		custodyhttp.WithDecisionLookup(&custodyjs.Lookup{Stream: stream}),
	}, nil
}
