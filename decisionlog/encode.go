package decisionlog

import (
	"encoding/json"
	"slices"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/custodyhq/custody/schema"
)

// marshalRecord is json.Marshal(r), byte for byte, without reflection on the parts every
// decision record has: the fixed members, plain strings, the free-form maps of strings, lists
// and objects. Anything it is not sure to spell exactly as encoding/json does (a string needing
// an escape, a float64, a rarely set section such as an execution or an approval) it hands to
// encoding/json for that value alone, which spells it as it would within the record: encoding
// is compositional. TestMarshalRecordMatchesJSON and FuzzMarshalRecord hold it to json.Marshal.
// Encoding the record was about 5% of a decision's CPU, most of it reflection.
func marshalRecord(r *Record) ([]byte, error) {
	// Room for the record and the hash member Seal appends, so that neither grows it: the last
	// record's size and an eighth more is a good guess, where a fixed 2 KiB wasted half of it
	// on most records.
	room := int(recordRoom.Load())
	if room <= 0 {
		room = 2048
	}
	e := recordEncoder{buf: make([]byte, 0, room)}
	e.record(r)
	if e.err != nil {
		return nil, e.err
	}
	recordRoom.Store(int64(len(e.buf) + len(e.buf)/8 + hashSuffixLen))
	return e.buf, nil
}

// recordRoom is the room marshalRecord gives the next record.
var recordRoom atomic.Int64

// AppendJSON appends v to dst as json.Marshal(v) spells it, byte for byte, HTML characters
// escaped as encoding/json escapes them: the free-form values of a record (strings, booleans,
// json.Number, ints, []any, []string, map[string]any) without reflection, anything else through
// encoding/json, as marshalRecord does. On an error dst's new bytes are not a value. The server
// spells its hot answers with it.
func AppendJSON(dst []byte, v any) ([]byte, error) {
	e := recordEncoder{buf: dst}
	e.value(v)
	return e.buf, e.err
}

// AppendJSONString is AppendJSON for a string, which cannot fail.
func AppendJSONString(dst []byte, s string) []byte {
	e := recordEncoder{buf: dst}
	e.str(s)
	return e.buf
}

// AppendJSONStrings is AppendJSON for a list of strings (nil is null), which cannot fail.
func AppendJSONStrings(dst []byte, ss []string) []byte {
	e := recordEncoder{buf: dst}
	e.strings(ss)
	return e.buf
}

type recordEncoder struct {
	buf []byte
	err error
}

// slow appends v as encoding/json spells it.
func (e *recordEncoder) slow(v any) {
	if e.err != nil {
		return
	}
	b, err := json.Marshal(v)
	if err != nil {
		e.err = err
		return
	}
	e.buf = append(e.buf, b...)
}

// key appends `,"name":` (without the comma for the first member).
func (e *recordEncoder) key(name string, first bool) {
	if !first {
		e.buf = append(e.buf, ',')
	}
	e.buf = append(e.buf, '"')
	e.buf = append(e.buf, name...)
	e.buf = append(e.buf, '"', ':')
}

// plainString reports whether encoding/json writes s between quotes as it is: printable ASCII
// without the quote, the backslash and the HTML characters it escapes.
func plainString(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c > 0x7e || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			return false
		}
	}
	return true
}

func (e *recordEncoder) str(s string) {
	if !plainString(s) {
		e.slow(s)
		return
	}
	e.buf = append(e.buf, '"')
	e.buf = append(e.buf, s...)
	e.buf = append(e.buf, '"')
}

func (e *recordEncoder) boolean(b bool) {
	if b {
		e.buf = append(e.buf, "true"...)
	} else {
		e.buf = append(e.buf, "false"...)
	}
}

// plainInteger reports whether n is a JSON integer encoding/json writes as it is.
func plainInteger(n string) bool {
	if n == "0" {
		return true
	}
	i := 0
	if len(n) > 0 && n[0] == '-' {
		i = 1
	}
	if i >= len(n) || n[i] < '1' || n[i] > '9' {
		return false
	}
	for ; i < len(n); i++ {
		if n[i] < '0' || n[i] > '9' {
			return false
		}
	}
	return true
}

