package main

import (
	"flag"

	"github.com/custodyhq/custody/internal/app"
)

// receiptFlags registers the flags of how serve signs decision receipts.
func receiptFlags(fs *flag.FlagSet, c *app.ReceiptConfig) {
	fs.StringVar(&c.KeyFile, "receipt-key", c.KeyFile, "private JWK (Ed25519, or ECDSA P-256) that signs decision receipts (default: an Ed25519 key generated into the data dir as receipt.key)")
	fs.DurationVar(&c.TTL, "receipt-ttl", c.TTL, "how long a decision receipt is valid; executions reported later are flagged decision_expired")
}
