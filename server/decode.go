package server

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"mime"
	"net/http"
	"strings"

	"github.com/custodyhq/custody/agentcall"
)

// Limits on identifiers. Real IDs (SPIFFE IDs, emails, tool names) are far shorter; anything
// longer is hostile or broken and would bloat every record and subject it reaches.
const (
	maxIDLen            = 1024
	maxCorrelationIDLen = 256
)

// DefaultMaxBodyBytes bounds a request body.
const DefaultMaxBodyBytes = 1 << 20

// authorizeRequest is the native, agent-shaped request of POST /v1/authorize.
type authorizeRequest struct {
	CorrelationID *string        `json:"correlation_id"`
	Agent         *agentBody     `json:"agent"`
	User          *entityBody    `json:"user"`
	Tool          *toolBody      `json:"tool"`
	Resource      *entityBody    `json:"resource"`
	Task          *taskBody      `json:"task"`
	Context       map[string]any `json:"context"`
}

type agentBody struct {
	ID         string         `json:"id"`
	Type       string         `json:"type"`
	Properties map[string]any `json:"properties"`
}

type entityBody struct {
	Type       string         `json:"type"`
	ID         string         `json:"id"`
	Properties map[string]any `json:"properties"`
}

type toolBody struct {
	Name      string         `json:"name"`
	Server    string         `json:"server"`
	Arguments map[string]any `json:"arguments"`
}

type taskBody struct {
	ID        string `json:"id"`
	ParentID  string `json:"parent_id"`
	Attempt   int64  `json:"attempt"`
	SessionID string `json:"session_id"`
	// Intent is the prompt text behind the task. It is hashed on arrival and never stored.
	Intent string `json:"intent"`
}

func (t *taskBody) call() *agentcall.Task {
	return &agentcall.Task{ID: t.ID, ParentID: t.ParentID, Attempt: t.Attempt, SessionID: t.SessionID, Intent: t.Intent}
}

// checkContentType accepts application/json and application/*+json.
func checkContentType(r *http.Request) *apiError {
	ct := r.Header.Get("Content-Type")
	mt, _, err := mime.ParseMediaType(ct)
	if err == nil && (mt == "application/json" || (strings.HasPrefix(mt, "application/") && strings.HasSuffix(mt, "+json"))) {
		return nil
	}
	if ct == "" {
		ct = "none"
	}
	return errorf(CodeUnsupportedMediaType, fmt.Sprintf("Content-Type must be application/json, got %q", ct))
}

// readBody reads at most limit bytes of the request body.
func readBody(r *http.Request, limit int64) ([]byte, *apiError) {
	limit = min(limit, math.MaxInt64-1) // limit+1 below must not wrap
	tooLarge := errorf(CodeBodyTooLarge, fmt.Sprintf("request body exceeds %d bytes", limit))
	if r.ContentLength > limit {
		return nil, tooLarge
	}
	body, err := readAllSized(io.LimitReader(r.Body, limit+1), r.ContentLength)
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, tooLarge
		}
		return nil, errorf(CodeInvalidRequest, "could not read request body: "+err.Error())
	}
	if int64(len(body)) > limit {
		return nil, tooLarge
	}
	return body, nil
}

// readAllSized is io.ReadAll starting from a buffer of the declared length (and one byte to see
// the end in), so a body that says how long it is takes one allocation instead of ReadAll's
// growing ones. The declared length is only a hint: a body longer or shorter is read whole. The
// hint is capped at 16 KiB, so that a declared length alone, before any byte of the body
// arrives, cannot make the server hold more than that for a connection.
func readAllSized(r io.Reader, declared int64) ([]byte, error) {
	b := make([]byte, 0, max(0, min(declared, 16<<10))+1)
	for {
		n, err := r.Read(b[len(b):cap(b)])
		b = b[:len(b)+n]
		if err == io.EOF {
			return b, nil
		}
		if err != nil {
			return b, err
		}
		if len(b) == cap(b) {
			b = append(b, 0)[:len(b)] // grow as append does
		}
	}
}

func jsonError(err error) *apiError {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		return errorf(CodeInvalidJSON, fmt.Sprintf("malformed JSON at byte %d: %s", se.Offset, se.Error()))
	case errors.As(err, &te):
		if te.Field == "" {
			return errorf(CodeInvalidRequest, fmt.Sprintf("request body must be a JSON object, got %s", te.Value))
		}
		return errorf(CodeInvalidRequest, fmt.Sprintf("%s: want %s, got %s", te.Field, jsonTypeName(te.Type.Kind().String()), te.Value))
	case errors.Is(err, io.ErrUnexpectedEOF):
		return errorf(CodeInvalidJSON, "malformed JSON: unexpected end of input")
	default:
		return errorf(CodeInvalidJSON, "malformed JSON: "+err.Error())
	}
}

