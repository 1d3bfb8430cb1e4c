// Command genbodies writes the request bodies of the load harness (test/load/run.sh), and checks
// that custody and OPA's server decide them alike.
//
//	genbodies -out DIR [-n 400] [-seed 1] [-intent-key FILE]
//
// writes three files with one JSON document a line, line i of each being the same request:
//
//	custody.jsonl  custody's native POST /v1/authorize body
//	opa.jsonl      {"input": ...} for OPA's POST /v1/data/custody/authz/decision: the exact policy
//	               input custody builds from that body (agentcall.Input)
//	authzen.jsonl  an AuthZEN evaluation of the same call (requests with a user only)
//
// The requests are varied but realistic: registered agents and an unregistered one, users with
// different scopes and roles, the tools of the default catalog (policies/data.json) and unknown
// ones, right, missing and wrong MCP servers, own and other users' resources, tasks and contexts.
// Some are allowed, most are denied for one reason or another. The output is the same for the
// same -seed. Task intents are hashed with the key in -intent-key (created if absent, hex), which
// custody must be started with (--intent-key-file) for input.task.intent_sha256 to match.
//
//	genbodies check -dir DIR -custody http://127.0.0.1:8181 -opa http://127.0.0.1:8282
//
// posts every pair to both servers and exits 1 unless each answer of custody has the same allow,
// reasons and obligations as OPA's.
package main

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	mrand "math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/custodyhq/custody/agentcall"
	"github.com/custodyhq/custody/decisionlog"
	"github.com/custodyhq/custody/pdp"
	"github.com/custodyhq/custody/policies"
)

func main() {
	var err error
	if len(os.Args) > 1 && os.Args[1] == "check" {
		err = runCheck(os.Args[2:])
	} else {
		err = runGenerate(os.Args[1:])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "genbodies:", err)
		os.Exit(1)
	}
}

// The files genbodies writes.
const (
	fileCustody = "custody.jsonl"
	fileOPA     = "opa.jsonl"
	fileAuthZEN = "authzen.jsonl"
)

// The two traffic shapes of the comparison, each a custody file and an OPA file line for line.
//
// repeat: RepeatBodies requests that differ only in what the policy never reads (correlation
// ID, task, context, arguments): custody answers all but the first of each from its decision
// memo, as it would an agent repeating a call.
//
// distinct: every request with a user, its scopes holding one extra scope named Unique, which
// loadgen -unique replaces with a value never sent before. The policy reads the scopes (the
// memo key includes them), so no two requests of a run share a memo entry, while the extra
// scope names nothing in the catalog and leaves each request's decision what it would be.
const (
	fileRepeatCustody   = "repeat-custody.jsonl"
	fileRepeatOPA       = "repeat-opa.jsonl"
	fileDistinctCustody = "distinct-custody.jsonl"
	fileDistinctOPA     = "distinct-opa.jsonl"
	// RepeatBodies is the number of bodies of the repeating shape.
	RepeatBodies = 8
	// Unique is the placeholder loadgen -unique replaces with a fresh value in every request.
	Unique = "@@UNIQUE@@"
)

// catalog is the part of policies/data.json the generator draws from.
type catalog struct {
	Custody struct {
		Agents map[string]struct {
			Grants []string `json:"grants"`
		} `json:"agents"`
		Tools map[string]struct {
			Scope  string `json:"scope"`
			Access string `json:"access"`
			Server string `json:"server"`
		} `json:"tools"`
	} `json:"custody"`
}

// The native request, as custody decodes it (server/decode.go).
type (
	request struct {
		CorrelationID string         `json:"correlation_id,omitempty"`
		Agent         entity         `json:"agent"`
		User          *entity        `json:"user,omitempty"`
		Tool          tool           `json:"tool"`
		Resource      *entity        `json:"resource,omitempty"`
		Task          *task          `json:"task,omitempty"`
		Context       map[string]any `json:"context,omitempty"`
	}
	entity struct {
		Type       string         `json:"type,omitempty"`
		ID         string         `json:"id"`
		Properties map[string]any `json:"properties,omitempty"`
	}
	tool struct {
		Name      string         `json:"name"`
		Server    string         `json:"server,omitempty"`
		Arguments map[string]any `json:"arguments,omitempty"`
	}
	task struct {
		ID        string `json:"id,omitempty"`
		ParentID  string `json:"parent_id,omitempty"`
		Attempt   int64  `json:"attempt,omitempty"`
		SessionID string `json:"session_id,omitempty"`
		Intent    string `json:"intent,omitempty"`
	}
)

