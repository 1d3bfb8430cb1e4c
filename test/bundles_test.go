package test

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/custodyhq/custody/bundles/natsobj"
	"github.com/custodyhq/custody/internal/bundletest"
	"github.com/custodyhq/custody/internal/natstest"
	"github.com/custodyhq/custody/policies"
)

// policyState is the body of GET /v1/policy.
type policyState struct {
	Revision  string `json:"revision"`
	Source    string `json:"source"`
	LoadedAt  string `json:"loaded_at"`
	LastError string `json:"last_error"`
	Reloads   int    `json:"reloads"`
	Failures  int    `json:"failures"`
	Memo      string `json:"memo"`
	MemoHits  int    `json:"memo_hits"`
}

func getPolicy(client *http.Client, base string) (policyState, error) {
	resp, err := client.Get(base + "/v1/policy")
	if err != nil {
		return policyState{}, err
	}
	defer resp.Body.Close()
	var st policyState
	if resp.StatusCode != http.StatusOK {
		return st, fmt.Errorf("GET /v1/policy: %d", resp.StatusCode)
	}
	return st, json.NewDecoder(resp.Body).Decode(&st)
}

func readyStatus(client *http.Client, base string) (int, error) {
	resp, err := client.Get(base + "/readyz")
	if err != nil {
		return 0, err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, nil
}

// decided is what a caller learned from one POST /v1/authorize, with the revision it names.
type decided struct {
	Status     int
	DecisionID string `json:"decision_id"`
	Allow      bool   `json:"allow"`
	Policy     struct {
		Revision string `json:"revision"`
	} `json:"policy"`
}

func decide(client *http.Client, base, body string) (decided, error) {
	resp, err := client.Post(base+"/v1/authorize", "application/json", strings.NewReader(body))
	if err != nil {
		return decided{}, err
	}
	defer resp.Body.Close()
	var d decided
	if err := json.NewDecoder(resp.Body).Decode(&d); err != nil {
		return d, fmt.Errorf("status %d: %w", resp.StatusCode, err)
	}
	d.Status = resp.StatusCode
	return d, nil
}

// revokeMailSend is a policy change with a visible effect: the mailer agent loses mail.send, so
// allowBody is denied.
func revokeMailSend(data map[string]any) {
	agents := data["custody"].(map[string]any)["agents"].(map[string]any)
	agents[mailer].(map[string]any)["grants"] = []any{"mail.read", "contacts.read"}
}

// writePolicyDir writes the default policies into dir with a .manifest naming revision, edited
// by edit when it is not nil.
func writePolicyDir(t *testing.T, dir, revision string, edit func(map[string]any)) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	entries, err := fs.ReadDir(policies.FS, ".")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		raw, err := fs.ReadFile(policies.FS, e.Name())
		if err != nil {
			t.Fatal(err)
		}
		if e.Name() == "data.json" && edit != nil {
			var data map[string]any
			if err := json.Unmarshal(raw, &data); err != nil {
				t.Fatal(err)
			}
			edit(data)
			if raw, err = json.Marshal(data); err != nil {
				t.Fatal(err)
			}
		}
		bundletest.WriteFile(t, filepath.Join(dir, e.Name()), raw)
	}
	bundletest.WriteFile(t, filepath.Join(dir, ".manifest"), fmt.Appendf(nil, `{"revision": %q}`, revision))
}

// pointAt makes link point at target, atomically: a new link renamed over the old.
func pointAt(t *testing.T, link, target string) {
	t.Helper()
	tmp := link + ".new"
	if err := os.Symlink(target, tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, link); err != nil {
		t.Fatal(err)
	}
}

