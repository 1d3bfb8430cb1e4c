package trace

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/custodyhq/custody/decisionlog"
)

// Line statuses of Correlate.
const (
	Attributed   = "attributed"   // a decision explains the line
	Unattributed = "unattributed" // no decision explains it
	Contradicted = "contradicted" // done after a deny, outside the receipt's action or resource, or after it expired
	Unverified   = "unverified"   // its decision ID names only records that do not verify
)

// ClockSkew is how far after a log line a decision may be stamped and still precede it: system
// logs often keep whole seconds, and clocks differ.
const ClockSkew = time.Second

// Fields names where a system log keeps what Correlate joins on. Each is a dotted path into the
// line's JSON object ("req.headers.custody-receipt"); "" skips that field.
type Fields struct {
	DecisionID    string
	Receipt       string // a receipt JWT: its decision_id claim is read
	CorrelationID string
	Action        string
	Resource      string
	Time          string // RFC 3339
}

// DefaultFields are the field names of a log that follows the README.
var DefaultFields = Fields{
	DecisionID: "decision_id", Receipt: "receipt", CorrelationID: "correlation_id",
	Action: "action", Resource: "resource", Time: "time",
}

// LineResult is the verdict on one log line.
type LineResult struct {
	Line          string `json:"line"` // FILE:N
	Status        string `json:"status"`
	DecisionID    string `json:"decision_id,omitempty"`
	CorrelationID string `json:"correlation_id,omitempty"`
	Reason        string `json:"reason"`
	Subject       string `json:"subject,omitempty"`
	Agent         string `json:"agent,omitempty"`
	Task          string `json:"task,omitempty"`
}

// Summary counts lines by status.
type Summary struct {
	Lines        int `json:"lines"`
	Attributed   int `json:"attributed"`
	Unattributed int `json:"unattributed"`
	Contradicted int `json:"contradicted"`
	Unverified   int `json:"unverified"`
}

// Correlation is what Correlate found.
type Correlation struct {
	Lines   []LineResult `json:"lines"`
	Summary Summary      `json:"summary"`
}

// Clean reports whether every line is attributed.
func (c *Correlation) Clean() bool {
	return c.Summary.Unattributed == 0 && c.Summary.Contradicted == 0 && c.Summary.Unverified == 0
}

// Correlator joins log lines to decision records.
type Correlator struct {
	fields    Fields
	ttl       time.Duration
	byID      map[string]*decisionlog.Record
	byCorrAct map[string][]*decisionlog.Record // correlation ID + "\x00" + action, in time order
	// unverified holds why each decision ID named only by records that do not verify does not.
	unverified map[string]string
	out        Correlation
}

// NewCorrelator indexes the decision records in recs (executions are ignored). ttl is how long a
// decision explains an action, the receipt TTL.
func NewCorrelator(recs []decisionlog.Record, f Fields, ttl time.Duration) *Correlator {
	return NewCorrelatorEntries(Verified(recs), f, ttl)
}

// NewCorrelatorEntries is NewCorrelator for messages read from the stream: a line whose
// decision ID names only messages that do not verify is judged unverified, never attributed.
func NewCorrelatorEntries(entries []Entry, f Fields, ttl time.Duration) *Correlator {
	c := &Correlator{fields: f, ttl: ttl, byID: map[string]*decisionlog.Record{}, byCorrAct: map[string][]*decisionlog.Record{},
		unverified: map[string]string{}, out: Correlation{Lines: []LineResult{}}}
	for _, e := range entries {
		if e.Unverified != "" {
			if e.MsgID != "" {
				c.unverified[e.MsgID] = e.Unverified
			}
			if e.Record != nil && e.Record.DecisionID != "" {
				c.unverified[e.Record.DecisionID] = e.Unverified
			}
			continue
		}
		r := e.Record
		if r.Schema != decisionlog.SchemaDecisionV1 {
			continue
		}
		c.byID[r.DecisionID] = r
		k := r.CorrelationID + "\x00" + r.Action.Name
		c.byCorrAct[k] = append(c.byCorrAct[k], r)
	}
	for _, list := range c.byCorrAct {
		slices.SortStableFunc(list, func(a, b *decisionlog.Record) int { return a.Timestamp.Compare(b.Timestamp) })
	}
	return c
}

// Add judges one log line; name is how the result names it (FILE:N).
func (c *Correlator) Add(name string, line []byte) {
	res := c.judge(line)
	res.Line = name
	c.out.Lines = append(c.out.Lines, res)
	c.out.Summary.Lines++
	switch res.Status {
	case Attributed:
		c.out.Summary.Attributed++
	case Unattributed:
		c.out.Summary.Unattributed++
	case Contradicted:
		c.out.Summary.Contradicted++
	case Unverified:
		c.out.Summary.Unverified++
	}
}

// Result returns the lines judged so far and their summary.
func (c *Correlator) Result() *Correlation { return &c.out }

