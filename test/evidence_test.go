package test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/custodyhq/custody/internal/natstest"
)

const evidenceCorr = "req-q3-close"

// TestEvidenceExtractAndWitness plays the README's fan-out request among other traffic, takes
// an evidence extract with `custody evidence`, and checks it offline with `custody verify
// --evidence` after serve stopped; an edited extract fails naming the record. The checkpoints
// serve sent to its file witness then catch a tail removed from an export together with its
// checkpoints, which the export alone does not show.
func TestEvidenceExtractAndWitness(t *testing.T) {
	dir := t.TempDir()
	witness := filepath.Join(t.TempDir(), "witness.jsonl")
	c := startCustody(t, dir, "--checkpoint-every", "4", "--checkpoint-witness", "file:"+witness)
	other := call{task: "t-x", parent: "t-y", attempt: 1, agent: "mailer", tool: "send_email", resource: "alice"}
	post := func(cl call, corr string) {
		var d receiptAnswer
		body := strings.Replace(cl.body(), workflowCorr, corr, 1)
		if st := postJSON(t, c.HTTP+"/v1/authorize", body, &d); st != http.StatusOK {
			t.Fatalf("status %d", st)
		}
	}
	for i := range 3 {
		post(other, fmt.Sprintf("req-other-%d", i))
	}
	for _, cl := range []call{
		{task: "t-mail", parent: "t-plan", attempt: 1, agent: "mailer", tool: "send_email", resource: "alice"},
		{task: "t-files", parent: "t-plan", attempt: 1, agent: "ops", tool: "write_file", resource: "q3.xlsx"},
		{task: "t-pay", parent: "t-plan", attempt: 1, agent: "ops", tool: "transfer_funds", resource: "acct-9"},
		{task: "t-files", parent: "t-plan", attempt: 2, agent: "ops", tool: "write_file", resource: "q3.xlsx"},
	} {
		post(cl, evidenceCorr)
	}
	for i := range 5 {
		post(other, fmt.Sprintf("req-later-%d", i))
	}
	pub, err := runCustody(t, "keys", "--data-dir", dir)
	if err != nil {
		t.Fatalf("custody keys: %v: %s", err, pub)
	}
	pubkey := strings.TrimSpace(pub)

	extract := filepath.Join(t.TempDir(), "evidence.json")
	natstest.CheckFor(t, 20*time.Second, 100*time.Millisecond, func() error {
		out, err := runCustody(t, "evidence", evidenceCorr, "--out", extract, "--nats-url", c.NATS, "--data-dir", dir)
		if err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
		return nil
	})
	export := filepath.Join(t.TempDir(), "export.jsonl")
	if out, err := runCustody(t, "export", "--nats-url", c.NATS, "--data-dir", dir, "--out", export); err != nil {
		t.Fatalf("export: %v\n%s", err, out)
	}
	c.Stop(t)

	// Offline: no NATS is running.
	out, err := runCustody(t, "verify", "--evidence", extract, "--pubkey", pubkey)
	if err != nil {
		t.Fatalf("verify --evidence: %v\n%s", err, out)
	}
	if strings.Count(out, "  proved  ") != 4 || !strings.Contains(out, "OK:") {
		t.Fatalf("verify --evidence output:\n%s", out)
	}
	t.Logf("%s", out)

	// Edit one record: deny becomes allow.
	raw, _ := os.ReadFile(extract)
	var doc map[string]any
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	edited := false
	for _, e := range doc["records"].([]any) {
		m := e.(map[string]any)
		body := string(mustB64(t, m["body"].(string)))
		if strings.Contains(body, `"allow":false`) {
			m["body"] = []byte(strings.Replace(body, `"allow":false`, `"allow":true`, 1))
			edited = true
			break
		}
	}
	if !edited {
		t.Fatal("no deny in the extract")
	}
	tampered := filepath.Join(t.TempDir(), "tampered.json")
	b, _ := json.Marshal(doc)
	_ = os.WriteFile(tampered, b, 0o600)
	if out, err := runCustody(t, "verify", "--evidence", tampered, "--pubkey", pubkey); err == nil || !strings.Contains(out, "decision ") || !strings.Contains(out, "FAIL") {
		t.Fatalf("a tampered extract: err %v\n%s", err, out)
	}

	// The witness holds every checkpoint; cut the export's tail after its first checkpoint.
	if out, err := runCustody(t, "verify", "--file", export, "--pubkey", pubkey, "--witness", witness); err != nil {
		t.Fatalf("verify with witness: %v\n%s", err, out)
	}
	lines := readLines(t, export)
	cut := -1
	for i, l := range lines {
		if strings.Contains(l, `"custody.checkpoint.v2"`) {
			cut = i + 1
			break
		}
	}
	if cut < 0 || cut >= len(lines)-1 {
		t.Fatalf("no checkpoint with records after it in the export (%d lines)", len(lines))
	}
	short := filepath.Join(t.TempDir(), "short.jsonl")
	_ = os.WriteFile(short, []byte(strings.Join(lines[:cut], "\n")+"\n"), 0o600)
	if out, err := runCustody(t, "verify", "--file", short, "--pubkey", pubkey); err != nil {
		t.Fatalf("the cut export alone should look whole: %v\n%s", err, out)
	}
	out, err = runCustody(t, "verify", "--file", short, "--pubkey", pubkey, "--witness", witness)
	if err == nil || !strings.Contains(out, "truncated") {
		t.Fatalf("the witness did not catch the removed tail: %v\n%s", err, out)
	}
}

func mustB64(t *testing.T, s string) []byte {
	t.Helper()
	var b []byte
	if err := json.Unmarshal([]byte(`"`+s+`"`), &b); err != nil {
		t.Fatal(err)
	}
	return b
}

func readLines(t *testing.T, path string) []string {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	sc := bufio.NewScanner(bytes.NewReader(raw))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		out = append(out, sc.Text())
	}
	return out
}