type user struct {
	id     string
	roles  []any
	scopes []any
}

func runGenerate(args []string) error {
	fs := flag.NewFlagSet("genbodies", flag.ExitOnError)
	out := fs.String("out", "", "directory to write the body files into (required)")
	n := fs.Int("n", 400, "number of requests")
	seed := fs.Uint64("seed", 1, "random seed; the same seed gives the same bodies")
	keyFile := fs.String("intent-key", "", "hex HMAC key `file` for task intents, as custody's --intent-key-file; created if absent (without it, requests carry no intent)")
	_ = fs.Parse(args)
	if *out == "" || *n < 1 {
		return errors.New("-out is required and -n must be positive")
	}
	var hasher *decisionlog.IntentHasher
	if *keyFile != "" {
		key, err := intentKey(*keyFile)
		if err != nil {
			return err
		}
		hasher = decisionlog.NewIntentHasher(key)
	}
	raw, err := policies.FS.ReadFile("data.json")
	if err != nil {
		return err
	}
	var cat catalog
	if err := json.Unmarshal(raw, &cat); err != nil {
		return fmt.Errorf("policies/data.json: %w", err)
	}
	g := newGenerator(cat, *seed)

	if err := os.MkdirAll(*out, 0o755); err != nil {
		return err
	}
	var custody, opa, authzen, repCustody, repOPA, disCustody, disOPA bytes.Buffer
	pair := func(c, o *bytes.Buffer, r *request) error {
		if err := appendLine(c, r); err != nil {
			return err
		}
		return appendLine(o, map[string]any{"input": policyInput(r, hasher).Value()})
	}
	for i := range *n {
		r := g.request(i, hasher != nil)
		if err := pair(&custody, &opa, r); err != nil {
			return err
		}
		if r.User != nil {
			if err := appendLine(&authzen, authzenItem(r)); err != nil {
				return err
			}
			if err := pair(&disCustody, &disOPA, withUniqueScope(r)); err != nil {
				return err
			}
		}
	}
	for i := range RepeatBodies {
		if err := pair(&repCustody, &repOPA, g.repeated(i, hasher != nil)); err != nil {
			return err
		}
	}
	for name, b := range map[string]*bytes.Buffer{
		fileCustody: &custody, fileOPA: &opa, fileAuthZEN: &authzen,
		fileRepeatCustody: &repCustody, fileRepeatOPA: &repOPA,
		fileDistinctCustody: &disCustody, fileDistinctOPA: &disOPA,
	} {
		if err := os.WriteFile(filepath.Join(*out, name), b.Bytes(), 0o644); err != nil {
			return err
		}
	}
	fmt.Fprintf(os.Stderr, "genbodies: wrote %d requests to %s (%s, %s, %s)\n", *n, *out, fileCustody, fileOPA, fileAuthZEN)
	return nil
}

// intentKey reads the hex key in path, first creating a random one there if there is none.
func intentKey(path string) ([]byte, error) {
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		b := make([]byte, 32)
		_, _ = rand.Read(b)
		if err := os.WriteFile(path, []byte(hex.EncodeToString(b)+"\n"), 0o600); err != nil {
			return nil, err
		}
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	key, err := hex.DecodeString(strings.TrimSpace(string(raw)))
	if err != nil || len(key) < 16 {
		return nil, fmt.Errorf("intent key %s: want at least 16 bytes, hex encoded", path)
	}
	return key, nil
}

func appendLine(b *bytes.Buffer, v any) error {
	line, err := json.Marshal(v)
	if err != nil {
		return err
	}
	b.Write(line)
	b.WriteByte('\n')
	return nil
}

