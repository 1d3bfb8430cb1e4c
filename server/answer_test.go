package server

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/labstack/echo/v4"

	"github.com/custodyhq/custody/bundles"
	"github.com/custodyhq/custody/decisionlog"
	"github.com/custodyhq/custody/pdp"
	"github.com/custodyhq/custody/policies"
	"github.com/custodyhq/custody/receipt"
)

// hostileStrings are values whose JSON spelling takes care: HTML characters (which
// encoding/json escapes), quotes and backslashes, control characters, U+2028/9, invalid UTF-8.
var hostileStrings = []string{
	"alice@acme.example", "<script>alert(1)</script>", "a&b", "1<2", "3>2", `q"uo\te`, "tab\tnl\n", "\x00\x1f",
	"é ü 中文", "\u2028\u2029", "\xff\xfe", "", "Bearer 0a1b2c3d4e5f6a7b", "'single'",
}

// TestAnswersMatchEcho: over many decisions, allowed and denied, with hostile values in every
// field the caller controls, POST /v1/authorize and POST /v1/executions answer byte for byte
// (status, headers, body) what they answered through echo's c.JSON. Two servers decide the
// same requests with the same IDs, clock and receipt key; one answers through c.JSON.
func TestAnswersMatchEcho(t *testing.T) {
	set, err := bundles.FromFS(policies.FS, "embedded")
	if err != nil {
		t.Fatal(err)
	}
	eng, err := pdp.New(context.Background(), set)
	if err != nil {
		t.Fatal(err)
	}
	key, err := receipt.LoadOrCreateKey(t.TempDir() + "/receipt.key")
	if err != nil {
		t.Fatal(err)
	}
	iss, err := receipt.NewIssuer(key, "test", 5*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	newSrv := func(viaEcho bool) http.Handler {
		var n atomic.Int64
		return New(eng, &decisionlog.Memory{}, decisionlog.NewIntentHasher([]byte("0123456789abcdef0123456789abcdef")),
			WithIDFunc(func() string { return fmt.Sprintf("id-%d", n.Add(1)) }),
			WithClock(func() time.Time { return time.Date(2026, 11, 27, 6, 0, 0, 0, time.UTC) }),
			WithReceipts(iss),
			func(s *Server) { s.echoJSON = viaEcho }).Handler()
	}
	fast, slow := newSrv(false), newSrv(true)
	q := func(s string) string { b, _ := json.Marshal(s); return string(b) }
	var bodies []string
	for i, h := range hostileStrings {
		other := hostileStrings[(i+3)%len(hostileStrings)]
		// Allowed (the example call, hostile values where the policy does not look) and denied
		// (hostile values where it does).
		bodies = append(bodies, `{"agent":{"id":"spiffe://acme.example/agents/mailer","properties":{"note":`+q(other)+`}},`+
			`"user":{"id":"alice@acme.example","properties":{"roles":["employee"],"scopes":["mail.send"],"x":`+q(h)+`}},`+
			`"tool":{"name":"send_email","server":"mail","arguments":{"to":`+q(h)+`,"api_token":"sk-live-123","body":`+q(other)+`}},`+
			`"resource":{"type":"mailbox","id":"alice","properties":{"owner":"alice@acme.example"}},`+
			`"task":{"id":`+q("t-"+h)+`,"intent":`+q(h)+`},"context":{"why":`+q(other)+`}}`)
		for _, tool := range []string{"send_email", "delete_repo", h} {
			bodies = append(bodies, `{"agent":{"id":`+q("agent-"+h)+`,"properties":{"note":`+q(other)+`}},`+
				`"user":{"id":`+q("user"+h)+`,"properties":{"roles":["employee"],"scopes":["mail.send"],"x":`+q(h)+`}},`+
				`"tool":{"name":`+q(tool)+`,"server":`+q(other)+`,"arguments":{"to":`+q(h)+`,"api_token":"sk-live-123"}},`+
				`"resource":{"type":"mailbox","id":`+q(h)+`},"task":{"id":"t-1","intent":`+q(h)+`},"context":{"why":`+q(other)+`}}`)
		}
	}
	do := func(h http.Handler, method, path, body string, hdr ...string) *httptest.ResponseRecorder {
		req := httptest.NewRequest(method, path, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return rec
	}
	same := func(t *testing.T, what string, f, s *httptest.ResponseRecorder) {
		t.Helper()
		if f.Code != s.Code {
			t.Fatalf("%s: status %d, via c.JSON %d", what, f.Code, s.Code)
		}
		if diff := cmp.Diff(s.Header(), f.Header()); diff != "" {
			t.Fatalf("%s: headers (-c.JSON +fast):\n%s", what, diff)
		}
		if !bytes.Equal(f.Body.Bytes(), s.Body.Bytes()) {
			t.Fatalf("%s: body\nfast   %q\nc.JSON %q", what, f.Body.Bytes(), s.Body.Bytes())
		}
	}
	allows, denies, receipts := 0, 0, 0
	for i, body := range bodies {
		path := "/v1/authorize"
		if i%7 == 3 {
			path += "?pretty"
		}
		// Correlation IDs are visible ASCII: the HTML characters, quotes and backslashes among them.
		marks := []string{"<", ">", "&", `"`, `\`, "<a href='x'>&amp;</a>", "plain"}
		hdr := []string{"X-Correlation-ID", fmt.Sprintf("corr-%d%s", i, marks[i%len(marks)])}
		f, s := do(fast, http.MethodPost, path, body, hdr...), do(slow, http.MethodPost, path, body, hdr...)
		same(t, fmt.Sprintf("authorize %d %s", i, body), f, s)
		var a struct {
			DecisionID string `json:"decision_id"`
			Allow      bool   `json:"allow"`
			Receipt    string `json:"receipt"`
		}
		if f.Code != http.StatusOK || json.Unmarshal(f.Body.Bytes(), &a) != nil {
			continue
		}
		if a.Allow {
			allows++
		} else {
			denies++
		}
		if a.Receipt != "" {
			receipts++
		}
		for _, status := range []string{"succeeded", "failed"} {
			report := `{"decision_id":` + q(a.DecisionID) + `,"status":"` + status + `","target":{"system":` + q(hostileStrings[i%len(hostileStrings)]+"x") + `}}`
			f, s := do(fast, http.MethodPost, "/v1/executions", report), do(slow, http.MethodPost, "/v1/executions", report)
			same(t, "execution "+report, f, s)
		}
	}
	if allows < 5 || denies < 5 || receipts < 5 {
		t.Fatalf("%d allows, %d denies, %d receipts: the requests do not cover both answers", allows, denies, receipts)
	}
}

// answerBoth answers v once through answerJSON and once through echo's c.JSON.
func answerBoth(t testing.TB, v any, appendJSON func([]byte) ([]byte, error), query string) (fast, slow *httptest.ResponseRecorder) {
	t.Helper()
	e := echo.New()
	s := &Server{}
	run := func(f func(echo.Context) error) *httptest.ResponseRecorder {
		rec := httptest.NewRecorder()
		c := e.NewContext(httptest.NewRequest(http.MethodPost, "/v1/authorize"+query, nil), rec)
		if err := f(c); err != nil {
			rec.Code, rec.Body = -1, bytes.NewBufferString(err.Error())
		}
		return rec
	}
	fast = run(func(c echo.Context) error { return s.answerJSON(c, http.StatusOK, v, appendJSON) })
	slow = run(func(c echo.Context) error { return c.JSON(http.StatusOK, v) })
	return fast, slow
}

func checkAnswer(t testing.TB, v any, appendJSON func([]byte) ([]byte, error), query string) {
	t.Helper()
	f, s := answerBoth(t, v, appendJSON, query)
	if f.Code != s.Code || !bytes.Equal(f.Body.Bytes(), s.Body.Bytes()) || !cmp.Equal(f.Header(), s.Header()) {
		t.Fatalf("answers differ:\nfast   %d %v %q\nc.JSON %d %v %q", f.Code, f.Header(), f.Body.Bytes(), s.Code, s.Header(), s.Body.Bytes())
	}
}

// TestAuthorizeAnswerMatchesEcho: every member of the answer, empty or set, with values no
// policy of ours produces (floats, HTML, invalid UTF-8, an approval), is spelled as c.JSON
// spells it; so are values it cannot encode (NaN), which fail alike.
func TestAuthorizeAnswerMatchesEcho(t *testing.T) {
	exp := time.Date(2026, 11, 27, 6, 10, 0, 5, time.UTC)
	for i, h := range hostileStrings {
		for _, r := range []authorizeResponse{
			{DecisionID: h, CorrelationID: h, Reasons: []string{h, "ok"}, Obligations: map[string]any{}, Policy: policyBody{Revision: h}},
			{Allow: true, Reasons: []string{}, Obligations: map[string]any{h: h, "n": json.Number("1.50"), "f": 0.1, "big": 1e21, "l": []any{h, true, nil}, "m": map[string]any{h: []string{h}}},
				Receipt: h + "x", Approval: &decisionlog.Approval{ID: h, Status: "pending", Approver: h, ExpiresAt: &exp}},
			{Reasons: nil, Obligations: nil, Approval: &decisionlog.Approval{}},
		} {
			t.Run(fmt.Sprintf("%d", i), func(t *testing.T) {
				checkAnswer(t, &r, r.appendJSON, "")
				checkAnswer(t, &r, r.appendJSON, "?pretty")
				e := executionResponse{ExecutionID: h, DecisionID: h + "d", CorrelationID: h, Violation: h}
				checkAnswer(t, &e, e.appendJSON, "")
			})
		}
	}
	nan := authorizeResponse{Obligations: map[string]any{"x": func() float64 { z := 0.0; return z / z }()}}
	checkAnswer(t, &nan, nan.appendJSON, "")
}

// FuzzAuthorizeAnswer holds the answer of POST /v1/authorize to c.JSON's for any member values,
// obligations read from any JSON object (numbers as json.Number, and as float64).
func FuzzAuthorizeAnswer(f *testing.F) {
	f.Add("id-1", "corr-<1>", "reason&", "rev\u2028", "eyJ.x.y", []byte(`{"a":[1.5,"<",null,{"é":true}]}`), "ap-1", true)
	f.Add("\xff", "", "", "", "", []byte(`{"x":1e400}`), "", false)
	f.Fuzz(func(t *testing.T, id, corr, reason, rev, rcpt string, obl []byte, approvalID string, allow bool) {
		for _, useNumber := range []bool{true, false} {
			d := json.NewDecoder(bytes.NewReader(obl))
			if useNumber {
				d.UseNumber()
			}
			var o map[string]any
			_ = d.Decode(&o)
			r := authorizeResponse{DecisionID: id, CorrelationID: corr, Allow: allow, Reasons: []string{reason}, Obligations: o, Policy: policyBody{Revision: rev}, Receipt: rcpt}
			if approvalID != "" {
				r.Approval = &decisionlog.Approval{ID: approvalID, Status: reason}
			}
			checkAnswer(t, &r, r.appendJSON, "")
		}
	})
}