func (c *Correlator) judge(line []byte) LineResult {
	var obj map[string]any
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.UseNumber()
	if err := dec.Decode(&obj); err != nil {
		return LineResult{Status: Unattributed, Reason: "not a JSON object: " + err.Error()}
	}
	get := func(path string) string { return lookupString(obj, path) }
	decisionID := get(c.fields.DecisionID)
	if decisionID == "" {
		if tok := get(c.fields.Receipt); tok != "" {
			decisionID = receiptDecisionID(tok)
		}
	}
	corr, action, resource := get(c.fields.CorrelationID), get(c.fields.Action), get(c.fields.Resource)
	var at *time.Time
	if ts := get(c.fields.Time); ts != "" {
		if t, err := time.Parse(time.RFC3339Nano, ts); err == nil {
			at = &t
		}
	}

	if decisionID != "" {
		d, ok := c.byID[decisionID]
		if why, forged := c.unverified[decisionID]; !ok && forged {
			return LineResult{Status: Unverified, DecisionID: decisionID, CorrelationID: corr, Reason: "decision " + decisionID + " is on the stream only as a record that does not verify (" + why + ")"}
		}
		if !ok {
			return LineResult{Status: Unattributed, DecisionID: decisionID, CorrelationID: corr, Reason: "decision " + decisionID + " is not on the stream"}
		}
		res := attributed(d)
		switch {
		case !d.Allow:
			return contradicted(res, "done after a deny ("+strings.Join(d.Reasons, ",")+")")
		case action != "" && action != d.Action.Name:
			return contradicted(res, fmt.Sprintf("action %s is outside the decision's action %s", action, d.Action.Name))
		case resource != "" && resource != d.Resource.ID && resource != resourceString(d.Resource.Type, d.Resource.ID):
			return contradicted(res, fmt.Sprintf("resource %s is outside the decision's resource %s", resource, resourceString(d.Resource.Type, d.Resource.ID)))
		case at != nil && at.After(d.Timestamp.Add(c.ttl)):
			return contradicted(res, fmt.Sprintf("done at %s, after the decision expired at %s", at.UTC().Format(time.RFC3339), d.Timestamp.Add(c.ttl).UTC().Format(time.RFC3339)))
		}
		res.Reason = "decision " + d.DecisionID + " allowed " + d.Action.Name
		return res
	}
	if corr == "" || action == "" {
		return LineResult{Status: Unattributed, CorrelationID: corr, Reason: "no decision ID, receipt or correlation ID and action: nothing joins this line to a decision"}
	}
	cands := c.byCorrAct[corr+"\x00"+action]
	if len(cands) == 0 {
		return LineResult{Status: Unattributed, CorrelationID: corr, Reason: fmt.Sprintf("no decision for %s in correlation %s", action, corr)}
	}
	// The latest allow before the line (any allow when the line has no time), else the latest
	// deny: an action whose only decisions are denies was done after a deny.
	var allow, expired, deny *decisionlog.Record
	for _, d := range cands {
		if at != nil && d.Timestamp.After(at.Add(ClockSkew)) {
			continue
		}
		switch {
		case !d.Allow:
			deny = d
		case resource != "" && resource != d.Resource.ID && resource != resourceString(d.Resource.Type, d.Resource.ID):
		case at != nil && at.After(d.Timestamp.Add(c.ttl)):
			expired = d
		default:
			allow = d
		}
	}
	switch {
	case allow != nil:
		res := attributed(allow)
		res.Reason = "decision " + allow.DecisionID + " allowed " + action + " in correlation " + corr
		return res
	case expired != nil:
		return contradicted(attributed(expired), "done after decision "+expired.DecisionID+" expired")
	case deny != nil:
		return contradicted(attributed(deny), "done after a deny ("+strings.Join(deny.Reasons, ",")+")")
	}
	return LineResult{Status: Unattributed, CorrelationID: corr, Reason: fmt.Sprintf("no decision for %s in correlation %s before this line", action, corr)}
}

func attributed(d *decisionlog.Record) LineResult {
	r := LineResult{Status: Attributed, DecisionID: d.DecisionID, CorrelationID: d.CorrelationID, Subject: d.Subject.ID, Agent: d.AgentID()}
	if d.Task != nil {
		r.Task = d.Task.ID
	}
	return r
}

func contradicted(r LineResult, reason string) LineResult {
	r.Status, r.Reason = Contradicted, reason
	return r
}

// lookupString follows a dotted path into obj and returns a string or number found there.
func lookupString(obj map[string]any, path string) string {
	if path == "" {
		return ""
	}
	var v any = obj
	for _, part := range strings.Split(path, ".") {
		m, ok := v.(map[string]any)
		if !ok {
			return ""
		}
		if v, ok = m[part]; !ok {
			return ""
		}
	}
	switch v := v.(type) {
	case string:
		return v
	case json.Number:
		return v.String()
	}
	return ""
}

// receiptDecisionID reads the decision_id claim of a receipt JWT without verifying it: the join
// only names the decision, whose record on the stream is the evidence. Verify receipts where
// they are accepted (see the README).
func receiptDecisionID(tok string) string {
	tok = strings.TrimSpace(strings.TrimPrefix(tok, "Bearer "))
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		return ""
	}
	raw, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return ""
	}
	var claims struct {
		DecisionID string `json:"decision_id"`
		JTI        string `json:"jti"`
	}
	if json.Unmarshal(raw, &claims) != nil {
		return ""
	}
	if claims.DecisionID != "" {
		return claims.DecisionID
	}
	return claims.JTI
}
