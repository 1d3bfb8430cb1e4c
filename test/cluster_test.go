package test

import (
	"context"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/custodyhq/custody/decisionlog"
	custodyjs "github.com/custodyhq/custody/decisionlog/jetstream"
	"github.com/custodyhq/custody/internal/natstest"
)

// fleetTally is what the callers of a fleet learned, by decision ID.
type fleetTally struct {
	mu       sync.Mutex
	answered map[string]bool // 200: allow or deny, must be stored exactly once
	refused  map[string]bool // 503 deny: may or may not be stored, never twice
	failed   int             // no HTTP answer at all
}

func (f *fleetTally) count() int { f.mu.Lock(); defer f.mu.Unlock(); return len(f.answered) }

// TestFleetOnAClusterSurvivesLeaderKill runs two custody instances in each record mode on a
// 3-node JetStream cluster with an R3 stream, under concurrent load, while the stream leader is
// killed and restarted. Every decision answered 200 is stored exactly once (by decision_id),
// each instance's chain is unbroken, no node logs a critical write error (issue 14.1: ack mode
// wedged the stream), and the stream still takes records afterwards.
func TestFleetOnAClusterSurvivesLeaderKill(t *testing.T) {
	for _, mode := range []string{"spool", "ack"} {
		t.Run(mode, func(t *testing.T) { fleetUnderLeaderKill(t, mode) })
	}
}

func fleetUnderLeaderKill(t *testing.T, mode string) {
	cl := natstest.StartCluster(t, 3)
	nc := natstest.ConnectURL(t, cl.URLs())
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	natstest.CheckFor(t, 30*time.Second, 100*time.Millisecond, func() error {
		_, err := custodyjs.EnsureStream(ctx, js, custodyjs.StreamConfig{Replicas: 3})
		return err
	})
	args := []string{"--nats-url", cl.URLs(), "--stream-replicas", "3", "--record-mode", mode,
		"--checkpoint-every", "100", "--checkpoint-interval", "500ms", "--publish-timeout", "2s", "--log-level", "info"}
	fleet := []*custody{startCustody(t, "", args...), startCustody(t, "", args...)}

	tally := &fleetTally{answered: map[string]bool{}, refused: map[string]bool{}}
	client := &http.Client{Timeout: 20 * time.Second}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for _, c := range fleet {
		for w := range 4 {
			body := allowBody
			if w%2 == 1 {
				body = denyBody
			}
			wg.Go(func() {
				for {
					select {
					case <-stop:
						return
					default:
					}
					a, err := authorize(t, client, c.HTTP, body)
					tally.mu.Lock()
					switch {
					case err != nil:
						tally.failed++
					case a.Status == http.StatusOK:
						tally.answered[a.DecisionID] = true
					case a.Status == http.StatusServiceUnavailable && a.DecisionID != "":
						tally.refused[a.DecisionID] = true
					default:
						tally.failed++
					}
					tally.mu.Unlock()
				}
			})
		}
	}
	waitAnswered := func(n int, what string) {
		t.Helper()
		natstest.CheckFor(t, 45*time.Second, 20*time.Millisecond, func() error {
			if got := tally.count(); got < n {
				return fmt.Errorf("%s: %d of %d answered", what, got, n)
			}
			return nil
		})
	}
	waitAnswered(300, "before the fault")
	leader := cl.StreamLeader(decisionlog.StreamName)
	if leader < 0 {
		t.Fatal("the stream has no leader before the fault")
	}
	cl.Kill(leader)
	waitAnswered(tally.count()+300, "leader killed")
	cl.Restart(leader)
	waitAnswered(tally.count()+300, "leader restarted")
	close(stop)
	wg.Wait()
	for _, c := range fleet {
		c.Stop(t) // drains a spool and leaves a final checkpoint
	}

	natstest.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		if cl.StreamLeader(decisionlog.StreamName) < 0 || !cl.StreamCurrent(decisionlog.StreamName) {
			return fmt.Errorf("stream not led or a replica not current")
		}
		return nil
	})
	if lines := cl.Errors("critical write error"); len(lines) > 0 {
		t.Errorf("%d critical write errors, first: %s", len(lines), lines[0])
	}
	msgs := readAll(t, cl.URLs())
	stored := map[string]int{}
	seqs := map[string][]uint64{}
	for _, m := range msgs {
		if m.Record.DecisionID == "" || m.Record.Seq == 0 {
			continue // checkpoints
		}
		stored[m.Record.DecisionID]++
		seqs[m.Record.PDP.Instance] = append(seqs[m.Record.PDP.Instance], m.Record.Seq)
	}
	lost, dup, refusedStored := 0, 0, 0
	for id := range tally.answered {
		if stored[id] == 0 {
			lost++
		}
	}
	for id := range tally.refused {
		if stored[id] > 0 {
			refusedStored++
		}
	}
	for _, n := range stored {
		if n > 1 {
			dup++
		}
	}
	t.Logf("mode %s, leader n%d killed and restarted: answered %d, lost %d, duplicated %d, 503 %d (of which stored %d), no answer %d, stored records %d",
		mode, leader, len(tally.answered), lost, dup, len(tally.refused), refusedStored, tally.failed, len(stored))
	if lost > 0 || dup > 0 {
		t.Errorf("%d answered decisions lost, %d stored more than once", lost, dup)
	}
	if len(seqs) != len(fleet) {
		t.Errorf("records from %d instances, want %d", len(seqs), len(fleet))
	}
	for inst, s := range seqs {
		sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
		for i, seq := range s {
			if seq != uint64(i+1) {
				t.Errorf("instance %s: chain seq %d where %d belongs", inst, seq, i+1)
				break
			}
		}
	}

	// Still healthy: the stream takes a record.
	if _, err := js.Publish(ctx, decisionlog.CheckpointSubject("probe"), []byte(`{}`), jetstream.WithMsgID(nats.NewInbox())); err != nil {
		t.Errorf("the stream refuses a record after the fault: %v", err)
	}
}

