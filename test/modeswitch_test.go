package test

import (
	"fmt"
	"net/http"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/custodyhq/custody/internal/natstest"
)

// answerN makes n decisions on c and returns the IDs answered 200.
func answerN(t *testing.T, c *custody, n int) []string {
	t.Helper()
	client := &http.Client{Timeout: 20 * time.Second}
	var ids []string
	for range n {
		a, err := authorize(t, client, c.HTTP, allowBody)
		if err != nil {
			t.Fatal(err)
		}
		if a.Status != http.StatusOK {
			t.Fatalf("status %d: %+v", a.Status, a.Error)
		}
		ids = append(ids, a.DecisionID)
	}
	return ids
}

// checkOneChain fails t unless the stream holds exactly the answered decisions, once each, in
// one chain 1..n.
func checkOneChain(t *testing.T, natsURL string, answered []string) {
	t.Helper()
	msgs := readStream(t, natsURL)
	stored := map[string]int{}
	var seqs []uint64
	for _, m := range msgs {
		stored[m.Record.DecisionID]++
		seqs = append(seqs, m.Record.Seq)
	}
	lost := 0
	for _, id := range answered {
		if stored[id] != 1 {
			lost++
		}
	}
	if lost > 0 || len(msgs) != len(answered) {
		t.Fatalf("%d answered, %d records stored, %d answered not stored exactly once", len(answered), len(msgs), lost)
	}
	sort.Slice(seqs, func(i, j int) bool { return seqs[i] < seqs[j] })
	for i, s := range seqs {
		if s != uint64(i+1) {
			t.Fatalf("chain seq %d where %d belongs", s, i+1)
		}
	}
}

// Issue 14.5: a data dir that ran in ack mode panicked in spool mode (index out of range in
// spool.Forward, a crash loop).
func TestAckThenSpoolOnOneDataDir(t *testing.T) {
	ns := natstest.Start(t)
	dir := t.TempDir()
	c := startCustody(t, dir, "--nats-url", ns.ClientURL(), "--record-mode", "ack")
	answered := answerN(t, c, 20)
	c.Stop(t)
	c = startCustody(t, dir, "--nats-url", ns.ClientURL(), "--record-mode", "spool")
	answered = append(answered, answerN(t, c, 20)...)
	c.Stop(t)
	checkOneChain(t, ns.ClientURL(), answered)
}

// Issue 14.5: spool mode answered decisions NATS had not seen yet; the next start in ack mode
// ignored the spool, dropped them and reused their seqs. Ack mode forwards them first.
func TestSpoolThenAckForwardsWhatWasSpooled(t *testing.T) {
	natsDir := t.TempDir()
	ns := natstest.StartAt(t, "127.0.0.1:0", natsDir)
	listen, url := ns.Addr().String(), ns.ClientURL()
	dir := t.TempDir()
	c := startCustody(t, dir, "--nats-url", url, "--record-mode", "spool")
	answered := answerN(t, c, 5)
	natstest.CheckFor(t, 20*time.Second, 20*time.Millisecond, func() error {
		if n := len(readStream(t, url)); n < 5 {
			return fmt.Errorf("%d of 5 forwarded", n)
		}
		return nil
	})
	natstest.Shutdown(ns)
	answered = append(answered, answerN(t, c, 99)...) // spooled only: NATS is down
	c.Kill()
	ns = natstest.StartAt(t, listen, natsDir)
	c = startCustody(t, dir, "--nats-url", url, "--record-mode", "ack")
	answered = append(answered, answerN(t, c, 5)...)
	c.Stop(t)
	checkOneChain(t, url, answered)
}

// Issue 14.6: a body under --max-body-bytes whose record exceeds NATS's max_payload was answered
// 200 in spool mode, and then nothing after it reached JetStream. It is a 503 deny with a stable
// code in both modes, and the next decision is recorded.
func TestRecordOverMaxPayloadIsRefusedBeforeTheAnswer(t *testing.T) {
	big := strings.Replace(allowBody, `"properties": {"owner": "alice@acme.example"}`,
		`"properties": {"owner": "alice@acme.example", "note": "`+strings.Repeat("x", 1200<<10)+`"}`, 1)
	if big == allowBody {
		t.Fatal("the big body was not built")
	}
	for _, mode := range []string{"spool", "ack"} {
		t.Run(mode, func(t *testing.T) {
			ns := natstest.Start(t)
			c := startCustody(t, "", "--nats-url", ns.ClientURL(), "--record-mode", mode, "--max-body-bytes", fmt.Sprint(2<<20))
			client := &http.Client{Timeout: 20 * time.Second}
			a, err := authorize(t, client, c.HTTP, big)
			if err != nil {
				t.Fatal(err)
			}
			if a.Status != http.StatusServiceUnavailable || a.Error == nil || a.Error.Code != "decision_record_too_large" || a.Allow {
				t.Fatalf("big record answered %d %+v allow=%v", a.Status, a.Error, a.Allow)
			}
			answered := answerN(t, c, 3)
			natstest.CheckFor(t, 20*time.Second, 20*time.Millisecond, func() error {
				if n := len(readStream(t, ns.ClientURL())); n < 3 {
					return fmt.Errorf("%d of 3 decisions after the big one on the stream", n)
				}
				return nil
			})
			c.Stop(t)
			checkOneChain(t, ns.ClientURL(), answered)
		})
	}
}
