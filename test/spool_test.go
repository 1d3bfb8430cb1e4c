package test

import (
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/custodyhq/custody/internal/natstest"
)

// TestSpoolRidesOutNATSOutage: with an external NATS (spool mode, the default there), NATS is
// stopped for seconds under concurrent load and started again. Every answer is a 200, and every
// answered decision reaches the stream exactly once, in one unbroken chain.
func TestSpoolRidesOutNATSOutage(t *testing.T) {
	natsDir := t.TempDir()
	ns := natstest.StartAt(t, "127.0.0.1:0", natsDir)
	listen := ns.Addr().String()
	c := startCustody(t, "", "--nats-url", ns.ClientURL(), "--checkpoint-every", "50")
	client := &http.Client{Timeout: 30 * time.Second}

	var (
		mu       sync.Mutex
		answered = map[string]bool{}
		non200   atomic.Int32
		wg       sync.WaitGroup
		stop     = make(chan struct{})
	)
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				a, err := authorize(t, client, c.HTTP, allowBody)
				if err != nil {
					t.Error(err)
					return
				}
				if a.Status != 200 {
					non200.Add(1)
					continue
				}
				mu.Lock()
				answered[a.DecisionID] = true
				mu.Unlock()
			}
		})
	}
	count := func() int { mu.Lock(); defer mu.Unlock(); return len(answered) }
	natstest.CheckFor(t, 30*time.Second, 10*time.Millisecond, func() error {
		if n := count(); n < 100 {
			return fmt.Errorf("%d answered", n)
		}
		return nil
	})
	natstest.Shutdown(ns)
	before := count()
	natstest.CheckFor(t, 30*time.Second, 10*time.Millisecond, func() error {
		if n := count(); n < before+200 {
			return fmt.Errorf("%d answered during the outage", n-before)
		}
		return nil
	})
	ns = natstest.StartAt(t, listen, natsDir)
	natstest.CheckFor(t, 30*time.Second, 10*time.Millisecond, func() error {
		if n := count(); n < before+400 {
			return fmt.Errorf("%d answered", n)
		}
		return nil
	})
	close(stop)
	wg.Wait()
	if n := non200.Load(); n != 0 {
		t.Fatalf("%d answers were not 200 while the spool had room", n)
	}
	c.Stop(t) // drains the spool
	msgs := readStream(t, ns.ClientURL())
	seen := map[string]int{}
	decisions := 0
	var last uint64
	for _, m := range msgs {
		decisions++
		seen[m.Record.DecisionID]++
		if m.Record.Seq != last+1 {
			t.Fatalf("chain seq %d after %d", m.Record.Seq, last)
		}
		last = m.Record.Seq
	}
	for id := range answered {
		if seen[id] != 1 {
			t.Fatalf("answered decision %s is on the stream %d times", id, seen[id])
		}
	}
	if decisions != len(answered) {
		t.Fatalf("%d decision records, %d answered", decisions, len(answered))
	}
	t.Logf("%d decisions answered, %d of them after NATS was stopped, all on the stream once", len(answered), len(answered)-before)
}

// TestFullSpoolAnswers503Deny: NATS is away and the spool reaches --spool-max-bytes; answers turn
// into 503 denies rather than unrecorded allows, and once NATS is back every 200 is on the stream
// exactly once.
func TestFullSpoolAnswers503Deny(t *testing.T) {
	natsDir := t.TempDir()
	ns := natstest.StartAt(t, "127.0.0.1:0", natsDir)
	listen := ns.Addr().String()
	c := startCustody(t, "", "--nats-url", ns.ClientURL(), "--spool-max-bytes", "16384")
	client := &http.Client{Timeout: 30 * time.Second}
	natstest.Shutdown(ns)
	answered := map[string]bool{}
	full := 0
	for i := 0; i < 200 && full < 3; i++ {
		a, err := authorize(t, client, c.HTTP, allowBody)
		if err != nil {
			t.Fatal(err)
		}
		switch a.Status {
		case 200:
			answered[a.DecisionID] = true
		case 503:
			if a.Allow || a.Error == nil || a.Error.Code != "decision_log_unavailable" {
				t.Fatalf("full spool answered %+v", a)
			}
			full++
		default:
			t.Fatalf("status %d", a.Status)
		}
	}
	if full == 0 || len(answered) == 0 {
		t.Fatalf("%d answered, %d refused: the spool never filled", len(answered), full)
	}
	ns = natstest.StartAt(t, listen, natsDir)
	var msgs []streamMsg
	natstest.CheckFor(t, 30*time.Second, 100*time.Millisecond, func() error {
		msgs = readStream(t, ns.ClientURL())
		if len(msgs) < len(answered) {
			return fmt.Errorf("%d of %d forwarded", len(msgs), len(answered))
		}
		return nil
	})
	seen := map[string]int{}
	for _, m := range msgs {
		seen[m.Record.DecisionID]++
	}
	for id := range answered {
		if seen[id] != 1 {
			t.Fatalf("answered decision %s is on the stream %d times", id, seen[id])
		}
	}
	if len(msgs) != len(answered) {
		t.Fatalf("%d records for %d answered decisions", len(msgs), len(answered))
	}
}
