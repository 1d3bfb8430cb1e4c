package test

import (
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestReceiptVerifyCommand: a downstream system checks the receipt an agent forwards against the
// call it is about to run with `custody receipt verify`, against the running custody's JWKS. The
// receipt is good for the call custody allowed and for no other: other arguments, another MCP
// server, another subject. Without --require-auth the subject was only asserted, so the receipt
// is refused unless the system accepts that (--allow-unverified).
func TestReceiptVerifyCommand(t *testing.T) {
	c := startCustody(t, t.TempDir())
	const body = `{"agent":{"id":"spiffe://acme.example/agents/mailer"},
	  "user":{"id":"alice@acme.example","properties":{"scopes":["mail.send"]}},
	  "tool":{"name":"send_email","server":"mail","arguments":{"to":"bob@acme.example","subject":"Q3","n":1.50}},
	  "resource":{"type":"mailbox","id":"alice","properties":{"owner":"alice@acme.example"}}}`
	req, err := http.NewRequest("POST", c.HTTP+"/v1/authorize", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Custody-Receipt-Audience", "mail-gw")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	tok := resp.Header.Get("Custody-Receipt")
	if resp.StatusCode != 200 || tok == "" {
		t.Fatalf("authorize: %s, receipt %q", resp.Status, tok)
	}
	dir := t.TempDir()
	write := func(name, s string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	// The same call as the downstream system holds it: other key order, other number spelling.
	same := write("same.json", `{"subject":"alice@acme.example","tool":"send_email","server":"mail",
	  "resource":{"type":"mailbox","id":"alice"},"arguments":{"n":1.5,"subject":"Q3","to":"bob@acme.example"}}`)
	otherArgs := write("args.json", `{"subject":"alice@acme.example","tool":"send_email","server":"mail",
	  "resource":{"type":"mailbox","id":"alice"},"arguments":{"n":1.5,"subject":"Q3","to":"eve@evil.example"}}`)
	otherServer := write("server.json", `{"subject":"alice@acme.example","tool":"send_email","server":"evil-mail",
	  "resource":{"type":"mailbox","id":"alice"},"arguments":{"n":1.5,"subject":"Q3","to":"bob@acme.example"}}`)
	jwks := c.HTTP + "/.well-known/jwks.json"
	for _, tc := range []struct {
		name string
		args []string
		ok   bool
		say  string
	}{
		{"the call it allowed", []string{"--call", same, "--audience", "mail-gw", "--allow-unverified"}, true, `"arguments_sha256"`},
		{"other arguments", []string{"--call", otherArgs, "--audience", "mail-gw", "--allow-unverified"}, false, "arguments"},
		{"another server", []string{"--call", otherServer, "--audience", "mail-gw", "--allow-unverified"}, false, "server"},
		{"another enforcement point", []string{"--call", same, "--audience", "files-gw", "--allow-unverified"}, false, "audience"},
		{"asserted subject, by default", []string{"--call", same, "--audience", "mail-gw"}, false, "not verified"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := runCustody(t, append([]string{"receipt", "verify", "--jwks", jwks}, append(tc.args, tok)...)...)
			if (err == nil) != tc.ok || !strings.Contains(out, tc.say) {
				t.Errorf("receipt verify: %v, want ok=%v and %q in:\n%s", err, tc.ok, tc.say, out)
			}
		})
	}
}
