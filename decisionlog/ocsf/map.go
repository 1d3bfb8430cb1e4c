package ocsf

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/custodyhq/custody/decisionlog"
)

// Msg is one stream message to map: what a JetStream read delivers.
type Msg struct {
	Seq     uint64 // stream sequence, kept as metadata.sequence
	Subject string
	MsgID   string    // the Nats-Msg-Id header
	Time    time.Time // when the stream stored it; the time of a message custody cannot read
	Data    []byte
}

// record is this package's view of a decision or execution record's JSON: the wire form, so
// the mapping does not follow the engine's Go types around.
type record struct {
	Schema        string    `json:"schema"`
	DecisionID    string    `json:"decision_id"`
	Timestamp     time.Time `json:"timestamp"`
	CorrelationID string    `json:"correlation_id"`
	RequestID     string    `json:"request_id"`
	TraceID       string    `json:"trace_id"`
	SpanID        string    `json:"span_id"`
	Endpoint      string    `json:"endpoint"`
	Subject       entity    `json:"subject"`
	Action        struct {
		Name       string         `json:"name"`
		Properties map[string]any `json:"properties"`
	} `json:"action"`
	Resource   entity  `json:"resource"`
	Agent      *entity `json:"agent"`
	Delegation struct {
		Verified bool  `json:"verified"`
		Chain    []any `json:"chain"`
	} `json:"delegation"`
	Caller *struct {
		Method   string `json:"method"`
		ID       string `json:"id"`
		Workload string `json:"workload"`
	} `json:"caller"`
	Task        map[string]any `json:"task"`
	Allow       bool           `json:"allow"`
	Reasons     []string       `json:"reasons"`
	Obligations map[string]any `json:"obligations"`
	Policy      struct {
		Query    string `json:"query"`
		Revision string `json:"revision"`
	} `json:"policy"`
	Error  string `json:"error"`
	EvalNS int64  `json:"eval_ns"`
	PDP    struct {
		Instance string `json:"instance"`
		Version  string `json:"version"`
	} `json:"pdp"`
	ExecutionID string `json:"execution_id"`
	Execution   *struct {
		Status string `json:"status"`
		Target struct {
			System    string `json:"system"`
			RequestID string `json:"request_id"`
			Resource  string `json:"resource"`
		} `json:"target"`
		StartedAt     *time.Time `json:"started_at"`
		FinishedAt    *time.Time `json:"finished_at"`
		Error         string     `json:"error"`
		Violation     string     `json:"violation"`
		DecisionAllow *bool      `json:"decision_allow"`
	} `json:"execution"`
	Seq      uint64 `json:"seq"`
	PrevHash string `json:"prev_hash"`
	Hash     string `json:"hash"`
}

type entity struct {
	Type       string         `json:"type"`
	ID         string         `json:"id"`
	Properties map[string]any `json:"properties"`
}

// Map turns one stream message into an OCSF event. Every message maps to an event: one custody
// cannot read becomes a Base Event carrying the raw body, so that a SIEM sees what the stream
// holds, forged or damaged messages included. A record that does not verify on its own (see
// decisionlog.CheckRecord) is mapped as usual and says so in unmapped.custody.verified.
func Map(m Msg) *Event {
	var probe struct {
		Schema string `json:"schema"`
	}
	if err := json.Unmarshal(m.Data, &probe); err != nil {
		return unreadable(m, fmt.Sprintf("not JSON: %v", err))
	}
	switch probe.Schema {
	case decisionlog.SchemaDecisionV1, decisionlog.SchemaExecutionV1:
		dec := json.NewDecoder(bytes.NewReader(m.Data))
		dec.UseNumber() // numbers in properties beyond float64 stay readable
		var r record
		if err := dec.Decode(&r); err != nil {
			return unreadable(m, fmt.Sprintf("not a %s record: %v", probe.Schema, err))
		}
		_, verr := decisionlog.CheckRecord(m.MsgID, m.Data)
		if r.Schema == decisionlog.SchemaExecutionV1 {
			return mapExecution(m, &r, verr)
		}
		return mapDecision(m, &r, verr)
	case decisionlog.SchemaCheckpointV1:
		var c decisionlog.Checkpoint
		if err := json.Unmarshal(m.Data, &c); err != nil {
			return unreadable(m, fmt.Sprintf("not a checkpoint: %v", err))
		}
		return mapCheckpoint(m, &c)
	default:
		return unreadable(m, fmt.Sprintf("unknown schema %q", probe.Schema))
	}
}

