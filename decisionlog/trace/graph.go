package trace

import (
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/custodyhq/custody/decisionlog"
)

// Node kinds, from the root down.
const (
	KindRequest   = "request"   // the human request: one correlation ID
	KindTask      = "task"      // a task, or a parent task named by one
	KindAgent     = "agent"     // an agent acting within a task
	KindDecision  = "decision"  // one authorization decision
	KindExecution = "execution" // what a system did after a decision
)

// Node is one vertex of the workflow graph.
type Node struct {
	ID    string `json:"id"`
	Kind  string `json:"kind"`
	Label string `json:"label"`
	// Time is when the node first appears: its first decision, or the decision or execution itself.
	Time    *time.Time `json:"time,omitempty"`
	Outcome string     `json:"outcome,omitempty"` // allow or deny; succeeded, failed or skipped
	// Detail holds the node's facts: subject, agent, action, resource, attempt, reasons, violation...
	Detail map[string]any `json:"detail,omitempty"`
}

// Edge links a parent node to a child.
type Edge struct {
	From string `json:"from"`
	To   string `json:"to"`
	Kind string `json:"kind"` // spawned, ran, decided, executed
}

// Graph is the workflow of one correlation ID.
type Graph struct {
	CorrelationID string `json:"correlation_id"`
	Nodes         []Node `json:"nodes"`
	Edges         []Edge `json:"edges"`

	byID     map[string]int
	children map[string][]string
}

// Build makes the graph of correlationID from its records, in any order: request -> tasks
// (nested by parent_id) -> agents -> decisions (in time order, retries as attempts) ->
// executions. Records of other correlation IDs are ignored.
func Build(correlationID string, recs []decisionlog.Record) *Graph {
	return BuildEntries(correlationID, Verified(recs))
}

