package test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/custodyhq/custody/decisionlog"
	"github.com/custodyhq/custody/internal/natstest"
	"github.com/custodyhq/custody/pdp"
)

// forgedRecord is an allow of send_email in workflowCorr that custody never made.
func forgedRecord(id, instance string) *decisionlog.Record {
	return &decisionlog.Record{
		Schema: decisionlog.SchemaDecisionV1, DecisionID: id, Timestamp: time.Now().UTC(),
		CorrelationID: workflowCorr, Endpoint: "/v1/authorize",
		Subject:  pdp.Entity{Type: "user", ID: "mallory@evil.example"},
		Action:   pdp.Action{Name: "send_email"},
		Resource: pdp.Entity{Type: "mailbox", ID: "alice"},
		Agent:    &pdp.Agent{ID: "spiffe://acme.example/agents/mailer"},
		Allow:    true, Reasons: []string{},
		PDP: decisionlog.Instance{Instance: instance, Version: "forged"},
	}
}

// publishForged puts body on the record's subject with Nats-Msg-Id msgID, as `nats pub` would.
func publishForged(t *testing.T, natsURL string, r *decisionlog.Record, msgID string, body []byte) {
	t.Helper()
	nc, err := nats.Connect(natsURL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	m := nats.NewMsg(decisionlog.RecordSubject(r))
	m.Data = body
	m.Header.Set(decisionlog.HeaderMsgID, msgID)
	if _, err := js.PublishMsg(t.Context(), m); err != nil {
		t.Fatalf("publish forged record: %v", err)
	}
}

// forgeAll publishes, next to one real allow in workflowCorr: an unsealed allow, a sealed allow
// whose decision_id is not its Nats-Msg-Id, a record with a huge number and deep nesting, and
// one whose eval_ns is 1e400 (no Go integer holds it).
func forgeAll(t *testing.T, natsURL string) {
	t.Helper()
	r := forgedRecord("forged-unsealed", "inst-evil")
	body, _ := json.Marshal(r)
	publishForged(t, natsURL, r, r.DecisionID, body)

	r = forgedRecord("forged-renamed", "inst-evil")
	r.Seq = 1
	body, err := decisionlog.Seal(r)
	if err != nil {
		t.Fatal(err)
	}
	publishForged(t, natsURL, r, "some-other-id", body)

	r = forgedRecord("forged-huge", "inst-evil")
	body, _ = json.Marshal(r)
	deep := strings.Repeat("[", 9000) + strings.Repeat("]", 9000)
	body = []byte(strings.Replace(string(body), `"allow":true`, `"obligations":{"big":1e400,"deep":`+deep+`},"allow":true`, 1))
	publishForged(t, natsURL, r, r.DecisionID, body)

	r = forgedRecord("forged-eval", "inst-evil")
	body, _ = json.Marshal(r)
	body = []byte(strings.Replace(string(body), `"eval_ns":0`, `"eval_ns":1e400`, 1))
	publishForged(t, natsURL, r, r.DecisionID, body)
}

// TestReadersCallForgedRecordsUnverified: trace, correlate and POST /v1/executions treated a
// forged allow as real, and one record no Go integer could hold aborted trace and correlate.
// Now each is read, reported as unverified (or unreadable), and never counted as a decision.
//
// The forger needs write access to the stream: the embedded server gives it to nobody, so this
// runs against a NATS server that takes anyone, as a carelessly run external one would.
func TestReadersCallForgedRecordsUnverified(t *testing.T) {
	ns := natstest.Start(t)
	c := startCustody(t, "", "--nats-url", ns.ClientURL(), "--record-mode", "ack")
	var d receiptAnswer
	body := call{task: "t-1", attempt: 1, agent: "mailer", tool: "send_email", resource: "alice"}.body()
	if st := postJSON(t, c.HTTP+"/v1/authorize", body, &d); st != 200 || !d.Allow {
		t.Fatalf("authorize: %d %+v", st, d)
	}
	forgeAll(t, c.NATS)

	t.Run("trace", func(t *testing.T) {
		out, err := runCustody(t, "trace", workflowCorr, "--nats-url", c.NATS)
		if err != nil {
			t.Fatalf("trace: %v\n%s", err, out)
		}
		if !strings.Contains(out, "1 decision (1 allow, 0 deny)") {
			t.Errorf("trace counts forged records as decisions:\n%s", out)
		}
		for _, id := range []string{"forged-unsealed", "forged-renamed", "forged-huge"} {
			line := lineWith(out, id)
			if !strings.Contains(line, "UNVERIFIED") || strings.Contains(line, "ALLOW") {
				t.Errorf("trace line of %s: %q, want UNVERIFIED and no ALLOW", id, line)
			}
		}
		if !strings.Contains(out, "UNREADABLE") {
			t.Errorf("trace does not report the unreadable record:\n%s", out)
		}
	})
	t.Run("correlate", func(t *testing.T) {
		log := filepath.Join(t.TempDir(), "mail.jsonl")
		lines := fmt.Sprintf(`{"decision_id":%q,"action":"send_email"}`+"\n"+`{"decision_id":"forged-unsealed","action":"send_email"}`+"\n", d.DecisionID)
		if err := os.WriteFile(log, []byte(lines), 0o600); err != nil {
			t.Fatal(err)
		}
		out, err := runCustody(t, "correlate", "--nats-url", c.NATS, "--system-log", log)
		if err == nil {
			t.Fatalf("correlate passed a line explained only by a forged record:\n%s", out)
		}
		if got := lineWith(out, ":1 "); !strings.HasPrefix(got, "attributed") {
			t.Errorf("the real decision's line: %q", got)
		}
		if got := lineWith(out, ":2 "); !strings.HasPrefix(got, "UNVERIFIED") {
			t.Errorf("the forged decision's line: %q, want UNVERIFIED", got)
		}
	})
	t.Run("executions", func(t *testing.T) {
		for _, id := range []string{"forged-unsealed", "forged-renamed", "forged-huge", "forged-eval"} {
			var out struct {
				Error     *struct{ Code string }
				Violation string
			}
			report := fmt.Sprintf(`{"decision_id":%q,"correlation_id":%q,"status":"succeeded","target":{"system":"mail"}}`, id, workflowCorr)
			st := postJSON(t, c.HTTP+"/v1/executions", report, &out)
			if st != http.StatusConflict || out.Error == nil || out.Error.Code != "unverified_decision" {
				t.Errorf("execution against %s: status %d %+v, want 409 unverified_decision", id, st, out)
			}
		}
	})
}

func lineWith(out, s string) string {
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, s) {
			return l
		}
	}
	return ""
}