// MapJSON is Map marshalled: one event as a line of NDJSON (without the newline).
func MapJSON(m Msg) ([]byte, error) {
	b, err := json.Marshal(Map(m))
	if err != nil {
		return nil, fmt.Errorf("ocsf: marshal event for stream seq %d: %w", m.Seq, err)
	}
	return b, nil
}

func ptr[T any](v T) *T { return &v }

func millis(t time.Time) int64 { return t.UnixMilli() }

var severityNames = map[int]string{
	SeverityInfo: "Informational", SeverityLow: "Low", SeverityMedium: "Medium", SeverityHigh: "High",
}

func metadata(m Msg, r *record, uid string) Metadata {
	md := Metadata{
		UID:         uid,
		Version:     SchemaVersion,
		Product:     Product{Name: "custody", VendorName: "custody"},
		LogName:     decisionlog.StreamName,
		LogProvider: "NATS JetStream",
		LogVersion:  MappingVersion,
	}
	if m.Seq > 0 {
		md.Sequence = ptr(m.Seq)
	}
	if r != nil {
		md.CorrelationUID = r.CorrelationID
		md.Product.Version = r.PDP.Version
		md.EventCode = r.Schema
		md.Profiles = []string{"ai_operation", "security_control"}
		if r.TraceID != "" {
			md.Profiles = append(md.Profiles, "trace")
		}
	}
	return md
}

// apiEvent fills what decisions and executions share.
func apiEvent(m Msg, r *record, uid, activity string) *Event {
	e := &Event{
		ClassUID: ClassAPIActivity, ClassName: "API Activity",
		CategoryUID: CategoryApp, CategoryName: "Application Activity",
		ActivityID: ActivityOther, ActivityName: activity,
		TypeUID: ClassAPIActivity*100 + ActivityOther, TypeName: "API Activity: Other",
		Time:     millis(r.Timestamp),
		Metadata: metadata(m, r, uid),
	}
	e.Actor = actor(r)
	if r.Agent != nil && r.Agent.ID != "" {
		a := &AIAgent{UID: r.Agent.ID, TypeID: 0, Type: "Unknown"}
		if n, ok := r.Agent.Properties["name"].(string); ok {
			a.Name = n
		}
		if s, ok := r.Task["session_id"].(string); ok && s != "" {
			a.InstanceID = s
		}
		e.AIAgent = a
	}
	e.SrcEndpoint = source(r)
	if r.TraceID != "" {
		e.Trace = &Trace{UID: r.TraceID}
		if r.SpanID != "" {
			t := millis(r.Timestamp)
			e.Trace.Span = &Span{UID: r.SpanID, StartTime: t, EndTime: t}
		}
	}
	return e
}

// actor is the delegating human (the subject when it is a user, else the first user link of
// the delegation chain) and the client application that authenticated to custody.
func actor(r *record) *Actor {
	a := &Actor{}
	human := ""
	if r.Subject.Type == "user" && r.Subject.ID != "" {
		human = r.Subject.ID
	} else {
		for _, l := range r.Delegation.Chain {
			if lm, ok := l.(map[string]any); ok && lm["type"] == "user" {
				if id, ok := lm["id"].(string); ok && id != "" {
					human = id
					break
				}
			}
		}
	}
	if human != "" {
		a.User = &User{UID: human, Name: human, TypeID: 1, Type: "User"}
	}
	if r.Caller != nil && r.Caller.ID != "" {
		a.AppName = r.Caller.ID
		a.AppUID = r.Caller.Workload
	}
	if s, ok := r.Task["session_id"].(string); ok && s != "" {
		a.Session = &Session{UID: s}
	}
	if a.User == nil && a.AppName == "" && a.Session == nil {
		// OCSF wants at least one of them; the subject is who the call was made for.
		id := r.Subject.ID
		if id == "" {
			id = "unknown"
		}
		a.User = &User{UID: id, Name: id, TypeID: 0, Type: "Unknown"}
	}
	return a
}

// source is the calling workload as far as custody knows it; custody records no addresses.
func source(r *record) *Endpoint {
	switch {
	case r.Caller != nil && r.Caller.Workload != "":
		return &Endpoint{UID: r.Caller.Workload}
	case r.Agent != nil && r.Agent.ID != "":
		return &Endpoint{UID: r.Agent.ID}
	case r.Caller != nil && r.Caller.ID != "":
		return &Endpoint{Name: r.Caller.ID}
	}
	return &Endpoint{Name: "unknown"}
}