// BuildEntries is Build for messages read from the stream: those that do not verify become
// unverified nodes under the request, and are neither counted nor linked as decisions.
func BuildEntries(correlationID string, entries []Entry) *Graph {
	g := &Graph{CorrelationID: correlationID, Nodes: []Node{}, Edges: []Edge{}, byID: map[string]int{}, children: map[string][]string{}}
	var decisions, executions []decisionlog.Record
	var unverified []Entry
	for _, e := range entries {
		if e.Unverified != "" {
			if e.Record == nil || e.Record.CorrelationID == correlationID {
				unverified = append(unverified, e)
			}
			continue
		}
		r := *e.Record
		if r.CorrelationID != correlationID {
			continue
		}
		if r.IsExecution() {
			executions = append(executions, r)
		} else if r.Schema == decisionlog.SchemaDecisionV1 {
			decisions = append(decisions, r)
		}
	}
	byTime := func(a, b decisionlog.Record) int {
		return cmp.Or(a.Timestamp.Compare(b.Timestamp), cmp.Compare(a.Seq, b.Seq), cmp.Compare(a.DecisionID, b.DecisionID))
	}
	slices.SortStableFunc(decisions, byTime)
	slices.SortStableFunc(executions, byTime)

	root := "request:" + correlationID
	g.add(Node{ID: root, Kind: KindRequest, Label: "request " + correlationID, Detail: map[string]any{}}, "", "")
	var humans []string
	allows, denies := 0, 0
	taskParent := map[string]string{}
	for _, d := range decisions {
		if d.Task != nil && d.Task.ID != "" {
			if _, ok := taskParent[d.Task.ID]; !ok || taskParent[d.Task.ID] == "" {
				taskParent[d.Task.ID] = d.Task.ParentID
			}
		}
	}
	var ensureTask func(id string, t time.Time, depth int) string
	ensureTask = func(id string, t time.Time, depth int) string {
		nid := "task:" + id
		if _, ok := g.byID[nid]; ok {
			g.touch(nid, t)
			return nid
		}
		parent := root
		if p := taskParent[id]; p != "" && p != id && depth < 64 {
			parent = ensureTask(p, t, depth+1)
		}
		det := map[string]any{}
		if p := taskParent[id]; p != "" {
			det["parent_id"] = p
		}
		g.add(Node{ID: nid, Kind: KindTask, Label: "task " + id, Time: &t, Detail: det}, parent, "spawned")
		return nid
	}
	for _, d := range decisions {
		if d.Subject.ID != "" && (d.Agent == nil || d.Subject.ID != d.Agent.ID) && !slices.Contains(humans, d.Subject.ID) {
			humans = append(humans, d.Subject.ID)
		}
		g.touch(root, d.Timestamp)
		parent := root
		taskID := ""
		if d.Task != nil && d.Task.ID != "" {
			taskID = d.Task.ID
			parent = ensureTask(taskID, d.Timestamp, 0)
		}
		agent := d.AgentID()
		if agent == "" {
			agent = d.Subject.ID
		}
		aid := "agent:" + taskID + "/" + agent
		if _, ok := g.byID[aid]; !ok {
			g.add(Node{ID: aid, Kind: KindAgent, Label: "agent " + agent, Time: ptr(d.Timestamp), Detail: map[string]any{"agent": agent}}, parent, "ran")
		}
		det := map[string]any{
			"decision_id": d.DecisionID,
			"subject":     d.Subject.ID,
			"action":      d.Action.Name,
			"resource":    resourceString(d.Resource.Type, d.Resource.ID),
			"reasons":     d.Reasons,
		}
		if d.Task != nil && d.Task.Attempt > 0 {
			det["attempt"] = d.Task.Attempt
		}
		if d.Error != "" {
			det["error"] = d.Error
		}
		if d.Allow {
			allows++
		} else {
			denies++
		}
		g.add(Node{ID: "decision:" + d.DecisionID, Kind: KindDecision, Label: d.Outcome() + " " + d.Action.Name, Time: ptr(d.Timestamp), Outcome: d.Outcome(), Detail: det}, aid, "decided")
	}
	violations := 0
	for _, e := range executions {
		det := map[string]any{"execution_id": e.ExecutionID, "decision_id": e.DecisionID}
		status := ""
		at := e.Timestamp
		if x := e.Execution; x != nil {
			status = x.Status
			det["system"] = x.Target.System
			if x.Target.RequestID != "" {
				det["request_id"] = x.Target.RequestID
			}
			if x.Target.Resource != "" {
				det["resource"] = x.Target.Resource
			}
			if x.Error != "" {
				det["error"] = x.Error
			}
			if x.Violation != "" {
				det["violation"] = x.Violation
				violations++
			}
			if x.FinishedAt != nil {
				at = *x.FinishedAt
			} else if x.StartedAt != nil {
				at = *x.StartedAt
			}
		}
		parent := "decision:" + e.DecisionID
		if _, ok := g.byID[parent]; !ok {
			parent = root
		}
		g.add(Node{ID: "execution:" + e.ExecutionID, Kind: KindExecution, Label: "execution " + status, Time: ptr(at), Outcome: status, Detail: det}, parent, "executed")
	}
	for i, e := range unverified {
		det := map[string]any{"reason": e.Unverified, "stream_seq": e.Seq, "subject": e.Subject}
		label := "unreadable message"
		var at *time.Time
		if r := e.Record; r != nil {
			det["decision_id"], det["claims"], det["action"] = r.DecisionID, r.Outcome(), r.Action.Name
			label = "unverified record"
			if !r.Timestamp.IsZero() {
				at = ptr(r.Timestamp)
			}
		}
		g.add(Node{ID: fmt.Sprintf("unverified:%d:%d", e.Seq, i), Kind: KindUnverified, Label: label, Time: at, Outcome: KindUnverified, Detail: det}, root, "unverified")
	}
	rd := g.Nodes[0].Detail
	rd["unverified"] = len(unverified)
	rd["humans"] = humans
	rd["decisions"] = len(decisions)
	rd["allows"], rd["denies"] = allows, denies
	rd["executions"] = len(executions)
	rd["violations"] = violations
	if len(humans) > 0 {
		g.Nodes[0].Label = "request " + correlationID + " by " + strings.Join(humans, ", ")
	}
	return g
}

func ptr(t time.Time) *time.Time { return &t }

func resourceString(typ, id string) string {
	if typ == "" {
		return id
	}
	return typ + "/" + id
}

func (g *Graph) add(n Node, parent, edge string) {
	g.byID[n.ID] = len(g.Nodes)
	g.Nodes = append(g.Nodes, n)
	if parent != "" {
		g.Edges = append(g.Edges, Edge{From: parent, To: n.ID, Kind: edge})
		g.children[parent] = append(g.children[parent], n.ID)
	}
}

// touch moves a node's time earlier to t.
func (g *Graph) touch(id string, t time.Time) {
	n := &g.Nodes[g.byID[id]]
	if n.Time == nil || t.Before(*n.Time) {
		n.Time = ptr(t)
	}
}

// Node returns the node with id, or nil.
func (g *Graph) Node(id string) *Node {
	i, ok := g.byID[id]
	if !ok {
		return nil
	}
	return &g.Nodes[i]
}

// Children returns the IDs of id's children, in graph order.
func (g *Graph) Children(id string) []string { return g.children[id] }

// WriteJSON writes {"correlation_id","nodes","edges"}.
func (g *Graph) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(g)
}