// Issue 14.7: during a quorum loss in ack mode, /readyz said ready while every decision was a
// 503. It now follows whether a decision can be recorded: not ready without a quorum, ready
// again once it is back. /metrics answers throughout (its collectors do no network calls).
func TestAckReadinessFollowsQuorum(t *testing.T) {
	cl := natstest.StartCluster(t, 3)
	nc := natstest.ConnectURL(t, cl.URLs())
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	natstest.CheckFor(t, 30*time.Second, 100*time.Millisecond, func() error {
		_, err := custodyjs.EnsureStream(t.Context(), js, custodyjs.StreamConfig{Replicas: 3})
		return err
	})
	c := startCustody(t, "", "--nats-url", cl.URLs(), "--stream-replicas", "3", "--record-mode", "ack", "--publish-timeout", "1s")
	client := &http.Client{Timeout: 20 * time.Second}
	status := func(path string) int {
		resp, err := client.Get(c.HTTP + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	waitStatus := func(path string, want int) {
		t.Helper()
		natstest.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
			if got := status(path); got != want {
				return fmt.Errorf("%s answers %d, want %d", path, got, want)
			}
			return nil
		})
	}
	waitStatus("/readyz", http.StatusOK)
	answerN(t, c, 3)
	// Two of three nodes down: custody reconnects to the third, which has no quorum.
	killed := []int{1, 2}
	for _, i := range killed {
		cl.Kill(i)
	}
	a, err := authorize(t, client, c.HTTP, allowBody)
	if err != nil {
		t.Fatal(err)
	}
	if a.Status == http.StatusOK {
		t.Logf("a decision was still recorded after two nodes were killed")
	}
	waitStatus("/readyz", http.StatusServiceUnavailable)
	if got := status("/metrics"); got != http.StatusOK {
		t.Errorf("/metrics answers %d during the quorum loss", got)
	}
	for _, i := range killed {
		cl.Restart(i)
	}
	waitStatus("/readyz", http.StatusOK)
	natstest.CheckFor(t, 30*time.Second, 100*time.Millisecond, func() error {
		a, err := authorize(t, client, c.HTTP, allowBody)
		if err != nil || a.Status != http.StatusOK {
			return fmt.Errorf("after the quorum is back: %d %v", a.Status, err)
		}
		return nil
	})
}

// TestFleetFirstDeployConverges: two instances started together on a cluster with no CUSTODY
// stream both exited after 30 s (issue 14.3). Now both serve, on one R3 stream; a third
// instance started with other stream settings (the default replicas, a shorter retention)
// refuses to start, naming each difference, and leaves the stream as it was.
func TestFleetFirstDeployConverges(t *testing.T) {
	cl := natstest.StartCluster(t, 3)
	args := []string{"--nats-url", cl.URLs(), "--stream-replicas", "3", "--retention", "720h"}
	var wg sync.WaitGroup
	fleet := make([]*custody, 2)
	errs := make([]error, 2)
	for i := range fleet {
		wg.Go(func() { fleet[i], errs[i] = launchCustody(t, "", args...) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("instance %d of a first deploy: %v", i, err)
		}
	}
	client := &http.Client{Timeout: 10 * time.Second}
	for _, c := range fleet {
		if a, err := authorize(t, client, c.HTTP, allowBody); err != nil || a.Status != 200 {
			t.Fatalf("authorize: %+v %v", a, err)
		}
	}
	out := serveMustFail(t, "--data-dir", t.TempDir(), "--nats-url", cl.URLs(), "--retention", "24h")
	for _, want := range []string{"num_replicas: stream has 3, this instance asks for 1", "max_age: stream has 720h0m0s, this instance asks for 24h0m0s"} {
		if !strings.Contains(out, want) {
			t.Errorf("third instance's refusal does not say %q:\n%s", want, out)
		}
	}
	js, err := jetstream.New(natstest.ConnectURL(t, cl.URLs()))
	if err != nil {
		t.Fatal(err)
	}
	s, err := js.Stream(t.Context(), decisionlog.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	if c := s.CachedInfo().Config; c.Replicas != 3 || c.MaxAge != 720*time.Hour {
		t.Fatalf("stream after the third instance: replicas %d, max_age %v", c.Replicas, c.MaxAge)
	}
}
