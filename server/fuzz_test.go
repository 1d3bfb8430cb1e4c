package server

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

// FuzzDecodeAuthorize: for any body, decodeAuthorize never panics, either returns a request that
// satisfies the validation rules or an error with a stable code and a message, and a request it
// accepts survives a re-encoding unchanged. Seeds are in testdata/fuzz/FuzzDecodeAuthorize.
func FuzzDecodeAuthorize(f *testing.F) {
	f.Fuzz(func(t *testing.T, body []byte) {
		req, err := decodeAuthorize(body)
		if err != nil {
			if req != nil {
				t.Fatalf("decodeAuthorize returned both a request and error %v", err)
			}
			if !stableCodes[err.Code] {
				t.Fatalf("error code %q is not one of the decoding codes; error: %v", err.Code, err)
			}
			if strings.TrimSpace(err.Message) == "" {
				t.Fatalf("error %q has an empty message", err.Code)
			}
			return
		}
		if req == nil {
			t.Fatal("decodeAuthorize returned neither a request nor an error")
		}
		checkDecodedRequest(t, req)

		// What was accepted, re-encoded, is accepted again and means the same.
		again, merr := json.Marshal(req)
		if merr != nil {
			t.Fatalf("re-encode accepted request: %v", merr)
		}
		req2, aerr := decodeAuthorize(again)
		if aerr != nil {
			t.Fatalf("re-encoded request rejected: %v\nbody: %q", aerr, again)
		}
		// Compared by canonical encoding (sorted keys, exact numbers): cmp.Diff is exponential
		// in the nesting depth of slices, which fuzzed bodies reach easily.
		twice, merr := json.Marshal(req2)
		if merr != nil {
			t.Fatalf("re-encode request decoded from re-encoding: %v", merr)
		}
		if !bytes.Equal(again, twice) {
			t.Fatalf("re-encoded request differs:\nfirst:  %q\nsecond: %q", again, twice)
		}
	})
}

// checkDecodedRequest asserts the invariants validate promises for an accepted request.
func checkDecodedRequest(t *testing.T, req *authorizeRequest) {
	t.Helper()
	required := func(field, v string) {
		if v == "" || len(v) > maxIDLen {
			t.Fatalf("accepted request has %s of %d bytes, want 1 to %d", field, len(v), maxIDLen)
		}
	}
	optional := func(field, v string) {
		if len(v) > maxIDLen {
			t.Fatalf("accepted request has %s of %d bytes, want at most %d", field, len(v), maxIDLen)
		}
	}
	if req.Agent == nil || req.Tool == nil {
		t.Fatalf("accepted request without agent or tool: %+v", req)
	}
	required("agent.id", req.Agent.ID)
	required("tool.name", req.Tool.Name)
	optional("tool.server", req.Tool.Server)
	if req.User != nil {
		required("user.id", req.User.ID)
		optional("user.type", req.User.Type)
	}
	if req.Resource != nil {
		required("resource.type", req.Resource.Type)
		required("resource.id", req.Resource.ID)
	}
	if req.Task != nil {
		optional("task.id", req.Task.ID)
		optional("task.parent_id", req.Task.ParentID)
		optional("task.session_id", req.Task.SessionID)
		if req.Task.Attempt < 0 {
			t.Fatalf("accepted request has task.attempt %d", req.Task.Attempt)
		}
	}
	if req.CorrelationID != nil && !validHeaderID(*req.CorrelationID) {
		t.Fatalf("accepted request has correlation_id %q, which is not a valid header ID", *req.CorrelationID)
	}
}

// FuzzParseTraceparent: parseTraceparent never panics, and what it accepts is a lower-hex trace
// ID of 32 characters and span ID of 16, neither all zeros, taken from the header itself.
// Seeds are in testdata/fuzz/FuzzParseTraceparent.
func FuzzParseTraceparent(f *testing.F) {
	f.Fuzz(func(t *testing.T, h string) {
		tc, ok := parseTraceparent(h)
		if !ok {
			if tc != (traceContext{}) {
				t.Fatalf("rejected %q but returned %+v", h, tc)
			}
			return
		}
		for _, id := range []struct {
			name string
			v    string
			n    int
		}{{"trace id", tc.TraceID, 32}, {"span id", tc.SpanID, 16}} {
			if len(id.v) != id.n || !isLowerHex(id.v) {
				t.Fatalf("parseTraceparent(%q): %s %q, want %d lower-case hex digits", h, id.name, id.v, id.n)
			}
			if strings.Trim(id.v, "0") == "" {
				t.Fatalf("parseTraceparent(%q): %s is all zeros", h, id.name)
			}
		}
		if want := "-" + tc.TraceID + "-" + tc.SpanID + "-"; !strings.Contains(h, want) {
			t.Fatalf("parseTraceparent(%q) = %+v, which is not in the header", h, tc)
		}
		if v := strings.TrimSpace(h)[:2]; v == "ff" {
			t.Fatalf("parseTraceparent(%q) accepted version ff", h)
		}
	})
}