// WriteText writes the graph as an indented tree, one node a line.
func (g *Graph) WriteText(w io.Writer) error {
	var b strings.Builder
	root := g.Nodes[0]
	d := root.Detail
	fmt.Fprintf(&b, "%s\n", root.Label)
	if root.Time != nil {
		fmt.Fprintf(&b, "  first decision %s\n", root.Time.UTC().Format(time.RFC3339Nano))
	}
	fmt.Fprintf(&b, "  %s (%d allow, %d deny), %s, %d flagged as %s\n", count(d["decisions"], "decision"), d["allows"], d["denies"],
		count(d["executions"], "execution"), d["violations"], plural(d["violations"], "violation", "violations"))
	if n, _ := d["unverified"].(int); n > 0 {
		fmt.Fprintf(&b, "  %s that %s not verify, not counted: forged or damaged (run custody verify)\n", count(n, "message"), plural(n, "does", "do"))
	}
	var walk func(id, indent string)
	walk = func(id, indent string) {
		kids := g.children[id]
		for i, k := range kids {
			branch, next := "├─ ", "│  "
			if i == len(kids)-1 {
				branch, next = "└─ ", "   "
			}
			b.WriteString(indent + branch + g.line(g.Node(k)) + "\n")
			walk(k, indent+next)
		}
	}
	walk(root.ID, "")
	_, err := io.WriteString(w, b.String())
	return err
}

func (g *Graph) line(n *Node) string {
	at := ""
	if n.Time != nil {
		at = n.Time.UTC().Format("15:04:05.000") + " "
	}
	switch n.Kind {
	case KindDecision:
		s := fmt.Sprintf("%s%s %s on %s", at, strings.ToUpper(n.Outcome), n.Detail["action"], n.Detail["resource"])
		if a, ok := n.Detail["attempt"]; ok {
			s += fmt.Sprintf(" (attempt %v)", a)
		}
		if n.Outcome == "deny" {
			s += fmt.Sprintf(" reasons=%s", strings.Join(n.Detail["reasons"].([]string), ","))
		}
		return s + fmt.Sprintf(" decision=%s", n.Detail["decision_id"])
	case KindUnverified:
		if _, ok := n.Detail["decision_id"]; !ok {
			return fmt.Sprintf("UNREADABLE message at stream seq %v on %v: %v", n.Detail["stream_seq"], n.Detail["subject"], n.Detail["reason"])
		}
		return fmt.Sprintf("%sUNVERIFIED decision=%v claims %v %v: %v", at, n.Detail["decision_id"], n.Detail["claims"], n.Detail["action"], n.Detail["reason"])
	case KindExecution:
		s := fmt.Sprintf("%sexecution %s on %s", at, n.Outcome, n.Detail["system"])
		if r, ok := n.Detail["request_id"]; ok {
			s += fmt.Sprintf(" request=%v", r)
		}
		if e, ok := n.Detail["error"]; ok {
			s += fmt.Sprintf(" error=%q", e)
		}
		if v, ok := n.Detail["violation"]; ok {
			s += fmt.Sprintf(" VIOLATION=%v", v)
		}
		return s
	default:
		return n.Label
	}
}

// WriteDOT writes the graph in Graphviz DOT.
func (g *Graph) WriteDOT(w io.Writer) error {
	var b strings.Builder
	fmt.Fprintf(&b, "digraph %q {\n  rankdir=LR;\n  node [shape=box, fontname=\"Helvetica\"];\n", "custody "+g.CorrelationID)
	for _, n := range g.Nodes {
		attrs := ""
		switch {
		case n.Outcome == "deny", n.Detail["violation"] != nil:
			attrs = ", color=red"
		case n.Outcome == "allow" || n.Outcome == decisionlog.ExecutionSucceeded:
			attrs = ", color=darkgreen"
		}
		fmt.Fprintf(&b, "  %q [label=%q%s];\n", n.ID, g.line(&n), attrs)
	}
	for _, e := range g.Edges {
		fmt.Fprintf(&b, "  %q -> %q [label=%q];\n", e.From, e.To, e.Kind)
	}
	b.WriteString("}\n")
	_, err := io.WriteString(w, b.String())
	return err
}

// WriteMermaid writes the graph as a Mermaid flowchart.
func (g *Graph) WriteMermaid(w io.Writer) error {
	var b strings.Builder
	b.WriteString("flowchart TD\n")
	for i, n := range g.Nodes {
		label := strings.NewReplacer(`"`, "#quot;").Replace(g.line(&n))
		fmt.Fprintf(&b, "  n%d[\"%s\"]\n", i, label)
	}
	for _, e := range g.Edges {
		fmt.Fprintf(&b, "  n%d -->|%s| n%d\n", g.byID[e.From], e.Kind, g.byID[e.To])
	}
	for i, n := range g.Nodes {
		if n.Outcome == "deny" || n.Detail["violation"] != nil {
			fmt.Fprintf(&b, "  style n%d stroke:#c00,stroke-width:2px\n", i)
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// count is n and the noun one, in the plural unless n is 1: "1 decision", "2 decisions".
func count(n any, one string) string { return fmt.Sprintf("%v %s", n, plural(n, one, one+"s")) }

func plural(n any, one, many string) string {
	if i, ok := n.(int); ok && i == 1 {
		return one
	}
	return many
}