// TestPolicyHotReloadUnderLoad changes the policy set of a running custody while callers keep
// it busy: first a multi-file change swapped in at once (a symlinked directory, as a ConfigMap
// mount does), then a file rewritten in place and caught half written, then completed. No
// caller may see anything but a 200; each record names the revision that decided it, and that
// revision's policy is the one that decided; the half-written set is refused while the old one
// serves on, and /readyz never fails.
func TestPolicyHotReloadUnderLoad(t *testing.T) {
	root := t.TempDir()
	writePolicyDir(t, filepath.Join(root, "r1"), "r1", nil)
	writePolicyDir(t, filepath.Join(root, "r2"), "r2", revokeMailSend)
	link := filepath.Join(root, "current")
	pointAt(t, link, "r1")
	c := startCustody(t, "", "--policies", link, "--policy-poll-interval", "50ms")
	client := &http.Client{Timeout: 30 * time.Second}

	const workers = 4
	var (
		stop     atomic.Bool
		wg       sync.WaitGroup
		mu       sync.Mutex
		answers  = make([][]decided, workers) // per worker, in order
		total    atomic.Int64
		notReady atomic.Int64
	)
	for i := range workers {
		wg.Go(func() {
			for !stop.Load() {
				d, err := decide(client, c.HTTP, allowBody)
				if err != nil {
					t.Errorf("worker %d: %v", i, err)
					return
				}
				mu.Lock()
				answers[i] = append(answers[i], d)
				mu.Unlock()
				total.Add(1)
			}
		})
	}
	wg.Go(func() {
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for !stop.Load() {
			if code, err := readyStatus(client, c.HTTP); err != nil || code != http.StatusOK {
				notReady.Add(1)
			}
			<-tick.C
		}
	})
	// more waits until the callers got n more answers.
	more := func(n int64) {
		t.Helper()
		target := total.Load() + n
		natstest.CheckFor(t, 30*time.Second, 10*time.Millisecond, func() error {
			if got := total.Load(); got < target {
				return fmt.Errorf("%d answers, waiting for %d", got, target)
			}
			return nil
		})
	}
	waitPolicy := func(what string, ok func(policyState) bool) policyState {
		t.Helper()
		var st policyState
		natstest.CheckFor(t, 30*time.Second, 20*time.Millisecond, func() error {
			var err error
			if st, err = getPolicy(client, c.HTTP); err != nil {
				return err
			}
			if !ok(st) {
				return fmt.Errorf("policy status %+v: want %s", st, what)
			}
			return nil
		})
		return st
	}
	marks := func() []int {
		mu.Lock()
		defer mu.Unlock()
		m := make([]int, workers)
		for i := range answers {
			m[i] = len(answers[i])
		}
		return m
	}

	more(50)
	pointAt(t, link, "r2")
	waitPolicy("r2 serving", func(st policyState) bool { return st.Revision == "r2" })
	more(50)

	manifest := filepath.Join(root, "r2", ".manifest")
	if err := os.WriteFile(manifest, []byte(`{"revision": "r3"`), 0o644); err != nil { // in place, cut short
		t.Fatal(err)
	}
	refused := waitPolicy("the half-written set refused", func(st policyState) bool { return st.Failures >= 1 })
	if refused.Revision != "r2" || !strings.Contains(refused.LastError, "manifest") {
		t.Fatalf("after a half-written .manifest: %+v; want r2 serving and the error", refused)
	}
	brokenFrom := marks()
	more(50)
	brokenTo := marks()
	if err := os.WriteFile(manifest, []byte(`{"revision": "r3"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	final := waitPolicy("r3 serving", func(st policyState) bool { return st.Revision == "r3" })
	more(50)
	stop.Store(true)
	wg.Wait()

	if final.Reloads != 2 || final.Failures < 1 || final.Source != link {
		t.Errorf("final policy status %+v: want 2 reloads, a failure, source %s", final, link)
	}
	if n := notReady.Load(); n != 0 {
		t.Errorf("/readyz failed %d times during the reloads", n)
	}
	if !strings.Contains(c.Logs(), `"message":"policy set refused"`) {
		t.Error("the refused policy set was not logged")
	}

	rank := map[string]int{"r1": 1, "r2": 2, "r3": 3}
	byID := map[string]decided{}
	perRevision := map[string]int{}
	for w, as := range answers {
		last := 0
		for k, a := range as {
			r := rank[a.Policy.Revision]
			switch {
			case a.Status != http.StatusOK:
				t.Fatalf("worker %d answer %d: status %d", w, k, a.Status)
			case r == 0:
				t.Fatalf("worker %d answer %d: revision %q", w, k, a.Policy.Revision)
			case r < last:
				t.Fatalf("worker %d answer %d: revision went back to %s", w, k, a.Policy.Revision)
			case a.Allow != (a.Policy.Revision == "r1"):
				t.Fatalf("worker %d answer %d: allow %v under %s: the decision was not made by the revision it names", w, k, a.Allow, a.Policy.Revision)
			case k >= brokenFrom[w] && k < brokenTo[w] && a.Policy.Revision != "r2":
				t.Fatalf("worker %d answer %d: %s while the broken set was refused, want r2", w, k, a.Policy.Revision)
			}
			last = r
			byID[a.DecisionID] = a
			perRevision[a.Policy.Revision]++
		}
	}
	for rev := range rank {
		if perRevision[rev] == 0 {
			t.Errorf("no decision made by %s: %v", rev, perRevision)
		}
	}
	msgs := readStream(t, c.NATS)
	if len(msgs) != len(byID) {
		t.Fatalf("%d records for %d answers", len(msgs), len(byID))
	}
	for _, m := range msgs {
		a, ok := byID[m.Record.DecisionID]
		if !ok || m.Record.Policy.Revision != a.Policy.Revision || m.Record.Allow != a.Allow {
			t.Fatalf("record %s (revision %s, allow %v) does not match its answer %+v", m.Record.DecisionID, m.Record.Policy.Revision, m.Record.Allow, a)
		}
	}
	t.Logf("%d decisions during the reloads: %v", len(byID), perRevision)
}

// TestFleetFollowsObjectStore runs two custody instances on one NATS server, both taking their
// policy from the bundle bucket and requiring signed bundles. Before any push they are not
// ready; `custody bundle push` moves both to each new revision, and an unsigned bundle that got
// into the bucket is refused by both, the previous revision serving on.
func TestFleetFollowsObjectStore(t *testing.T) {
	ns := natstest.Start(t)
	url := ns.ClientURL()
	key := bundletest.RSAKey(t)
	dir := t.TempDir()
	serial := uint64(0)
	file := func(name, rev string, sign bool, edit func(map[string]any)) string {
		b := bundletest.FromFS(t, policies.FS, rev)
		if edit != nil {
			edit(b.Data)
		}
		serial++
		bundletest.SetSerial(&b, serial) // the order signed bundles are served in
		if sign {
			bundletest.Sign(t, &b, key, "default", "")
		}
		path := filepath.Join(dir, name)
		bundletest.Write(t, b, path)
		return path
	}
	v1 := file("v1.tar.gz", "fleet-1", true, nil)
	v2 := file("v2.tar.gz", "fleet-2", true, revokeMailSend)
	v3 := file("v3-unsigned.tar.gz", "fleet-3", false, nil)

	args := []string{"--nats-url", url, "--bundle-source", "nats", "--bundle-verification-key", key.Verify}
	fleet := []*custody{startCustody(t, "", args...), startCustody(t, "", args...)}
	client := &http.Client{Timeout: 30 * time.Second}

	for i, c := range fleet {
		code, err := readyStatus(client, c.HTTP)
		st, serr := getPolicy(client, c.HTTP)
		if err != nil || serr != nil || code != http.StatusServiceUnavailable || st.Revision != "" {
			t.Fatalf("instance %d before any push: /readyz %d %v, policy %+v %v; want 503 and no revision", i, code, err, st, serr)
		}
	}
	d, err := decide(client, fleet[0].HTTP, allowBody)
	if err != nil || d.Status != http.StatusOK || d.Allow || d.Policy.Revision != "" {
		t.Fatalf("decision before any policy: %+v %v; want a recorded deny", d, err)
	}

	push := func(file string, extra ...string) string {
		t.Helper()
		out, err := exec.Command(binary, append([]string{"bundle", "push", file, "--nats-url", url}, extra...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("custody bundle push %s: %v\n%s", file, err, out)
		}
		return string(out)
	}
	waitFleet := func(what string, ok func(policyState) bool) {
		t.Helper()
		natstest.CheckFor(t, 30*time.Second, 20*time.Millisecond, func() error {
			for i, c := range fleet {
				st, err := getPolicy(client, c.HTTP)
				if err != nil {
					return err
				}
				if !ok(st) {
					return fmt.Errorf("instance %d: %+v: want %s", i, st, what)
				}
			}
			return nil
		})
	}
	expectDecisions := func(rev string, allow bool) {
		t.Helper()
		for i, c := range fleet {
			d, err := decide(client, c.HTTP, allowBody)
			if err != nil || d.Status != http.StatusOK || d.Policy.Revision != rev || d.Allow != allow {
				t.Fatalf("instance %d: %+v %v; want a 200 by %s, allow %v", i, d, err, rev, allow)
			}
		}
	}

	if out := push(v1, "--bundle-verification-key", key.Verify); !strings.Contains(out, "revision fleet-1") {
		t.Fatalf("push said %q", out)
	}
	waitFleet("fleet-1", func(st policyState) bool { return st.Revision == "fleet-1" })
	for i, c := range fleet {
		if code, err := readyStatus(client, c.HTTP); err != nil || code != http.StatusOK {
			t.Fatalf("instance %d after the first push: /readyz %d %v", i, code, err)
		}
	}
	expectDecisions("fleet-1", true)

	push(v2)
	waitFleet("fleet-2", func(st policyState) bool { return st.Revision == "fleet-2" && st.Reloads == 1 })
	expectDecisions("fleet-2", false)

	push(v3) // push without a key checks no signature; the fleet does
	waitFleet("unsigned fleet-3 refused", func(st policyState) bool {
		return st.Failures == 1 && strings.Contains(st.LastError, "missing .signatures.json")
	})
	expectDecisions("fleet-2", false)
	for i, c := range fleet {
		if !strings.Contains(c.Logs(), `"message":"policy set refused"`) {
			t.Errorf("instance %d did not log the refused bundle", i)
		}
	}

	// With --nats-url the instances answer from their spools and forward afterwards: stop them,
	// which drains the spools, before reading the stream.
	for _, c := range fleet {
		c.Stop(t)
	}

	// Each instance recorded, on the one stream, the revision that made each of its decisions.
	seen := map[string]map[string]int{} // instance -> revision -> records
	for _, m := range readStream(t, url) {
		r := m.Record
		if seen[r.PDP.Instance] == nil {
			seen[r.PDP.Instance] = map[string]int{}
		}
		seen[r.PDP.Instance][r.Policy.Revision]++
		if r.Allow != (r.Policy.Revision == "fleet-1") {
			t.Errorf("record %s: allow %v under %q", r.DecisionID, r.Allow, r.Policy.Revision)
		}
	}
	if len(seen) != 2 {
		t.Fatalf("records from %d instances, want 2: %v", len(seen), seen)
	}
	for inst, revs := range seen {
		if revs["fleet-1"] != 1 || revs["fleet-2"] != 2 {
			t.Errorf("instance %s recorded %v; want fleet-1 once and fleet-2 twice", inst, revs)
		}
	}
}

// TestEvalCommand runs `custody eval` as a policy author's CI does: input on stdin or from a file,
// the decision and revision printed, a non-zero exit on a policy error.
func TestEvalCommand(t *testing.T) {
	dir := t.TempDir()
	writePolicyDir(t, filepath.Join(dir, "p"), "author-1", nil)
	input := `{"subject": {"type": "user", "id": "alice@acme.example", "properties": {"scopes": ["mail.send"]}},
	  "action": {"name": "send_email", "properties": {"server": "mail"}},
	  "resource": {"type": "mailbox", "id": "alice", "properties": {"owner": "alice@acme.example"}},
	  "agent": {"id": "spiffe://acme.example/agents/mailer"}}`
	inputFile := filepath.Join(dir, "input.json")
	bundletest.WriteFile(t, inputFile, []byte(input))
	policyError := filepath.Join(dir, "policy-error")
	if err := os.MkdirAll(policyError, 0o755); err != nil {
		t.Fatal(err)
	}
	bundletest.WriteFile(t, filepath.Join(policyError, "authz.rego"), []byte("package custody.authz\n\ndecision := {\"allow\": \"yes\"}\n"))

	tests := []struct {
		name     string
		args     []string
		stdin    string
		wantCode int
		wantOut  []string
	}{
		{name: "stdin", args: []string{"--policies", filepath.Join(dir, "p")}, stdin: input, wantOut: []string{`"allow": true`, `"revision": "author-1"`}},
		{name: "file", args: []string{"--policies", filepath.Join(dir, "p"), "--input", inputFile}, wantOut: []string{`"allow": true`, `"revision": "author-1"`}},
		{name: "policy error", args: []string{"--policies", policyError, "--input", inputFile}, wantCode: 1, wantOut: []string{`"allow": false`, `"policy_error"`, `decision.allow is string`}},
		{name: "bad input", args: []string{"--input", "-"}, stdin: "{", wantCode: 2, wantOut: []string{"not a policy input object"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cmd := exec.Command(binary, append([]string{"eval"}, tc.args...)...)
			cmd.Stdin = strings.NewReader(tc.stdin)
			out, err := cmd.CombinedOutput()
			code := 0
			if ee, ok := err.(*exec.ExitError); ok {
				code = ee.ExitCode()
			} else if err != nil {
				t.Fatal(err)
			}
			if code != tc.wantCode {
				t.Fatalf("exit %d, want %d:\n%s", code, tc.wantCode, out)
			}
			for _, w := range tc.wantOut {
				if !strings.Contains(string(out), w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
		})
	}
}

// TestPolicyCannotBeReplacedByANATSWriter is the attack of issue 12.5: whoever can write the
// bundle bucket tries to change the policy. serve refuses to run on unsigned bundles unless told
// so loudly; an instance requiring signatures refuses an unsigned allow-all bundle, one signed
// with another key, and an older signed bundle pushed again, and a restart does not let that
// older bundle in either.
func TestPolicyCannotBeReplacedByANATSWriter(t *testing.T) {
	ns := natstest.Start(t)
	url := ns.ClientURL()
	key, wrong := bundletest.RSAKey(t), bundletest.RSAKey(t)
	dir := t.TempDir()
	file := func(name, rev string, serial uint64, k *bundletest.Key, allowAll bool) string {
		b := bundletest.FromFS(t, policies.FS, rev)
		if allowAll {
			b = bundletest.New(t, rev, nil, map[string]string{"authz.rego": "package custody.authz\n\ndecision := {\"allow\": true, \"reasons\": [], \"obligations\": {}}\n"}, nil)
		}
		if serial > 0 {
			bundletest.SetSerial(&b, serial)
		}
		if k != nil {
			bundletest.Sign(t, &b, *k, "default", "")
		}
		path := filepath.Join(dir, name)
		bundletest.Write(t, b, path)
		return path
	}
	v1 := file("v1.tar.gz", "guard-1", 1, &key, false)
	v2 := file("v2.tar.gz", "guard-2", 2, &key, false)
	v3 := file("v3.tar.gz", "guard-3", 3, &key, false)
	unsigned := file("evil-unsigned.tar.gz", "evil-1", 9, nil, true)
	forged := file("evil-forged.tar.gz", "evil-2", 9, &wrong, true)

	// No key: no start, unless the operator says, by name, that anyone may replace the policy.
	out := refused(t, "", "serve", "--addr", "127.0.0.1:0", "--nats-listen", "127.0.0.1:0", "--data-dir", t.TempDir(), "--nats-url", url, "--bundle-source", "nats")
	if !strings.Contains(out, "--bundle-verification-key") || !strings.Contains(out, "--insecure-unsigned-bundles") {
		t.Errorf("serve --bundle-source nats without a key said %q; want it to name --bundle-verification-key and --insecure-unsigned-bundles", out)
	}
	insecure := startCustody(t, "", "--nats-url", url, "--bundle-source", "nats", "--bundle-bucket", "insecure", "--insecure-unsigned-bundles")
	if !strings.Contains(insecure.Logs(), "--insecure-unsigned-bundles") {
		t.Errorf("serve --insecure-unsigned-bundles did not warn at start:\n%s", insecure.Logs())
	}
	if out, err := exec.Command(binary, "bundle", "push", unsigned, "--nats-url", url, "--bucket", "insecure").CombinedOutput(); err != nil {
		t.Fatalf("push to the insecure bucket: %v\n%s", err, out)
	}
	natstest.CheckFor(t, 30*time.Second, 20*time.Millisecond, func() error {
		for _, line := range strings.Split(insecure.Logs(), "\n") {
			if strings.Contains(line, `"revision":"evil-1"`) && strings.Contains(line, `"level":"warn"`) && strings.Contains(line, "--insecure-unsigned-bundles") {
				return nil
			}
		}
		return errors.New("no warning naming --insecure-unsigned-bundles when the unsigned evil-1 was loaded")
	})
	insecure.Stop(t)

	client := &http.Client{Timeout: 30 * time.Second}
	transfer := request("spiffe://evil.example/agents/unregistered", "mallory@evil.example", `["payments.write"]`, "transfer_funds")
	data := t.TempDir()
	args := []string{"--nats-url", url, "--bundle-source", "nats", "--bundle-verification-key", key.Verify}
	c := startCustody(t, data, args...)
	wait := func(what string, ok func(policyState) bool) {
		t.Helper()
		natstest.CheckFor(t, 30*time.Second, 20*time.Millisecond, func() error {
			st, err := getPolicy(client, c.HTTP)
			if err != nil {
				return err
			}
			if !ok(st) {
				return fmt.Errorf("%+v: want %s", st, what)
			}
			return nil
		})
	}
	denied := func(rev string) {
		t.Helper()
		d, err := decide(client, c.HTTP, transfer)
		if err != nil || d.Status != http.StatusOK || d.Allow || d.Policy.Revision != rev {
			t.Fatalf("transfer_funds by an unregistered agent: %+v %v; want a deny by %s", d, err, rev)
		}
	}
	push := func(file string) {
		t.Helper()
		if out, err := exec.Command(binary, "bundle", "push", file, "--nats-url", url, "--bundle-verification-key", key.Verify).CombinedOutput(); err != nil {
			t.Fatalf("custody bundle push %s: %v\n%s", file, err, out)
		}
	}
	// The attacker writes the object with any NATS client, not custody's careful push.
	js := connectJS(t, url)
	store, err := natsobj.Bucket(t.Context(), js, natsobj.Config{})
	if err != nil {
		t.Fatal(err)
	}
	attack := func(file string) {
		t.Helper()
		raw, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := natsobj.Push(t.Context(), store, natsobj.Config{}, raw, "whatever"); err != nil {
			t.Fatal(err)
		}
	}

	push(v1)
	wait("guard-1", func(st policyState) bool { return st.Revision == "guard-1" })
	attack(unsigned)
	wait("unsigned refused", func(st policyState) bool { return st.Failures == 1 && strings.Contains(st.LastError, "signature") })
	denied("guard-1")
	attack(forged)
	wait("wrong key refused", func(st policyState) bool { return st.Failures == 2 && strings.Contains(st.LastError, "signature") })
	denied("guard-1")
	push(v2)
	wait("guard-2", func(st policyState) bool { return st.Revision == "guard-2" })
	attack(v1) // validly signed, once served: a rollback
	wait("rollback refused", func(st policyState) bool {
		return st.Revision == "guard-2" && st.Failures == 3 && strings.Contains(st.LastError, "rollback")
	})
	if !strings.Contains(c.Logs(), "rollback") {
		t.Errorf("the rollback was not logged:\n%s", c.Logs())
	}

	// A restart reads the highest serial served from the data dir: v1, still in the bucket,
	// stays out.
	c.Stop(t)
	c = startCustody(t, data, args...)
	wait("rollback refused after a restart", func(st policyState) bool {
		return st.Revision == "" && strings.Contains(st.LastError, "rollback")
	})
	if code, err := readyStatus(client, c.HTTP); err != nil || code != http.StatusServiceUnavailable {
		t.Errorf("/readyz with only a rolled-back bundle: %d %v; want 503", code, err)
	}
	push(v3)
	wait("guard-3", func(st policyState) bool { return st.Revision == "guard-3" })
	denied("guard-3")
}

func connectJS(t *testing.T, url string) jetstream.JetStream {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}