// api is the tool call: the tool as operation, its MCP server as service, and the MCP method
// where the call came through MCP (the record names an MCP server, or the method itself).
func api(r *record, fallbackUID string) *API {
	a := &API{Operation: r.Action.Name}
	if a.Operation == "" {
		a.Operation = "unknown"
	}
	server, _ := r.Action.Properties["server"].(string)
	if server != "" {
		a.Service = &Service{Name: server}
	}
	method, _ := r.Action.Properties["mcp_method"].(string)
	if method == "" && server != "" {
		method = "tools/call"
	}
	uid := r.RequestID
	if uid == "" {
		uid = fallbackUID
	}
	a.Request = &Request{UID: uid}
	if method != "" {
		a.Request.Data = map[string]any{"mcp_method": method}
	}
	return a
}

func resource(e entity) []Resource {
	if e.ID == "" && e.Type == "" {
		return nil
	}
	return []Resource{{UID: e.ID, Name: e.ID, Type: e.Type, Data: e.Properties}}
}

// common is what both record kinds keep under unmapped.custody.
func common(r *record, verr error) map[string]any {
	u := map[string]any{
		"schema":   r.Schema,
		"endpoint": r.Endpoint,
		"instance": r.PDP.Instance,
		"chain":    map[string]any{"seq": r.Seq, "prev_hash": r.PrevHash, "hash": r.Hash},
		"verified": verr == nil,
		"delegation": map[string]any{
			"verified": r.Delegation.Verified,
			"chain":    orEmpty(r.Delegation.Chain),
		},
	}
	if verr != nil {
		u["verify_error"] = verr.Error()
	}
	if r.Subject.ID != "" || r.Subject.Type != "" {
		u["subject"] = r.Subject
	}
	if len(r.Action.Properties) > 0 {
		u["action_properties"] = r.Action.Properties
	}
	if r.Agent != nil {
		if r.Agent.Type != "" {
			u["agent_type"] = r.Agent.Type
		}
		if len(r.Agent.Properties) > 0 {
			u["agent_properties"] = r.Agent.Properties
		}
	}
	if r.Caller != nil {
		u["caller_method"] = r.Caller.Method
	}
	if len(r.Task) > 0 {
		u["task"] = r.Task
	}
	return u
}

func orEmpty(v []any) []any {
	if v == nil {
		return []any{}
	}
	return v
}

func mapDecision(m Msg, r *record, verr error) *Event {
	e := apiEvent(m, r, r.DecisionID, "Authorize")
	e.API = api(r, r.DecisionID)
	e.Resources = resource(r.Resource)
	e.Policy = &Policy{Name: r.Policy.Query, UID: r.Policy.Query, Version: r.Policy.Revision, IsApplied: true}
	if e.Policy.Name == "" {
		e.Policy.Name = "unknown"
	}
	e.StatusDetail = strings.Join(r.Reasons, "; ")
	e.IsAlert = ptr(false)
	if r.Allow {
		e.ActionID, e.Action = ptr(ActionAllowed), "Allowed"
		e.DispositionID, e.Disposition = ptr(DispositionAllow), "Allowed"
		e.StatusID, e.Status, e.StatusCode = StatusSuccess, "Success", "allow"
		e.SeverityID = SeverityInfo
	} else {
		e.ActionID, e.Action = ptr(ActionDenied), "Denied"
		e.DispositionID, e.Disposition = ptr(DispositionBlock), "Blocked"
		e.StatusID, e.Status, e.StatusCode = StatusFailure, "Failure", "deny"
		e.SeverityID = SeverityLow
	}
	if verr != nil {
		e.SeverityID = SeverityMedium
	}
	e.Severity = severityNames[e.SeverityID]
	e.Message = fmt.Sprintf("custody %s %s", r.outcome(), e.API.Operation)
	if e.AIAgent != nil {
		e.Message += " by agent " + e.AIAgent.UID
	}
	if e.Actor.User != nil && e.Actor.User.TypeID == 1 {
		e.Message += " for " + e.Actor.User.UID
	}
	u := common(r, verr)
	u["eval_ns"] = r.EvalNS
	if r.Error != "" {
		u["error"] = r.Error
	}
	if len(r.Obligations) > 0 {
		u["obligations"] = r.Obligations
	}
	e.Unmapped = &Unmapped{Custody: u}
	return e
}

func (r *record) outcome() string {
	if r.Allow {
		return "allowed"
	}
	return "denied"
}