// value appends a free-form value as encoding/json does.
func (e *recordEncoder) value(v any) {
	switch x := v.(type) {
	case nil:
		e.buf = append(e.buf, "null"...)
	case string:
		e.str(x)
	case bool:
		e.boolean(x)
	case json.Number:
		if !plainInteger(string(x)) {
			e.slow(x)
			return
		}
		e.buf = append(e.buf, x...)
	case int:
		e.buf = strconv.AppendInt(e.buf, int64(x), 10)
	case int64:
		e.buf = strconv.AppendInt(e.buf, x, 10)
	case []any:
		if x == nil {
			e.buf = append(e.buf, "null"...)
			return
		}
		e.buf = append(e.buf, '[')
		for i, el := range x {
			if i > 0 {
				e.buf = append(e.buf, ',')
			}
			e.value(el)
		}
		e.buf = append(e.buf, ']')
	case []string:
		e.strings(x)
	case map[string]any:
		e.object(x)
	default:
		e.slow(v)
	}
}

func (e *recordEncoder) strings(ss []string) {
	if ss == nil {
		e.buf = append(e.buf, "null"...)
		return
	}
	e.buf = append(e.buf, '[')
	for i, s := range ss {
		if i > 0 {
			e.buf = append(e.buf, ',')
		}
		e.str(s)
	}
	e.buf = append(e.buf, ']')
}

// object appends m with its keys sorted, as encoding/json does. A key that is not a plain
// string is sorted by encoding/json under its own rules, so the whole map is handed over.
func (e *recordEncoder) object(m map[string]any) {
	if m == nil {
		e.buf = append(e.buf, "null"...)
		return
	}
	var arr [16]string
	keys := arr[:0]
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		if !plainString(k) {
			e.slow(m)
			return
		}
	}
	e.buf = append(e.buf, '{')
	for i, k := range keys {
		e.key(k, i == 0)
		e.value(m[k])
	}
	e.buf = append(e.buf, '}')
}

// timestamp appends t as time.Time.MarshalJSON does; anything but a UTC time within years 0 to
// 9999 is left to it.
func (e *recordEncoder) timestamp(t time.Time) {
	if t.Location() != time.UTC || t.Year() < 0 || t.Year() > 9999 {
		e.slow(t)
		return
	}
	e.buf = append(e.buf, '"')
	e.buf = t.AppendFormat(e.buf, time.RFC3339Nano)
	e.buf = append(e.buf, '"')
}

func (e *recordEncoder) entity(en schema.Entity) {
	e.buf = append(e.buf, '{')
	e.key("type", true)
	e.str(en.Type)
	e.key("id", false)
	e.str(en.ID)
	if len(en.Properties) > 0 {
		e.key("properties", false)
		e.object(en.Properties)
	}
	e.buf = append(e.buf, '}')
}

func (e *recordEncoder) task(t *schema.Task) {
	e.buf = append(e.buf, '{')
	first := true
	member := func(name string) {
		e.key(name, first)
		first = false
	}
	if t.ID != "" {
		member("id")
		e.str(t.ID)
	}
	if t.ParentID != "" {
		member("parent_id")
		e.str(t.ParentID)
	}
	if t.Attempt != 0 {
		member("attempt")
		e.buf = strconv.AppendInt(e.buf, t.Attempt, 10)
	}
	if t.SessionID != "" {
		member("session_id")
		e.str(t.SessionID)
	}
	if t.IntentSHA256 != "" {
		member("intent_sha256")
		e.str(t.IntentSHA256)
	}
	if t.IntentSealed != nil {
		member("intent_sealed")
		e.slow(t.IntentSealed)
	}
	e.buf = append(e.buf, '}')
}

