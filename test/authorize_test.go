package test

import (
	"bytes"
	"fmt"
	"net/http"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/custodyhq/custody/internal/natstest"
)

// intentText and secret must never reach the stream or the logs.
const (
	intentText = "PROMPT-TEXT: please email bob the Q3 numbers"
	secret     = "sk-live-SECRET-4242"
)

func request(agent, user, scopes, tool string) string {
	return fmt.Sprintf(`{
  "agent":    {"id": %q},
  "user":     {"id": %q, "properties": {"roles": ["employee"], "scopes": %s}},
  "tool":     {"name": %q, "server": "mail", "arguments": {"to": "bob@acme.example", "api_key": %q}},
  "resource": {"type": "mailbox", "id": "alice", "properties": {"owner": %q}},
  "task":     {"id": "t-42", "parent_id": "t-41", "attempt": 1, "session_id": "s-7", "intent": %q}
}`, agent, user, scopes, tool, secret, user, intentText)
}

const mailer = "spiffe://acme.example/agents/mailer"

var (
	allowBody = request(mailer, "alice@acme.example", `["mail.send"]`, "send_email")
	denyBody  = request(mailer, "alice@acme.example", `[]`, "send_email")
	malformed = []string{
		`{"agent":`,
		`{"agent":{"id":7},"tool":{"name":"send_email"}}`,
		`{"tool":{"name":"send_email"}}`,
		`[]`,
		`{"agent":{"id":"a"},"tool":{"name":""}}`,
		"{\"agent\":{\"id\":\"\u202e\u0000\"},\"tool\":{\"name\":\"send_email\"},\"correlation_id\":\"bad id\"}",
	}
)

