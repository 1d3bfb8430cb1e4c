package app

import (
	"fmt"
	"time"

	"github.com/custodyhq/custody/identity"
	custodyhttp "github.com/custodyhq/custody/server"
)

// ApprovalsConfig is how the App takes out-of-band approvals (server/approval.go).
type ApprovalsConfig struct {
	// ApproverKeysFile holds the approver keys, in the --api-keys-file format ("name
	// sha256-hex" lines, made with `custody keys api-key NAME`). Approver keys authenticate
	// approvals only, never decision requests; empty is no approvers.
	ApproverKeysFile string
	// TTL is how long a pending approval can be answered and used; LinkTTL bounds a signed link.
	TTL, LinkTTL time.Duration
}

// approvalOptions returns the server options for approvals.
func approvalOptions(c ApprovalsConfig) ([]custodyhttp.Option, error) {
	if c.TTL < 0 || c.LinkTTL < 0 {
		return nil, configErrorf("--pending-approval-ttl and --approval-link-ttl must not be negative")
	}
	cfg := custodyhttp.ApprovalConfig{TTL: c.TTL, LinkTTL: c.LinkTTL}
	if c.ApproverKeysFile != "" {
		keys, err := identity.LoadAPIKeys(c.ApproverKeysFile)
		if err != nil {
			return nil, fmt.Errorf("app: approver keys: %w", err)
		}
		cfg.Approvers = keys
	}
	return []custodyhttp.Option{custodyhttp.WithApprovals(cfg)}, nil
}