// policyInput is the policy input custody builds from r, for a request without credentials:
// the server's own mapping (agentcall), so that the check subcommand compares against what
// custody really gives the policy.
func policyInput(r *request, hasher *decisionlog.IntentHasher) *pdp.Input {
	call := &agentcall.Call{
		Agent:         &pdp.Agent{ID: r.Agent.ID, Type: r.Agent.Type, Properties: r.Agent.Properties},
		Action:        agentcall.ToolAction(r.Tool.Name, r.Tool.Server, r.Tool.Arguments),
		Resource:      agentcall.ToolResource(r.Tool.Name),
		Context:       r.Context,
		CorrelationID: r.CorrelationID,
	}
	if r.User != nil {
		call.Subject = &pdp.Entity{Type: r.User.Type, ID: r.User.ID, Properties: r.User.Properties}
	}
	if r.Resource != nil {
		call.Resource = pdp.Entity{Type: r.Resource.Type, ID: r.Resource.ID, Properties: r.Resource.Properties}
	}
	if r.Task != nil {
		call.Task = &agentcall.Task{ID: r.Task.ID, ParentID: r.Task.ParentID, Attempt: r.Task.Attempt, SessionID: r.Task.SessionID, Intent: r.Task.Intent}
	}
	var intent agentcall.IntentHasher
	if hasher != nil {
		intent = hasher
	}
	return agentcall.Input(call, intent)
}

// authzenItem is r as an AuthZEN evaluation, the agent envelope in its context.
func authzenItem(r *request) map[string]any {
	res := map[string]any{"type": "tool", "id": r.Tool.Name}
	if r.Resource != nil {
		res = map[string]any{"type": r.Resource.Type, "id": r.Resource.ID, "properties": r.Resource.Properties}
	}
	action := map[string]any{"name": r.Tool.Name}
	if r.Tool.Server != "" {
		action["properties"] = map[string]any{"server": r.Tool.Server}
	}
	return map[string]any{
		"subject":  map[string]any{"type": "user", "id": r.User.ID, "properties": r.User.Properties},
		"action":   action,
		"resource": res,
		"context":  map[string]any{"agent": map[string]any{"id": r.Agent.ID}, "correlation_id": r.CorrelationID},
	}
}

type generator struct {
	rnd     *mrand.Rand
	seed    uint64
	cat     catalog
	agents  []string // sorted registered agents
	tools   []string // sorted catalog tools
	scopes  []string // every scope the catalog names
	users   []user
	byScope map[string][]string // tools by scope
}

func newGenerator(cat catalog, seed uint64) *generator {
	g := &generator{rnd: mrand.New(mrand.NewPCG(seed, 0x5eed)), seed: seed, cat: cat, byScope: map[string][]string{}}
	for id := range cat.Custody.Agents {
		g.agents = append(g.agents, id)
	}
	for name, t := range cat.Custody.Tools {
		g.tools = append(g.tools, name)
		g.byScope[t.Scope] = append(g.byScope[t.Scope], name)
		if !slices.Contains(g.scopes, t.Scope) {
			g.scopes = append(g.scopes, t.Scope)
		}
	}
	sort.Strings(g.agents)
	sort.Strings(g.tools)
	sort.Strings(g.scopes)
	for _, ts := range g.byScope {
		sort.Strings(ts)
	}
	// A few named users with typical profiles, and more with random scopes.
	g.users = []user{
		{"alice@acme.example", []any{"employee"}, []any{"mail.send", "mail.read", "contacts.read", "files.read", "files.write"}},
		{"bob@acme.example", []any{"employee"}, []any{"web.search", "files.read"}},
		{"carol@acme.example", []any{"employee", "admin"}, anys(g.scopes)},
		{"dave@acme.example", []any{"contractor"}, []any{}},
	}
	for i := range 16 {
		u := user{id: fmt.Sprintf("user%02d@acme.example", i), roles: []any{"employee"}, scopes: []any{}}
		if i%8 == 0 {
			u.roles = append(u.roles, "admin")
		}
		for _, s := range g.scopes {
			if g.rnd.IntN(100) < 55 {
				u.scopes = append(u.scopes, s)
			}
		}
		g.users = append(g.users, u)
	}
	return g
}

func anys(ss []string) []any {
	out := make([]any, len(ss))
	for i, s := range ss {
		out[i] = s
	}
	return out
}

func (g *generator) pick(ss []string) string { return ss[g.rnd.IntN(len(ss))] }
func (g *generator) pct(p int) bool          { return g.rnd.IntN(100) < p }