// TestEveryAnsweredDecisionIsOnTheStream is the core guarantee: allowed, denied and malformed
// requests, concurrently; then one record per answered decision, matching IDs and outcome, and
// no prompt text or secret anywhere.
func TestEveryAnsweredDecisionIsOnTheStream(t *testing.T) {
	c := startCustody(t, "")
	client := &http.Client{Timeout: 30 * time.Second}

	type sent struct {
		body    string
		headers []string
		want    int // status
		allow   bool
	}
	var work []sent
	for i := range 40 {
		work = append(work, sent{body: allowBody, headers: []string{"X-Correlation-ID", fmt.Sprintf("corr-allow-%d", i)}, want: 200, allow: true})
		work = append(work, sent{body: denyBody, want: 200})
	}
	for _, m := range malformed {
		work = append(work, sent{body: m, want: 400})
	}
	var (
		mu      sync.Mutex
		answers []answer
		wg      sync.WaitGroup
		jobs    = make(chan sent)
	)
	for range 8 {
		wg.Go(func() {
			for s := range jobs {
				a, err := authorize(t, client, c.HTTP, s.body, s.headers...)
				if err != nil {
					t.Error(err)
					continue
				}
				if a.Status != s.want {
					t.Errorf("status %d, want %d (%+v)", a.Status, s.want, a.Error)
				}
				if a.Status == 200 && a.Allow != s.allow {
					t.Errorf("allow = %v, want %v: reasons %v", a.Allow, s.allow, a.Reasons)
				}
				if a.Status != 200 && (a.Allow || a.Error == nil || a.Error.Code == "") {
					t.Errorf("bad input answered %+v, want an error and no allow", a)
				}
				mu.Lock()
				answers = append(answers, a)
				mu.Unlock()
			}
		})
	}
	for _, s := range work {
		jobs <- s
	}
	close(jobs)
	wg.Wait()

	decided := map[string]answer{}
	for _, a := range answers {
		if a.Status == 200 {
			decided[a.DecisionID] = a
		}
	}
	msgs := readStream(t, c.NATS)
	if len(msgs) != len(decided) {
		t.Fatalf("stream holds %d records, %d decisions were answered", len(msgs), len(decided))
	}
	// The same requests were sent many times: most were answered from the decision memo, and
	// each of those still has its own record (checked below).
	if st, err := getPolicy(client, c.HTTP); err != nil || st.Memo != "on" || st.MemoHits == 0 {
		t.Fatalf("policy status %+v, %v: want the memo on and used", st, err)
	}
	seen := map[string]bool{}
	for _, m := range msgs {
		r := m.Record
		a, ok := decided[r.DecisionID]
		if !ok {
			t.Fatalf("record %s was never answered", r.DecisionID)
		}
		if seen[r.DecisionID] {
			t.Fatalf("record %s appears twice", r.DecisionID)
		}
		seen[r.DecisionID] = true
		if r.CorrelationID != a.CorrelationID || r.Allow != a.Allow {
			t.Errorf("record %s: correlation %q allow %v; answer said %q %v", r.DecisionID, r.CorrelationID, r.Allow, a.CorrelationID, a.Allow)
		}
		outcome := map[bool]string{true: "allow", false: "deny"}[a.Allow]
		wantSubject := "custody.decision." + outcome + ".spiffe___acme_example_agents_mailer.send_email."
		if !strings.HasPrefix(m.Subject, wantSubject) {
			t.Errorf("subject %s, want prefix %s", m.Subject, wantSubject)
		}
		if m.Header.Get("Nats-Msg-Id") != r.DecisionID || m.Header.Get("Custody-Correlation-Id") != r.CorrelationID || m.Header.Get("Custody-Decision") != outcome {
			t.Errorf("headers %v do not match record %s", m.Header, r.DecisionID)
		}
		if r.Task == nil || len(r.Task.IntentSHA256) != 64 {
			t.Errorf("record %s has no intent hash: %+v", r.DecisionID, r.Task)
		}
		for _, leak := range []string{intentText, "Q3 numbers", secret} {
			if bytes.Contains(m.Data, []byte(leak)) {
				t.Fatalf("record %s leaks %q", r.DecisionID, leak)
			}
		}
	}
	for _, leak := range []string{intentText, "Q3 numbers", secret} {
		if strings.Contains(c.Logs(), leak) {
			t.Fatalf("custody's log leaks %q", leak)
		}
	}

	// The tail command reads the same records back, filtered on the server side.
	out, err := exec.Command(binary, "tail", "--nats-url", c.NATS, "--nats-creds", c.Creds, "--all", "--json", "--outcome", "deny", "--limit", "40").Output()
	if err != nil {
		t.Fatalf("custody tail: %v", err)
	}
	if lines := strings.Count(string(out), "\n"); lines != 40 {
		t.Fatalf("tail --outcome deny printed %d records, want 40", lines)
	}
	if strings.Contains(string(out), `"allow":true`) {
		t.Fatal("tail --outcome deny printed an allow")
	}
	out, err = exec.Command(binary, "tail", "--nats-url", c.NATS, "--nats-creds", c.Creds, "--all", "--correlation-id", "corr-allow-7", "--limit", "1").Output()
	if err != nil {
		t.Fatalf("custody tail: %v", err)
	}
	if !strings.Contains(string(out), "ALLOW") || !strings.Contains(string(out), "correlation=corr-allow-7") {
		t.Fatalf("tail --correlation-id printed %q", out)
	}
	c.Stop(t)
}

