// Command loadgen is a small closed-loop HTTP load generator for comparing policy-decision
// points, such as custody and OPA's server, on the same machine and inputs.
//
// Load mode (the default) runs -c workers for -warmup plus -d. Each worker has its own keep-alive
// connection and sends its next POST as soon as the previous answer has been read in full. Bodies
// come from -body (one JSON document) or -bodies (one JSON document a line, taken in turn by all
// workers, so that a server is never measured on one cached input). Only requests started after
// the warm-up count; the latencies of answered requests go into a log-linear histogram (1 µs to
// 60 s, under 1% relative error). Errors (transport failures, timeouts) and non-2xx answers are
// counted apart from successes and are never hidden: the run exits 1 when any request failed,
// in any phase, unless -fail=false.
//
//	loadgen -url http://127.0.0.1:8181/v1/authorize -bodies custody.jsonl -c 64 -d 20s -warmup 5s -json
//
// Batch mode measures the AuthZEN batch against single evaluations on one connection, one request
// at a time: each round times n POSTs to BASE/access/v1/evaluation one after another, then one
// POST to BASE/access/v1/evaluations carrying the same n items, checks that the batch answers n
// decisions equal to the single answers, and reports the medians over the rounds and their ratio.
//
//	loadgen batch -url http://127.0.0.1:8181 -items authzen.jsonl -n 100 -rounds 20 -json
//
// Output is one human-readable line on standard error, and with -json one JSON object on
// standard output. Report mode reads such JSON lines back and prints, for each run name and
// concurrency, the averages over rounds and their ratios to a baseline run name:
//
//	loadgen report -base opa -vs custody last-run.txt
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"math/bits"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

func main() {
	var err error
	switch {
	case len(os.Args) > 1 && os.Args[1] == "batch":
		err = runBatch(os.Args[2:])
	case len(os.Args) > 1 && os.Args[1] == "report":
		err = runReport(os.Args[2:])
	default:
		err = runLoad(os.Args[1:])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(1)
	}
}

// headers is a repeatable -header K:V flag.
type headers []string

func (h *headers) String() string { return strings.Join(*h, ", ") }
func (h *headers) Set(v string) error {
	if k, _, ok := strings.Cut(v, ":"); !ok || strings.TrimSpace(k) == "" {
		return fmt.Errorf("want K:V, got %q", v)
	}
	*h = append(*h, v)
	return nil
}

// apply sets the request's headers: JSON by default, then each -header.
func (h headers) apply(r *http.Request) {
	r.Header.Set("Content-Type", "application/json")
	for _, kv := range h {
		k, v, _ := strings.Cut(kv, ":")
		r.Header.Set(strings.TrimSpace(k), strings.TrimSpace(v))
	}
}

// newClient returns a client with its own transport of at most conns keep-alive connections,
// counting each connection it dials in dials.
func newClient(conns int, timeout time.Duration, dials *atomic.Int64) *http.Client {
	d := &net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}
	return &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				dials.Add(1)
				return d.DialContext(ctx, network, addr)
			},
			MaxIdleConns:        conns,
			MaxIdleConnsPerHost: conns,
			MaxConnsPerHost:     conns,
			IdleConnTimeout:     90 * time.Second,
			DisableCompression:  true,
		},
	}
}

// post sends body to url and reads the whole answer. err is a transport failure; a non-2xx
// answer is returned with its status and body, not as an error.
func post(ctx context.Context, c *http.Client, url string, h headers, body []byte) (status int, resp []byte, err error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	h.apply(req)
	res, err := c.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer res.Body.Close()
	resp, err = io.ReadAll(res.Body)
	if err != nil {
		return res.StatusCode, nil, fmt.Errorf("read answer: %w", err)
	}
	return res.StatusCode, resp, nil
}