// request draws request i.
func (g *generator) request(i int, withIntent bool) *request {
	r := &request{CorrelationID: fmt.Sprintf("load-%d-%05d", g.seed, i)}

	agentID := g.pick(g.agents)
	if g.pct(5) {
		agentID = "spiffe://acme.example/agents/intern" // not registered
	}
	r.Agent = entity{ID: agentID}
	if g.pct(20) {
		r.Agent.Properties = map[string]any{"deployment": fmt.Sprintf("prod-%d", g.rnd.IntN(3)), "model": "gpt-x"}
	}

	var u user
	if !g.pct(5) { // else the agent acts for nobody and is the subject itself
		u = g.users[g.rnd.IntN(len(g.users))]
		r.User = &entity{ID: u.id, Properties: map[string]any{"roles": u.roles, "scopes": u.scopes}}
		if g.pct(30) {
			r.User.Properties["department"] = g.pick([]string{"finance", "sales", "engineering"})
		}
	}

	// Mostly a tool the agent is granted, sometimes any catalog tool, rarely an unknown one.
	var name string
	switch grants := g.cat.Custody.Agents[agentID].Grants; {
	case g.pct(4):
		name = g.pick([]string{"drop_table", "exec_shell", "export_contacts"})
	case len(grants) > 0 && g.pct(75):
		if ts := g.byScope[g.pick(grants)]; len(ts) > 0 {
			name = g.pick(ts)
		} else {
			name = g.pick(g.tools)
		}
	default:
		name = g.pick(g.tools)
	}
	entry, known := g.cat.Custody.Tools[name]
	r.Tool = tool{Name: name, Arguments: g.arguments(name, i)}
	switch {
	case known && entry.Server != "" && g.pct(85):
		r.Tool.Server = entry.Server
	case g.pct(30):
		r.Tool.Server = g.pick([]string{"mail", "filesystem", "crm", "payments"}) // maybe the wrong one
	}

	owner := u.id
	if u.id == "" || g.pct(25) {
		owner = g.users[g.rnd.IntN(len(g.users))].id
	}
	switch {
	case strings.Contains(name, "file"):
		path := fmt.Sprintf("/home/%s/doc-%03d.txt", strings.Split(owner, "@")[0], g.rnd.IntN(500))
		r.Resource = &entity{Type: "file", ID: path, Properties: map[string]any{"owner": owner}}
	case strings.Contains(name, "mail") || strings.Contains(name, "inbox"):
		r.Resource = &entity{Type: "mailbox", ID: strings.Split(owner, "@")[0], Properties: map[string]any{"owner": owner}}
	case name == "transfer_funds":
		r.Resource = &entity{Type: "account", ID: fmt.Sprintf("acct-%d", g.rnd.IntN(50)), Properties: map[string]any{"owner": owner}}
	}

	if g.pct(85) {
		r.Task = &task{
			ID:        fmt.Sprintf("t-%d-%05d", g.seed, i),
			SessionID: fmt.Sprintf("s-%d", g.rnd.IntN(40)),
			Attempt:   int64(1 + g.rnd.IntN(3)),
		}
		if g.pct(40) {
			r.Task.ParentID = fmt.Sprintf("t-%d-%05d", g.seed, max(i-1-g.rnd.IntN(5), 0))
		}
		if withIntent {
			r.Task.Intent = g.pick([]string{
				"email bob the Q3 numbers", "summarise the board deck", "pay the Acme invoice",
				"clean up old drafts", "find the onboarding doc", "open a ticket about the VPN",
			})
		}
	}
	if g.pct(50) {
		r.Context = map[string]any{
			"channel":   g.pick([]string{"slack", "web", "cli"}),
			"client_ip": fmt.Sprintf("10.0.%d.%d", g.rnd.IntN(256), g.rnd.IntN(256)),
		}
	}
	return r
}

// withUniqueScope is a copy of r whose user holds one more scope, Unique (see the distinct
// shape).
func withUniqueScope(r *request) *request {
	c := *r
	u := *r.User
	u.Properties = maps.Clone(r.User.Properties)
	scopes, _ := u.Properties["scopes"].([]any)
	u.Properties["scopes"] = append(slices.Clone(scopes), Unique)
	c.User = &u
	return &c
}