// TestNATSDownAnswers503Deny runs custody in ack mode against an external NATS server, stops that
// server, and checks that decisions become 503 denies and recover when NATS returns; every 200 is
// on the stream.
func TestNATSDownAnswers503Deny(t *testing.T) {
	natsDir := t.TempDir()
	ns := natstest.StartAt(t, "127.0.0.1:0", natsDir)
	listen := ns.Addr().String()
	c := startCustody(t, "", "--nats-url", ns.ClientURL(), "--publish-timeout", "500ms", "--record-mode", "ack")
	client := &http.Client{Timeout: 30 * time.Second}

	var answered []answer
	a, err := authorize(t, client, c.HTTP, allowBody)
	if err != nil || a.Status != 200 || !a.Allow {
		t.Fatalf("before outage: %+v %v", a, err)
	}
	answered = append(answered, a)

	natstest.Shutdown(ns)
	for range 3 {
		a, err := authorize(t, client, c.HTTP, allowBody)
		if err != nil {
			t.Fatal(err)
		}
		if a.Status != http.StatusServiceUnavailable || a.Allow || a.Error == nil || a.Error.Code != "decision_log_unavailable" {
			t.Fatalf("during outage: %+v, want 503 decision_log_unavailable deny", a)
		}
	}
	resp, err := client.Get(c.HTTP + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("readyz during outage = %d, want 503", resp.StatusCode)
	}

	ns = natstest.StartAt(t, listen, natsDir)
	natstest.CheckFor(t, 30*time.Second, 100*time.Millisecond, func() error {
		a, err := authorize(t, client, c.HTTP, allowBody)
		if err != nil {
			return err
		}
		if a.Status != 200 {
			return fmt.Errorf("status %d", a.Status)
		}
		answered = append(answered, a)
		return nil
	})
	msgs := readStream(t, ns.ClientURL())
	inStream := map[string]bool{}
	for _, m := range msgs {
		inStream[m.Record.DecisionID] = true
	}
	for _, a := range answered {
		if !inStream[a.DecisionID] {
			t.Errorf("answered decision %s is not on the stream", a.DecisionID)
		}
	}
}

// TestFullStreamAnswers503Deny: a stream at its size bound refuses new records rather than evict
// old ones, and custody then denies with 503 instead of answering unrecorded.
func TestFullStreamAnswers503Deny(t *testing.T) {
	c := startCustody(t, "", "--stream-max-bytes", "16384", "--publish-timeout", "1s")
	client := &http.Client{Timeout: 30 * time.Second}
	ok, full := 0, 0
	for i := 0; i < 200 && full < 3; i++ {
		a, err := authorize(t, client, c.HTTP, allowBody)
		if err != nil {
			t.Fatal(err)
		}
		switch a.Status {
		case 200:
			ok++
		case 503:
			if a.Allow || a.Error.Code != "decision_log_unavailable" {
				t.Fatalf("full stream answer %+v", a)
			}
			full++
		default:
			t.Fatalf("status %d", a.Status)
		}
	}
	if full == 0 {
		t.Fatal("the stream never filled")
	}
	resp, err := client.Get(c.HTTP + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("readyz with a full stream = %d, want 503", resp.StatusCode)
	}
	if got := len(readStream(t, c.NATS)); got != ok {
		t.Fatalf("stream holds %d records, %d decisions were answered 200", got, ok)
	}
}

// TestCrashLosesNoAnsweredDecision kills custody (SIGKILL) in the middle of concurrent load, then
// restarts it on the same data directory: every decision a caller received is on the stream.
func TestCrashLosesNoAnsweredDecision(t *testing.T) {
	dir := t.TempDir()
	c := startCustody(t, dir)
	client := &http.Client{Timeout: 10 * time.Second}
	var (
		mu       sync.Mutex
		answered = map[string]bool{}
		wg       sync.WaitGroup
		stop     = make(chan struct{})
	)
	for range 6 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				a, err := authorize(t, client, c.HTTP, allowBody)
				if err != nil {
					return // the process died under us: this call was never answered
				}
				if a.Status == 200 {
					mu.Lock()
					answered[a.DecisionID] = true
					mu.Unlock()
				}
			}
		})
	}
	natstest.CheckFor(t, 60*time.Second, 20*time.Millisecond, func() error {
		mu.Lock()
		defer mu.Unlock()
		if len(answered) < 200 {
			return fmt.Errorf("%d answered so far", len(answered))
		}
		return nil
	})
	c.Kill()
	close(stop)
	wg.Wait()

	c2 := startCustody(t, dir)
	msgs := readStream(t, c2.NATS)
	inStream := map[string]int{}
	for _, m := range msgs {
		inStream[m.Record.DecisionID]++
	}
	for id := range answered {
		if inStream[id] != 1 {
			t.Errorf("answered decision %s is on the stream %d times, want once", id, inStream[id])
		}
	}
	t.Logf("%d decisions answered before the kill, %d records in the stream", len(answered), len(msgs))
}