func mapExecution(m Msg, r *record, verr error) *Event {
	e := apiEvent(m, r, r.ExecutionID, "Execute")
	e.API = api(r, r.ExecutionID)
	e.Resources = resource(r.Resource)
	e.ActionID, e.Action = ptr(ActionObserved), "Observed"
	e.DispositionID, e.Disposition = ptr(DispositionLogged), "Logged"
	e.IsAlert = ptr(false)
	e.SeverityID = SeverityInfo
	u := common(r, verr)
	u["decision_id"] = r.DecisionID
	x := r.Execution
	if x == nil {
		e.StatusID, e.Status = ActivityUnknown, "Unknown"
	} else {
		if x.Target.System != "" {
			e.API.Service = &Service{Name: x.Target.System}
		}
		if x.Target.RequestID != "" {
			e.API.Request.UID = x.Target.RequestID
		}
		if x.Target.Resource != "" {
			e.Resources = append(e.Resources, Resource{UID: x.Target.Resource, Name: x.Target.Resource, Type: "execution_target"})
		}
		switch x.Status {
		case decisionlog.ExecutionSucceeded:
			e.StatusID, e.Status = StatusSuccess, "Success"
		case decisionlog.ExecutionFailed:
			e.StatusID, e.Status = StatusFailure, "Failure"
		default:
			e.StatusID, e.Status = StatusOther, x.Status
			if e.Status == "" {
				e.Status = "unknown"
			}
		}
		e.StatusCode = x.Status
		e.StatusDetail = x.Error
		if x.Violation != "" {
			// An execution that no allow explains is what a SOC must see first.
			e.DispositionID, e.Disposition = ptr(DispositionAlert), "Alert"
			e.IsAlert = ptr(true)
			e.SeverityID = SeverityHigh
			u["violation"] = x.Violation
		}
		if x.DecisionAllow != nil {
			u["decision_allow"] = *x.DecisionAllow
		}
		if x.StartedAt != nil {
			u["started_at"] = x.StartedAt.UTC().Format(time.RFC3339Nano)
		}
		if x.FinishedAt != nil {
			u["finished_at"] = x.FinishedAt.UTC().Format(time.RFC3339Nano)
		}
	}
	if verr != nil && e.SeverityID < SeverityMedium {
		e.SeverityID = SeverityMedium
	}
	e.Severity = severityNames[e.SeverityID]
	status := "reported"
	if x != nil {
		status = x.Status
	}
	e.Message = fmt.Sprintf("execution of %s %s", e.API.Operation, status)
	if x != nil && x.Violation != "" {
		e.Message += " (" + x.Violation + ")"
	}
	e.Unmapped = &Unmapped{Custody: u}
	return e
}

// mapCheckpoint makes a Base Event of a signed chain head: no OCSF class describes a log's
// commitment to its own contents, and Base Event is OCSF's place for events no class defines.
func mapCheckpoint(m Msg, c *decisionlog.Checkpoint) *Event {
	e := baseEvent(m, "Checkpoint", c.Timestamp)
	e.Metadata.UID = fmt.Sprintf("checkpoint/%s/%d", c.Instance, c.Seq)
	e.Metadata.EventCode = c.Schema
	e.SeverityID, e.Severity = SeverityInfo, "Informational"
	e.Message = fmt.Sprintf("custody instance %s signed its chain head at seq %d", c.Instance, c.Seq)
	e.Unmapped = &Unmapped{Custody: map[string]any{
		"schema": c.Schema, "instance": c.Instance, "seq": c.Seq, "hash": c.Hash, "note": c.Note,
	}}
	return e
}

// unreadable makes a Base Event of a message custody cannot read, keeping its body.
func unreadable(m Msg, why string) *Event {
	e := baseEvent(m, "Unreadable", m.Time)
	e.Metadata.UID = m.MsgID
	e.SeverityID, e.Severity = SeverityMedium, "Medium"
	e.Message = "a message on the custody stream that custody cannot read"
	e.StatusID, e.Status, e.StatusDetail = StatusOther, "Unreadable", why
	if utf8.Valid(m.Data) {
		e.RawData = string(m.Data)
	} else {
		e.RawData = fmt.Sprintf("%q", m.Data)
	}
	e.Unmapped = &Unmapped{Custody: map[string]any{"subject": m.Subject, "verified": false}}
	return e
}

func baseEvent(m Msg, activity string, t time.Time) *Event {
	if t.IsZero() {
		t = time.Unix(0, 0) // the message says nothing trustworthy about its time
	}
	return &Event{
		ClassUID: ClassBaseEvent, ClassName: "Base Event",
		CategoryUID: CategoryOther, CategoryName: "Uncategorized",
		ActivityID: ActivityOther, ActivityName: activity,
		TypeUID: ClassBaseEvent*100 + ActivityOther, TypeName: "Base Event: Other",
		Time:     millis(t),
		Metadata: metadata(m, nil, ""),
	}
}