// repeated is request i of the repeating shape: always the same allowed call (alice, through
// the ops agent, writes her own file on the filesystem server, a medium-risk write: every rule
// of the policy runs and the answer carries a receipt), differing from the others only in what
// the policy does not read.
func (g *generator) repeated(i int, withIntent bool) *request {
	r := &request{
		CorrelationID: fmt.Sprintf("repeat-%d-%d", g.seed, i),
		Agent:         entity{ID: "spiffe://acme.example/agents/ops"},
		User: &entity{ID: "alice@acme.example", Properties: map[string]any{
			"roles": []any{"employee"}, "scopes": []any{"files.read", "files.write"},
		}},
		Tool: tool{Name: "write_file", Server: "filesystem", Arguments: map[string]any{
			"path": "/home/alice/notes.txt", "content": fmt.Sprintf("draft %d", i),
		}},
		Resource: &entity{Type: "file", ID: "/home/alice/notes.txt", Properties: map[string]any{"owner": "alice@acme.example"}},
		Task:     &task{ID: fmt.Sprintf("t-repeat-%d", i), SessionID: fmt.Sprintf("s-%d", i%3), Attempt: int64(1 + i%2)},
		Context:  map[string]any{"channel": []string{"slack", "web", "cli"}[i%3], "client_ip": fmt.Sprintf("10.1.0.%d", i+1)},
	}
	if withIntent {
		r.Task.Intent = []string{"tidy my notes", "add the meeting summary to my notes"}[i%2]
	}
	return r
}

func (g *generator) arguments(name string, i int) map[string]any {
	switch name {
	case "send_email":
		return map[string]any{"to": g.users[g.rnd.IntN(len(g.users))].id, "subject": fmt.Sprintf("Re: item %d", i)}
	case "read_inbox":
		return map[string]any{"folder": g.pick([]string{"INBOX", "Archive"}), "limit": 1 + g.rnd.IntN(50)}
	case "search_contacts", "web_search":
		return map[string]any{"query": g.pick([]string{"acme pricing", "bob", "vpn outage", "q3 report"})}
	case "read_file", "write_file", "delete_file":
		return map[string]any{"path": fmt.Sprintf("/reports/r-%d.txt", g.rnd.IntN(100))}
	case "transfer_funds":
		return map[string]any{"amount": 10 + g.rnd.IntN(5000), "currency": g.pick([]string{"EUR", "USD"})}
	case "create_ticket":
		return map[string]any{"title": fmt.Sprintf("issue %d", i), "priority": g.pick([]string{"low", "high"})}
	}
	if g.pct(50) {
		return nil
	}
	return map[string]any{"n": i}
}

// ---------------------------------------------------------------------------
// check
// ---------------------------------------------------------------------------

// verdict is the part of a decision both servers answer.
type verdict struct {
	Allow       bool           `json:"allow"`
	Reasons     []string       `json:"reasons"`
	Obligations map[string]any `json:"obligations"`
}

