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
