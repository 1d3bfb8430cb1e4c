package test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/custodyhq/custody/decisionlog"
	custodyjs "github.com/custodyhq/custody/decisionlog/jetstream"
	"github.com/custodyhq/custody/internal/natstest"
)

// fleetTally is what the callers of a fleet learned, by decision ID, and in which phase.
type fleetTally struct {
	mu       sync.Mutex
	phase    string
	answered map[string]string // 200 (allow or deny) -> phase: must be stored exactly once
	refused  map[string]string // 503 deny -> phase: may or may not be stored, never twice
	failed   map[string]int    // phase -> requests with no HTTP answer at all
	began    map[string]time.Time
	ended    map[string]time.Time
	order    []string
}

func newFleetTally() *fleetTally {
	return &fleetTally{answered: map[string]string{}, refused: map[string]string{}, failed: map[string]int{},
		began: map[string]time.Time{}, ended: map[string]time.Time{}}
}

func (f *fleetTally) count() int { f.mu.Lock(); defer f.mu.Unlock(); return len(f.answered) }

func (f *fleetTally) enter(phase string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.phase != "" {
		f.ended[f.phase] = time.Now()
	}
	f.phase = phase
	f.began[phase] = time.Now()
	f.order = append(f.order, phase)
}

// fleetFault is one step of a fleet scenario: what is done to the cluster or to custody, and
// how many more answers to wait for afterwards.
type fleetFault struct {
	name    string
	do      func(t *testing.T, cl *natstest.Cluster, fleet []*fleetMember)
	answers int           // wait for this many more answers, or
	hold    time.Duration // for this long (a fault during which no answer may come)
}

// fleetMember is one custody instance of the fleet; a SIGKILLed member restarts on its data dir.
type fleetMember struct {
	dir  string
	args []string
	c    atomic.Pointer[custody]
}

// TestFleetOnAClusterSurvivesLeaderKill runs two custody instances in each record mode on a
// 3-node JetStream cluster with an R3 stream, under concurrent load, while the stream leader is
// killed and restarted. Every decision answered 200 is stored exactly once (by decision_id),
// each instance's chain is unbroken, no node logs a critical write error (issue 14.1: ack mode
// wedged the stream), and the stream still takes records afterwards.
func TestFleetOnAClusterSurvivesLeaderKill(t *testing.T) {
	for _, mode := range []string{"spool", "ack"} {
		t.Run(mode, func(t *testing.T) {
			runFleet(t, mode, 4, 300, []fleetFault{
				{"leader killed", killStreamLeader, 300, 0},
				{"leader restarted", restartKilled, 300, 0},
			})
		})
	}
}

// TestFleetSoak is the long form, run by hand (CUSTODY_FLEET_SOAK=1 go test ./test -run
// TestFleetSoak -v -timeout 30m): more load, and every fault in turn: the stream leader killed
// and restarted, a follower killed and restarted, the quorum lost and restored, a custody
// instance SIGKILLed and restarted on its data dir. It logs answered, lost, duplicated and 503
// per fault and mode, and the decision rate.
func TestFleetSoak(t *testing.T) {
	if os.Getenv("CUSTODY_FLEET_SOAK") == "" {
		t.Skip("set CUSTODY_FLEET_SOAK=1 to run the fleet soak")
	}
	n := 3000
	if v, err := strconv.Atoi(os.Getenv("CUSTODY_FLEET_SOAK_ANSWERS")); err == nil && v > 0 {
		n = v
	}
	for _, mode := range []string{"spool", "ack"} {
		t.Run(mode, func(t *testing.T) {
			runFleet(t, mode, 16, n, []fleetFault{
				{"leader killed", killStreamLeader, n, 0},
				{"leader restarted", restartKilled, n, 0},
				{"follower killed", killFollower, n, 0},
				{"follower restarted", restartKilled, n, 0},
				{"quorum lost", killTwo, 0, 10 * time.Second},
				{"quorum restored", restartKilled, n, 0},
				{"custody SIGKILL and restart", sigkillCustody, n, 0},
			})
		})
	}
}

// spooled reads custody_spool_records from c's /metrics (0 in ack mode, which has no spool).
func spooled(t *testing.T, c *custody) int {
	t.Helper()
	resp, err := http.Get(c.HTTP + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for line := range strings.Lines(string(body)) {
		if v, ok := strings.CutPrefix(line, "custody_spool_records "); ok {
			n, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				t.Fatalf("custody_spool_records %q: %v", v, err)
			}
			return int(n)
		}
	}
	return 0
}

var killedNodes []int

func killStreamLeader(t *testing.T, cl *natstest.Cluster, _ []*fleetMember) {
	leader := cl.StreamLeader(decisionlog.StreamName)
	if leader < 0 {
		t.Fatal("the stream has no leader before the fault")
	}
	cl.Kill(leader)
	killedNodes = []int{leader}
}

func killFollower(t *testing.T, cl *natstest.Cluster, _ []*fleetMember) {
	leader := cl.StreamLeader(decisionlog.StreamName)
	if leader < 0 {
		t.Fatal("the stream has no leader before the fault")
	}
	f := (leader + 1) % 3
	cl.Kill(f)
	killedNodes = []int{f}
}