func runCheck(args []string) error {
	fs := flag.NewFlagSet("genbodies check", flag.ExitOnError)
	dir := fs.String("dir", "", "directory genbodies wrote (required)")
	custodyURL := fs.String("custody", "", "custody's base `URL` (required)")
	opaURL := fs.String("opa", "", "OPA server's base `URL` (required)")
	path := fs.String("opa-path", "/v1/data/custody/authz/decision", "OPA's decision API path")
	limit := fs.Int("n", 0, "check only the first n pairs (0: all)")
	set := fs.String("set", "", "which bodies: \"\" (custody.jsonl, opa.jsonl), repeat or distinct")
	asJSON := fs.Bool("json", false, "print a JSON summary on standard output")
	_ = fs.Parse(args)
	if *dir == "" || *custodyURL == "" || *opaURL == "" {
		return errors.New("check: -dir, -custody and -opa are required")
	}
	fc, fo := fileCustody, fileOPA
	switch *set {
	case "":
	case "repeat":
		fc, fo = fileRepeatCustody, fileRepeatOPA
	case "distinct":
		fc, fo = fileDistinctCustody, fileDistinctOPA
	default:
		return fmt.Errorf("check: -set %q: want repeat or distinct", *set)
	}
	cb, err := lines(filepath.Join(*dir, fc))
	if err != nil {
		return err
	}
	ob, err := lines(filepath.Join(*dir, fo))
	if err != nil {
		return err
	}
	if len(cb) != len(ob) {
		return fmt.Errorf("%s has %d lines, %s %d: the pairing is broken", fc, len(cb), fo, len(ob))
	}
	for i := range cb { // each check sends a value of its own, as loadgen -unique would
		u := fmt.Appendf(nil, "check-%d-%d", time.Now().UnixNano(), i)
		cb[i] = bytes.ReplaceAll(cb[i], []byte(Unique), u)
		ob[i] = bytes.ReplaceAll(ob[i], []byte(Unique), u)
	}
	if *limit > 0 && *limit < len(cb) {
		cb, ob = cb[:*limit], ob[:*limit]
	}
	client := &http.Client{Timeout: 30 * time.Second}
	var allowed, mismatches int
	var answered int64 // custody decisions answered, for reconciling with the stream
	reasons := map[string]int{}
	for i := range cb {
		var c verdict
		status, err := postJSON(client, strings.TrimRight(*custodyURL, "/")+"/v1/authorize", cb[i], &c)
		if err != nil {
			return fmt.Errorf("custody, body %d: %w", i+1, err)
		}
		if status == http.StatusOK {
			answered++
		}
		var o struct {
			Result *verdict `json:"result"`
		}
		if _, err := postJSON(client, strings.TrimRight(*opaURL, "/")+*path, ob[i], &o); err != nil {
			return fmt.Errorf("OPA, body %d: %w", i+1, err)
		}
		if o.Result == nil {
			return fmt.Errorf("OPA, body %d: no result (is the decision rule %s defined?)", i+1, *path)
		}
		if !equalVerdicts(c, *o.Result) {
			mismatches++
			if mismatches <= 5 {
				fmt.Fprintf(os.Stderr, "MISMATCH body %d: custody allow=%v reasons=%v obligations=%v; OPA allow=%v reasons=%v obligations=%v\n  %s\n",
					i+1, c.Allow, c.Reasons, c.Obligations, o.Result.Allow, o.Result.Reasons, o.Result.Obligations, cb[i])
			}
			continue
		}
		if c.Allow {
			allowed++
		}
		for _, r := range c.Reasons {
			reasons[r]++
		}
	}
	var summary []string
	for r, n := range reasons {
		summary = append(summary, fmt.Sprintf("%s=%d", r, n))
	}
	sort.Strings(summary)
	fmt.Fprintf(os.Stderr, "check: %d bodies: %d mismatches; allowed %d, denied %d; reasons: %s\n",
		len(cb), mismatches, allowed, len(cb)-mismatches-allowed, strings.Join(summary, " "))
	if *asJSON {
		_ = json.NewEncoder(os.Stdout).Encode(map[string]any{
			"name": "check", "checked": len(cb), "mismatches": mismatches, "allowed": allowed,
			"denied": len(cb) - mismatches - allowed, "custody_decisions": answered,
		})
	}
	switch {
	case mismatches > 0:
		return fmt.Errorf("custody and OPA disagree on %d of %d bodies", mismatches, len(cb))
	case *set == "repeat" && allowed != len(cb):
		return fmt.Errorf("%d of the %d repeated bodies were denied: they should all be the same allow", len(cb)-allowed, len(cb))
	case *set != "repeat" && (allowed == 0 || allowed == len(cb)):
		return fmt.Errorf("all %d bodies got the same decision: the load would not exercise both paths", len(cb))
	}
	return nil
}

func equalVerdicts(a, b verdict) bool {
	if len(a.Obligations) == 0 && len(b.Obligations) == 0 {
		a.Obligations, b.Obligations = nil, nil
	}
	return a.Allow == b.Allow && slices.Equal(a.Reasons, b.Reasons) && reflect.DeepEqual(a.Obligations, b.Obligations)
}

func lines(path string) ([][]byte, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out [][]byte
	for l := range bytes.Lines(raw) {
		if l = bytes.TrimSpace(l); len(l) > 0 {
			out = append(out, l)
		}
	}
	return out, nil
}

// postJSON posts body and decodes a 200 answer into v; any other status is an error.
func postJSON(c *http.Client, url string, body []byte, v any) (int, error) {
	res, err := c.Post(url, "application/json", bytes.NewReader(body))
	if err != nil {
		return 0, err
	}
	defer res.Body.Close()
	raw, err := io.ReadAll(res.Body)
	if err != nil {
		return res.StatusCode, err
	}
	if res.StatusCode != http.StatusOK {
		return res.StatusCode, fmt.Errorf("HTTP %d: %.300s", res.StatusCode, raw)
	}
	return res.StatusCode, json.Unmarshal(raw, v)
}
