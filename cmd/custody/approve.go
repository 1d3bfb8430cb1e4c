package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/custodyhq/custody/internal/app"
)

// approveConfig is the flags of `custody approve`.
type approveConfig struct {
	pdpURL  string
	keyFile string
	deny    bool
	link    bool
	show    bool
}

func approveFlags(fs *flag.FlagSet, c *approveConfig) {
	fs.StringVar(&c.pdpURL, "pdp-url", "http://127.0.0.1:8181", "base `URL` of the custody serve that opened the approval")
	fs.StringVar(&c.keyFile, "approver-key-file", "", "file holding your approver key (listed in the server's --approver-keys-file; see custody keys api-key NAME)")
	fs.BoolVar(&c.deny, "deny", false, "decline the call instead of approving it")
	fs.BoolVar(&c.link, "link", false, "answer nothing: print a single-use signed link that lets a human without a key answer")
	fs.BoolVar(&c.show, "show", false, "answer nothing: only print the call")
}

// approvalFlags registers the flags of how serve takes out-of-band approvals.
func approvalFlags(fs *flag.FlagSet, c *app.ApprovalsConfig) {
	fs.StringVar(&c.ApproverKeysFile, "approver-keys-file", c.ApproverKeysFile, "file of \"name sha256-hex\" approver keys (custody keys api-key NAME): who may answer approvals with custody approve or mint signed links; approver keys do not authenticate decision requests")
	fs.DurationVar(&c.TTL, "pending-approval-ttl", c.TTL, "how long an approval a require_approval decision opens can be answered and used (default 10m)")
	fs.DurationVar(&c.LinkTTL, "approval-link-ttl", c.LinkTTL, "how long a signed approval link stays valid, never past its approval (default 5m)")
}

// runApprove implements `custody approve <approval-id>`: an approver answers a pending
// approval out of band, after seeing the call it is for.
func runApprove(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("approve", stderr)
	var c approveConfig
	approveFlags(fs, &c)
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: custody approve <approval-id> --approver-key-file FILE [--pdp-url URL] [--deny | --link | --show]")
		fs.PrintDefaults()
	}
	var id string
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		id, args = args[0], args[1:]
	}
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if id == "" {
		return fmt.Errorf("%w: approve: name the approval: custody approve <approval-id>", errUsage)
	}
	if c.keyFile == "" {
		return fmt.Errorf("%w: approve: --approver-key-file is required", errUsage)
	}
	raw, err := os.ReadFile(c.keyFile)
	if err != nil {
		return fmt.Errorf("approve: read approver key: %w", err)
	}
	key := strings.TrimSpace(string(raw))
	base := strings.TrimSuffix(c.pdpURL, "/") + "/v1/approvals/" + url.PathEscape(id)
	client := &http.Client{Timeout: 30 * time.Second}

	var view map[string]any
	if err := approvalCall(ctx, client, http.MethodGet, base, key, nil, &view); err != nil {
		return err
	}
	printApproval(stdout, view)
	switch {
	case c.show:
		return nil
	case c.link:
		var out struct {
			URL       string    `json:"url"`
			ExpiresAt time.Time `json:"expires_at"`
		}
		if err := approvalCall(ctx, client, http.MethodPost, base+"/link", key, nil, &out); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "signed link (single use, until %s):\n  %s\n", out.ExpiresAt.Format(time.RFC3339), out.URL)
		return nil
	}
	decision := "approve"
	if c.deny {
		decision = "deny"
	}
	var out map[string]any
	if err := approvalCall(ctx, client, http.MethodPost, base, key, map[string]string{"decision": decision}, &out); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s by %v (decision %v)\n", out["status"], out["approver"], out["decision_id"])
	return nil
}

func printApproval(w io.Writer, v map[string]any) {
	args, _ := json.Marshal(v["arguments"])
	subject, _ := v["subject"].(map[string]any)
	agent, _ := v["agent"].(map[string]any)
	resource, _ := v["resource"].(map[string]any)
	fmt.Fprintf(w, "approval %v (%v, until %v)\n  agent    %v\n  for      %v (delegation verified: %v)\n  tool     %v on %v\n  args     %s\n  resource %v %v\n",
		v["approval_id"], v["status"], v["expires_at"], agent["id"], subject["id"], v["delegation_verified"],
		v["tool"], orDash(fmt.Sprint(orEmptyAny(v["server"]))), args, resource["type"], resource["id"])
}

func orEmptyAny(v any) any {
	if v == nil {
		return ""
	}
	return v
}

// approvalCall sends one request to the approval API with the approver key and decodes the answer.
func approvalCall(ctx context.Context, client *http.Client, method, target, key string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return fmt.Errorf("approve: encode: %w", err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, target, rd)
	if err != nil {
		return fmt.Errorf("approve: %w", err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("X-API-Key", key)
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("approve: reach the PDP: %w", err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return fmt.Errorf("approve: read the answer: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		var e struct {
			Error struct{ Code, Message string } `json:"error"`
		}
		_ = json.Unmarshal(data, &e)
		return errors.New("approve: the PDP answered " + resp.Status + " " + e.Error.Code + ": " + e.Error.Message)
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("approve: decode the answer: %w", err)
	}
	return nil
}