func killTwo(t *testing.T, cl *natstest.Cluster, _ []*fleetMember) {
	leader := cl.StreamLeader(decisionlog.StreamName)
	if leader < 0 {
		leader = 0
	}
	killedNodes = []int{leader, (leader + 1) % 3}
	for _, i := range killedNodes {
		cl.Kill(i)
	}
}

func restartKilled(t *testing.T, cl *natstest.Cluster, _ []*fleetMember) {
	for _, i := range killedNodes {
		cl.Restart(i)
	}
	killedNodes = nil
}

func sigkillCustody(t *testing.T, _ *natstest.Cluster, fleet []*fleetMember) {
	m := fleet[0]
	m.c.Load().Kill()
	m.c.Store(startCustody(t, m.dir, m.args...))
}

func runFleet(t *testing.T, mode string, workers, first int, faults []fleetFault) {
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
	fleet := []*fleetMember{{dir: t.TempDir(), args: args}, {dir: t.TempDir(), args: args}}
	for _, m := range fleet {
		m.c.Store(startCustody(t, m.dir, args...))
	}

	tally := newFleetTally()
	tally.enter("steady")
	client := &http.Client{Timeout: 20 * time.Second}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for _, m := range fleet {
		for w := range workers {
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
					a, err := authorize(t, client, m.c.Load().HTTP, body)
					tally.mu.Lock()
					switch {
					case err != nil:
						tally.failed[tally.phase]++
					case a.Status == http.StatusOK:
						tally.answered[a.DecisionID] = tally.phase
					case a.Status == http.StatusServiceUnavailable && a.DecisionID != "":
						tally.refused[a.DecisionID] = tally.phase
					default:
						tally.failed[tally.phase]++
					}
					tally.mu.Unlock()
				}
			})
		}
	}
	waitAnswered := func(n int, what string) {
		t.Helper()
		natstest.CheckFor(t, 120*time.Second, 20*time.Millisecond, func() error {
			if got := tally.count(); got < n {
				return fmt.Errorf("%s: %d of %d answered", what, got, n)
			}
			return nil
		})
	}
	waitAnswered(first, "before the faults")
	for _, f := range faults {
		tally.enter(f.name)
		f.do(t, cl, fleet)
		if f.hold > 0 {
			time.Sleep(f.hold) // the fault's duration is the point here, not a synchronisation
			continue
		}
		waitAnswered(tally.count()+f.answers, f.name)
	}
	close(stop)
	wg.Wait()
	tally.enter("")
	// A spool may hold a backlog from the faults: what is spooled is durable but not yet on the
	// stream. Wait for it to reach the stream before counting, and log how long that took.
	drainBegan := time.Now()
	for _, m := range fleet {
		c := m.c.Load()
		natstest.CheckFor(t, 10*time.Minute, 200*time.Millisecond, func() error {
			if n := spooled(t, c); n > 0 {
				return fmt.Errorf("%d records still spooled", n)
			}
			return nil
		})
	}
	t.Logf("mode %s: spools drained %s after the load stopped", mode, time.Since(drainBegan).Round(time.Millisecond))
	for _, m := range fleet {
		m.c.Load().Stop(t) // leaves a final checkpoint
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
	type counts struct{ answered, lost, dup, refused, refusedStored int }
	per := map[string]*counts{}
	for _, ph := range tally.order {
		per[ph] = &counts{}
	}
	lostAll, dupAll := 0, 0
	for id, ph := range tally.answered {
		c := per[ph]
		c.answered++
		if stored[id] == 0 {
			c.lost++
			lostAll++
		}
	}
	for id, ph := range tally.refused {
		per[ph].refused++
		if stored[id] > 0 {
			per[ph].refusedStored++
		}
	}
	for id, n := range stored {
		if n > 1 {
			dupAll++
			if ph, ok := tally.answered[id]; ok {
				per[ph].dup++
			}
		}
	}
	for _, ph := range tally.order {
		if ph == "" {
			continue
		}
		c := per[ph]
		secs := tally.ended[ph].Sub(tally.began[ph]).Seconds()
		t.Logf("mode %-5s %-28s answered %6d (%4.0f/s)  lost %d  duplicated %d  503 %d (stored anyway %d)  no answer %d",
			mode, ph, c.answered, float64(c.answered)/secs, c.lost, c.dup, c.refused, c.refusedStored, tally.failed[ph])
	}
	t.Logf("mode %s: %d answered, %d stored decision records", mode, len(tally.answered), len(stored))
	if lostAll > 0 || dupAll > 0 {
		t.Errorf("%d answered decisions lost, %d stored more than once", lostAll, dupAll)
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
	pctx, pcancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer pcancel()
	if _, err := js.Publish(pctx, decisionlog.CheckpointSubject("probe"), []byte(`{}`), jetstream.WithMsgID(nats.NewInbox())); err != nil {
		t.Errorf("the stream refuses a record after the faults: %v", err)
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