func jsonTypeName(kind string) string {
	switch kind {
	case "map", "struct":
		return "object"
	case "slice", "array":
		return "array"
	case "int", "int64", "uint", "uint64":
		return "integer"
	case "float64":
		return "number"
	case "interface":
		return "any JSON value"
	default:
		return kind
	}
}

// decodeAuthorize decodes and validates a native request body.
func decodeAuthorize(body []byte) (*authorizeRequest, *apiError) {
	var req authorizeRequest
	if err := decodeJSON(body, &req); err != nil {
		return nil, err
	}
	if err := req.validate(); err != nil {
		return nil, err
	}
	return &req, nil
}

func (r *authorizeRequest) validate() *apiError {
	if r.Agent == nil {
		return missing("agent.id")
	}
	if err := checkID("agent.id", r.Agent.ID, true); err != nil {
		return err
	}
	if r.Tool == nil {
		return missing("tool.name")
	}
	if err := checkID("tool.name", r.Tool.Name, true); err != nil {
		return err
	}
	if err := checkID("tool.server", r.Tool.Server, false); err != nil {
		return err
	}
	if r.User != nil {
		if err := checkID("user.id", r.User.ID, true); err != nil {
			return err
		}
		if err := checkID("user.type", r.User.Type, false); err != nil {
			return err
		}
	}
	if r.Resource != nil {
		if err := checkID("resource.type", r.Resource.Type, true); err != nil {
			return err
		}
		if err := checkID("resource.id", r.Resource.ID, true); err != nil {
			return err
		}
	}
	if r.Task != nil {
		for _, f := range []struct{ name, v string }{{"task.id", r.Task.ID}, {"task.parent_id", r.Task.ParentID}, {"task.session_id", r.Task.SessionID}} {
			if err := checkID(f.name, f.v, false); err != nil {
				return err
			}
		}
		if r.Task.Attempt < 0 {
			return errorf(CodeInvalidRequest, "task.attempt: must not be negative")
		}
	}
	if r.CorrelationID != nil {
		if err := checkCorrelationID("correlation_id", *r.CorrelationID); err != nil {
			return err
		}
	}
	return nil
}

func missing(field string) *apiError {
	return errorf(CodeInvalidRequest, field+": required")
}

func checkID(field, v string, required bool) *apiError {
	if v == "" {
		if required {
			return missing(field)
		}
		return nil
	}
	if len(v) > maxIDLen {
		return errorf(CodeInvalidRequest, fmt.Sprintf("%s: longer than %d bytes", field, maxIDLen))
	}
	return nil
}

// checkCorrelationID accepts 1 to 256 visible ASCII characters. Correlation IDs travel in HTTP
// and NATS headers and in logs, where anything else is a smuggling risk.
func checkCorrelationID(field, v string) *apiError {
	if !validHeaderID(v) {
		return errorf(CodeInvalidRequest, fmt.Sprintf("%s: want 1 to %d visible ASCII characters", field, maxCorrelationIDLen))
	}
	return nil
}

func validHeaderID(v string) bool {
	if v == "" || len(v) > maxCorrelationIDLen {
		return false
	}
	for i := 0; i < len(v); i++ {
		if v[i] < 0x21 || v[i] > 0x7e {
			return false
		}
	}
	return true
}

// traceContext is the part of a W3C traceparent header custody records.
type traceContext struct{ TraceID, SpanID string }

// parseTraceparent reads "00-<32 hex>-<16 hex>-<2 hex>". Anything else, including all-zero IDs,
// is ignored as the W3C spec requires.
func parseTraceparent(h string) (traceContext, bool) {
	h = strings.TrimSpace(h)
	parts := strings.Split(h, "-")
	if len(parts) < 4 || len(parts[0]) != 2 || parts[0] == "ff" || len(parts[1]) != 32 || len(parts[2]) != 16 || len(parts[3]) != 2 {
		return traceContext{}, false
	}
	if parts[0] == "00" && len(parts) != 4 {
		return traceContext{}, false
	}
	for _, p := range parts[:4] {
		if !isLowerHex(p) {
			return traceContext{}, false
		}
	}
	if strings.Trim(parts[1], "0") == "" || strings.Trim(parts[2], "0") == "" {
		return traceContext{}, false
	}
	return traceContext{TraceID: parts[1], SpanID: parts[2]}, true
}

func isLowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}