// record follows Record's members in order, with their omitempty rules.
func (e *recordEncoder) record(r *Record) {
	e.buf = append(e.buf, '{')
	e.key("schema", true)
	e.str(r.Schema)
	e.key("decision_id", false)
	e.str(r.DecisionID)
	e.key("timestamp", false)
	e.timestamp(r.Timestamp)
	e.key("correlation_id", false)
	e.str(r.CorrelationID)
	for _, m := range [...]struct{ name, v string }{{"request_id", r.RequestID}, {"trace_id", r.TraceID}, {"span_id", r.SpanID}} {
		if m.v != "" {
			e.key(m.name, false)
			e.str(m.v)
		}
	}
	e.key("endpoint", false)
	e.str(r.Endpoint)
	e.key("subject", false)
	e.entity(r.Subject)
	e.key("action", false)
	e.buf = append(e.buf, '{')
	e.key("name", true)
	e.str(r.Action.Name)
	if len(r.Action.Properties) > 0 {
		e.key("properties", false)
		e.object(r.Action.Properties)
	}
	e.buf = append(e.buf, '}')
	e.key("resource", false)
	e.entity(r.Resource)
	if a := r.Agent; a != nil {
		e.key("agent", false)
		e.buf = append(e.buf, '{')
		e.key("id", true)
		e.str(a.ID)
		if a.Type != "" {
			e.key("type", false)
			e.str(a.Type)
		}
		if len(a.Properties) > 0 {
			e.key("properties", false)
			e.object(a.Properties)
		}
		e.buf = append(e.buf, '}')
	}
	e.key("delegation", false)
	e.buf = append(e.buf, '{')
	e.key("verified", true)
	e.boolean(r.Delegation.Verified)
	e.key("chain", false)
	e.value(r.Delegation.Chain)
	e.buf = append(e.buf, '}')
	if c := r.Caller; c != nil {
		e.key("caller", false)
		e.buf = append(e.buf, '{')
		e.key("method", true)
		e.str(c.Method)
		e.key("id", false)
		e.str(c.ID)
		if c.Workload != "" {
			e.key("workload", false)
			e.str(c.Workload)
		}
		e.buf = append(e.buf, '}')
	}
	if r.Task != nil {
		e.key("task", false)
		e.task(r.Task)
	}
	e.key("allow", false)
	e.boolean(r.Allow)
	e.key("reasons", false)
	e.strings(r.Reasons)
	if len(r.Obligations) > 0 {
		e.key("obligations", false)
		e.object(r.Obligations)
	}
	if r.Approval != nil {
		e.key("approval", false)
		e.slow(r.Approval)
	}
	e.key("policy", false)
	e.buf = append(e.buf, '{')
	e.key("query", true)
	e.str(r.Policy.Query)
	e.key("revision", false)
	e.str(r.Policy.Revision)
	e.buf = append(e.buf, '}')
	if r.Error != "" {
		e.key("error", false)
		e.str(r.Error)
	}
	e.key("eval_ns", false)
	e.buf = strconv.AppendInt(e.buf, r.EvalNS, 10)
	e.key("pdp", false)
	e.buf = append(e.buf, '{')
	e.key("instance", true)
	e.str(r.PDP.Instance)
	e.key("version", false)
	e.str(r.PDP.Version)
	e.buf = append(e.buf, '}')
	if r.ExecutionID != "" {
		e.key("execution_id", false)
		e.str(r.ExecutionID)
	}
	if r.Execution != nil {
		e.key("execution", false)
		e.slow(r.Execution)
	}
	if r.UnsealID != "" {
		e.key("unseal_id", false)
		e.str(r.UnsealID)
	}
	if r.Unseal != nil {
		e.key("unseal", false)
		e.slow(r.Unseal)
	}
	if r.Refusal != nil {
		e.key("refusal", false)
		e.slow(r.Refusal)
	}
	if r.Seq != 0 {
		e.key("seq", false)
		e.buf = strconv.AppendUint(e.buf, r.Seq, 10)
	}
	if r.PrevHash != "" {
		e.key("prev_hash", false)
		e.str(r.PrevHash)
	}
	if r.Hash != "" {
		e.key("hash", false)
		e.str(r.Hash)
	}
	e.buf = append(e.buf, '}')
}