// readBodies reads one body, or one body a line (blank lines skipped). Each must be valid JSON.
func readBodies(path string, perLine bool) ([][]byte, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out [][]byte
	if !perLine {
		out = [][]byte{bytes.TrimSpace(raw)}
	} else {
		for line := range bytes.Lines(raw) {
			if line = bytes.TrimSpace(line); len(line) > 0 {
				out = append(out, line)
			}
		}
	}
	for i, b := range out {
		if !json.Valid(b) {
			return nil, fmt.Errorf("%s: body %d is not valid JSON", path, i+1)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s: no bodies", path)
	}
	return out, nil
}

// ---------------------------------------------------------------------------
// Load mode
// ---------------------------------------------------------------------------

// loadResult is the JSON line of a load run. Latencies are of answered requests (2xx or not)
// started in the measured window; rps counts 2xx answers only.
type loadResult struct {
	Name      string  `json:"name"`
	Shape     string  `json:"shape,omitempty"` // traffic shape, as -shape: ratios are taken within one
	URL       string  `json:"url"`
	Conns     int     `json:"conns"`
	DurationS float64 `json:"duration_s"`
	Bodies    int     `json:"bodies"`
	RPS       float64 `json:"rps"`
	P50       float64 `json:"p50_ms"`
	P90       float64 `json:"p90_ms"`
	P99       float64 `json:"p99_ms"`
	P999      float64 `json:"p999_ms"`
	Max       float64 `json:"max_ms"`
	Mean      float64 `json:"mean_ms"`
	Requests  int64   `json:"requests"` // started in the measured window: ok + non2xx + errors
	OK        int64   `json:"ok"`
	Non2xx    int64   `json:"non2xx"`
	Errors    int64   `json:"errors"`
	// Over the whole run, warm-up included: what the server answered, for reconciling with its
	// own counts (such as records written).
	Warmup     int64  `json:"warmup_requests"`
	Total2xx   int64  `json:"total_2xx"`
	TotalFail  int64  `json:"total_failed"`
	Dials      int64  `json:"dials"` // connections opened; more than conns means reconnects
	FirstError string `json:"first_error,omitempty"`
	// The server's CPU time (user and system, from /proc) per request over the whole run,
	// warm-up included; run.sh adds it, since loadgen does not know the server's process.
	ServerCPU float64 `json:"server_cpu_us_per_req,omitempty"`
}

// counts are one worker's tallies.
type counts struct {
	ok, non2xx, errs    int64 // measured window
	warmup              int64
	total2xx, totalFail int64
	firstErr            string
	hist                histogram
}

func runLoad(args []string) error {
	fs := flag.NewFlagSet("loadgen", flag.ExitOnError)
	var (
		url      = fs.String("url", "", "target `URL` (required)")
		conns    = fs.Int("c", 16, "concurrency: workers, each with its own keep-alive connection")
		dur      = fs.Duration("d", 10*time.Second, "measured duration")
		warmup   = fs.Duration("warmup", 2*time.Second, "warm-up before the measured duration; not counted")
		body     = fs.String("body", "", "`file` holding the JSON body of every request")
		bodies   = fs.String("bodies", "", "`file` with one JSON body a line, used in turn")
		mode     = fs.String("mode", "post", "request mode; only post")
		name     = fs.String("name", "", "label of this run in the output")
		asJSON   = fs.Bool("json", false, "print one JSON object on standard output")
		timeout  = fs.Duration("timeout", 30*time.Second, "per-request timeout; a timeout is an error")
		failExit = fs.Bool("fail", true, "exit 1 when any request failed (error or non-2xx), warm-up included")
		shape    = fs.String("shape", "", "traffic shape `label` of this run in the output (report compares within a shape)")
		unique   = fs.String("unique", "", "`placeholder` replaced in every request with a value this process never sent before")
		hdrs     headers
	)
	fs.Var(&hdrs, "header", "extra request header `K:V`; repeatable")
	_ = fs.Parse(args)
	switch {
	case *url == "":
		return errors.New("-url is required")
	case *mode != "post":
		return fmt.Errorf("-mode %q: only post is supported", *mode)
	case (*body == "") == (*bodies == ""):
		return errors.New("give exactly one of -body and -bodies")
	case *conns < 1 || *dur <= 0 || *warmup < 0:
		return errors.New("-c must be positive, -d positive and -warmup not negative")
	}
	path, perLine := *body, false
	if *bodies != "" {
		path, perLine = *bodies, true
	}
	reqs, err := readBodies(path, perLine)
	if err != nil {
		return err
	}
	if *name == "" {
		*name = *url
	}

	var dials atomic.Int64
	var next atomic.Uint64 // index of the next body, shared so that all bodies are used in turn
	// With -unique, request n carries "<run>-<n>": the run prefix (the start time) keeps the values
	// of successive loadgen runs against one server apart too.
	uniq := []byte(*unique)
	runPrefix := strconv.FormatInt(time.Now().UnixNano(), 36)
	start := time.Now()
	measureFrom := start.Add(*warmup)
	end := measureFrom.Add(*dur)
	ctx := context.Background()
	per := make([]*counts, *conns)
	var wg sync.WaitGroup
	for w := range *conns {
		cn := &counts{}
		per[w] = cn
		client := newClient(1, *timeout, &dials)
		wg.Go(func() {
			for {
				t0 := time.Now()
				if !t0.Before(end) {
					return
				}
				measured := !t0.Before(measureFrom)
				n := next.Add(1) - 1
				b := reqs[n%uint64(len(reqs))]
				if len(uniq) > 0 {
					b = bytes.ReplaceAll(b, uniq, []byte(runPrefix+"-"+strconv.FormatUint(n, 10)))
				}
				status, resp, err := post(ctx, client, *url, hdrs, b)
				lat := time.Since(t0)
				if !measured {
					cn.warmup++
				}
				switch {
				case err != nil:
					cn.totalFail++
					if cn.firstErr == "" {
						cn.firstErr = err.Error()
					}
					if measured {
						cn.errs++
					}
					time.Sleep(10 * time.Millisecond) // do not spin against a dead server
					continue
				case status < 200 || status > 299:
					cn.totalFail++
					if cn.firstErr == "" {
						cn.firstErr = fmt.Sprintf("HTTP %d: %.200s", status, resp)
					}
					if measured {
						cn.non2xx++
					}
				default:
					cn.total2xx++
					if measured {
						cn.ok++
					}
				}
				if measured {
					cn.hist.record(lat)
				}
			}
		})
	}
	wg.Wait()

	var all counts
	for _, cn := range per {
		all.ok += cn.ok
		all.non2xx += cn.non2xx
		all.errs += cn.errs
		all.warmup += cn.warmup
		all.total2xx += cn.total2xx
		all.totalFail += cn.totalFail
		if all.firstErr == "" {
			all.firstErr = cn.firstErr
		}
		all.hist.merge(&cn.hist)
	}
	h := &all.hist
	r := loadResult{
		Name: *name, Shape: *shape, URL: *url, Conns: *conns, DurationS: dur.Seconds(), Bodies: len(reqs),
		RPS: float64(all.ok) / dur.Seconds(),
		P50: h.quantileMS(0.50), P90: h.quantileMS(0.90), P99: h.quantileMS(0.99), P999: h.quantileMS(0.999),
		Max: ms(h.max), Mean: h.meanMS(),
		Requests: all.ok + all.non2xx + all.errs, OK: all.ok, Non2xx: all.non2xx, Errors: all.errs,
		Warmup: all.warmup, Total2xx: all.total2xx, TotalFail: all.totalFail, Dials: dials.Load(),
		FirstError: all.firstErr,
	}
	fmt.Fprintf(os.Stderr, "%s: c=%d %s: %d requests, %.0f req/s (2xx), p50 %.2f ms, p90 %.2f ms, p99 %.2f ms, p99.9 %.2f ms, max %.2f ms; non-2xx %d, errors %d, connections %d\n",
		r.Name, r.Conns, dur, r.Requests, r.RPS, r.P50, r.P90, r.P99, r.P999, r.Max, r.Non2xx, r.Errors, r.Dials)
	if r.TotalFail > 0 {
		fmt.Fprintf(os.Stderr, "%s: FAILED REQUESTS: %d (warm-up included); first: %s\n", r.Name, r.TotalFail, r.FirstError)
	}
	if *asJSON {
		if err := json.NewEncoder(os.Stdout).Encode(r); err != nil {
			return err
		}
	}
	if *failExit && r.TotalFail > 0 {
		return fmt.Errorf("%d requests failed", r.TotalFail)
	}
	return nil
}

// ---------------------------------------------------------------------------
// Batch mode
// ---------------------------------------------------------------------------

type batchResult struct {
	Name         string  `json:"name"`
	N            int     `json:"n"`
	Rounds       int     `json:"rounds"`
	SingleMS     float64 `json:"single_ms_median"` // n single evaluations, one after another
	BatchMS      float64 `json:"batch_ms_median"`  // one batch of the same n
	Ratio        float64 `json:"ratio"`            // single / batch
	Allowed      int     `json:"allowed"`          // per round
	Denied       int     `json:"denied"`
	Decisions    int64   `json:"decisions"` // decisions answered in all, warm-up round included
	SinglePerOp  float64 `json:"single_ms_per_eval"`
	BatchPerItem float64 `json:"batch_ms_per_eval"`
}

func runBatch(args []string) error {
	fs := flag.NewFlagSet("loadgen batch", flag.ExitOnError)
	var (
		base    = fs.String("url", "", "custody's base `URL`, such as http://127.0.0.1:8181 (required)")
		items   = fs.String("items", "", "`file` with one AuthZEN evaluation (subject, action, resource, context) a line (required)")
		n       = fs.Int("n", 100, "evaluations per round: singles, and items in the batch")
		rounds  = fs.Int("rounds", 10, "measured rounds; one more, unmeasured, warms up")
		name    = fs.String("name", "authzen-batch", "label of this run in the output")
		asJSON  = fs.Bool("json", false, "print one JSON object on standard output")
		timeout = fs.Duration("timeout", 60*time.Second, "per-request timeout")
		hdrs    headers
	)
	fs.Var(&hdrs, "header", "extra request header `K:V`; repeatable")
	_ = fs.Parse(args)
	if *base == "" || *items == "" || *n < 1 || *rounds < 1 {
		return errors.New("batch: -url and -items are required; -n and -rounds must be positive")
	}
	pool, err := readBodies(*items, true)
	if err != nil {
		return err
	}
	evals := make([]json.RawMessage, *n)
	for i := range evals {
		evals[i] = pool[i%len(pool)]
	}
	batchBody, err := json.Marshal(map[string]any{
		"evaluations": evals,
		"options":     map[string]any{"evaluations_semantic": "execute_all"},
	})
	if err != nil {
		return err
	}
	base2 := strings.TrimRight(*base, "/")
	var dials atomic.Int64
	client := newClient(1, *timeout, &dials) // one connection, one request at a time
	ctx := context.Background()
	var decisions int64

	call := func(url string, body []byte, v any) error {
		status, resp, err := post(ctx, client, url, hdrs, body)
		if err != nil {
			return err
		}
		if status != http.StatusOK {
			return fmt.Errorf("%s: HTTP %d: %.300s", url, status, resp)
		}
		if err := json.Unmarshal(resp, v); err != nil {
			return fmt.Errorf("%s: answer: %w", url, err)
		}
		return nil
	}
	type decision struct {
		Decision *bool `json:"decision"`
	}
	var singles, batches []time.Duration
	var allowed int
	for round := range *rounds + 1 {
		want := make([]bool, *n)
		t0 := time.Now()
		for i, e := range evals {
			var d decision
			if err := call(base2+"/access/v1/evaluation", e, &d); err != nil {
				return err
			}
			if d.Decision == nil {
				return fmt.Errorf("evaluation %d: answer without a decision", i)
			}
			want[i] = *d.Decision
			decisions++
		}
		single := time.Since(t0)

		var res struct {
			Evaluations []decision `json:"evaluations"`
		}
		t0 = time.Now()
		if err := call(base2+"/access/v1/evaluations", batchBody, &res); err != nil {
			return err
		}
		batch := time.Since(t0)
		if len(res.Evaluations) != *n {
			return fmt.Errorf("batch answered %d decisions, want %d", len(res.Evaluations), *n)
		}
		decisions += int64(*n)
		allowed = 0
		for i, d := range res.Evaluations {
			if d.Decision == nil || *d.Decision != want[i] {
				return fmt.Errorf("batch item %d: decision %v, but the single evaluation answered %v", i, d.Decision, want[i])
			}
			if want[i] {
				allowed++
			}
		}
		if round > 0 { // round 0 warms up
			singles = append(singles, single)
			batches = append(batches, batch)
		}
	}
	r := batchResult{
		Name: *name, N: *n, Rounds: *rounds,
		SingleMS: ms(median(singles)), BatchMS: ms(median(batches)),
		Allowed: allowed, Denied: *n - allowed, Decisions: decisions,
	}
	r.Ratio = r.SingleMS / r.BatchMS
	r.SinglePerOp, r.BatchPerItem = r.SingleMS/float64(*n), r.BatchMS/float64(*n)
	fmt.Fprintf(os.Stderr, "%s: %d rounds of %d evaluations (%d allowed, %d denied): %d singles %.1f ms, one batch %.1f ms (medians): batch is %.1fx faster; connections %d\n",
		r.Name, r.Rounds, r.N, r.Allowed, r.Denied, r.N, r.SingleMS, r.BatchMS, r.Ratio, dials.Load())
	if *asJSON {
		return json.NewEncoder(os.Stdout).Encode(r)
	}
	return nil
}

// ---------------------------------------------------------------------------
// Report mode
// ---------------------------------------------------------------------------

func runReport(args []string) error {
	fs := flag.NewFlagSet("loadgen report", flag.ExitOnError)
	base := fs.String("base", "", "run name the ratios are taken against")
	vs := fs.String("vs", "", "comma-separated run names to give ratios for (default: all but -base)")
	_ = fs.Parse(args)
	if fs.NArg() != 1 {
		return errors.New("report: want one file of JSON lines")
	}
	raw, err := os.ReadFile(fs.Arg(0))
	if err != nil {
		return err
	}
	type key struct {
		shape string
		name  string
		conns int
	}
	type agg struct {
		n                     int
		rps, p50, p99, errors float64
		cpuN                  int
		cpu                   float64
	}
	sums := map[key]*agg{}
	var keys []key
	for line := range bytes.Lines(raw) {
		var r loadResult
		if json.Unmarshal(line, &r) != nil || r.Conns == 0 || r.DurationS == 0 {
			continue // not a load result
		}
		k := key{r.Shape, r.Name, r.Conns}
		a := sums[k]
		if a == nil {
			a = &agg{}
			sums[k] = a
			keys = append(keys, k)
		}
		a.n++
		a.rps += r.RPS
		a.p50 += r.P50
		a.p99 += r.P99
		a.errors += float64(r.Errors + r.Non2xx)
		if r.ServerCPU > 0 {
			a.cpuN++
			a.cpu += r.ServerCPU
		}
	}
	slices.SortStableFunc(keys, func(a, b key) int {
		if c := strings.Compare(a.shape, b.shape); c != 0 {
			return c
		}
		return a.conns - b.conns
	})
	fmt.Printf("%-10s %-14s %6s %7s %10s %9s %9s %8s %10s %10s %11s %10s\n", "shape", "server", "conns", "rounds", "req/s", "p50 ms", "p99 ms", "failed", "rps/"+*base, "p99/"+*base, "cpu us/req", "cpu/"+*base)
	for _, k := range keys {
		a := sums[k]
		n := float64(a.n)
		rRPS, rP99, cpu, rCPU := "", "", "", ""
		if a.cpuN > 0 {
			cpu = fmt.Sprintf("%.0f", a.cpu/float64(a.cpuN))
		}
		if b := sums[key{k.shape, *base, k.conns}]; b != nil && k.name != *base && (*vs == "" || slices.Contains(strings.Split(*vs, ","), k.name)) {
			rRPS = fmt.Sprintf("%.2f", (a.rps/n)/(b.rps/float64(b.n)))
			rP99 = fmt.Sprintf("%.2f", (a.p99/n)/(b.p99/float64(b.n)))
			if a.cpuN > 0 && b.cpuN > 0 {
				rCPU = fmt.Sprintf("%.2f", (a.cpu/float64(a.cpuN))/(b.cpu/float64(b.cpuN)))
			}
		}
		fmt.Printf("%-10s %-14s %6d %7d %10.0f %9.2f %9.2f %8.0f %10s %10s %11s %10s\n", k.shape, k.name, k.conns, a.n, a.rps/n, a.p50/n, a.p99/n, a.errors, rRPS, rP99, cpu, rCPU)
	}
	return nil
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func ms(d time.Duration) float64 { return math.Round(float64(d)/1e3) / 1e3 }

// ---------------------------------------------------------------------------
// Histogram
// ---------------------------------------------------------------------------

// histogram counts latencies in microseconds, log-linear as HDR histograms do: values below 256
// µs exactly, and above that 128 buckets per power of two, so a bucket is at most 1/128 (0.8%)
// of its values wide. Values are clamped to 1 µs..60 s; the exact maximum is kept apart.
type histogram struct {
	buckets [nBuckets]int64
	n       int64
	sumUS   int64
	max     time.Duration
}

const (
	subBits  = 7 // 128 sub-buckets per power of two
	maxUS    = 60_000_000
	nBuckets = 2<<subBits + (26-subBits-1)<<subBits // 60e6 < 2^26
)

func bucketOf(us int64) int {
	if us < 2<<subBits {
		return int(us)
	}
	e := bits.Len64(uint64(us)) - subBits - 1 // us>>e is in [128, 256)
	return 2<<subBits + (e-1)<<subBits + int(us>>e) - 1<<subBits
}

// upper returns the highest value bucket i holds, in microseconds.
func upper(i int) int64 {
	if i < 2<<subBits {
		return int64(i)
	}
	i -= 2 << subBits
	e := i>>subBits + 1
	m := int64(i&(1<<subBits-1)) + 1<<subBits
	return (m+1)<<e - 1
}

func (h *histogram) record(d time.Duration) {
	us := min(max(d.Microseconds(), 1), maxUS)
	h.buckets[bucketOf(us)]++
	h.n++
	h.sumUS += us
	h.max = max(h.max, d)
}

func (h *histogram) merge(o *histogram) {
	for i, c := range o.buckets {
		h.buckets[i] += c
	}
	h.n += o.n
	h.sumUS += o.sumUS
	h.max = max(h.max, o.max)
}

// quantileMS returns the value at quantile q in milliseconds: the upper edge of the bucket
// holding it, never above the maximum seen.
func (h *histogram) quantileMS(q float64) float64 {
	if h.n == 0 {
		return 0
	}
	rank := max(int64(math.Ceil(q*float64(h.n))), 1)
	var seen int64
	for i, c := range h.buckets {
		if seen += c; seen >= rank {
			return min(ms(time.Duration(upper(i))*time.Microsecond), ms(h.max))
		}
	}
	return ms(h.max)
}

func (h *histogram) meanMS() float64 {
	if h.n == 0 {
		return 0
	}
	return math.Round(float64(h.sumUS)/float64(h.n)) / 1e3
}
